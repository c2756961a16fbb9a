"""Rate fits: log-log slopes with confidence intervals.

A power law ``y = C x^slope`` is fitted by least squares on ``(log x, log y)``. Two
intervals are offered: the classical t-interval of the OLS slope (for one curve of
independent points) and a percentile bootstrap over repeated runs (seeds), which is
what the experiments use because the points of one curve share their seeds.
"""

from __future__ import annotations

import numpy as np
from scipy import stats

from iga_theory.errors import check_in_range, check_positive_int


def _check_xy(x, y) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if x.ndim != 1 or y.shape[-1:] != x.shape:
        raise ValueError(f"x must be 1-D and y must end in an axis of the same length; got {x.shape} and {y.shape}")
    if x.size < 2:
        raise ValueError(f"a slope needs at least 2 points; got {x.size}")
    if np.any(x <= 0) or np.any(~np.isfinite(x)):
        raise ValueError(f"log-log fits need finite x > 0; got {x}")
    return x, y


def loglog_slope(x, y, confidence: float = 0.95) -> dict[str, float]:
    """OLS slope of log y on log x with its t-interval.

    Parameters
    ----------
    x, y : array_like, shape (n,), positive, n >= 2 (n >= 3 for an interval)
    confidence : float in (0, 1)

    Returns
    -------
    dict with ``slope``, ``intercept`` (of log y), ``ci_low``, ``ci_high`` (NaN when
    n = 2) and ``n``.
    """
    x, y = _check_xy(x, y)
    confidence = check_in_range("confidence", confidence, 0.0, 1.0, low_open=True, high_open=True)
    if y.ndim != 1 or np.any(y <= 0) or np.any(~np.isfinite(y)):
        raise ValueError(f"log-log fits need finite y > 0; got {y}")
    lx, ly = np.log(x), np.log(y)
    fit = stats.linregress(lx, ly)
    n = x.size
    if n > 2:
        half = stats.t.ppf(0.5 + confidence / 2.0, df=n - 2) * fit.stderr
    else:
        half = np.nan
    return {"slope": float(fit.slope), "intercept": float(fit.intercept),
            "ci_low": float(fit.slope - half), "ci_high": float(fit.slope + half), "n": int(n)}


def bootstrap_loglog_slope(x, y_runs, confidence: float = 0.95, n_boot: int = 2000,
                           seed: int = 0) -> dict[str, float]:
    """Slope of log(mean over runs) on log x, with a percentile bootstrap over runs.

    Parameters
    ----------
    x : array_like, shape (n_points,), positive
    y_runs : array_like, shape (n_runs, n_points)
        One curve per run (seed); the fitted curve is the mean over runs, which must be
        positive at every point (individual runs may be 0 or negative).
    confidence : float in (0, 1)
    n_boot : int, >= 1
        Bootstrap resamples of the runs.
    seed : int
        Seed of the resampling, so that the interval is reproducible.

    Returns
    -------
    dict with ``slope`` (of the mean curve), ``ci_low``, ``ci_high``, ``n_runs``,
    ``n_points`` and ``n_boot``.
    """
    x, y_runs = _check_xy(x, y_runs)
    if y_runs.ndim != 2:
        raise ValueError(f"y_runs must have shape (n_runs, n_points); got {y_runs.shape}")
    if not np.isfinite(y_runs).all():
        raise ValueError("y_runs contains NaN or Inf")
    n_boot = check_positive_int("n_boot", n_boot)
    confidence = check_in_range("confidence", confidence, 0.0, 1.0, low_open=True, high_open=True)

    lx = np.log(x)
    mean_curve = y_runs.mean(axis=0)
    if np.any(mean_curve <= 0):
        raise ValueError(f"the mean curve must be positive for a log-log fit; got {mean_curve}")
    slope = float(np.polyfit(lx, np.log(mean_curve), 1)[0])

    rng = np.random.default_rng(seed)
    n_runs = y_runs.shape[0]
    picks = rng.integers(0, n_runs, size=(n_boot, n_runs))
    boot_means = y_runs[picks].mean(axis=1)  # (n_boot, n_points)
    valid = np.all(boot_means > 0, axis=1)
    boot_slopes = np.polyfit(lx, np.log(boot_means[valid]).T, 1)[0]
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(boot_slopes, [tail, 1.0 - tail])
    return {"slope": slope, "ci_low": float(low), "ci_high": float(high),
            "n_runs": int(n_runs), "n_points": int(x.size), "n_boot": int(valid.sum())}
