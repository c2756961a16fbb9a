"""S1 closed forms against Monte Carlo, and the exact predictors."""

import numpy as np
import pytest
from scipy import stats

from iga_theory.synthetic.s1 import S1Domain, S1Model, S1Params

# Two-sided z quantile for the Monte Carlo checks: each check fails by chance with
# probability 1e-6 when the closed form is right.
Z = stats.norm.ppf(1 - 0.5e-6)
VARIANTS = [dict(), dict(rotate=True, hetero=0.3, seed=3), dict(mu_beta=-0.5, tau_beta=2.0, d_inv=2, d_sp=5)]


@pytest.fixture(params=range(len(VARIANTS)), ids=["plain", "rotated-hetero", "other-shape"])
def model(request):
    return S1Model(**VARIANTS[request.param])


def test_risk_matches_monte_carlo(model):
    rng = np.random.default_rng(1)
    domain = model.draw_domains(1, rng)[0]
    theta = 0.5 * rng.standard_normal(model.n_params)
    X, y = model.sample(200_000, domain, rng)
    losses = 0.5 * (X @ theta - y) ** 2
    standard_error = losses.std(ddof=1) / np.sqrt(losses.size)
    assert abs(losses.mean() - model.risk(theta, domain)) < Z * standard_error


def test_gradient_matches_monte_carlo(model):
    rng = np.random.default_rng(2)
    domain = model.draw_domains(1, rng)[0]
    theta = 0.5 * rng.standard_normal(model.n_params)
    X, y = model.sample(200_000, domain, rng)
    per_sample = X * (X @ theta - y)[:, None]
    standard_error = per_sample.std(axis=0, ddof=1) / np.sqrt(len(y))
    # Bonferroni over the P coordinates.
    z = stats.norm.ppf(1 - 0.5e-6 / model.n_params)
    assert np.all(np.abs(per_sample.mean(axis=0) - model.gradient(theta, domain)) < z * standard_error)


def test_gradient_is_derivative_of_risk(model):
    rng = np.random.default_rng(3)
    domain = model.draw_domains(1, rng)[0]
    theta = rng.standard_normal(model.n_params)
    step = 1e-6
    numeric = np.array([(model.risk(theta + step * e, domain) - model.risk(theta - step * e, domain)) / (2 * step)
                        for e in np.eye(model.n_params)])
    # Central differences of a quadratic are exact up to rounding of order eps * |R| / step.
    np.testing.assert_allclose(numeric, model.gradient(theta, domain), atol=1e-7)


def test_expected_risk_and_variance_over_q(model):
    rng = np.random.default_rng(4)
    theta = 0.5 * rng.standard_normal(model.n_params)
    risks = model.risks(theta, model.draw_domains(400_000, rng))
    se_mean = risks.std(ddof=1) / np.sqrt(risks.size)
    assert abs(risks.mean() - model.expected_risk(theta)) < Z * se_mean
    # Standard error of the sample variance: sqrt((m4 - s^4) / n).
    centred = risks - risks.mean()
    se_var = np.sqrt((np.mean(centred**4) - np.var(risks) ** 2) / risks.size)
    assert abs(risks.var(ddof=1) - model.risk_variance(theta)) < Z * se_var


def test_risk_range_contains_sampled_risks(model):
    rng = np.random.default_rng(5)
    theta = rng.standard_normal(model.n_params)
    low, high = model.risk_range(theta)
    risks = model.risks(theta, model.draw_domains(100_000, rng))
    slack = 1e-12 * max(1.0, abs(high))
    assert risks.min() >= low - slack
    assert risks.max() <= high + slack
    # The extremes are attained on the support: a dense grid over the (beta, scale) box
    # reaches both ends up to the grid's resolution.
    p = model.params
    betas = np.linspace(p.mu_beta - p.beta_trunc * p.tau_beta, p.mu_beta + p.beta_trunc * p.tau_beta, 801)
    scales = np.exp(p.hetero * np.linspace(-p.beta_trunc, p.beta_trunc, 11))
    grid = model.risks(theta, [S1Domain(b, s) for b in betas for s in scales])
    assert grid.max() == pytest.approx(high, rel=1e-12)
    assert grid.min() == pytest.approx(low, rel=1e-4, abs=1e-9)


def test_sample_gradient_variance_monte_carlo(model):
    rng = np.random.default_rng(6)
    domains = model.draw_domains(2, rng)
    theta = 0.3 * rng.standard_normal(model.n_params)
    n_draws = 40_000
    draws = []
    for _ in range(n_draws // 1000):
        gradients = []
        for domain in domains:
            X, y = model.sample(1000, domain, rng)
            gradients.append(X * (X @ theta - y)[:, None])
        draws.append(np.mean(gradients, axis=0))  # minibatch of 1 per domain, 1000 replicates
    draws = np.concatenate(draws)
    exact_mean = np.mean([model.gradient(theta, d) for d in domains], axis=0)
    squared = ((draws - exact_mean) ** 2).sum(axis=1)
    se = squared.std(ddof=1) / np.sqrt(squared.size)
    assert abs(squared.mean() - model.sample_gradient_variance(theta, domains, 1)) < Z * se


def test_invariant_oracle_has_equal_risks():
    model = S1Model(hetero=0.0)
    risks = model.risks(model.invariant_solution(), model.draw_domains(50, np.random.default_rng(0)))
    np.testing.assert_allclose(risks, 0.5 * model.params.sigma_y**2, rtol=1e-12)
    assert model.risk_variance(model.invariant_solution()) == pytest.approx(0.0, abs=1e-15)


def test_erm_solution_zeroes_pooled_gradient(model):
    domains = model.draw_domains(6, np.random.default_rng(7))
    theta = model.erm_solution(domains)
    pooled = model.gradients(theta, domains).mean(axis=0)
    np.testing.assert_allclose(pooled, 0.0, atol=1e-12)


def test_smoothness_is_top_eigenvalue(model):
    domains = model.draw_domains(5, np.random.default_rng(8))
    H = model.pooled_hessian(domains)
    rng = np.random.default_rng(9)
    # No direction curves more than L.
    v = rng.standard_normal((100, model.n_params))
    rayleigh = np.einsum("ni,ij,nj->n", v, H, v) / (v * v).sum(axis=1)
    assert rayleigh.max() <= model.smoothness(domains) * (1 + 1e-12)


@pytest.mark.parametrize("bad, message", [
    (dict(d_inv=0), "d_inv"), (dict(sigma_y=0.0), "sigma_y"), (dict(tau_beta=-1.0), "tau_beta"),
    (dict(beta_trunc=0.0), "beta_trunc"), (dict(hetero=-0.1), "hetero"),
])
def test_invalid_parameters_rejected(bad, message):
    with pytest.raises(ValueError, match=message):
        S1Params(**bad)


def test_unbounded_q_has_no_range():
    model = S1Model(beta_trunc=float("inf"))
    with pytest.raises(ValueError, match="beta_trunc=inf"):
        model.risk_range(np.zeros(model.n_params))


def test_theta_shape_checked():
    model = S1Model()
    with pytest.raises(ValueError, match="last axis of size P = 8"):
        model.risk(np.zeros(3), S1Domain(1.0))
