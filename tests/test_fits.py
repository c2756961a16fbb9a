"""Log-log slope fits against known power laws."""

import numpy as np
import pytest

from iga_theory.fits import bootstrap_loglog_slope, loglog_slope


def test_exact_power_law_slope():
    x = np.array([2.0, 4, 8, 16, 32])
    fit = loglog_slope(x, 3.0 * x**-0.5)
    assert fit["slope"] == pytest.approx(-0.5, abs=1e-12)
    assert fit["intercept"] == pytest.approx(np.log(3.0), abs=1e-12)
    # A noiseless fit has a zero-width interval (up to rounding).
    assert fit["ci_high"] - fit["ci_low"] < 1e-10


def test_t_interval_covers_true_slope_at_nominal_rate():
    rng = np.random.default_rng(0)
    x = np.geomspace(1, 1000, 8)
    hits = 0
    reps = 400
    for _ in range(reps):
        fit = loglog_slope(x, x**-1.0 * np.exp(0.2 * rng.standard_normal(x.size)))
        hits += fit["ci_low"] <= -1.0 <= fit["ci_high"]
    # 95% nominal; 3 binomial standard errors below.
    assert hits / reps > 0.95 - 3 * np.sqrt(0.95 * 0.05 / reps)


def test_bootstrap_slope_of_mean_curve():
    rng = np.random.default_rng(1)
    x = np.array([128.0, 256, 512, 1024])
    runs = x**-0.5 * np.exp(0.05 * rng.standard_normal((30, x.size)))
    fit = bootstrap_loglog_slope(x, runs, n_boot=1000, seed=3)
    assert fit["ci_low"] <= fit["slope"] <= fit["ci_high"]
    assert fit["ci_low"] < -0.5 < fit["ci_high"]
    assert fit == bootstrap_loglog_slope(x, runs, n_boot=1000, seed=3)  # seeded


@pytest.mark.parametrize("x, y, message", [
    ([1.0], [1.0], "at least 2 points"),
    ([0.0, 1.0], [1.0, 2.0], "x > 0"),
    ([1.0, 2.0], [1.0, -2.0], "y > 0"),
])
def test_invalid_inputs(x, y, message):
    with pytest.raises(ValueError, match=message):
        loglog_slope(x, y)


def test_bootstrap_rejects_nonpositive_mean():
    with pytest.raises(ValueError, match="mean curve must be positive"):
        bootstrap_loglog_slope([1.0, 2.0], np.array([[1.0, -1.0], [1.0, -2.0]]))
