"""Theorem 1 verification: SGD with a lagged mask on S1 converges at the non-convex SGD rate.

For each T in the grid, ``seeds`` independent runs of minibatch SGD take T steps of size
``eta = eta_scale / L * sqrt(T_min / T)`` with the IGA mask computed from a lagged EMA of
past per-domain minibatch means (independent of the current minibatch, as the theorem
requires). Each run's left side ``(1/T) sum_t |A_t^{1/2} grad R(theta_t)|^2`` uses the
exact pooled gradient; its right side ``2 (R(theta_0) - R_inf) / (eta T) + L eta sigma^2``
uses the exact L, the exact R_inf (the pooled ERM risk) and the largest exact
minibatch-gradient variance met along the run as sigma^2.
"""

from __future__ import annotations

import math

import numpy as np

from iga_theory import bounds
from iga_theory import montecarlo as mc
from iga_theory.fits import bootstrap_loglog_slope
from iga_theory.synthetic.models import make_model
from iga_theory.synthetic.validate_common import cell_rng, make_check, make_measurement

T1_STREAM = 10
T1_MASK = {"kappa0": 20.0}


def _runs(model, domains, c, seed, m_min: float, statistics: str = "ema") -> dict:
    L = model.smoothness(domains)
    T_grid = list(c.T_grid)
    lhs = np.empty((c.seeds, len(T_grid)))
    rhs = np.empty_like(lhs)
    plain = np.empty_like(lhs)
    for i, T in enumerate(T_grid):
        eta = c.eta_scale / L * math.sqrt(min(T_grid) / T)
        run = mc.sgd_s1_batched(model, domains, T, eta, c.batch, c.seeds, cell_rng(seed, T1_STREAM, T, int(m_min * 1e6)),
                                statistics=statistics, rho=c.ema_rate, mask_options={**T1_MASK, "m_min": m_min})
        lhs[:, i] = run.lhs
        plain[:, i] = run.plain
        rhs[:, i] = [bounds.sgd_rate_bound(run.initial_gap, L, eta, s2, T) for s2 in run.sigma2]
    return {"lhs": lhs, "rhs": rhs, "plain": plain, "L": L, "T": T_grid}


def rate_experiment(config) -> dict:
    """Theorem 1's two sides in every run, the fitted rate, the floor variant and the alignment."""
    c = config.t1
    model = make_model("s1")
    domains = model.draw_domains(c.n_domains, cell_rng(config.seed, T1_STREAM))
    main = _runs(model, domains, c, config.seed, m_min=0.0)
    checks, measurements = [], []

    ratio = main["lhs"] / main["rhs"]
    checks.append(make_check(
        "t1_lhs_below_rhs_every_run", "T1",
        "in every run, (1/T) sum_t |A_t^(1/2) grad R|^2 <= 2 (R(theta_0) - R_inf) / (eta T) + L eta sigma^2 "
        "(value: the largest ratio left / right over all runs)",
        float(ratio.max()), passed=bool(np.all(ratio <= 1.0)), runs=int(ratio.size)))

    slope = bootstrap_loglog_slope(main["T"], main["lhs"], confidence=config.confidence, seed=config.seed)
    checks.append(make_check(
        "t1_rate_exponent", "T1",
        f"fitted log-log slope of the mean left side against T (eta ~ 1/sqrt(T)) in [-0.6, -0.4]; "
        f"interval: {config.confidence:.0%} bootstrap over seeds",
        slope["slope"], interval=[slope["ci_low"], slope["ci_high"]], passed=-0.6 <= slope["slope"] <= -0.4))

    # With a floor m_min > 0, A_t >= m_min I, so the plain gradient norm obeys the bound / m_min.
    floor = _runs(model, domains, c, config.seed, m_min=c.floor)
    floor_ratio = floor["plain"] * c.floor / floor["rhs"]
    checks.append(make_check(
        "t1_floor_bounds_plain_norm", "T1",
        f"with m_min = {c.floor:g}, in every run (1/T) sum_t |grad R|^2 <= right side / m_min "
        "(value: the largest ratio)",
        float(floor_ratio.max()), passed=bool(np.all(floor_ratio <= 1.0))))

    plain_mean = main["plain"].mean(axis=0)
    measurements.append(make_measurement(
        "t1_plain_norm_without_floor", "T1",
        "mean (1/T) sum_t |grad R|^2 with m_min = 0, which Theorem 1 does not bound: per T",
        plain_mean.tolist(), T=main["T"]))

    # The practical, non-lagged variant: mask from the same minibatch as the step.
    T_mid = main["T"][len(main["T"]) // 2]
    eta = c.eta_scale / main["L"] * math.sqrt(min(main["T"]) / T_mid)
    same = mc.sgd_s1_batched(model, domains, T_mid, eta, c.batch, c.seeds, cell_rng(config.seed, T1_STREAM, 99),
                             statistics="same", mask_options=T1_MASK)
    measurements.append(make_measurement(
        "t1_alignment_non_lagged", "T1",
        f"cosine between grad R and the non-lagged IGA direction along its path (T = {T_mid}): "
        "min, 5 % quantile, median",
        [float(same.alignment.min()), float(np.quantile(same.alignment, 0.05)), float(np.median(same.alignment))]))

    figures = {"rate": {"T": main["T"], "lhs": main["lhs"].tolist(), "rhs": main["rhs"].tolist(),
                        "plain": main["plain"].tolist(), "floor_plain": floor["plain"].tolist(),
                        "floor_rhs": floor["rhs"].tolist(), "floor": c.floor, "slope": slope,
                        "alignment": np.quantile(same.alignment, [0.05, 0.5, 0.95], axis=0).tolist()}}
    return {"checks": checks, "measurements": measurements, "figures": figures}
