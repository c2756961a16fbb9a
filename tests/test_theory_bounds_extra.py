"""Certification routes, coverage intervals and the Theorem 3 closed forms of iga_theory.bounds."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from iga_theory import bounds


def test_union_delta_adds_log_n():
    risks = np.linspace(0.1, 0.4, 20)
    plain = bounds.bernstein_terms(risks, 1.0, 0.05)
    union = bounds.union_bernstein_terms(risks, 1.0, 0.05, 7)
    # ln(2 / (delta / N)) = ln(2 / delta) + ln N, so the range term scales by that ratio.
    ratio = (math.log(2 / 0.05) + math.log(7)) / math.log(2 / 0.05)
    assert union["range_term"] == pytest.approx(plain["range_term"] * ratio, rel=1e-14)
    assert union["n_candidates"] == 7


def test_select_and_certify_picks_lowest_mean():
    risks = np.array([[0.5, 0.6, 0.7], [0.1, 0.2, 0.3], [0.3, 0.3, 0.3]])
    union = bounds.select_and_certify(risks, 1.0, 0.05)
    naive = bounds.select_and_certify(risks, 1.0, 0.05, union=False)
    assert union["index"] == 1
    assert union["bound"] > naive["bound"]
    assert naive["bound"] == pytest.approx(bounds.bernstein_bound(risks[1], 1.0, 0.05))


def test_binomial_interval_known_values():
    # Clopper-Pearson for 0 successes out of n: upper end 1 - (alpha/2)^(1/n).
    low, high = bounds.binomial_interval(0, 100, 0.95)
    assert low == 0.0
    assert high == pytest.approx(1 - 0.025 ** (1 / 100), rel=1e-10)
    low, high = bounds.binomial_interval(100, 100, 0.95)
    assert low == pytest.approx(0.025 ** (1 / 100), rel=1e-10)
    assert high == 1.0


def test_coverage_summary_flags_undercoverage():
    assert bounds.coverage_summary(np.ones(200, bool), 0.05)["passed"]
    low_coverage = np.r_[np.ones(150, bool), np.zeros(50, bool)]
    assert not bounds.coverage_summary(low_coverage, 0.05)["passed"]


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), T=st.integers(1, 30), P=st.integers(1, 6))
def test_invariance_budget_dominates_movement(seed, T, P):
    rng = np.random.default_rng(seed)
    directions = rng.standard_normal((T, P))
    basis = np.linalg.qr(rng.standard_normal((P, P)))[0][:, : max(1, P // 2)]
    projector = basis @ basis.T
    eta = rng.uniform(0.01, 1.0)
    budget = bounds.invariance_budget(eta, directions, projector)
    moved = np.linalg.norm(np.cumsum(eta * directions, axis=0) @ projector, axis=1)
    assert budget[0] == 0.0
    # Triangle inequality, exact up to the rounding of T additions.
    assert np.all(moved <= budget[1:] * (1 + 1e-12) + 1e-15)


def test_hard_limit_conflict_is_k_over_t_squared():
    betas = np.array([0.2, 1.1, 0.7, 1.9, 0.4])
    t = math.sqrt(betas.size) * betas.mean() / betas.std(ddof=1)
    assert bounds.hard_limit_conflict(betas) == pytest.approx(betas.size / t**2, rel=1e-13)
    assert bounds.hard_limit_conflict(np.array([-1.0, 1.0])) == math.inf


def test_hard_limit_spurious_weight_cases():
    assert bounds.hard_limit_spurious_weight(np.array([-1.0, 0.5, 2.0]), tau=0.1) == 0.0
    assert bounds.hard_limit_spurious_weight(np.array([1.0, 1.01, 0.99]), tau=0.1) is None


@pytest.mark.parametrize("K, ratio", [(4, 0.0), (8, 0.5), (16, 1.0), (8, 4.0), (64, 2.0)])
def test_suppression_probability_matches_simulation(K, ratio):
    tau = 0.1
    rng = np.random.default_rng(K)
    betas = ratio + rng.standard_normal((40_000, K))
    frequency = np.mean(betas.var(axis=1, ddof=1) > tau * betas.mean(axis=1) ** 2)
    probability = bounds.hard_limit_suppression_probability(K, tau, ratio)
    # Normal interval at confidence 1 - 1e-6 (z = 4.9) around the simulated frequency.
    half_width = 4.9 * math.sqrt(max(probability * (1 - probability), 1e-6) / 40_000) + 1e-4
    assert abs(frequency - probability) <= half_width


def test_suppression_probability_matches_scipy_where_defined():
    K, tau, ratio = 8, 0.3, 0.7
    limit = math.sqrt(K / tau)
    distribution = stats.nct(K - 1, math.sqrt(K) * ratio)
    expected = distribution.cdf(limit) - distribution.cdf(-limit)
    assert bounds.hard_limit_suppression_probability(K, tau, ratio) == pytest.approx(expected, abs=1e-9)


def test_new_bound_helpers_reject_bad_input():
    with pytest.raises(ValueError, match="n_candidates"):
        bounds.union_delta(0.05, 0)
    with pytest.raises(ValueError, match="successes"):
        bounds.binomial_interval(11, 10)
    with pytest.raises(ValueError, match="directions"):
        bounds.invariance_budget(0.1, np.zeros(3), np.eye(3))
    with pytest.raises(ValueError, match="K must be >= 2"):
        bounds.hard_limit_suppression_probability(1, 0.1, 0.5)
