"""Theorem 2 verification: coverage under both certification routes, slopes, K* and quantiles.

Experiments (each a function returning checks, measurements and figure data):

* `coverage_experiment`: Monte Carlo coverage of the empirical Bernstein bound over
  domains for ERM and IGA on S1 and S2, for fixed predictors, for predictors trained
  on held-out training domains, and for a predictor selected from a finite candidate
  set by the union bound, each with a Clopper-Pearson interval;
* `naive_reuse_experiment`: the control in which certifying a predictor selected on
  the certification domains themselves, without the union correction, under-covers;
* `slope_experiment`: log-log slopes of the variance term and of the excess against K,
  the crossover K*, IGA's variance term against ERM's, and the bounds compared;
* `quantile_experiment`: the new-domain quantile certificate of IGA against ERM's.
"""

from __future__ import annotations

import logging
import math

import numpy as np
from scipy import stats

from iga_theory import bounds
from iga_theory import montecarlo as mc
from iga_theory.fits import bootstrap_loglog_slope, loglog_slope
from iga_theory.synthetic.models import Domain, make_model
from iga_theory.synthetic.s1 import S1Model
from iga_theory.synthetic.validate_common import cell_rng, make_check, make_measurement

logger = logging.getLogger(__name__)

COVERAGE_STREAM, NAIVE_STREAM, SLOPE_STREAM, QUANTILE_STREAM = 20, 21, 22, 23
MODELS = ("s1", "s2")
METHODS = ("erm", "iga")
# IGA's mask in the Theorem 2 experiments: the library defaults (tau from default_tau(K)).
IGA_MASK = {"kappa0": 20.0}
# A bound counts as covering when it is at least E_Q R minus this relative tolerance. A
# predictor whose risk is constant over Q has V_K = 0 and B ~ 0, so its bound equals its
# mean risk, which differs from E_Q R by rounding (K ulps for S1) or by the quadrature
# error (~1e-14 for S2); 1e-12 covers both and is far below any excess term tested here.
COVERAGE_RTOL = 1e-12
# Candidate grids of the union-bound route: IGA over (tau, kappa0), ERM over early stopping.
UNION_TAUS = (0.03, 0.1, 0.3, 1.0)
UNION_KAPPAS = (5.0, 20.0, 100.0)


def _eta(model, betas, scales) -> np.ndarray:
    """Step 1 / L of each run, L the smoothness of its pooled training risk."""
    return np.array([1.0 / model.smoothness([Domain(float(b), float(s)) for b, s in zip(rb, rs)])
                     for rb, rs in zip(betas, scales)])


def _train(model, betas, scales, method: str, steps: int, mask_options=None) -> np.ndarray:
    """Trained predictors (R, P): full-batch GD (ERM) or IGA with step 1 / L from 0."""
    run = mc.train_population_batched(model, betas, scales, method, steps, _eta(model, betas, scales),
                                      mask_options=mask_options or IGA_MASK)
    return run.thetas


def _risk_bounds(model, thetas) -> tuple[np.ndarray, np.ndarray]:
    """Low and high end of each predictor's per-domain risk over the support of Q, shape (R,).

    S1: the exact range. Logistic models: the risk is >= 0 and its max over the (beta, s)
    box is at a corner (the risk is convex there), so [0, max corner] contains every risk.
    """
    if isinstance(model, S1Model):
        ranges = np.array([model.risk_range(theta) for theta in thetas])
        return ranges[:, 0], ranges[:, 1]
    p = model.params
    t = p.beta_trunc
    corners_b = np.array([p.mu_beta - t * p.tau_beta, p.mu_beta + t * p.tau_beta] * 2)
    corners_s = np.exp(p.hetero * t * np.array([-1.0, -1.0, 1.0, 1.0]))
    R = thetas.shape[0]
    risks = mc.population_risks(model, thetas, np.tile(corners_b, (R, 1)), np.tile(corners_s, (R, 1)))
    return np.zeros(R), risks.max(axis=1)


