"""Configuration and shared pieces of the ``iga validate`` experiments.

Each experiment returns a JSON-ready dictionary ``{"checks": [...], "measurements": [...],
"figures": {...}}``. A check is a claim of the theory with a pass/fail criterion
(`make_check`); a measurement is a number the theory asks to report without a
criterion; figures hold the arrays that the plots read.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from iga_theory.config import field
from iga_theory.synthetic.experiments import cell_rng  # noqa: F401 (re-exported for the validate_* modules)


@dataclass
class T1Config:
    """Theorem 1: minimax SGD on S1 with a lagged mask."""

    n_domains: int = field(8, "training domains K", low=2, high=256)
    batch: int = field(4, "examples per domain and step", low=1, high=4096)
    T_grid: list[int] = field(None, "step counts T (log-spaced)", low=2, high=10**6,
                              default_factory=lambda: [64, 128, 256, 512, 1024, 2048, 4096])
    seeds: int = field(16, "independent runs per T", low=2, high=1000)
    eta_scale: float = field(1.0, "eta = eta_scale / L * sqrt(min(T_grid) / T)", low=1e-6, high=1.0)
    ema_rate: float = field(0.9, "EMA rate rho of the lagged statistics", low=0.0, high=0.999999)
    floor: float = field(0.05, "m_min of the floor run that bounds the plain gradient norm", low=1e-6, high=0.99)


@dataclass
class T2Config:
    """Theorem 2: coverage, slopes, crossover and quantile certificates."""

    replications: int = field(1000, "Monte Carlo replications per coverage check", low=20, high=10**6)
    K_train: int = field(8, "training domains of the learned predictors", low=2, high=1024)
    K_cert: int = field(32, "certification domains per replication", low=10, high=10**5)
    train_steps: int = field(300, "full-batch steps of the trained predictors", low=1, high=10**6)
    n_candidates: int = field(12, "candidates of the union-bound route", low=2, high=10**4)
    naive_candidates: int = field(10**6, "independent candidates of the naive-reuse control", low=2, high=10**8)
    naive_K: int = field(400, "domains of the naive-reuse control", low=10, high=10**5)
    naive_replications: int = field(400, "replications of the naive-reuse control", low=20, high=10**5)
    slope_K_grid: list[int] = field(None, "K values of the slope and crossover fits", low=2, high=10**5,
                                    default_factory=lambda: [2 ** k for k in range(1, 13)])
    slope_replications: int = field(200, "replications per K of the slope fits", low=10, high=10**5)
    slope_beta_trunc: float = field(1.5, "Q truncation of the slope configuration (places K* inside the grid)",
                                    low=0.1, high=10.0)
    quantile_K_grid: list[int] = field(None, "K values of the quantile comparison", low=2, high=10**5,
                                       default_factory=lambda: [32, 64, 128, 256])


@dataclass
class T3Config:
    """Theorem 3: fixed points, invariance budget, hard limit and phase diagrams."""

    drift_steps: int = field(10000, "steps of the drift runs", low=10, high=10**7)
    drift_kappas: list[float] = field(None, "sharpness values of the drift runs", low=0.01, high=1e6,
                                      default_factory=lambda: [2.0, 5.0, 20.0])
    budget_steps: int = field(400, "steps of the budget runs", low=1, high=10**6)
    budget_replications: int = field(16, "runs per model variant of the budget check", low=1, high=10**4)
    hard_kappa: float = field(1e4, "sharpness that stands in for the hard limit", low=100.0, high=1e12)
    hard_steps: int = field(3000, "steps of the hard-limit runs", low=10, high=10**6)
    hard_K_grid: list[int] = field(None, "K values of the hard-limit check", low=2, high=1024,
                                   default_factory=lambda: [4, 8, 16])
    hard_replications: int = field(64, "domain draws per K of the hard-limit check", low=2, high=10**5)
    phase_ratios: list[float] = field(None, "mu_beta / tau_beta values of the phase diagrams", low=0.0, high=100.0,
                                      default_factory=lambda: [0.0, 0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0])
    phase_K_grid: list[int] = field(None, "K values of the phase diagrams", low=2, high=4096,
                                    default_factory=lambda: [4, 8, 16, 32, 64, 128])
    phase_draws: int = field(4000, "domain draws per cell of the closed-form phase diagram", low=10, high=10**7)
    phase_replications: int = field(24, "training runs per cell of the trained phase diagrams", low=2, high=10**4)
    phase_steps: int = field(600, "steps of the trained phase diagrams", low=10, high=10**6)


@dataclass
class MapsConfig:
    """Sensitivity maps of the mask's parameters and statistics options."""

    n_domains: int = field(8, "training domains K", low=2, high=1024)
    taus: list[float] = field(None, "thresholds tau of the (tau, kappa) map", low=1e-6, high=1e6,
                              default_factory=lambda: [0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0])
    kappas: list[float] = field(None, "sharpness values kappa0 of the (tau, kappa) map", low=1e-3, high=1e6,
                                default_factory=lambda: [1.0, 3.0, 10.0, 30.0, 100.0])
    replications: int = field(32, "runs per cell", low=2, high=10**4)
    steps: int = field(600, "full-batch steps per run", low=10, high=10**6)
    sgd_steps: int = field(2000, "SGD steps of the statistics map", low=10, high=10**6)
    sgd_replications: int = field(8, "SGD runs per cell of the statistics map", low=2, high=10**4)
    batches: list[int] = field(None, "examples per domain and step of the statistics map", low=1, high=10**5,
                               default_factory=lambda: [4, 16, 64])


