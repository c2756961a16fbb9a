"""The default threshold: formula, population convention, and the significance reading."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from iga_theory import mask as reference


@pytest.mark.parametrize("K", [2, 3, 5, 10, 30, 100, 1000])
def test_default_tau_formula(K):
    t_crit = stats.t.ppf(0.975, df=K - 1)
    assert reference.default_tau(K) == pytest.approx(min(0.1, K / t_crit**2), rel=1e-15)
    assert reference.default_tau(K, variance="population") == pytest.approx(
        reference.default_tau(K) * (K - 1) / K, rel=1e-15)


def test_default_tau_cap_then_effect_size():
    # The significance cap K / t^2 binds at K = 2 (0.012); tau0 = 0.1 takes over from K = 3.
    assert reference.default_tau(2) < 0.1
    assert reference.default_tau(3) == 0.1
    assert reference.default_tau(64) == 0.1


@pytest.mark.parametrize("K", [2, 3, 5])
def test_pure_noise_kept_with_probability_alpha(K):
    # With tau = K / t^2_{K-1, 1-alpha/2} (the cap alone: tau0 = 1e9), the hard mask
    # keeps a pure-noise coordinate exactly when |t| > t_crit: probability alpha.
    rng = np.random.default_rng(K)
    n = 20000
    g = rng.standard_normal((K, n))
    mu, s2 = reference.cross_domain_moments(g)
    c = reference.conflict_score(mu, s2, eps=0.0)
    tau = reference.default_tau(K, tau0=1e9)
    kept = np.mean(c < tau)
    # 99.9 % binomial interval around alpha = 0.05 for n draws.
    half_width = 3.29 * np.sqrt(0.05 * 0.95 / n)
    assert abs(kept - 0.05) <= half_width


@pytest.mark.parametrize(("variance", "expected"), [
    # K = 2: c = s2 / mu^2 = R^2 (population) or 2 R^2 (unbiased) with R = (a-b)/(a+b)
    # standard Cauchy, so P(c < 1) = (2/pi) atan(1) = 0.5 or (2/pi) atan(1/sqrt(2)) = 0.392.
    ("population", 0.5),
    ("unbiased", 2 / np.pi * np.arctan(1 / np.sqrt(2))),
])
def test_fixed_tau_one_keeps_noise_often_at_two_domains(variance, expected):
    # Control for the cap: a fixed tau = 1 keeps pure noise far more often than alpha.
    rng = np.random.default_rng(0)
    n = 20000
    g = rng.standard_normal((2, n))
    mu, s2 = reference.cross_domain_moments(g, variance=variance)
    kept = np.mean(reference.conflict_score(mu, s2, eps=0.0) < 1.0)
    assert abs(kept - expected) <= 3.29 * np.sqrt(expected * (1 - expected) / n)
