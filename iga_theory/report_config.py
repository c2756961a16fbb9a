"""Configuration of ``iga report``: the S1 model and the three synthetic experiments.

Every field has a default (the embedded default configuration), a help text and an
allowed range; `load_report_config` reads overrides from a JSON or TOML file, and
`QUICK_OVERRIDES` shrinks the sweeps for ``--quick``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from iga_theory.config import field, from_dict, read_config_file, to_dict
from iga_theory.nan_policy import DEFAULT_NAN_POLICY, NAN_POLICIES


def check_grid(key: str, grid: list[int]) -> None:
    """Reject a sweep grid that cannot carry a log-log fit: fewer than 2 values, or not increasing."""
    if len(grid) < 2:
        raise ValueError(f"{key}: expected at least 2 values for a log-log fit; got {list(grid)}")
    if any(b <= a for a, b in zip(grid, grid[1:])):
        raise ValueError(f"{key}: expected strictly increasing values; got {list(grid)}")


@dataclass
class ModelConfig:
    """S1 anti-causal regression (see `iga_theory.synthetic.s1`)."""

    d_inv: int = field(4, "number of invariant features", low=1, high=256)
    d_sp: int = field(4, "number of spurious features", low=1, high=256)
    sigma_y: float = field(0.5, "noise standard deviation of y given x_inv", low=1e-6, high=1e3)
    sigma_s: float = field(0.1, "noise standard deviation of each spurious feature", low=1e-6, high=1e3)
    mu_beta: float = field(1.0, "mean of the spurious coefficient beta_e over domains", low=-1e3, high=1e3)
    tau_beta: float = field(1.0, "standard deviation of beta_e over domains (before truncation)", low=0.0, high=1e3)
    beta_trunc: float = field(
        1.5, "beta_e is truncated to mu_beta +- beta_trunc * tau_beta, which bounds every "
        "per-domain risk as the Theorem 2 bound requires (in standard deviations)", low=0.1, high=10.0)
    hetero: float = field(0.0, "standard deviation of the log input scale per domain (0: homoskedastic)", low=0.0, high=3.0)
    rotate: bool = field(False, "mix the features by a fixed random orthogonal matrix")
    model_seed: int = field(0, "seed of the rotation (w* is fixed)", low=0, high=2**31 - 1)


@dataclass
class MaskConfig:
    """Continuous gradient conflict mask used by IGA."""

    tau: float | None = field(None, "conflict threshold; null uses min(tau0, K / t^2_{K-1,1-alpha/2})", low=1e-12, high=1e12)
    kappa0: float = field(20.0, "scale-free sharpness of the mask's sigmoid", low=1e-3, high=1e4)
    m_min: float = field(0.0, "mask floor, in [0, 1)", low=0.0, high=0.999999)


@dataclass
class TrainingConfig:
    """ERM and IGA trained by full-batch gradient descent on exact population gradients."""

    n_domains: int = field(8, "number of training domains K", low=2, high=4096)
    steps: int = field(3000, "gradient-descent steps", low=1, high=10**6)
    step_scale: float = field(1.0, "step size in units of 1/L (L: smoothness of the pooled risk)", low=1e-6, high=1.0)
    init_scale: float = field(0.0, "standard deviation of the shared random start (0: start at theta = 0)", low=0.0, high=100.0)


@dataclass
class BoundConfig:
    """Theorem 2 bound against the number of domains K."""

    K_grid: list[int] = field(None, "numbers of training and of certification domains", low=2, high=4096,
                              default_factory=lambda: [2, 4, 8, 16, 32, 64, 128])
    n_seeds: int = field(40, "repetitions per K (fresh domains each time)", low=2, high=10**5)
    delta: float = field(0.05, "failure probability of the bound", low=1e-9, high=0.5)
    quantile_alpha: float = field(0.1, "the quantile certificate bounds the (1 - alpha)-quantile of R_e", low=1e-6, high=0.5)
    iga_steps: int = field(1500, "gradient-descent steps of IGA at each K", low=1, high=10**6)
    range_mode: str = field("common", "B of each cell: 'common' (the larger exact risk range of ERM's and IGA's "
                            "predictors) or 'own' (each predictor's own exact range)", choices=("common", "own"))
    n_boot: int = field(2000, "bootstrap resamples for slope intervals", low=10, high=10**6)

    def __post_init__(self):
        check_grid("bound.K_grid", self.K_grid)


@dataclass
class RateConfig:
    """Theorem 1: stationarity of lagged-mask SGD against the number of steps T."""

    T_grid: list[int] = field(None, "numbers of SGD steps", low=2, high=10**6,
                              default_factory=lambda: [128, 256, 512, 1024, 2048, 4096, 8192])
    n_seeds: int = field(8, "repetitions per T", low=2, high=10**4)
    n_domains: int = field(8, "number of training domains K", low=2, high=4096)
    batch_per_domain: int = field(8, "examples per domain in each minibatch", low=1, high=10**6)
    ema_rate: float = field(0.9, "rate rho of the EMA of per-domain means that sets the lagged mask", low=0.0, high=0.999999)
    eta_scale: float = field(0.5, "step size at the smallest T, in units of 1/L; eta = eta_scale/L * sqrt(T_min/T)",
                             low=1e-6, high=1.0)

    def __post_init__(self):
        check_grid("rate.T_grid", self.T_grid)


@dataclass
class ReportConfig:
    """Everything ``iga report`` runs; the defaults are the embedded default configuration."""

    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    mask: MaskConfig = dataclasses.field(default_factory=MaskConfig)
    training: TrainingConfig = dataclasses.field(default_factory=TrainingConfig)
    bound: BoundConfig = dataclasses.field(default_factory=BoundConfig)
    rate: RateConfig = dataclasses.field(default_factory=RateConfig)
    nan_policy: str = field(DEFAULT_NAN_POLICY, "what a training step with a NaN or Inf per-domain gradient "
                            "does: 'raise' stops with an error naming the step, domain and coordinate; "
                            "'skip' skips the step, counts it and logs it", choices=NAN_POLICIES)


# Smaller sweeps for ``iga report --quick`` (about a minute on 2 cores).
QUICK_OVERRIDES = {
    "training": {"steps": 1000},
    "bound": {"K_grid": [2, 4, 8, 16, 32, 64, 128], "n_seeds": 10, "iga_steps": 400, "n_boot": 500},
    "rate": {"T_grid": [128, 256, 512, 1024, 2048], "n_seeds": 4},
}


def merge(base: dict, overrides: dict) -> dict:
    """Recursively merge plain-data ``overrides`` into a copy of ``base``."""
    merged = dict(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def load_report_config(path=None, quick: bool = False) -> ReportConfig:
    """Default configuration, with the ``--quick`` sizes and then the file's values applied.

    Raises `iga_theory.config.ConfigError` naming the key, the value and the allowed
    range for an unknown key, a wrong type or an out-of-range value.
    """
    data = to_dict(ReportConfig())
    if quick:
        data = merge(data, QUICK_OVERRIDES)
    if path is not None:
        data = merge(data, read_config_file(path))
    return from_dict(ReportConfig, data)
