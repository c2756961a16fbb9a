"""Theorem 1 and 2 quantities: known values, coverage with a failing control, errors."""

import math

import numpy as np
import pytest
from scipy import stats

from iga_theory import bounds

# One-sided level of the binomial checks on coverage: a correct bound fails a check by
# chance with probability below 1e-4.
CHECK_LEVEL = 1e-4


def test_bernstein_terms_known_values():
    terms = bounds.bernstein_terms([0.1, 0.2, 0.3], B=1.0, delta=0.05)
    log_term = math.log(40.0)
    assert terms["mean"] == pytest.approx(0.2, rel=1e-15)
    assert terms["variance"] == pytest.approx(0.01, rel=1e-14)
    assert terms["variance_term"] == pytest.approx(math.sqrt(2 * 0.01 * log_term / 3), rel=1e-14)
    assert terms["range_term"] == pytest.approx(7 * log_term / 6, rel=1e-14)
    assert terms["bound"] == pytest.approx(0.2 + terms["variance_term"] + terms["range_term"], rel=1e-15)


def _binomial_upper(successes, trials):
    """One-sided Clopper-Pearson upper confidence limit at level 1 - CHECK_LEVEL."""
    return stats.beta.ppf(1 - CHECK_LEVEL, successes + 1, trials - successes) if successes < trials else 1.0


def test_bernstein_coverage_and_failing_control():
    rng = np.random.default_rng(0)
    delta, K, reps = 0.05, 20, 4000
    a, b = 2.0, 5.0
    true_mean = a / (a + b)
    risks = rng.beta(a, b, size=(reps, K))
    covered = sum(true_mean <= bounds.bernstein_bound(r, 1.0, delta) for r in risks)
    # Reject only when the coverage is significantly below 1 - delta.
    assert _binomial_upper(covered, reps) >= 1 - delta
    # Control: the empirical mean alone is no bound; its coverage is near 1/2.
    naive = sum(true_mean <= r.mean() for r in risks)
    assert _binomial_upper(naive, reps) < 1 - delta


def test_quantile_rank_known_values():
    assert bounds.min_domains_for_quantile(0.1, 0.05) == 29
    assert bounds.quantile_rank(28, 0.1, 0.05) is None
    assert bounds.quantile_rank(29, 0.1, 0.05) == 29
    k = bounds.quantile_rank(200, 0.1, 0.05)
    # k is the least rank with P(Bin(200, 0.9) >= k) <= 0.05.
    assert stats.binom.sf(k - 1, 200, 0.9) <= 0.05 < stats.binom.sf(k - 2, 200, 0.9)


def test_quantile_certificate_coverage_and_control():
    rng = np.random.default_rng(1)
    alpha, delta, K, reps = 0.1, 0.05, 60, 4000
    true_quantile = 1 - alpha  # of Uniform(0, 1)
    samples = np.sort(rng.random((reps, K)), axis=1)
    k = bounds.quantile_rank(K, alpha, delta)
    covered = int(np.sum(samples[:, k - 1] >= true_quantile))
    assert covered / reps >= 1 - delta - 3 * math.sqrt(delta * (1 - delta) / reps)
    certificate = bounds.quantile_certificate(samples[0], alpha, delta)
    assert certificate == samples[0, k - 1]
    # Control: two ranks lower no longer certifies the quantile at level 1 - delta.
    lower = int(np.sum(samples[:, k - 3] >= true_quantile))
    assert _binomial_upper(lower, reps) < 1 - delta


def test_quantile_certificate_none_below_min_domains():
    assert bounds.quantile_certificate(np.linspace(0, 1, 28), 0.1, 0.05) is None


def test_crossover_equates_terms():
    B, V, delta = 2.0, 0.05, 0.05
    K = bounds.bernstein_crossover(B, V, delta)
    log_term = math.log(2 / delta)
    # At K* the variance term equals the range term written with K in place of K - 1.
    assert math.sqrt(2 * V * log_term / K) == pytest.approx(7 * B * log_term / (3 * K), rel=1e-12)
    assert bounds.bernstein_crossover(B, 0.0, delta) == math.inf


def test_vacuous_below():
    K = bounds.vacuous_below(0.05)
    assert 7 * math.log(40) / (3 * (K - 1)) < 1 <= 7 * math.log(40) / (3 * (K - 2))


def test_sgd_rate_bound_value_and_step_check():
    assert bounds.sgd_rate_bound(1.0, 2.0, 0.5, 0.1, 10) == pytest.approx(2 * 1.0 / 5 + 2 * 0.5 * 0.1)
    with pytest.raises(ValueError, match=r"eta <= 1/L"):
        bounds.sgd_rate_bound(1.0, 2.0, 0.6, 0.1, 10)


@pytest.mark.parametrize("call, message", [
    (lambda: bounds.bernstein_terms([0.1], 1.0, 0.05), "K >= 2"),
    (lambda: bounds.bernstein_terms([0.1, float("nan")], 1.0, 0.05), "non-finite"),
    (lambda: bounds.bernstein_terms([[0.1, 0.2]], 1.0, 0.05), "1-D"),
    (lambda: bounds.bernstein_terms([0.1, 0.2], 0.0, 0.05), "B must lie"),
    (lambda: bounds.bernstein_terms([0.1, 0.2], 1.0, 1.5), "delta must lie"),
    (lambda: bounds.quantile_rank(0, 0.1, 0.05), "K must be >= 1"),
    (lambda: bounds.sgd_rate_bound(-1.0, 1.0, 0.5, 0.1, 10), "initial_gap"),
    (lambda: bounds.sgd_rate_bound(1.0, 1.0, 0.5, 0.1, 0), "T must be >= 1"),
])
def test_invalid_inputs_rejected(call, message):
    with pytest.raises(ValueError, match=message):
        call()
