r"""Symbolic (sympy) checks of every algebraic step of the proofs and model derivations.

Each ``check_*`` function derives one identity or inequality with sympy and returns
``(passed, detail)``. `run_all` runs them all, and `sympy_experiment` turns the results
into certificate checks for ``iga validate``. The steps that are not algebra (Jensen,
the triangle inequality, conditional expectations, the order-statistic argument) are
stated in the LaTeX proofs and checked numerically by the validation experiments.

Gaussian expectations of polynomials are computed exactly by `gaussian_expectation`:
expand in independent standard normals and replace each monomial by the product of
the moments ``E Z^{2k} = (2k - 1)!!`` (odd moments 0).
"""

from __future__ import annotations

from typing import Callable

import sympy as sp


def gaussian_expectation(expression, normals) -> sp.Expr:
    """Exact E[expression] for a polynomial in independent standard normals ``normals``."""
    polynomial = sp.Poly(sp.expand(expression), *normals)
    total = sp.Integer(0)
    for powers, coefficient in polynomial.terms():
        moment = sp.Integer(1)
        for power in powers:
            moment *= 0 if power % 2 else sp.factorial2(power - 1)
        total += coefficient * moment
    return sp.simplify(total)


def _is_zero(expression) -> bool:
    return sp.simplify(sp.expand(expression)) == 0


# ----- model derivations ---------------------------------------------------------------


def check_s1_risk_coefficients() -> tuple[bool, str]:
    """S1: E[(theta^T x - y)^2] / 2 equals the six-coefficient form, for d_inv = d_sp = 2."""
    s, beta, sigma_y, sigma_s = sp.symbols("s beta sigma_y sigma_s", positive=True)
    a1, a2, b1, b2, w1, w2 = sp.symbols("alpha1 alpha2 b1 b2 w1 w2", real=True)
    z1, z2, eps, zeta1, zeta2 = sp.symbols("z1 z2 epsilon zeta1 zeta2", real=True)
    x_inv = [s * z1, s * z2]
    y = w1 * x_inv[0] + w2 * x_inv[1] + sigma_y * eps
    x_sp = [beta * y + sigma_s * zeta1, beta * y + sigma_s * zeta2]
    residual = a1 * x_inv[0] + a2 * x_inv[1] + b1 * x_sp[0] + b2 * x_sp[1] - y
    risk = gaussian_expectation(residual**2 / 2, [z1, z2, eps, zeta1, zeta2])

    u, S_b = s**2, b1 + b2
    w2_norm, w_alpha = w1**2 + w2**2, w1 * a1 + w2 * a2
    coefficients = [
        (sigma_s**2 * (b1**2 + b2**2) + sigma_y**2) / 2,
        ((a1 - w1) ** 2 + (a2 - w2) ** 2) / 2,
        S_b * (w_alpha - w2_norm),
        w2_norm * S_b**2 / 2,
        sigma_y**2 * S_b**2 / 2,
        -(sigma_y**2) * S_b,
    ]
    features = [1, u, u * beta, u * beta**2, beta**2, beta]
    closed = sum(c * f for c, f in zip(coefficients, features))
    return _is_zero(risk - closed), "E r^2 / 2 - sum_k a_k phi_k = 0"


def check_s1_gradient() -> tuple[bool, str]:
    """S1: the gradient of the risk is Sigma theta - c with Sigma = E[x x^T], c = E[x y]."""
    s, beta, sigma_y, sigma_s = sp.symbols("s beta sigma_y sigma_s", positive=True)
    theta = sp.symbols("t1:5", real=True)
    w1, w2 = sp.symbols("w1 w2", real=True)
    normals = sp.symbols("z1 z2 epsilon zeta1 zeta2", real=True)
    z1, z2, eps, zeta1, zeta2 = normals
    y = w1 * s * z1 + w2 * s * z2 + sigma_y * eps
    x = [s * z1, s * z2, beta * y + sigma_s * zeta1, beta * y + sigma_s * zeta2]
    risk = gaussian_expectation((sum(t * xi for t, xi in zip(theta, x)) - y) ** 2 / 2, normals)
    sigma = sp.Matrix(4, 4, lambda i, j: gaussian_expectation(x[i] * x[j], normals))
    c = sp.Matrix([gaussian_expectation(xi * y, normals) for xi in x])
    gradient = sp.Matrix([sp.diff(risk, t) for t in theta])
    return all(_is_zero(e) for e in gradient - (sigma * sp.Matrix(theta) - c)), "grad R - (Sigma theta - c) = 0"