def _certify(model, thetas, K: int, delta: float, rng, level_delta: float | None = None) -> dict:
    """Bound each of R predictors on its own fresh K certification domains."""
    R = thetas.shape[0]
    betas, scales = mc.draw_domain_arrays(model, R, K, rng)
    risks = mc.population_risks(model, thetas, betas, scales)
    low, high = _risk_bounds(model, thetas)
    B = np.maximum(high - low, np.finfo(np.float64).tiny)
    # The numba kernel: the benchmark montecarlo_bernstein measured numpy at about 1.7x its time.
    bound = mc.bernstein_bounds_numba(risks, B, delta if level_delta is None else level_delta)
    expected = np.array([model.expected_risk(theta) for theta in thetas], dtype=np.float64)
    covered = bound >= expected - COVERAGE_RTOL * np.maximum(np.abs(expected), 1.0)
    return {"covered": covered, "bound": bound, "expected": expected, "high": high}


def _coverage_check(name, covered, delta, confidence, route, model_name, method, extra=None):
    summary = bounds.coverage_summary(covered, delta, confidence)
    return make_check(
        name=name, theorem="T2",
        criterion=(f"coverage of the {route} bound >= 1 - delta = {1 - delta:g}: passes unless the "
                   f"{confidence:.0%} Clopper-Pearson interval lies below 1 - delta"),
        value=summary["coverage"], interval=summary["interval"], passed=summary["passed"],
        model=model_name, method=method, replications=summary["n"], **(extra or {}))


def coverage_experiment(config) -> dict:
    """Coverage of Theorem 2 under the fixed, held-out and union-bound routes, on S1 and S2."""
    c = config.t2
    checks, measurements = [], []
    figures = {"coverage": []}
    for model_index, model_name in enumerate(MODELS):
        model = make_model(model_name)
        rng = cell_rng(config.seed, COVERAGE_STREAM, model_index)

        # Fixed predictors: trained once on K_train domains that are never used again.
        betas, scales = mc.draw_domain_arrays(model, 1, c.K_train, rng)
        fixed = {method: _train(model, betas, scales, method, c.train_steps) for method in METHODS}
        for method in METHODS:
            thetas = np.repeat(fixed[method], c.replications, axis=0)
            result = _certify(model, thetas, c.K_cert, config.delta, rng)
            checks.append(_coverage_check(f"t2_coverage_fixed_{model_name}_{method}", result["covered"],
                                          config.delta, config.confidence, "fixed-predictor", model_name,
                                          method, {"mean_bound": float(result["bound"].mean()),
                                                   "expected_risk": float(result["expected"][0])}))
            figures["coverage"].append({"model": model_name, "method": method, "route": "fixed",
                                        "coverage": float(result["covered"].mean())})

        # Held-out route: each replication trains on fresh domains and certifies on others.
        betas, scales = mc.draw_domain_arrays(model, c.replications, c.K_train, rng)
        for method in METHODS:
            thetas = _train(model, betas, scales, method, c.train_steps)
            result = _certify(model, thetas, c.K_cert, config.delta, rng)
            checks.append(_coverage_check(f"t2_coverage_heldout_{model_name}_{method}", result["covered"],
                                          config.delta, config.confidence, "held-out-domain", model_name,
                                          method, {"mean_bound": float(result["bound"].mean())}))
            figures["coverage"].append({"model": model_name, "method": method, "route": "heldout",
                                        "coverage": float(result["covered"].mean())})

        # Union-bound route: N candidates fixed in advance, the best on the certification
        # domains is selected, and every candidate is certified at delta / N.
        betas, scales = mc.draw_domain_arrays(model, 1, c.K_train, rng)
        candidates = _union_candidates(model, betas, scales, c)
        for method in METHODS:
            cands = candidates[method]
            N = cands.shape[0]
            cert_b, cert_s = mc.draw_domain_arrays(model, c.replications, c.K_cert, rng)
            risks = np.stack([mc.population_risks(model, np.repeat(theta[None], c.replications, axis=0),
                                                  cert_b, cert_s) for theta in cands], axis=1)  # (R, N, K)
            low, high = _risk_bounds(model, cands)
            B = np.maximum(high - low, np.finfo(np.float64).tiny)
            expected = np.array([model.expected_risk(theta) for theta in cands])
            chosen = risks.mean(axis=2).argmin(axis=1)  # (R,)
            chosen_risks = risks[np.arange(c.replications), chosen]
            union = mc.bernstein_bounds_numba(chosen_risks, B[chosen], bounds.union_delta(config.delta, N))
            naive = mc.bernstein_bounds_numba(chosen_risks, B[chosen], config.delta)
            tolerance = COVERAGE_RTOL * np.maximum(np.abs(expected[chosen]), 1.0)
            covered = union >= expected[chosen] - tolerance
            checks.append(_coverage_check(f"t2_coverage_union_{model_name}_{method}", covered, config.delta,
                                          config.confidence, f"union-bound (N = {N})", model_name, method,
                                          {"n_candidates": N, "mean_bound": float(union.mean())}))
            measurements.append(make_measurement(
                f"t2_union_without_correction_{model_name}_{method}", "T2",
                f"coverage of the selected candidate's bound at delta instead of delta / N (N = {N}); "
                "the candidates' risks are strongly correlated here, so the selection is mild",
                float((naive >= expected[chosen] - tolerance).mean())))
            figures["coverage"].append({"model": model_name, "method": method, "route": "union",
                                        "coverage": float(covered.mean())})
    return {"checks": checks, "measurements": measurements, "figures": figures}


