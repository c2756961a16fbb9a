"""Vectorised Monte Carlo engines against the per-run reference code, numba and torch."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from iga_theory import bounds
from iga_theory import mask as cgcm
from iga_theory import montecarlo as mc
from iga_theory.synthetic.models import Domain, make_model

# Agreement of two float64 routes that perform the same arithmetic in a different order:
# a few hundred ulps of the result.
ROUTE_RTOL = 1e-12


def _domains(betas, scales):
    return [Domain(float(b), float(s)) for b, s in zip(betas, scales)]


@pytest.mark.parametrize("variant", [{}, {"rotate": True, "hetero": 0.3}], ids=["plain", "rotated-hetero"])
@pytest.mark.parametrize("name", ["s1", "s2", "s3", "s4"])
def test_batched_kernels_match_models(name, variant):
    model = make_model(name, **variant)
    rng = np.random.default_rng(0)
    betas, scales = mc.draw_domain_arrays(model, 4, 3, rng)
    thetas = 0.3 * rng.standard_normal((4, model.n_params))
    g = mc.population_gradients(model, thetas, betas, scales)
    risks = mc.population_risks(model, thetas, betas, scales)
    for r in range(4):
        domains = _domains(betas[r], scales[r])
        np.testing.assert_allclose(g[r], model.gradients(thetas[r], domains), rtol=ROUTE_RTOL, atol=1e-14)
        np.testing.assert_allclose(risks[r], model.risks(thetas[r], domains), rtol=ROUTE_RTOL)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), K=st.integers(2, 9), P=st.integers(1, 12),
       score=st.sampled_from(["variance", "sign"]), kappa0=st.floats(0.5, 200.0))
def test_batched_mask_matches_reference(seed, K, P, score, kappa0):
    rng = np.random.default_rng(seed)
    g = rng.standard_normal((3, K, P)) + rng.standard_normal((3, 1, P))
    tau = 0.4 if score == "sign" else None
    mask, mu = mc.batched_conflict_mask(g, tau=tau, kappa0=kappa0, score=score)
    for r in range(3):
        reference = cgcm.conflict_mask(g[r], tau=tau, kappa0=kappa0, score=score)
        np.testing.assert_allclose(mask[r], reference, rtol=ROUTE_RTOL, atol=1e-15)
        np.testing.assert_allclose(mu[r], g[r].mean(axis=0), rtol=ROUTE_RTOL)


def test_bernstein_kernels_agree():
    rng = np.random.default_rng(1)
    risks = rng.uniform(0, 1, size=(500, 17))
    B = rng.uniform(1, 2, size=500)
    reference = np.array([bounds.bernstein_bound(row, b, 0.05) for row, b in zip(risks, B)])
    np.testing.assert_allclose(mc.bernstein_bounds(risks, B, 0.05)["bound"], reference, rtol=ROUTE_RTOL)
    np.testing.assert_allclose(mc.bernstein_bounds_numba(risks, B, 0.05), reference, rtol=ROUTE_RTOL)
    torch_bound = mc.bernstein_bounds_torch(torch.from_numpy(risks), torch.from_numpy(B), 0.05).numpy()
    np.testing.assert_allclose(torch_bound, reference, rtol=ROUTE_RTOL)


def test_quantile_certificates_match_reference():
    rng = np.random.default_rng(2)
    risks = rng.uniform(size=(50, 40))
    batched = mc.quantile_certificates(risks, 0.1, 0.05)
    reference = [bounds.quantile_certificate(row, 0.1, 0.05) for row in risks]
    np.testing.assert_array_equal(batched, reference)
    assert mc.quantile_certificates(risks[:, :10], 0.1, 0.05) is None


def test_population_training_matches_reference_loop():
    from iga_theory.synthetic.training import MaskOptions, train_population

    model = make_model("s1", rotate=True)
    rng = np.random.default_rng(3)
    betas, scales = mc.draw_domain_arrays(model, 2, 5, rng)
    run = mc.train_population_batched(model, betas, scales, "iga", 60, 0.1, mask_options={"kappa0": 20.0})
    for r in range(2):
        history = train_population(model, _domains(betas[r], scales[r]), "iga", 60, 0.1,
                                   np.zeros(model.n_params), MaskOptions(kappa0=20.0))
        np.testing.assert_allclose(run.thetas[r], history.thetas[-1], rtol=1e-10, atol=1e-13)


def test_invariance_budget_bounds_movement():
    model = make_model("s2", rotate=True)
    rng = np.random.default_rng(4)
    betas, scales = mc.draw_domain_arrays(model, 6, 4, rng)
    run = mc.train_population_batched(model, betas, scales, "iga", 80, 0.5,
                                      mask_options={"tau": 1.0, "kappa0": 5.0})
    # Triangle inequality: exact up to the rounding of a cumulative sum of 80 terms.
    assert np.all(run.spurious_moved <= run.budget * (1 + 1e-12) + 1e-15)
    assert np.all(run.budget[:, -1] > 0)


def test_sgd_torch_step_matches_numpy():
    model = make_model("s1")
    rng = np.random.default_rng(5)
    domains = model.draw_domains(4, rng)
    betas = np.array([d.beta for d in domains])
    scales = np.array([d.scale for d in domains])
    X, y = mc.sample_s1_batched(model, betas, scales, 8, 3, rng)
    theta = rng.standard_normal((3, model.n_params))
    residual = np.einsum("rknp,rp->rkn", X, theta) - y
    g = (X * residual[..., None]).mean(axis=2)
    mask, _ = mc.batched_conflict_mask(g, kappa0=20.0)
    numpy_theta = theta - 0.05 * mask * g.mean(axis=1)
    torch_theta, torch_g = mc.sgd_s1_step_torch(torch.from_numpy(theta), torch.from_numpy(X),
                                                torch.from_numpy(y), torch.from_numpy(mask), 0.05)
    np.testing.assert_allclose(torch_g.numpy(), g, rtol=ROUTE_RTOL, atol=1e-14)
    np.testing.assert_allclose(torch_theta.numpy(), numpy_theta, rtol=ROUTE_RTOL)


def test_s1_sampler_matches_model_moments():
    model = make_model("s1", rotate=True)
    domain = Domain(0.8, 1.0)
    X, y = mc.sample_s1_batched(model, np.array([0.8]), np.array([1.0]), 50_000, 2, np.random.default_rng(6))
    X = X.reshape(-1, model.n_params)
    y = y.ravel()
    sigma, c, y2 = model.second_moments(domain)
    # 1e5 samples: standard error of a second moment ~ 2 * sqrt(2 / 1e5) ~ 0.01; 0.06 is ~6 s.e.
    np.testing.assert_allclose(X.T @ X / len(y), sigma, atol=0.06)
    np.testing.assert_allclose(X.T @ y / len(y), c, atol=0.06)


def test_sgd_engine_rejects_unknown_statistics():
    model = make_model("s1")
    with pytest.raises(ValueError, match="statistics must be one of"):
        mc.sgd_s1_batched(model, model.draw_domains(3, np.random.default_rng(0)), 5, 0.1, 2, 2,
                          np.random.default_rng(0), statistics="median")