def check_isserlis_trace() -> tuple[bool, str]:
    """tr Cov(x r) = tr(Sigma) E[r^2] + |E[x r]|^2 for zero-mean jointly Gaussian (x, r), 2-D x."""
    normals = sp.symbols("z1:4", real=True)
    a = sp.Matrix(2, 3, sp.symbols("a1:7", real=True))
    b = sp.Matrix(1, 3, sp.symbols("b1:4", real=True))
    x = a * sp.Matrix(normals)
    r = (b * sp.Matrix(normals))[0]
    E = lambda e: gaussian_expectation(e, normals)  # noqa: E731
    trace_cov = sum(E(x[i] ** 2 * r**2) - E(x[i] * r) ** 2 for i in range(2))
    closed = sum(E(x[i] ** 2) for i in range(2)) * E(r**2) + sum(E(x[i] * r) ** 2 for i in range(2))
    return _is_zero(trace_cov - closed), "sum_i Var(x_i r) - (tr Sigma E r^2 + |E x r|^2) = 0"


def check_s4_risk_and_variance() -> tuple[bool, str]:
    """S4 with p = q = 2: R = (s^2/2)|D|^2 + q sigma^2/2 and tr Cov = s^4 (p+1)|D|^2 + p q s^2 sigma^2."""
    s, sigma = sp.symbols("s sigma", positive=True)
    D = sp.Matrix(2, 2, sp.symbols("d11 d12 d21 d22", real=True))
    z = sp.symbols("z1 z2", real=True)
    xi = sp.symbols("xi1 xi2", real=True)
    normals = list(z) + list(xi)
    x = sp.Matrix([s * z[0], s * z[1]])
    # Residual of the prediction W^T x - y with W - W_e = D: D^T x - sigma xi.
    residual = D.T * x - sigma * sp.Matrix(xi)
    risk = gaussian_expectation((residual.T * residual)[0] / 2, normals)
    norm2 = sum(e**2 for e in D)
    risk_ok = _is_zero(risk - (s**2 * norm2 / 2 + 2 * sigma**2 / 2))

    per_example = x * residual.T  # gradient x (x^T W - y^T), 2 x 2
    mean = sp.Matrix(2, 2, lambda i, j: gaussian_expectation(per_example[i, j], normals))
    mean_ok = all(_is_zero(e) for e in mean - s**2 * D)
    trace_cov = sum(gaussian_expectation(per_example[i, j] ** 2, normals) - mean[i, j] ** 2
                    for i in range(2) for j in range(2))
    variance_ok = _is_zero(trace_cov - (s**4 * 3 * norm2 + 4 * s**2 * sigma**2))
    return risk_ok and mean_ok and variance_ok, "risk, gradient s^2 D and tr Cov, p = q = 2"


def check_s2_stein_gradient() -> tuple[bool, str]:
    """S2: the steps behind grad R = -E[sigma(-M)] m + E[sigma(M) sigma(-M)] Sigma theta."""
    m, z, a, b = sp.symbols("m z a b", real=True)
    softplus = sp.log(1 + sp.exp(-m))
    sigmoid = lambda t: 1 / (1 + sp.exp(-t))  # noqa: E731
    # (i) d softplus(-m) / dm = -sigma(-m)
    step1 = _is_zero(sp.simplify(sp.diff(softplus, m) + sigmoid(-m)))
    # (ii) d/dz [-sigma(-(a + b z))] = b sigma(M) sigma(-M), the Stein integrand
    M = a + b * z
    step2 = _is_zero(sp.simplify(sp.diff(-sigmoid(-M), z) - b * sigmoid(M) * sigmoid(-M)))
    # (iii) Stein's lemma E[h(Z) Z] = E[h'(Z)], checked on a polynomial test function.
    h = z**3 - 2 * z**2 + 5 * z
    phi = sp.exp(-z**2 / 2) / sp.sqrt(2 * sp.pi)
    lhs = sp.integrate(h * z * phi, (z, -sp.oo, sp.oo))
    rhs = sp.integrate(sp.diff(h, z) * phi, (z, -sp.oo, sp.oo))
    step3 = _is_zero(lhs - rhs)
    # (iv) d b / d theta = Sigma theta / b for b = sqrt(theta^T Sigma theta), 2-D.
    t1, t2, s11, s12, s22 = sp.symbols("t1 t2 s11 s12 s22", real=True)
    Sigma = sp.Matrix([[s11, s12], [s12, s22]])
    theta = sp.Matrix([t1, t2])
    bb = sp.sqrt((theta.T * Sigma * theta)[0])
    grad_b = sp.Matrix([sp.diff(bb, t1), sp.diff(bb, t2)])
    step4 = all(_is_zero(e) for e in grad_b - Sigma * theta / bb)
    return step1 and step2 and step3 and step4, "softplus', Stein integrand, Stein's lemma, grad b"


