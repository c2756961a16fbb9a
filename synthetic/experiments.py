"""The synthetic experiments of the default report, on the S1 model.

Three experiments, each returning plain data (lists and floats) for ``results.json``:

* `training_curves`: ERM and IGA by gradient descent on exact population gradients
  from the same start; spurious weight, expected OOD risk and shifted-domain risk
  along the steps, and IGA's mask per coordinate.
* `bound_vs_domains`: the Theorem 2 bound for ERM and IGA against the number of
  domains K, certified on K fresh held-out domains, against the exact expected risk.
* `rate_vs_steps`: Theorem 1's stationarity of SGD with a lagged mask against T,
  with its computed right-hand side.

Every repetition ("cell") draws its randomness from its own seed, derived from the
master seed and the cell's key, so cells can run in any order, be skipped when already
stored in the run folder, and still give the same numbers.
"""

from __future__ import annotations

import logging

import numpy as np
from tqdm.auto import tqdm

from iga_theory import bounds
from iga_theory import mask as cgcm
from iga_theory.fits import bootstrap_loglog_slope
from iga_theory.nan_policy import DEFAULT_NAN_POLICY, nan_guard
from iga_theory.synthetic.s1 import S1Model, S1Params
from iga_theory.synthetic.training import MaskOptions, stack_second_moments, train_population

logger = logging.getLogger(__name__)

# Version of the stored cell format. It is part of the run folder's hash, so cells
# written by an older version of this module are never mixed with new ones.
CELL_VERSION = 2
# Predictors certified in the bound experiment: trained at each K, and fixed across K.
BOUND_METHODS = ("erm", "iga", "erm_fixed", "iga_fixed")
# Experiment ids in the seed derivation; changing one changes that experiment's numbers.
TRAINING_STREAM, BOUND_STREAM, RATE_STREAM = 0, 1, 2
# Points kept per curve in results.json (log-spaced steps).
CURVE_POINTS = 200
# Domains drawn to estimate the exact (1 - alpha)-quantile of R_e over Q for the plots.
QUANTILE_DRAWS = 100_000


def cell_rng(seed: int, *key: int) -> np.random.Generator:
    """Generator of one cell, independent of every other cell's."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=tuple(int(k) for k in key)))


def build_model(model_config) -> S1Model:
    """S1 model from the report's `ModelConfig`."""
    c = model_config
    return S1Model(S1Params(d_inv=c.d_inv, d_sp=c.d_sp, sigma_y=c.sigma_y, sigma_s=c.sigma_s,
                            mu_beta=c.mu_beta, tau_beta=c.tau_beta, beta_trunc=c.beta_trunc,
                            hetero=c.hetero, rotate=c.rotate, seed=c.model_seed))


def nan_policy(config) -> str:
    """NaN policy of a report configuration (``raise`` for configurations without one)."""
    return getattr(config, "nan_policy", DEFAULT_NAN_POLICY)


def mask_options(mask_config) -> MaskOptions:
    return MaskOptions(tau=mask_config.tau, kappa0=mask_config.kappa0, m_min=mask_config.m_min)


def _curve_indices(steps: int) -> np.ndarray:
    """Log-spaced step indices 0..steps (inclusive), at most CURVE_POINTS of them."""
    grid = np.unique(np.round(np.geomspace(1, steps + 1, CURVE_POINTS)).astype(int) - 1)
    return grid[grid <= steps]


def _path_metrics(model: S1Model, thetas: np.ndarray, domains) -> dict[str, list[float]]:
    """Spurious weight, expected OOD risk, shifted-domain risk and training risk of each iterate."""
    return {
        "spurious_weight": model.spurious_weight(thetas).tolist(),
        "expected_ood_risk": model.expected_risk(thetas).tolist(),
        "shifted_risk": model.risks(thetas, [model.shifted_domain()])[:, 0].tolist(),
        "train_risk": model.risks(thetas, domains).mean(axis=1).tolist(),
    }


