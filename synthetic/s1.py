r"""S1: anti-causal linear regression with a domain-dependent spurious mechanism.

Generative model of domain e (all draws independent):

.. math::

    z \sim N(0, I_{d_{inv}}),\quad x_{inv} = s_e z,\quad
    y = w_*^\top x_{inv} + N(0, \sigma_y^2),\quad
    x_{sp} = \beta_e\, y\, \mathbf 1 + N(0, \sigma_s^2 I_{d_{sp}}),

with the domain drawn from the meta-distribution Q:
``beta_e ~ N(mu_beta, tau_beta^2)`` truncated to ``mu_beta +- beta_trunc * tau_beta``
and ``s_e = exp(hetero * z_e)``, ``z_e ~ N(0, 1)`` truncated to ``+- beta_trunc``
(``hetero = 0`` gives the homoskedastic model, s_e = 1). The truncation bounds every
per-domain risk of a fixed predictor, which the empirical Bernstein bound over domains
needs; ``beta_trunc = inf`` gives the untruncated normal, for which no range exists.
With ``rotate=True`` the features are ``x' = O x`` for a fixed random orthogonal O.

Predictor: ``f(x) = theta^T x``, theta of shape ``(P,)`` with ``P = d_inv + d_sp``;
loss ``(f(x) - y)^2 / 2``. The population risk of domain (beta, s) is exactly

.. math::

    R(\theta; \beta, u) = a_0 + a_1 u + a_2 u\beta + a_3 u\beta^2 + a_4\beta^2 + a_5\beta,
    \quad u = s^2,

with coefficients (in the unrotated basis, theta = (alpha, b), S_b = 1^T b)
``a0 = (sigma_s^2 |b|^2 + sigma_y^2)/2``, ``a1 = |alpha - w*|^2 / 2``,
``a2 = S_b (w*^T alpha - |w*|^2)``, ``a3 = |w*|^2 S_b^2 / 2``,
``a4 = sigma_y^2 S_b^2 / 2``, ``a5 = -sigma_y^2 S_b``. Because R is linear in the
features ``phi = (1, u, u beta, u beta^2, beta^2, beta)``, the expected risk over Q and
its variance over Q follow exactly from the moments of beta and u.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
from scipy import special, stats

from iga_theory.errors import check_in_range, check_positive_int


@dataclass(frozen=True)
class S1Params:
    """Parameters of the S1 model (all scalars; units are those of the features)."""

    d_inv: int = 4
    d_sp: int = 4
    sigma_y: float = 0.5
    sigma_s: float = 0.1
    mu_beta: float = 1.0
    tau_beta: float = 1.0
    beta_trunc: float = 3.0
    hetero: float = 0.0
    rotate: bool = False
    seed: int = 0

    def __post_init__(self):
        check_positive_int("d_inv", self.d_inv)
        check_positive_int("d_sp", self.d_sp)
        check_in_range("sigma_y", self.sigma_y, 0.0, np.inf, low_open=True)
        check_in_range("sigma_s", self.sigma_s, 0.0, np.inf, low_open=True)
        check_in_range("mu_beta", self.mu_beta, -np.inf, np.inf)
        check_in_range("tau_beta", self.tau_beta, 0.0, np.inf)
        if not (isinstance(self.beta_trunc, (int, float)) and self.beta_trunc > 0):
            raise ValueError(f"beta_trunc must be > 0 (inf for no truncation); got {self.beta_trunc!r}")
        check_in_range("hetero", self.hetero, 0.0, np.inf)


@dataclass(frozen=True)
class S1Domain:
    """One domain of S1: spurious coefficient ``beta`` and input scale ``scale`` (s_e)."""

    beta: float
    scale: float = 1.0


def _truncated_normal_raw_moments(loc: float, scale: float, trunc: float, order: int) -> np.ndarray:
    """Raw moments E[X^k], k = 0..order, of N(loc, scale^2) truncated to loc +- trunc*scale."""
    if scale == 0:
        return np.array([loc**k for k in range(order + 1)], dtype=np.float64)
    standard = stats.truncnorm(-trunc, trunc)
    central = [1.0] + [float(standard.moment(k)) for k in range(1, order + 1)]
    # E[(loc + scale Z)^k] = sum_i binom(k, i) loc^(k-i) scale^i E[Z^i]
    return np.array([
        sum(special.comb(k, i) * loc ** (k - i) * scale**i * central[i] for i in range(k + 1))
        for k in range(order + 1)
    ])


def _truncated_lognormal_moments(hetero: float, trunc: float, order: int) -> np.ndarray:
    """Moments E[u^j], j = 0..order, of u = s^2 = exp(2 hetero Z), Z ~ N(0,1) truncated to +-trunc.

    Uses E[exp(t Z)] = exp(t^2/2) (Phi(trunc - t) - Phi(-trunc - t)) / (Phi(trunc) - Phi(-trunc)).
    """
    mass = special.ndtr(trunc) - special.ndtr(-trunc)
    moments = []
    for j in range(order + 1):
        t = 2.0 * hetero * j
        moments.append(np.exp(t * t / 2.0) * (special.ndtr(trunc - t) - special.ndtr(-trunc - t)) / mass)
    return np.array(moments)


class S1Model:
    """Exact population quantities and a sampler for the S1 model.

    Parameters
    ----------
    params : S1Params
        Model parameters; ``params.seed`` fixes w* and the rotation.
    """

    def __init__(self, params: S1Params | None = None, **overrides):
        params = params or S1Params()
        self.params = dataclasses.replace(params, **overrides) if overrides else params
        p = self.params
        self.d_inv, self.d_sp = p.d_inv, p.d_sp
        self.n_params = p.d_inv + p.d_sp

        rng = np.random.default_rng(p.seed)
        # w* has unit norm, so Var(y) = s^2 + sigma_y^2 for every choice of d_inv.
        self.w_star = np.full(p.d_inv, 1.0 / np.sqrt(p.d_inv))
        if p.rotate:
            self.rotation = stats.special_ortho_group.rvs(self.n_params, random_state=rng)
        else:
            self.rotation = np.eye(self.n_params)

        self.invariant_mask = np.r_[np.ones(p.d_inv, bool), np.zeros(p.d_sp, bool)]
        self._beta_moments = _truncated_normal_raw_moments(p.mu_beta, p.tau_beta, p.beta_trunc, 4)
        self._u_moments = _truncated_lognormal_moments(p.hetero, p.beta_trunc, 2)

    # ----- domains -------------------------------------------------------------------

    def draw_domains(self, K: int, rng: np.random.Generator) -> list[S1Domain]:
        """Draw K i.i.d. domains from the meta-distribution Q."""
        K = check_positive_int("K", K)
        p = self.params
        t = p.beta_trunc
        betas = p.mu_beta + p.tau_beta * stats.truncnorm.rvs(-t, t, size=K, random_state=rng)
        if p.hetero > 0:
            scales = np.exp(p.hetero * stats.truncnorm.rvs(-t, t, size=K, random_state=rng))
        else:
            scales = np.ones(K)
        return [S1Domain(float(b), float(s)) for b, s in zip(betas, scales)]

    def shifted_domain(self) -> S1Domain:
        """A domain with the spurious mechanism reversed (beta = -mu_beta)."""
        return S1Domain(-self.params.mu_beta, 1.0)

    # ----- exact population quantities ----------------------------------------------

    def to_unrotated(self, theta: np.ndarray) -> np.ndarray:
        """Coordinates of ``theta`` in the unrotated feature basis (``O^T theta``)."""
        return np.asarray(theta, dtype=np.float64) @ self.rotation

    def from_unrotated(self, theta: np.ndarray) -> np.ndarray:
        """Inverse of `to_unrotated`."""
        return np.asarray(theta, dtype=np.float64) @ self.rotation.T

    def risk_coefficients(self, theta: np.ndarray) -> np.ndarray:
        """Coefficients a(theta) of the risk in the features phi = (1, u, u b, u b^2, b^2, b).

        theta : shape (P,) or (n, P). Returns shape (6,) or (n, 6).
        """
        theta = self._check_theta(theta)
        p = self.params
        v = self.to_unrotated(theta)
        alpha, b = v[..., : self.d_inv], v[..., self.d_inv:]
        w = self.w_star
        w2 = float(w @ w)
        sb = b.sum(axis=-1)
        w_alpha = alpha @ w
        coefficients = [
            0.5 * (p.sigma_s**2 * (b * b).sum(axis=-1) + p.sigma_y**2),
            0.5 * ((alpha - w) ** 2).sum(axis=-1),
            sb * (w_alpha - w2),
            0.5 * w2 * sb**2,
            0.5 * p.sigma_y**2 * sb**2,
            -(p.sigma_y**2) * sb,
        ]
        return np.stack(np.broadcast_arrays(*coefficients), axis=-1)

    @staticmethod
    def features(domains: list[S1Domain]) -> np.ndarray:
        """Features phi = (1, u, u beta, u beta^2, beta^2, beta) of each domain, shape (K, 6)."""
        beta = np.array([d.beta for d in domains], dtype=np.float64)
        u = np.array([d.scale for d in domains], dtype=np.float64) ** 2
        return np.stack([np.ones_like(u), u, u * beta, u * beta**2, beta**2, beta], axis=1)

    def risk(self, theta: np.ndarray, domain: S1Domain) -> np.ndarray:
        """Exact population risk R_e(theta) = E[(theta^T x - y)^2] / 2 of one domain."""
        return self.risk_coefficients(theta) @ self.features([domain])[0]

    def risks(self, theta: np.ndarray, domains: list[S1Domain]) -> np.ndarray:
        """Exact risks on each domain: shape (K,) for theta (P,), (n, K) for theta (n, P)."""
        return self.risk_coefficients(theta) @ self.features(domains).T

    def second_moments(self, domain: S1Domain) -> tuple[np.ndarray, np.ndarray, float]:
        """Exact ``Sigma = E[x x^T]`` (P, P), ``c = E[x y]`` (P,) and ``E[y^2]`` of one domain."""
        p = self.params
        u, beta = domain.scale**2, domain.beta
        w = self.w_star
        var_y = u * float(w @ w) + p.sigma_y**2
        ones = np.ones(self.d_sp)

        sigma = np.zeros((self.n_params, self.n_params))
        sigma[: self.d_inv, : self.d_inv] = u * np.eye(self.d_inv)
        sigma[: self.d_inv, self.d_inv:] = beta * u * np.outer(w, ones)
        sigma[self.d_inv:, : self.d_inv] = sigma[: self.d_inv, self.d_inv:].T
        sigma[self.d_inv:, self.d_inv:] = beta**2 * var_y * np.outer(ones, ones) + p.sigma_s**2 * np.eye(self.d_sp)
        c = np.r_[u * w, beta * var_y * ones]

        rotation = self.rotation
        return rotation @ sigma @ rotation.T, rotation @ c, var_y

    def gradient(self, theta: np.ndarray, domain: S1Domain) -> np.ndarray:
        """Exact population gradient ``Sigma_e theta - c_e`` of one domain; shape (P,)."""
        sigma, c, _ = self.second_moments(domain)
        return sigma @ self._check_theta(theta) - c

    def gradients(self, theta: np.ndarray, domains: list[S1Domain]) -> np.ndarray:
        """Exact per-domain gradients, shape (K, P)."""
        return np.stack([self.gradient(theta, d) for d in domains])

    def pooled_hessian(self, domains: list[S1Domain]) -> np.ndarray:
        """Hessian of the pooled risk (1/K) sum_e R_e: the mean of Sigma_e, shape (P, P)."""
        return np.mean([self.second_moments(d)[0] for d in domains], axis=0)

    def smoothness(self, domains: list[S1Domain]) -> float:
        """Smoothness constant L of the pooled risk: the largest eigenvalue of its Hessian."""
        return float(np.linalg.eigvalsh(self.pooled_hessian(domains))[-1])

    def sample_gradient_variance(self, theta: np.ndarray, domains: list[S1Domain], n: int) -> np.ndarray:
        """Exact ``E||g_hat - grad R||^2`` of the minibatch mean gradient (n samples per domain).

        For zero-mean jointly Gaussian (x, y) and residual r = x^T theta - y, Isserlis'
        theorem gives ``tr Cov(x r) = tr(Sigma) E[r^2] + |E[x r]|^2``, with
        ``E[r^2] = 2 R_e(theta)`` and ``E[x r] = grad R_e(theta)``. The pooled minibatch
        mean averages K domains of n samples each, so its variance is
        ``sum_e tr Cov_e / (n K^2)``.

        theta : shape (P,) or (T, P) (a whole path at once). Returns shape () or (T,).
        """
        n = check_positive_int("n", n)
        theta = self._check_theta(theta)
        moments = [self.second_moments(domain) for domain in domains]
        sigmas = np.stack([m[0] for m in moments])            # (K, P, P)
        cs = np.stack([m[1] for m in moments])                # (K, P)
        var_y = np.array([m[2] for m in moments])             # (K,)

        grads = np.einsum("kij,...j->...ki", sigmas, theta) - cs          # (..., K, P)
        quad = np.einsum("...i,kij,...j->...k", theta, sigmas, theta)     # (..., K)
        two_risks = quad - 2.0 * np.einsum("...i,ki->...k", theta, cs) + var_y
        traces = np.trace(sigmas, axis1=1, axis2=2)                       # (K,)
        per_domain = traces * two_risks + (grads * grads).sum(axis=-1)
        return per_domain.sum(axis=-1) / (n * len(domains) ** 2)

    # ----- the meta-distribution Q --------------------------------------------------

    def _feature_moment_matrix(self) -> tuple[np.ndarray, np.ndarray]:
        """E[phi] (6,) and E[phi phi^T] (6, 6) under Q (beta and u independent)."""
        mb, mu_ = self._beta_moments, self._u_moments
        # phi_k = u^{i_k} beta^{j_k}
        powers = [(0, 0), (1, 0), (1, 1), (1, 2), (0, 2), (0, 1)]
        first = np.array([mu_[i] * mb[j] for i, j in powers])
        second = np.array([[mu_[i + k] * mb[j + l] for k, l in powers] for i, j in powers])
        return first, second

    def expected_risk(self, theta: np.ndarray) -> np.ndarray:
        """Exact expected OOD risk E_{e~Q} R_e(theta)."""
        first, _ = self._feature_moment_matrix()
        return self.risk_coefficients(theta) @ first

    def risk_variance(self, theta: np.ndarray) -> np.ndarray:
        """Exact variance Var_{e~Q} R_e(theta) of the per-domain risk over Q."""
        first, second = self._feature_moment_matrix()
        a = self.risk_coefficients(theta)
        mean = a @ first
        return np.maximum(np.einsum("...i,ij,...j->...", a, second, a) - mean**2, 0.0)

    def risk_range(self, theta: np.ndarray) -> tuple[float, float]:
        """Exact (min, max) of R_e(theta) over the support of Q.

        R is affine in u for fixed beta and convex in beta for fixed u, so the maximum
        lies at a corner of the (beta, u) box and the minimum at a u end, either at a
        beta end or at the vertex of the parabola in beta.
        """
        p = self.params
        if not np.isfinite(p.beta_trunc):
            raise ValueError(
                "risk_range needs a bounded domain distribution; got beta_trunc=inf. "
                "Set beta_trunc to a finite value (for example 3.0)."
            )
        a0, a1, a2, a3, a4, a5 = self.risk_coefficients(theta)
        beta_lo = p.mu_beta - p.beta_trunc * p.tau_beta
        beta_hi = p.mu_beta + p.beta_trunc * p.tau_beta
        u_ends = np.exp(2.0 * p.hetero * np.array([-p.beta_trunc, p.beta_trunc]))

        values = []
        for u in u_ends:
            quad, lin, const = a4 + u * a3, a5 + u * a2, a0 + u * a1
            candidates = [beta_lo, beta_hi]
            if quad > 0:
                vertex = -lin / (2.0 * quad)
                if beta_lo < vertex < beta_hi:
                    candidates.append(vertex)
            values += [quad * b * b + lin * b + const for b in candidates]
        return float(min(values)), float(max(values))

    # ----- closed-form predictors ----------------------------------------------------

    def erm_solution(self, domains: list[S1Domain]) -> np.ndarray:
        """Pooled ERM optimum over ``domains``: (mean Sigma_e)^{-1} mean c_e."""
        sigma = np.mean([self.second_moments(d)[0] for d in domains], axis=0)
        c = np.mean([self.second_moments(d)[1] for d in domains], axis=0)
        return np.linalg.solve(sigma, c)

    def invariant_solution(self) -> np.ndarray:
        """Invariant oracle: w* on the invariant features, 0 on the spurious ones."""
        return self.from_unrotated(np.r_[self.w_star, np.zeros(self.d_sp)])

    def spurious_weight(self, theta: np.ndarray) -> np.ndarray:
        """Euclidean norm of theta's spurious block in the unrotated basis."""
        v = self.to_unrotated(theta)
        return np.linalg.norm(v[..., self.d_inv:], axis=-1)

    # ----- sampling -----------------------------------------------------------------

    def sample(self, n: int, domain: S1Domain, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Draw n examples of ``domain``: X of shape (n, P), y of shape (n,), float64."""
        n = check_positive_int("n", n)
        p = self.params
        x_inv = domain.scale * rng.standard_normal((n, p.d_inv))
        y = x_inv @ self.w_star + p.sigma_y * rng.standard_normal(n)
        x_sp = domain.beta * y[:, None] + p.sigma_s * rng.standard_normal((n, p.d_sp))
        X = np.concatenate([x_inv, x_sp], axis=1) @ self.rotation.T
        return X, y

    def _check_theta(self, theta) -> np.ndarray:
        theta = np.asarray(theta, dtype=np.float64)
        if theta.shape[-1:] != (self.n_params,):
            raise ValueError(
                f"theta must have last axis of size P = {self.n_params}; got shape {theta.shape}"
            )
        return theta