def _union_candidates(model, betas, scales, c) -> dict[str, np.ndarray]:
    """Candidate sets fixed before certification: IGA over (tau, kappa0), ERM over early stopping."""
    iga = []
    for tau in UNION_TAUS:
        for kappa in UNION_KAPPAS:
            iga.append(_train(model, betas, scales, "iga", c.train_steps, {"tau": tau, "kappa0": kappa})[0])
    iga = np.array(iga)[: c.n_candidates]
    stops = np.unique(np.geomspace(1, c.train_steps, c.n_candidates).round().astype(int))
    erm = np.array([_train(model, betas, scales, "erm", int(steps))[0] for steps in stops])
    return {"iga": iga, "erm": erm}


def naive_reuse_experiment(config) -> dict:
    """Control: certify the best of N candidates on the same K domains used to select it.

    The candidates' per-domain risks are independent Bernoulli(1/2) variables (risk 0 or
    1 on each domain, range B = 1, expected risk 1/2 for every candidate). The empirical
    mean of the selected (best) candidate is biased low by about
    ``sqrt(2 ln N) * 0.5 / sqrt(K)``, more than the bound's allowance at level delta, so
    naive reuse under-covers; the union route at delta / N covers.
    """
    c = config.t2
    rng = cell_rng(config.seed, NAIVE_STREAM)
    K, N, R = c.naive_K, c.naive_candidates, c.naive_replications
    # The best candidate has the fewest risk-1 domains: the minimum M of N independent
    # Binomial(K, 1/2) counts. Its law is P(M <= m) = 1 - P(Bin > m)^N, so M is drawn
    # exactly by inverting that CDF, without drawing the N counts.
    m = np.arange(K + 1)
    cdf_min = -np.expm1(N * np.log(np.clip(stats.binom.sf(m, K, 0.5), 1e-300, 1.0)))
    ones = np.searchsorted(cdf_min, rng.uniform(size=R))
    naive_covered = np.empty(R, dtype=bool)
    union_covered = np.empty(R, dtype=bool)
    for r in range(R):
        risks = np.r_[np.ones(ones[r]), np.zeros(K - ones[r])]
        naive_covered[r] = bounds.bernstein_bound(risks, 1.0, config.delta) >= 0.5
        union_covered[r] = bounds.bernstein_bound(risks, 1.0, bounds.union_delta(config.delta, N)) >= 0.5
    naive = bounds.coverage_summary(naive_covered, config.delta, config.confidence)
    union = bounds.coverage_summary(union_covered, config.delta, config.confidence)
    checks = [
        make_check("t2_naive_reuse_breaks", "T2",
                   f"control: selecting the best of N = {N} candidates on the K = {K} certification domains and "
                   f"bounding it at delta breaks coverage (the {config.confidence:.0%} interval lies below 1 - delta)",
                   naive["coverage"], interval=naive["interval"], passed=not naive["passed"],
                   n_candidates=N, K=K, replications=R),
        make_check("t2_naive_control_union_holds", "T2",
                   f"the same selection certified by the union bound at delta / N covers (interval reaches 1 - delta)",
                   union["coverage"], interval=union["interval"], passed=union["passed"]),
    ]
    return {"checks": checks, "measurements": [],
            "figures": {"naive": {"naive": naive["coverage"], "union": union["coverage"], "N": N, "K": K}}}


