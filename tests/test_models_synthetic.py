"""Closed forms of the synthetic models S2 to S4 against Monte Carlo, quadrature and each other.

Monte Carlo comparisons use a two-sided normal interval at confidence 1 - 1e-6 per
compared number (z = 4.89), so with fixed seeds a correct closed form fails with
probability below 1e-6 per number, while a wrong one (a bias larger than the interval,
about 5 standard errors) fails.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import integrate, special, stats

from iga_theory.synthetic.models import (MODELS, ExternalDomain, ExternalGeneratorModel, ModelProtocol, make_model,
                                         q_quadrature)
from iga_theory.synthetic.s2 import logistic_gaussian_moments
from iga_theory.synthetic.s4 import lora_factor_gradients, lora_weight

Z_MC = stats.norm.ppf(1 - 0.5e-6)  # two-sided confidence 1 - 1e-6
N_MC = 200_000
VARIANTS = [{}, {"hetero": 0.4}, {"rotate": True}]
NEW_MODELS = ["s2", "s3", "s4"]


def _theta(model, seed=1):
    """A generic predictor: half the invariant oracle plus noise."""
    rng = np.random.default_rng(seed)
    return 0.5 * model.invariant_solution() + 0.3 * rng.standard_normal(model.n_params)


def _per_example_loss_and_grad(model, theta, X, y):
    if model.name == "s4":
        W = model.to_matrix(theta)
        residual = X @ W - y  # (n, q)
        loss = 0.5 * np.sum(residual**2, axis=1)
        grads = (X[:, :, None] * residual[:, None, :]).reshape(X.shape[0], -1)
        return loss, grads
    margin = y * (X @ theta)
    loss = np.logaddexp(0.0, -margin)
    grads = -(y * (1.0 / (1.0 + np.exp(margin))))[:, None] * X
    return loss, grads


# ----- quadrature of the logistic Gaussian expectations --------------------------------


@pytest.mark.parametrize("b", [0.0, 0.3, 1.0, 1.5, 1.6, 4.0, 25.0])
@pytest.mark.parametrize("a", [-8.0, -1.0, 0.0, 0.7, 12.0])
def test_logistic_moments_match_quad(a, b):
    risk, s_neg, s_prod = logistic_gaussian_moments(a, b)
    if b == 0.0:
        references = [np.logaddexp(0, -a), 1 / (1 + np.exp(a)), np.exp(a) / (1 + np.exp(a)) ** 2]
    else:
        def expect(f):
            integrand = lambda z: f(a + b * z) * stats.norm.pdf(z)  # noqa: E731
            return integrate.quad(integrand, -40, 40, points=[-a / b], epsabs=1e-15, epsrel=1e-13,
                                  limit=500)[0]
        references = [expect(lambda m: np.logaddexp(0, -m)),
                      expect(lambda m: special.expit(-m)),
                      expect(lambda m: special.expit(m) * special.expit(-m))]
    # 1e-12 absolute: 50 x the measured worst error of the rules (2e-14), far below any
    # error a wrong formula or a wrong branch switch would make.
    for value, reference in zip((risk, s_neg, s_prod), references):
        assert abs(float(value) - reference) < 1e-12


def test_logistic_moments_reject_negative_scale():
    with pytest.raises(ValueError, match="b >= 0"):
        logistic_gaussian_moments(0.0, -1.0)


# ----- exact risks and gradients against Monte Carlo -----------------------------------


@pytest.mark.parametrize("variant", VARIANTS, ids=["plain", "hetero", "rotated"])
@pytest.mark.parametrize("name", NEW_MODELS)
def test_risk_and_gradient_match_monte_carlo(name, variant):
    model = make_model(name, **variant)
    rng = np.random.default_rng(7)
    domain = model.draw_domains(1, rng)[0]
    theta = _theta(model)
    X, y = model.sample(N_MC, domain, rng)
    loss, grads = _per_example_loss_and_grad(model, theta, X, y)

    risk = model.risk(theta, domain)
    assert abs(loss.mean() - risk) <= Z_MC * loss.std() / np.sqrt(N_MC)

    gradient = model.gradient(theta, domain)
    half_width = Z_MC * grads.std(axis=0) / np.sqrt(N_MC)
    assert np.all(np.abs(grads.mean(axis=0) - gradient) <= half_width)


@pytest.mark.parametrize("name", NEW_MODELS)
def test_gradient_matches_finite_differences(name):
    model = make_model(name, hetero=0.3, rotate=True)
    domain = model.draw_domains(1, np.random.default_rng(3))[0]
    theta = _theta(model)
    h = 1e-5
    numeric = np.array([
        (model.risk(theta + h * e, domain) - model.risk(theta - h * e, domain)) / (2 * h)
        for e in np.eye(model.n_params)
    ])
    # Central differences: truncation O(h^2 |R'''|) ~ 1e-10 plus rounding ~ 1e-16 / h ~ 1e-11.
    np.testing.assert_allclose(model.gradient(theta, domain), numeric, atol=1e-8)


def test_s4_gradient_variance_matches_monte_carlo():
    model = make_model("s4", hetero=0.3)
    rng = np.random.default_rng(11)
    domains = model.draw_domains(2, rng)
    theta = _theta(model)
    n_batch, n_rep = 4, 40_000
    deviations = []
    for _ in range(n_rep):
        per_domain = []
        for domain in domains:
            X, Y = model.sample(n_batch, domain, rng)
            per_domain.append(_per_example_loss_and_grad(model, theta, X, Y)[1].mean(axis=0))
        deviations.append(np.mean(per_domain, axis=0) - model.gradients(theta, domains).mean(axis=0))
    squared = np.sum(np.square(deviations), axis=1)
    exact = model.sample_gradient_variance(theta, domains, n_batch)
    assert abs(squared.mean() - exact) <= Z_MC * squared.std() / np.sqrt(n_rep)


# ----- quantities over Q ---------------------------------------------------------------


@pytest.mark.parametrize("name", NEW_MODELS)
def test_expected_risk_matches_adaptive_quadrature(name):
    model = make_model(name)
    theta = _theta(model)
    p = model.params
    t = p.beta_trunc
    mass = stats.norm.cdf(t) - stats.norm.cdf(-t)

    def integrand(z):
        return model.risk(theta, type(model.shifted_domain())(p.mu_beta + p.tau_beta * z, 1.0)) * \
            stats.norm.pdf(z) / mass

    reference = integrate.quad(integrand, -t, t, epsabs=1e-14, epsrel=1e-13)[0]
    second = integrate.quad(lambda z: integrand(z) * model.risk(
        theta, type(model.shifted_domain())(p.mu_beta + p.tau_beta * z, 1.0)), -t, t,
        epsabs=1e-14, epsrel=1e-13)[0]
    # Both routes are accurate to ~1e-13; 1e-10 leaves room for quad's own error estimate.
    assert abs(model.expected_risk(theta) - reference) < 1e-10
    assert abs(model.risk_variance(theta) - (second - reference**2)) < 1e-10


def test_s4_moment_route_matches_quadrature_route():
    model = make_model("s4", hetero=0.4)
    theta = _theta(model)
    betas, scales, weights = q_quadrature(model.params)
    risks = model.risks_at(theta, betas, scales)
    mean = weights @ risks
    # Two exact routes (moments vs Gauss-Legendre on a polynomial-times-lognormal
    # integrand): agreement to 1e-11 relative is rounding plus the quadrature's tail.
    assert abs(model.expected_risk(theta) - mean) < 1e-11 * abs(mean)
    assert abs(model.risk_variance(theta) - weights @ (risks - mean) ** 2) < 1e-9 * mean**2


@pytest.mark.parametrize("variant", VARIANTS, ids=["plain", "hetero", "rotated"])
@pytest.mark.parametrize("name", NEW_MODELS)
def test_risk_range_contains_every_domain(name, variant):
    model = make_model(name, **variant)
    theta = _theta(model)
    low, high = model.risk_range(theta)
    (beta_lo, beta_hi) = (model.params.mu_beta - model.params.beta_trunc * model.params.tau_beta,
                          model.params.mu_beta + model.params.beta_trunc * model.params.tau_beta)
    s_hi = np.exp(model.params.hetero * model.params.beta_trunc)
    grid_b, grid_s = np.meshgrid(np.linspace(beta_lo, beta_hi, 201), np.linspace(1 / s_hi, s_hi, 41))
    risks = model.risks_at(theta, grid_b.ravel(), grid_s.ravel())
    # The grid contains the corners, so it attains the max. Its min can only be larger
    # than the true min, by at most the grid's resolution.
    assert risks.max() == pytest.approx(high, rel=1e-12)
    assert risks.min() >= low - 1e-12
    assert risks.min() - low < 1e-3 * (high - low)


# ----- predictors ----------------------------------------------------------------------


@pytest.mark.parametrize("name", NEW_MODELS)
def test_erm_solution_is_stationary(name):
    model = make_model(name, hetero=0.3)
    domains = model.draw_domains(6, np.random.default_rng(5))
    theta = model.erm_solution(domains)
    # BFGS stops at gradient norm 1e-11; the exact gradient has rounding ~1e-14.
    assert np.linalg.norm(model.gradients(theta, domains).mean(axis=0)) < 1e-9


@pytest.mark.parametrize("name", NEW_MODELS)
def test_invariant_solution_has_no_spurious_weight(name):
    model = make_model(name, rotate=True)
    theta = model.invariant_solution()
    assert model.spurious_weight(theta) < 1e-12
    if name == "s4":
        return  # the shortcut is in S4's target, so no predictor's risk is constant in beta
    # The oracle's risk does not depend on the spurious mechanism.
    risks = model.risks(theta, [type(model.shifted_domain())(beta, 1.0) for beta in (-2.0, 0.0, 3.0)])
    assert np.ptp(risks) < 1e-12


def test_invariant_oracle_beats_erm_on_shifted_domain():
    for name in NEW_MODELS:
        model = make_model(name)
        domains = model.draw_domains(8, np.random.default_rng(0))
        shifted = model.shifted_domain()
        assert model.risk(model.invariant_solution(), shifted) < model.risk(model.erm_solution(domains), shifted)


def test_s4_closed_form_erm_matches_numerical_minimum():
    model = make_model("s4", hetero=0.4, rotate=True)
    domains = model.draw_domains(5, np.random.default_rng(2))
    theta = model.erm_solution(domains)
    assert np.linalg.norm(model.gradients(theta, domains).mean(axis=0)) < 1e-12


def test_s4_lora_chain_rule_matches_finite_differences():
    model = make_model("s4", w0_scale=1.0)
    rng = np.random.default_rng(4)
    domain = model.draw_domains(1, rng)[0]
    r, alpha = 2, 4.0
    B, A = rng.standard_normal((6, r)), rng.standard_normal((r, 5))

    def risk_of(B_, A_):
        return model.risk(model.to_vector(lora_weight(model.W0, B_, A_, alpha)), domain)

    G = model.to_matrix(model.gradient(model.to_vector(lora_weight(model.W0, B, A, alpha)), domain))
    grad_B, grad_A = lora_factor_gradients(G, B, A, alpha)
    h = 1e-6
    E = np.zeros_like(B)
    E[1, 0] = 1.0
    numeric = (risk_of(B + h * E, A) - risk_of(B - h * E, A)) / (2 * h)
    # The risk is quadratic in B for fixed A, so central differences are exact up to rounding.
    assert abs(grad_B[1, 0] - numeric) < 1e-7
    E = np.zeros_like(A)
    E[0, 2] = 1.0
    numeric = (risk_of(B, A + h * E) - risk_of(B, A - h * E)) / (2 * h)
    assert abs(grad_A[0, 2] - numeric) < 1e-7


# ----- interface and registry ----------------------------------------------------------


@pytest.mark.parametrize("name", sorted(MODELS))
def test_registry_models_share_interface(name):
    model = make_model(name)
    assert isinstance(model, ModelProtocol)
    rng = np.random.default_rng(0)
    domains = model.draw_domains(3, rng)
    theta = np.zeros(model.n_params)
    assert model.risks(theta, domains).shape == (3,)
    assert model.gradients(theta, domains).shape == (3, model.n_params)
    for method in ("expected_risk", "risk_variance", "risk_range", "erm_solution", "invariant_solution",
                   "spurious_weight", "smoothness", "shifted_domain", "sample"):
        assert callable(getattr(model, method))


def test_registry_rejects_unknown_name():
    with pytest.raises(ValueError, match="unknown synthetic model"):
        make_model("s9")


def test_draws_match_s1():
    """Every model draws the same domains from the same seed, so runs are comparable."""
    q_params = {"mu_beta": 0.5, "tau_beta": 1.0, "beta_trunc": 3.0, "hetero": 0.2}
    draws = [make_model(name, **q_params).draw_domains(4, np.random.default_rng(9)) for name in MODELS]
    for other in draws[1:]:
        assert other == draws[0]


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(1, 50))
def test_sampling_is_reproducible(seed, n):
    for name in NEW_MODELS:
        model = make_model(name)
        domain = model.shifted_domain()
        X1, y1 = model.sample(n, domain, np.random.default_rng(seed))
        X2, y2 = model.sample(n, domain, np.random.default_rng(seed))
        assert np.array_equal(X1, X2)
        assert np.array_equal(y1, y2)


def test_bad_parameters_rejected():
    with pytest.raises(ValueError, match="sigma_s"):
        make_model("s2", sigma_s=0.0)
    with pytest.raises(ValueError, match="r_star"):
        make_model("s4", r_star=5, q=5)
    with pytest.raises(ValueError, match="theta must have shape"):
        make_model("s2").risk(np.zeros(3), make_model("s2").shifted_domain())


# ----- the external adapter ------------------------------------------------------------


def test_external_adapter_matches_s1_population():
    s1 = make_model("s1")
    domains = {0: s1.shifted_domain(), 1: type(s1.shifted_domain())(1.5, 1.0)}

    def generator(n, key, rng):
        return s1.sample(n, domains[key], rng)

    external = ExternalGeneratorModel(generator, domains=[0, 1], loss="squared", n_eval=100_000, shifted=0)
    theta = s1.invariant_solution() + 0.1
    for key in (0, 1):
        domain = ExternalDomain(key)
        X, y = external._evaluation_sample(domain)
        loss = 0.5 * (X @ theta - y) ** 2
        exact = float(s1.risk(theta, domains[key]))
        assert abs(external.risk(theta, domain) - exact) <= Z_MC * loss.std() / np.sqrt(external.n_eval)
    assert external.gradients(theta, external.draw_domains(3, np.random.default_rng(1))).shape == (3, 8)


def test_external_adapter_is_reproducible():
    s1 = make_model("s1")
    generator = lambda n, key, rng: s1.sample(n, s1.shifted_domain(), rng)  # noqa: E731
    first = ExternalGeneratorModel(generator, domains=["a"], n_eval=100, seed=3)
    second = ExternalGeneratorModel(generator, domains=["a"], n_eval=100, seed=3)
    theta = np.ones(8)
    assert first.risk(theta, ExternalDomain("a")) == second.risk(theta, ExternalDomain("a"))


def test_external_adapter_checks_generator_output():
    external_bad = lambda n, key, rng: (np.zeros((n, 2)), np.zeros(n + 1))  # noqa: E731
    with pytest.raises(ValueError, match="must return X of shape"):
        ExternalGeneratorModel(external_bad, domains=[0])