# ----- Theorem 1 ---------------------------------------------------------------------------


def check_t1_descent_algebra() -> tuple[bool, str]:
    """Theorem 1: the descent-lemma algebra, the telescoped bound and the optimal step."""
    eta, L, sigma2, gap, T, lam, m_min, v = sp.symbols("eta L sigma2 Delta T lambda m_min v", positive=True)
    # eta - L eta^2 / 2 >= eta / 2 whenever L eta <= 1: the difference is eta (1 - L eta) / 2.
    step1 = _is_zero((eta - L * eta**2 / 2 - eta / 2) - eta * (1 - L * eta) / 2)
    # |A v|^2 <= v^T A v for 0 <= lambda <= 1 (per eigenvalue): lambda - lambda^2 = lambda (1 - lambda).
    step2 = _is_zero((lam - lam**2) - lam * (1 - lam))
    # Summing E R_{t+1} <= E R_t - (eta/2) G_t + L eta^2 sigma^2 / 2 over t < T and dividing by eta T / 2.
    G_bar = sp.Symbol("G_bar", positive=True)
    telescoped = sp.Eq(eta / 2 * T * G_bar, gap + T * L * eta**2 * sigma2 / 2)
    solved = sp.solve(telescoped, G_bar)[0]
    step3 = _is_zero(solved - (2 * gap / (eta * T) + L * eta * sigma2))
    # The optimal constant step and the T^(-1/2) rate.
    rhs = 2 * gap / (eta * T) + L * eta * sigma2
    eta_star = [e for e in sp.solve(sp.diff(rhs, eta), eta) if e.is_positive][0]
    value = sp.simplify(rhs.subs(eta, eta_star))
    step4 = _is_zero(value - 2 * sp.sqrt(2 * gap * L * sigma2 / T))
    exponent = sp.simplify(sp.diff(sp.log(value), T) * T)
    step5 = exponent == sp.Rational(-1, 2)
    # With a floor: lambda >= m_min implies v^2 <= lambda v^2 / m_min.
    step6 = _is_zero((lam * v**2 / m_min - v**2) - v**2 * (lam - m_min) / m_min)
    return all([step1, step2, step3, step4, step5, step6]), "descent, PSD contraction, telescoping, eta*, rate, floor"


# ----- Theorem 2 ---------------------------------------------------------------------------


def check_t2_constants() -> tuple[bool, str]:
    """Theorem 2: K*, the vacuous range, the quantile's minimum K and the union bound's ln N."""
    K, B, V, ell, delta, N = sp.symbols("K B V ell delta N", positive=True)
    # K*: sqrt(2 V ell / K) = 7 B ell / (3 K)  (range term with K - 1 replaced by K).
    solutions = sp.solve(sp.Eq(sp.sqrt(2 * V * ell / K), 7 * B * ell / (3 * K)), K)
    step1 = len(solutions) == 1 and _is_zero(solutions[0] - sp.Rational(49, 18) * B**2 * ell / V)
    # Vacuous while 7 ln(2/delta) / (3 (K - 1)) >= 1: at delta = 0.05 the threshold is K < 10.
    threshold = 1 + 7 * sp.log(2 / sp.Rational(1, 20)) / 3
    step2 = 9 < threshold.evalf() < 10
    # Quantile certificate exists iff (1 - alpha)^K <= delta: 29 domains at alpha = 0.1, delta = 0.05.
    minimum = sp.ceiling(sp.log(sp.Rational(1, 20)) / sp.log(sp.Rational(9, 10)))
    step3 = int(minimum) == 29 and (sp.Rational(9, 10) ** 29 <= sp.Rational(1, 20)) \
        and (sp.Rational(9, 10) ** 28 > sp.Rational(1, 20))
    # Union bound over N candidates: ln(2 / (delta / N)) = ln(2 / delta) + ln N.
    step4 = _is_zero(sp.expand_log(sp.log(2 / (delta / N)) - sp.log(2 / delta) - sp.log(N), force=True))
    # Log-log slopes: the variance term has slope -1/2; the range term -K/(K-1) -> -1.
    variance_slope = sp.simplify(sp.diff(sp.log(sp.sqrt(2 * V * ell / K)), K) * K)
    range_slope = sp.simplify(sp.diff(sp.log(7 * B * ell / (3 * (K - 1))), K) * K)
    step5 = variance_slope == sp.Rational(-1, 2) and sp.limit(range_slope, K, sp.oo) == -1
    return all([step1, step2, step3, step4, step5]), "K*, vacuous K < 10, K >= 29, ln N, slopes"