@dataclass
class ValidateConfig:
    """Every setting of ``iga validate``; the run folder is named by its hash."""

    seed: int = field(0, "master seed", low=0, high=2**32 - 1)
    delta: float = field(0.05, "failure probability of the certificates", low=1e-9, high=0.5)
    alpha: float = field(0.1, "quantile level: the certificate bounds the (1 - alpha)-quantile", low=1e-6, high=0.5)
    confidence: float = field(0.99, "confidence level of the intervals on coverage and slopes", low=0.5, high=0.999999)
    t1: T1Config = field(None, "Theorem 1 settings", default_factory=T1Config)
    t2: T2Config = field(None, "Theorem 2 settings", default_factory=T2Config)
    t3: T3Config = field(None, "Theorem 3 settings", default_factory=T3Config)
    maps: MapsConfig = field(None, "sensitivity maps", default_factory=MapsConfig)


def quick_config(seed: int = 0) -> ValidateConfig:
    """Reduced settings of ``iga validate --quick``: same checks, fewer replications and steps."""
    return ValidateConfig(
        seed=seed,
        t1=T1Config(T_grid=[64, 128, 256, 512, 1024], seeds=8),
        t2=T2Config(replications=300, train_steps=200, naive_candidates=10**5, naive_replications=200,
                    slope_replications=60, quantile_K_grid=[32, 128]),
        t3=T3Config(drift_steps=4000, drift_kappas=[2.0, 5.0, 20.0], budget_steps=200, budget_replications=6,
                    hard_steps=1500, hard_K_grid=[4, 8], hard_replications=32,
                    phase_ratios=[0.0, 0.5, 1.0, 2.0, 4.0], phase_K_grid=[4, 8, 16, 64], phase_draws=1000,
                    phase_replications=8, phase_steps=300),
        maps=MapsConfig(taus=[0.01, 0.1, 1.0, 10.0], kappas=[1.0, 10.0, 100.0], replications=8, steps=300,
                        sgd_steps=400, sgd_replications=4, batches=[4, 64]),
    )


def with_seeds(config: ValidateConfig, seeds: int | None) -> ValidateConfig:
    """Override the number of independent runs of the seed-averaged experiments (T1)."""
    if seeds is not None:
        config.t1.seeds = int(seeds)
    return config



def to_jsonable(value):
    """Convert numpy scalars and arrays (nested) to plain Python; non-finite floats become None."""
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return to_jsonable(value.tolist())
    if isinstance(value, (np.bool_, bool)):
        return bool(value)
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        value = float(value)
        return value if np.isfinite(value) else None
    return value


def make_check(name: str, theorem: str, criterion: str, value, passed: bool, interval=None, **details) -> dict:
    """Build one certificate entry: a claim, its criterion, the measured value and the verdict."""
    return to_jsonable({"name": name, "theorem": theorem, "criterion": criterion, "value": value,
                        "interval": interval, "passed": bool(passed), **({"details": details} if details else {})})


def make_measurement(name: str, theorem: str, description: str, value, **details) -> dict:
    """Build a reported number that has no pass/fail criterion."""
    return to_jsonable({"name": name, "theorem": theorem, "description": description, "value": value,
                        **({"details": details} if details else {})})