def training_curves(model: S1Model, config, seed: int) -> dict:
    """ERM and IGA from the same start on K training domains, exact gradients."""
    rng = cell_rng(seed, TRAINING_STREAM)
    t = config.training
    domains = model.draw_domains(t.n_domains, rng)
    L = model.smoothness(domains)
    eta = t.step_scale / L
    theta0 = t.init_scale * rng.standard_normal(model.n_params)
    options = mask_options(config.mask)

    steps = _curve_indices(t.steps)
    result = {"steps": steps.tolist(), "eta": eta, "L": L, "n_domains": t.n_domains,
              "betas": [d.beta for d in domains], "tau": options.tau if options.tau is not None
              else cgcm.default_tau(t.n_domains)}
    histories = {}
    for method in ("erm", "iga"):
        history = train_population(model, domains, method, t.steps, eta, theta0, options,
                                   nan_policy=nan_policy(config))
        histories[method] = history
        curves = _path_metrics(model, history.thetas[steps], domains)
        final = {name: values[-1] for name, values in curves.items()}
        result[method] = {"curves": curves, "final": final, "theta": history.thetas[-1].tolist(),
                          "skipped_steps": len(history.skipped_steps)}

    # Closed-form references: the pooled ERM optimum and the invariant oracle.
    for name, theta in (("erm_optimum", model.erm_solution(domains)), ("invariant_oracle", model.invariant_solution())):
        result[name] = {k: v[0] for k, v in _path_metrics(model, theta[None], domains).items()}

    masks = histories["iga"].masks
    invariant = model.invariant_mask
    result["mask"] = {
        "initial": masks[0].tolist(),
        "final": masks[-1].tolist(),
        "invariant_coordinates": np.flatnonzero(invariant).tolist(),
        "mean_invariant": masks[steps[steps < len(masks)]][:, invariant].mean(axis=1).tolist(),
        "mean_spurious": masks[steps[steps < len(masks)]][:, ~invariant].mean(axis=1).tolist(),
        "rotated": bool(model.params.rotate),
    }
    return result


def reference_features(model: S1Model, seed: int) -> np.ndarray:
    """Features of QUANTILE_DRAWS domains from Q, shared by every cell of a run."""
    return model.features(model.draw_domains(QUANTILE_DRAWS, cell_rng(seed, BOUND_STREAM)))


def _certify(model: S1Model, theta: np.ndarray, cert_domains, B: float, delta: float,
             alpha: float, reference: np.ndarray) -> dict:
    """Theorem 2 bound and quantile certificate of one predictor on held-out domains."""
    risks = model.risks(theta, cert_domains)
    terms = bounds.bernstein_terms(risks, B, delta)
    expected = float(model.expected_risk(theta))
    reference = reference @ model.risk_coefficients(theta)
    certificate = bounds.quantile_certificate(risks, alpha, delta)
    return {
        **{k: float(v) for k, v in terms.items() if k != "K"},
        "B": B,
        "expected_risk": expected,
        "excess": terms["bound"] - expected,
        "covered": bool(expected <= terms["bound"]),
        "risk_variance_exact": float(model.risk_variance(theta)),
        "quantile_certificate": certificate,
        "quantile_reference": float(np.quantile(reference, 1.0 - alpha)),
        "shifted_risk": float(model.risk(theta, model.shifted_domain())),
    }


def fixed_predictors(model: S1Model, config, seed: int) -> dict[str, np.ndarray]:
    """ERM and IGA trained once on the training experiment's domains.

    Certifying these on K fresh domains for every K isolates the bound's dependence on
    K from the change of the predictor with K.
    """
    rng = cell_rng(seed, TRAINING_STREAM)
    domains = model.draw_domains(config.training.n_domains, rng)
    L = model.smoothness(domains)
    iga = train_population(model, domains, "iga", config.bound.iga_steps, 1.0 / L,
                           np.zeros(model.n_params), mask_options(config.mask))
    return {"erm_fixed": model.erm_solution(domains), "iga_fixed": iga.thetas[-1]}