# ----- Theorem 3 ---------------------------------------------------------------------------


def check_t3_hard_limit_conflict() -> tuple[bool, str]:
    """Theorem 3 (c): with b = 0 the spurious gradients are beta_e times a common factor, so
    the conflict score s2 / mu^2 does not depend on the invariant weights."""
    sigma_y, sigma_s = sp.symbols("sigma_y sigma_s", positive=True)
    a1, a2, w1, w2 = sp.symbols("alpha1 alpha2 w1 w2", real=True)
    betas = sp.symbols("beta1:4", real=True)
    normals = sp.symbols("z1 z2 epsilon zeta1 zeta2", real=True)
    z1, z2, eps, zeta1, zeta2 = normals
    gradients = []
    for beta in betas:
        y = w1 * z1 + w2 * z2 + sigma_y * eps
        x = [z1, z2, beta * y + sigma_s * zeta1, beta * y + sigma_s * zeta2]
        theta = [a1, a2, 0, 0]
        residual = sum(t * xi for t, xi in zip(theta, x)) - y
        gradients.append(gaussian_expectation(x[2] * residual, normals))  # first spurious coordinate
    factor = w1 * a1 + w2 * a2 - (w1**2 + w2**2 + sigma_y**2)
    step1 = all(_is_zero(g - beta * factor) for g, beta in zip(gradients, betas))
    K = len(betas)
    mean = sum(gradients) / K
    s2 = sum((g - mean) ** 2 for g in gradients) / (K - 1)
    beta_mean = sum(betas) / K
    beta_s2 = sum((b - beta_mean) ** 2 for b in betas) / (K - 1)
    step2 = _is_zero(sp.cancel(s2 / mean**2 - beta_s2 / beta_mean**2))
    # c = K / t^2 with t = sqrt(K) mean / s.
    step3 = _is_zero(sp.cancel(beta_s2 / beta_mean**2 - K / (K * beta_mean**2 / beta_s2)))
    return step1 and step2 and step3, "g_sp,e = beta_e (w^T alpha - Var y); c = s_beta^2 / mean^2 = K / t^2"


def check_t3_fixed_points() -> tuple[bool, str]:
    """Theorem 3 (a): theta - eta m mu = theta iff m mu = 0 (per coordinate, eta > 0)."""
    eta = sp.Symbol("eta", positive=True)
    m, mu = sp.symbols("m mu", real=True)
    solutions = sp.solve(sp.Eq(eta * m * mu, 0), [m, mu], dict=True)
    zero_sets = {frozenset(s.items()) for s in solutions}
    ok = zero_sets == {frozenset({(m, 0)}), frozenset({(mu, 0)})}
    return ok, "eta m mu = 0 <=> m = 0 or mu = 0"


CHECKS: dict[str, tuple[str, Callable[[], tuple[bool, str]]]] = {
    "sympy_s1_risk": ("models", check_s1_risk_coefficients),
    "sympy_s1_gradient": ("models", check_s1_gradient),
    "sympy_isserlis_trace": ("T1", check_isserlis_trace),
    "sympy_s4_risk_variance": ("models", check_s4_risk_and_variance),
    "sympy_s2_stein": ("models", check_s2_stein_gradient),
    "sympy_t1_algebra": ("T1", check_t1_descent_algebra),
    "sympy_t2_constants": ("T2", check_t2_constants),
    "sympy_t3_hard_limit": ("T3", check_t3_hard_limit_conflict),
    "sympy_t3_fixed_points": ("T3", check_t3_fixed_points),
}


def run_all() -> dict[str, tuple[bool, str]]:
    """Run every symbolic check; name -> (passed, description)."""
    return {name: function() for name, (_, function) in CHECKS.items()}


def sympy_experiment(config=None) -> dict:
    """Certificate checks of ``iga validate``: one per symbolic check."""
    from iga_theory.synthetic.validate_common import make_check

    checks = []
    for name, (theorem, function) in CHECKS.items():
        passed, description = function()
        checks.append(make_check(name, theorem, f"sympy: {description}", bool(passed), passed=bool(passed)))
    return {"checks": checks, "measurements": [], "figures": {}}


if __name__ == "__main__":  # pragma: no cover - manual run
    for check_name, (ok, text) in run_all().items():
        print(f"{'PASS' if ok else 'FAIL'} {check_name}: {text}")
