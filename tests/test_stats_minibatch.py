"""Minibatch-noise remedies on S1: the raw minibatch mask suppresses the invariant coordinates.

S1 (default parameters, K = 8 domains, 4 examples per domain): at the start theta = 0
the invariant coordinates have a clear cross-domain signal, but with 4 examples the
sampling noise of each domain's mean dominates s2, so the raw mask sends them to the
floor. The EMA of the per-domain means and the noise correction both keep them.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from iga_theory.mask import mask_from_moments
from iga_theory.stats import (
    MinibatchDomainStatistics,
    ema_effective_steps,
    noise_corrected_variance,
)
from iga_theory.synthetic.s1 import S1Model

K = 8
N_PER_DOMAIN = 4


def per_example_gradients(theta, X, y):
    """Gradients of (x^T theta - y)^2 / 2 for each example: shape (n, P)."""
    return X * (X @ theta - y)[:, None]


def run_iga(remedy, steps=400, eta=0.05, seed=0):
    """Masked gradient descent on S1 from theta = 0; returns the model, theta, early masks."""
    model = S1Model()
    rng = np.random.default_rng(seed)
    domains = model.draw_domains(K, rng)
    theta = np.zeros(model.n_params)
    statistics = MinibatchDomainStatistics(K, remedy=remedy)
    early_masks = []
    for step in range(steps):
        grads = [per_example_gradients(theta, *model.sample(N_PER_DOMAIN, d, rng)) for d in domains]
        statistics.update(grads)
        mu, s2 = statistics.moments()
        m = mask_from_moments(mu, s2, K)
        theta = theta - eta * m * np.mean([g.mean(axis=0) for g in grads], axis=0)
        if step < 50:
            early_masks.append(m)
    return model, theta, np.array(early_masks)


@pytest.fixture(scope="module")
def runs():
    return {remedy: run_iga(remedy) for remedy in ("none", "ema", "noise_correction")}


def test_raw_minibatch_mask_suppresses_invariant_coordinates(runs):
    model, theta, masks = runs["none"]
    # The failure: the invariant coordinates sit at the floor, so theta barely moves.
    assert masks[:, model.invariant_mask].mean() < 1e-2
    assert np.linalg.norm(theta - model.invariant_solution()) > 0.9


def test_ema_keeps_invariant_coordinates_and_reaches_oracle(runs):
    model, theta, masks = runs["ema"]
    assert masks[:, model.invariant_mask].mean() > 0.3
    assert np.linalg.norm(theta - model.invariant_solution()) < 0.1
    # The shifted domain's risk is the oracle's to 1 %.
    oracle_risk = model.risk(model.invariant_solution(), model.shifted_domain())
    assert model.risk(theta, model.shifted_domain()) <= 1.01 * oracle_risk


def test_noise_correction_keeps_invariant_coordinates(runs):
    model, theta, masks = runs["noise_correction"]
    raw_model, raw_theta, raw_masks = runs["none"]
    assert masks[:, model.invariant_mask].mean() > 0.2
    # Better than raw, though short of the EMA (see the default's documentation).
    distance = np.linalg.norm(theta - model.invariant_solution())
    assert distance < 0.5 * np.linalg.norm(raw_theta - raw_model.invariant_solution())


def test_noise_corrected_variance_formula():
    s2 = np.array([1.0, 0.1, 5.0])
    within = np.array([[2.0, 4.0, 1.0], [6.0, 0.0, 3.0]])
    counts = [2, 4]
    # mean_e(v_e / n_e) = ((2, 4, 1)/2 + (6, 0, 3)/4) / 2 = (1.25, 1.0, 0.625)
    np.testing.assert_allclose(noise_corrected_variance(s2, within, counts), [0.0, 0.0, 4.375])


def test_noise_correction_unbiased_in_expectation():
    # K domains with equal true means: s2 is pure sampling noise, whose expectation the
    # correction removes. Monte Carlo over 4000 repetitions, 1 coordinate.
    rng = np.random.default_rng(0)
    reps, n = 4000, 5
    x = rng.standard_normal((reps, K, n)) * 2.0
    means = x.mean(axis=2)
    s2 = means.var(axis=1, ddof=1)
    within = x.var(axis=2, ddof=1)
    unclipped = s2 - (within / n).mean(axis=1)
    # Standard error of the mean of `unclipped`, 4 sigma.
    assert abs(unclipped.mean()) <= 4 * unclipped.std() / np.sqrt(reps)
    assert s2.mean() > 0.5  # control: the raw variance is biased upwards by 4/5


def test_ema_bias_correction_constant_input():
    statistics = MinibatchDomainStatistics(2, remedy="ema", rho=0.9)
    batch = [np.full((3, 2), 1.5), np.full((3, 2), -0.5)]
    for _ in range(5):
        statistics.update(batch)
    np.testing.assert_allclose(statistics.domain_means(), [[1.5, 1.5], [-0.5, -0.5]], rtol=1e-14)
    assert ema_effective_steps(0.99) == pytest.approx(199.0)


def test_population_convention_of_corrected_variance():
    rng = np.random.default_rng(2)
    batch = [rng.standard_normal((6, 3)) + e for e in range(3)]
    unbiased = MinibatchDomainStatistics(3, remedy="noise_correction").update(batch).moments()[1]
    population = MinibatchDomainStatistics(3, remedy="noise_correction", variance="population").update(batch).moments()[1]
    np.testing.assert_allclose(population, unbiased * 2 / 3, rtol=1e-14)


def test_torch_per_example_gradients():
    batch = [torch.randn(4, 3, dtype=torch.float64) + e for e in range(3)]
    mu, s2 = MinibatchDomainStatistics(3, remedy="none").update(batch).moments()
    means = torch.stack([b.mean(0) for b in batch])
    torch.testing.assert_close(mu, means.mean(0))
    torch.testing.assert_close(s2, means.var(0))


@pytest.mark.parametrize(("call", "message"), [
    (lambda: MinibatchDomainStatistics(1), "n_domains must be >= 2"),
    (lambda: MinibatchDomainStatistics(3, remedy="median"), "remedy must be one of"),
    (lambda: MinibatchDomainStatistics(3, rho=1.0), "rho must lie in"),
    (lambda: MinibatchDomainStatistics(2).update([np.ones((2, 3))]), "expected per-example gradients of 2"),
    (lambda: MinibatchDomainStatistics(2).update([np.ones((2, 3)), np.ones((2, 4))]), "one shape"),
    (lambda: MinibatchDomainStatistics(2, remedy="noise_correction").update([np.ones((1, 3))] * 2),
     "at least 2 examples per domain"),
    (lambda: MinibatchDomainStatistics(2).moments(), "call update\\(\\) first"),
    (lambda: MinibatchDomainStatistics(2).update([np.ones((0, 3)), np.ones((2, 3))]), "n >= 1"),
    (lambda: noise_corrected_variance(np.ones(2), np.ones((2, 2)), [1, 3]), "n_e >= 2"),
    (lambda: noise_corrected_variance(np.ones(2), np.ones((3, 2)), [2, 3]), "contains 3 domains"),
])
def test_minibatch_statistics_errors(call, message):
    with pytest.raises(ValueError, match=message):
        call()