def bound_cell(model: S1Model, config, seed: int, K: int, rep: int, reference: np.ndarray,
               fixed: dict[str, np.ndarray]) -> dict:
    """Train ERM and IGA on K domains and certify them on K fresh ones: one (K, repetition) cell.

    The fixed predictors of `fixed_predictors` are certified on the same fresh domains.
    """
    rng = cell_rng(seed, BOUND_STREAM, K, rep)
    b = config.bound
    train_domains = model.draw_domains(K, rng)
    cert_domains = model.draw_domains(K, rng)
    L = model.smoothness(train_domains)

    thetas = {
        "erm": model.erm_solution(train_domains),
        "iga": train_population(model, train_domains, "iga", b.iga_steps, 1.0 / L,
                                np.zeros(model.n_params), mask_options(config.mask),
                                nan_policy=nan_policy(config)).thetas[-1],
        **fixed,
    }
    ranges = {name: model.risk_range(theta) for name, theta in thetas.items()}
    lengths = {name: hi - lo for name, (lo, hi) in ranges.items()}
    # B must be positive; an exactly invariant predictor has a zero own range.
    floor = np.finfo(np.float64).tiny
    cell = {}
    for name, theta in thetas.items():
        pair = ("erm_fixed", "iga_fixed") if name.endswith("_fixed") else ("erm", "iga")
        B = max(lengths[m] for m in pair) if b.range_mode == "common" else lengths[name]
        cell[name] = _certify(model, theta, cert_domains, max(B, floor), b.delta,
                              b.quantile_alpha, reference)
        cell[name]["spurious_weight"] = float(model.spurious_weight(theta))
    return cell


def summarize_bound(cells: dict, config, seed: int) -> dict:
    """Per-K means, coverage, crossover K* and fitted slopes from the stored cells."""
    b = config.bound
    grid = list(b.K_grid)
    summary = {"K": grid, "delta": b.delta, "vacuous_below_K": bounds.vacuous_below(b.delta),
               "min_K_quantile": bounds.min_domains_for_quantile(b.quantile_alpha, b.delta)}
    for method in BOUND_METHODS:
        def stack(name):
            return np.array([[cells[(K, r)][method][name] for K in grid] for r in range(b.n_seeds)], dtype=float)

        excess, variance_term = stack("excess"), stack("variance_term")
        per_method = {name: stack(name).mean(axis=0).tolist()
                      for name in ("bound", "mean", "expected_risk", "variance_term", "range_term",
                                   "excess", "B", "risk_variance_exact", "shifted_risk", "spurious_weight",
                                   "quantile_reference")}
        per_method["coverage"] = stack("covered").mean(axis=0).tolist()
        certificates = [[cells[(K, r)][method]["quantile_certificate"] for r in range(b.n_seeds)] for K in grid]
        per_method["quantile_certificate"] = [
            float(np.mean(c)) if all(v is not None for v in c) else None for c in certificates]
        per_method["slope_excess"] = _safe_slope(grid, excess, b.n_boot, seed)
        per_method["slope_variance_term"] = _safe_slope(grid, variance_term, b.n_boot, seed)
        # Crossover K* = (49/18) B^2 ln(2/delta) / V from the exact variance over Q of the
        # predictor trained at each K (None where that predictor's risk does not vary).
        per_method["K_star_per_K"] = [
            bounds.bernstein_crossover(B, V, b.delta) if V > 0 else None
            for B, V in zip(per_method["B"], per_method["risk_variance_exact"])]
        per_method["K_star"] = per_method["K_star_per_K"][-1]
        summary[method] = per_method
    return summary


def _safe_slope(grid, runs, n_boot, seed) -> dict | None:
    """Bootstrap slope, or None with a logged reason when the mean curve is not positive."""
    try:
        return bootstrap_loglog_slope(grid, runs, n_boot=n_boot, seed=seed)
    except ValueError as error:
        logger.warning("no log-log slope: %s", error)
        return None


def bound_vs_domains(model: S1Model, config, seed: int, run=None, progress: bool = True) -> dict:
    """Run (or resume) every (K, repetition) cell and summarize."""
    b = config.bound
    keys = [(K, r) for K in b.K_grid for r in range(b.n_seeds)]
    reference = reference_features(model, seed)
    fixed = fixed_predictors(model, config, seed)
    cells = {}
    for K, r in tqdm(keys, desc="Theorem 2 vs K", disable=not progress, leave=False):
        key = f"bound/K={K}/rep={r}"
        if run is not None:
            cells[(K, r)] = run.cached(key, bound_cell, model, config, seed, K, r, reference, fixed)
        else:
            cells[(K, r)] = bound_cell(model, config, seed, K, r, reference, fixed)
    return summarize_bound(cells, config, seed)