def slope_experiment(config) -> dict:
    """Variance-term and excess slopes against K, the crossover K*, and the bounds compared (S1)."""
    c = config.t2
    model = make_model("s1", beta_trunc=c.slope_beta_trunc)
    rng = cell_rng(config.seed, SLOPE_STREAM)
    betas, scales = mc.draw_domain_arrays(model, 1, c.K_train, rng)
    thetas = {method: _train(model, betas, scales, method, 2000)[0] for method in METHODS}
    grid = np.array(c.slope_K_grid)
    R = c.slope_replications
    data = {}
    ranges = {method: model.risk_range(theta) for method, theta in thetas.items()}
    # One B for both predictors (the longer of the two exact ranges): IGA's own range is
    # 0 when it reaches the invariant predictor, which would hide its range term.
    B = max(high - low for low, high in ranges.values())
    for method, theta in thetas.items():
        high = ranges[method][0] + B
        V = float(model.risk_variance(theta))
        expected = float(model.expected_risk(theta))
        variance_term = np.empty((R, grid.size))
        range_term = np.empty(grid.size)
        bound = np.empty((R, grid.size))
        for i, K in enumerate(grid):
            b_, s_ = mc.draw_domain_arrays(model, R, int(K), rng)
            risks = mc.population_risks(model, np.repeat(theta[None], R, axis=0), b_, s_)
            terms = mc.bernstein_bounds(risks, B, config.delta)
            variance_term[:, i] = terms["variance_term"]
            range_term[i] = terms["range_term"][0]
            bound[:, i] = terms["bound"]
        data[method] = {"B": B, "V": V, "high": high, "expected": expected, "variance_term": variance_term,
                        "range_term": range_term, "bound": bound,
                        "K_star": bounds.bernstein_crossover(B, V, config.delta) if V > 0 else math.inf}

    checks, measurements = [], []
    erm, iga = data["erm"], data["iga"]
    K_star = erm["K_star"]
    fit_mask = grid >= 8
    slope = bootstrap_loglog_slope(grid[fit_mask], erm["variance_term"][:, fit_mask], confidence=config.confidence,
                                   seed=config.seed)
    checks.append(make_check(
        "t2_variance_slope_erm", "T2", "ERM's variance term decays like K^(-1/2): fitted slope (K >= 8) in [-0.6, -0.4]",
        slope["slope"], interval=[slope["ci_low"], slope["ci_high"]], passed=-0.6 <= slope["slope"] <= -0.4))

    ratio = iga["variance_term"].mean(axis=0) / erm["variance_term"].mean(axis=0)
    checks.append(make_check(
        "t2_variance_term_iga_below_erm", "T2",
        "IGA's mean variance term is below ERM's at every K (value: the largest ratio IGA / ERM)",
        float(ratio.max()), passed=bool(np.all(ratio < 1.0)), ratio_per_K=ratio.tolist(), K=grid.tolist()))

    iga_excess = iga["variance_term"].mean(axis=0) + iga["range_term"]
    iga_fit = loglog_slope(grid[grid >= 16], iga_excess[grid >= 16], confidence=config.confidence)
    checks.append(make_check(
        "t2_excess_slope_iga", "T2", "IGA's excess (variance + range term) decays like 1/K: fitted slope (K >= 16) in [-1.1, -0.9]",
        iga_fit["slope"], interval=[iga_fit["ci_low"], iga_fit["ci_high"]], passed=-1.1 <= iga_fit["slope"] <= -0.9))

    erm_excess = erm["variance_term"].mean(axis=0) + erm["range_term"]
    low_mask = grid <= K_star / 8
    high_mask = grid >= 8 * K_star
    in_range = bool(grid.min() < K_star < grid.max()) and low_mask.sum() >= 2 and high_mask.sum() >= 2
    if in_range:
        slope_low = loglog_slope(grid[low_mask], erm_excess[low_mask])["slope"]
        slope_high = loglog_slope(grid[high_mask], erm_excess[high_mask])["slope"]
    else:
        slope_low = slope_high = float("nan")
    checks.append(make_check(
        "t2_excess_slope_erm_crossover", "T2",
        "ERM's excess slope is near -1 well below K* (<= -0.8 for K <= K*/8) and moves towards -1/2 "
        "well above it (>= -0.7 for K >= 8 K*), with K* inside the tested K range",
        {"below": slope_low, "above": slope_high}, passed=in_range and slope_low <= -0.8 and slope_high >= -0.7,
        K_star=K_star))

    # Measured crossover: where the mean variance term meets the range term (log interpolation).
    measured = _crossing(grid, erm["variance_term"].mean(axis=0), erm["range_term"])
    boot = []
    boot_rng = np.random.default_rng(config.seed)
    for _ in range(400):
        rows = boot_rng.integers(0, R, size=R)
        boot.append(_crossing(grid, erm["variance_term"][rows].mean(axis=0), erm["range_term"]))
    boot = np.array([b for b in boot if np.isfinite(b)])
    q = (1 - config.confidence) / 2
    interval = [float(np.quantile(boot, q)), float(np.quantile(boot, 1 - q))] if boot.size else None
    ratio_k = measured / K_star if np.isfinite(measured) else float("nan")
    checks.append(make_check(
        "t2_crossover_K_star", "T2",
        "the K where ERM's mean variance term meets its range term agrees with K* = (49/18) B^2 ln(2/delta) / V "
        "within a factor 1.25 (the formula uses K for K - 1 and sqrt(V) for E sqrt(V_K))",
        measured, interval=interval, passed=bool(np.isfinite(ratio_k) and 0.8 <= ratio_k <= 1.25),
        K_star_formula=K_star, B=erm["B"], V=erm["V"]))

    # Bounds compared where both are non-vacuous: the range term is below B, K >= vacuous_below.
    erm_bound, iga_bound = erm["bound"].mean(axis=0), iga["bound"].mean(axis=0)
    non_vacuous = grid >= bounds.vacuous_below(config.delta)
    excess_ok = iga_excess[non_vacuous] <= erm_excess[non_vacuous]
    checks.append(make_check(
        "t2_bound_iga_vs_erm", "T2",
        "wherever the bounds are non-vacuous (7 ln(2/delta) / (3 (K - 1)) < 1), IGA's excess over its empirical "
        "mean is at most ERM's (the mean bounds themselves are reported as measured: ERM's can be lower "
        "because its average risk is)",
        {"K": grid[non_vacuous].tolist(), "iga_bound": iga_bound[non_vacuous].tolist(),
         "erm_bound": erm_bound[non_vacuous].tolist()},
        passed=bool(non_vacuous.any() and excess_ok.all())))
    lower = grid[non_vacuous & (erm_bound < iga_bound)]
    measurements.append(make_measurement(
        "t2_mean_bound_lower_for_erm", "T2", "K values where ERM's mean Theorem 2 bound is below IGA's",
        lower.tolist(), erm_expected_risk=erm["expected"], iga_expected_risk=iga["expected"]))
    measurements.append(make_measurement("t2_vacuous_below", "T2", "bound vacuous for K below this (B = 1)",
                                         bounds.vacuous_below(config.delta)))

    figures = {"slopes": {"K": grid.tolist(), "K_star": K_star, **{
        method: {"variance_term": d["variance_term"].mean(axis=0).tolist(), "range_term": d["range_term"].tolist(),
                 "bound": d["bound"].mean(axis=0).tolist(), "expected": d["expected"], "B": d["B"], "V": d["V"]}
        for method, d in data.items()}}}
    return {"checks": checks, "measurements": measurements, "figures": figures}