def rate_cell(model: S1Model, config, seed: int, T: int, rep: int) -> dict:
    """Run SGD for T steps with the lagged EMA mask and return both sides of Theorem 1."""
    r = config.rate
    domains = model.draw_domains(r.n_domains, cell_rng(seed, RATE_STREAM))  # shared by all cells
    rng = cell_rng(seed, RATE_STREAM, T, rep)
    sigmas, cs = stack_second_moments(model, domains)
    L = model.smoothness(domains)
    eta = r.eta_scale / L * np.sqrt(min(r.T_grid) / T)
    options = mask_options(config.mask).as_kwargs()
    if options["tau"] is None:
        options["tau"] = cgcm.default_tau(r.n_domains)
    n = r.batch_per_domain
    guard = nan_guard(nan_policy(config))

    def minibatch_gradients(theta):
        g = np.empty((len(domains), model.n_params))
        for e, domain in enumerate(domains):
            X, y = model.sample(n, domain, rng)
            g[e] = X.T @ (X @ theta - y) / n
        return g

    theta = np.zeros(model.n_params)
    # Warm-up statistics from an independent minibatch, without a step, so that A_0
    # is already a mask (and no unmasked step writes the shortcut into theta).
    ema = minibatch_gradients(theta)
    mask = cgcm.conflict_mask(ema, **options)

    thetas = np.empty((T, model.n_params))
    masks = np.empty((T, model.n_params))
    for t in range(T):
        thetas[t], masks[t] = theta, mask
        g = minibatch_gradients(theta)
        if not guard.check({"theta": g}, step=t):
            continue  # skipped step: theta, the EMA and the mask stay as they are
        theta = theta - eta * mask * g.mean(axis=0)
        # Lagged operator: the mask of step t + 1 depends on minibatches up to t only.
        ema = r.ema_rate * ema + (1.0 - r.ema_rate) * g
        mask = cgcm.conflict_mask(ema, **options)

    full_gradients = np.einsum("kij,tj->ti", sigmas, thetas) / len(domains) - cs.mean(axis=0)
    weighted = (masks * full_gradients**2).sum(axis=1)
    plain = (full_gradients**2).sum(axis=1)
    sigma2 = float(model.sample_gradient_variance(thetas, domains, n).max())
    pooled_risk = lambda th: float(model.risks(th, domains).mean())  # noqa: E731
    r_inf = pooled_risk(model.erm_solution(domains))
    gap = max(pooled_risk(thetas[0]) - r_inf, 0.0)
    rhs = bounds.sgd_rate_bound(gap, L, eta, sigma2, T)
    lhs = float(weighted.mean())
    return {"lhs": lhs, "rhs": rhs, "below": bool(lhs <= rhs), "plain_stationarity": float(plain.mean()),
            "eta": float(eta), "L": float(L), "sigma2": sigma2, "initial_gap": gap,
            "final_spurious_weight": float(model.spurious_weight(theta)),
            "mean_mask_invariant": float(masks[:, model.invariant_mask].mean()),
            "mean_mask_spurious": float(masks[:, ~model.invariant_mask].mean()),
            "skipped_steps": guard.skipped_steps}


def rate_vs_steps(model: S1Model, config, seed: int, run=None, progress: bool = True) -> dict:
    """Run (or resume) every (T, repetition) cell and fit the rate."""
    r = config.rate
    keys = [(T, rep) for T in r.T_grid for rep in range(r.n_seeds)]
    cells = {}
    for T, rep in tqdm(keys, desc="Theorem 1 vs T", disable=not progress, leave=False):
        key = f"rate/T={T}/rep={rep}"
        if run is not None:
            cells[(T, rep)] = run.cached(key, rate_cell, model, config, seed, T, rep)
        else:
            cells[(T, rep)] = rate_cell(model, config, seed, T, rep)

    grid = list(r.T_grid)

    def stack(name):
        return np.array([[cells[(T, rep)][name] for T in grid] for rep in range(r.n_seeds)], dtype=float)

    lhs = stack("lhs")
    summary = {name: stack(name).mean(axis=0).tolist()
               for name in ("lhs", "rhs", "plain_stationarity", "eta", "sigma2", "mean_mask_invariant",
                            "mean_mask_spurious", "final_spurious_weight")}
    summary["T"] = grid
    summary["rhs_min"] = stack("rhs").min(axis=0).tolist()
    summary["all_runs_below_rhs"] = bool(stack("below").all())
    summary["slope"] = _safe_slope(grid, lhs, config.bound.n_boot, seed)
    summary["slope_plain"] = _safe_slope(grid, stack("plain_stationarity"), config.bound.n_boot, seed)
    summary["L"] = float(stack("L")[0, 0])
    summary["skipped_steps"] = int(sum(cells[key].get("skipped_steps", 0) for key in keys))
    return summary