def _crossing(grid, variance_term, range_term) -> float:
    """First K (log-interpolated) where the variance term reaches the range term, or NaN."""
    diff = np.log(variance_term) - np.log(range_term)
    above = np.nonzero(diff >= 0)[0]
    if above.size == 0 or above[0] == 0:
        return float("nan")
    i = above[0]
    x0, x1 = np.log(grid[i - 1]), np.log(grid[i])
    t = -diff[i - 1] / (diff[i] - diff[i - 1])
    return float(np.exp(x0 + t * (x1 - x0)))


def quantile_experiment(config) -> dict:
    """IGA's new-domain quantile certificate against ERM's, and its coverage (S1)."""
    c = config.t2
    model = make_model("s1")
    rng = cell_rng(config.seed, QUANTILE_STREAM)
    betas, scales = mc.draw_domain_arrays(model, 1, c.K_train, rng)
    thetas = {method: _train(model, betas, scales, method, 2000)[0] for method in METHODS}
    # Reference (1 - alpha)-quantile of R_e over Q from a large draw.
    ref_b, ref_s = mc.draw_domain_arrays(model, 1, 200_000, rng)
    quantile = {m: float(np.quantile(mc.population_risks(model, t[None], ref_b, ref_s)[0], 1 - config.alpha))
                for m, t in thetas.items()}

    R = c.replications
    per_K = []
    all_below = True
    for K in c.quantile_K_grid:
        b_, s_ = mc.draw_domain_arrays(model, R, int(K), rng)
        certs = {m: mc.quantile_certificates(mc.population_risks(model, np.repeat(t[None], R, axis=0), b_, s_),
                                             config.alpha, config.delta) for m, t in thetas.items()}
        if certs["erm"] is None:
            continue
        row = {"K": int(K), **{f"{m}_mean": float(v.mean()) for m, v in certs.items()},
               **{f"{m}_coverage": float((v >= quantile[m] - COVERAGE_RTOL * max(abs(quantile[m]), 1.0)).mean())
                  for m, v in certs.items()}}
        per_K.append(row)
        all_below &= row["iga_mean"] < row["erm_mean"]

    checks = [make_check(
        "t2_quantile_iga_below_erm", "T2",
        f"IGA's mean {1 - config.alpha:.0%}-quantile certificate is below ERM's at every K where it is defined "
        f"(K >= {bounds.min_domains_for_quantile(config.alpha, config.delta)})",
        per_K, passed=bool(per_K) and all_below, reference_quantiles=quantile)]
    for method in METHODS:
        covered = [row[f"{method}_coverage"] for row in per_K]
        lowest = int(round(min(covered) * R))
        interval = bounds.binomial_interval(lowest, R, config.confidence)
        checks.append(make_check(
            f"t2_quantile_coverage_{method}", "T2",
            "the quantile certificate covers the true (1 - alpha)-quantile in at least 1 - delta of the replications "
            "(lowest coverage over K; passes unless its Clopper-Pearson interval lies below 1 - delta)",
            float(min(covered)), interval=list(interval), passed=interval[1] >= 1 - config.delta))
    return {"checks": checks, "measurements": [], "figures": {"quantile": {"rows": per_K, "reference": quantile}}}
