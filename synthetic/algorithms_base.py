r"""The algorithm contract of the comparison harness, its registry and hyperparameters.

Contract. An `Algorithm` owns a flat parameter vector ``theta`` (shape ``(P,)``) and an
optimizer. `Algorithm.step` takes one minibatch per training domain, stacked as
``X`` of shape ``(K, n, ...)`` and ``y`` of shape ``(K, n, ...)``, updates ``theta``
and returns a `StepResult`: the update ``theta_new - theta_old`` and a dict of float
diagnostics (``loss`` is always there). Subclasses implement one method,
`Algorithm.direction`, which returns a `Direction`:

* ``gradient``: what the optimizer is handed under the ``gradient`` placement;
* ``mean_gradient`` and ``multiplier`` (mask methods only): under the ``update``
  placement the optimizer computes its step from the unmasked ``mean_gradient``.
  The step is then multiplied elementwise by ``multiplier``, so a coordinate whose
  multiplier is 0 does not move under any optimizer. Adam divides each coordinate
  by its own running root mean square, so a mask applied to the gradient cancels:
  ``(m mu) / sqrt(m^2 v) = mu / sqrt(v)``. Only the ``update`` placement keeps a
  masked coordinate still under Adam. Under plain SGD both placements give the same
  step. Both are applied by `iga_theory.placement.MaskedOptimizer`.

Hyperparameters. Each is declared once, as an `HParam` with a default and a search
distribution. Draw number 0 of a sweep is the defaults. Draw ``s > 0`` samples every
hyperparameter from a generator seeded by ``(s, crc32(name))``, so adding a
hyperparameter never changes the values drawn for the others. Every algorithm that
shares a name (for example ``lr_factor``) gets the same draw for the same ``s``.
"""

from __future__ import annotations

import logging
import zlib
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

import numpy as np
import torch

from iga_theory.errors import NonFiniteError, check_positive_int
from iga_theory.placement import MaskedOptimizer
from iga_theory.synthetic.per_domain import Predictor, check_domain_batches

logger = logging.getLogger(__name__)

PLACEMENTS = ("gradient", "update")
NAN_POLICIES = ("raise", "skip")


# ----- search distributions ---------------------------------------------------------------


@dataclass(frozen=True)
class LogUniform:
    """``10 ** U(low, high)``: a log-uniform draw between 10^low and 10^high."""

    low: float
    high: float

    def sample(self, rng: np.random.Generator) -> float:
        return float(10.0 ** rng.uniform(self.low, self.high))

    def describe(self) -> str:
        return f"10^U({self.low:g}, {self.high:g})"


@dataclass(frozen=True)
class IntLogUniform:
    """``floor(10 ** U(low, high))``: an integer, log-uniform between 10^low and 10^high."""

    low: float
    high: float

    def sample(self, rng: np.random.Generator) -> int:
        return int(10.0 ** rng.uniform(self.low, self.high))

    def describe(self) -> str:
        return f"int(10^U({self.low:g}, {self.high:g}))"


@dataclass(frozen=True)
class Uniform:
    """``U(low, high)``."""

    low: float
    high: float

    def sample(self, rng: np.random.Generator) -> float:
        return float(rng.uniform(self.low, self.high))

    def describe(self) -> str:
        return f"U({self.low:g}, {self.high:g})"


@dataclass(frozen=True)
class Choice:
    """A uniform draw from a finite set of values."""

    options: tuple

    def sample(self, rng: np.random.Generator):
        value = self.options[int(rng.integers(len(self.options)))]
        return value.item() if isinstance(value, np.generic) else value

    def describe(self) -> str:
        return "{" + ", ".join(repr(option) for option in self.options) + "}"


@dataclass(frozen=True)
class HParam:
    """One hyperparameter: name, default, search distribution and help text."""

    name: str
    default: Any
    search: Any
    help: str


def hparam_rng(hparam_seed: int, name: str) -> np.random.Generator:
    """Generator of draw ``hparam_seed`` for the hyperparameter ``name`` (seeded by its name)."""
    return np.random.default_rng([int(hparam_seed), zlib.crc32(name.encode("utf-8"))])


def draw_hparams(declarations: tuple[HParam, ...], hparam_seed: int) -> dict[str, Any]:
    """Hyperparameters of draw ``hparam_seed``: the defaults for 0, a seeded sample otherwise."""
    if isinstance(hparam_seed, bool) or not isinstance(hparam_seed, (int, np.integer)) or hparam_seed < 0:
        raise ValueError(f"hparam_seed must be an integer >= 0 (0 = defaults); got {hparam_seed!r}")
    if hparam_seed == 0:
        return {h.name: h.default for h in declarations}
    return {h.name: h.search.sample(hparam_rng(hparam_seed, h.name)) for h in declarations}


# Shared by every algorithm: the learning rate is the benchmark's base rate for the
# optimizer times this factor, so one declaration serves SGD and Adam on every model.
BASE_HPARAMS: tuple[HParam, ...] = (
    HParam("lr_factor", 1.0, LogUniform(-0.5, 0.5),
           "learning rate as a multiple of the benchmark's base rate for the optimizer"),
)


# ----- optimizers ---------------------------------------------------------------------------

OPTIMIZERS: dict[str, Callable[[list[torch.Tensor], float], torch.optim.Optimizer]] = {
    "sgd": lambda params, lr: torch.optim.SGD(params, lr=lr),
    "adam": lambda params, lr: torch.optim.Adam(params, lr=lr),
}


@dataclass
class Direction:
    """Quantities that one step hands to the optimizer (see the module docstring).

    Attributes
    ----------
    gradient : Tensor, shape (P,)
        The gradient the optimizer receives under the ``gradient`` placement.
    diagnostics : dict of str -> float
    mean_gradient : Tensor (P,) or None
        Unmasked mean gradient, used under the ``update`` placement (mask methods).
    multiplier : Tensor (P,) or None
        Elementwise factor that the ``update`` placement applies to the step.
    """

    gradient: torch.Tensor
    diagnostics: dict[str, float]
    mean_gradient: torch.Tensor | None = None
    multiplier: torch.Tensor | None = None


@dataclass
class StepResult:
    """Result of one `Algorithm.step`: the update applied to theta, and diagnostics."""

    update: torch.Tensor
    diagnostics: dict[str, float] = field(default_factory=dict)


# ----- the base class -----------------------------------------------------------------------

ALGORITHMS: dict[str, type["Algorithm"]] = {}


def register_algorithm(cls: type["Algorithm"]) -> type["Algorithm"]:
    """Class decorator: add ``cls`` to `ALGORITHMS` under ``cls.name``."""
    if not cls.name or cls.name in ALGORITHMS:
        raise ValueError(f"algorithm name {cls.name!r} is empty or already registered")
    ALGORITHMS[cls.name] = cls
    return cls


def algorithm_class(name: str) -> type["Algorithm"]:
    """Look up the registered algorithm ``name``."""
    if name not in ALGORITHMS:
        raise ValueError(f"unknown algorithm {name!r}; choose one of {sorted(ALGORITHMS)}")
    return ALGORITHMS[name]


class Algorithm:
    """Base class: one optimizer over a flat ``theta``, one step per set of domain batches.

    Parameters
    ----------
    predictor : Predictor
        The model as a pure function of ``theta``.
    n_domains : int
        K, the number of training domains (batches per step); K >= 2.
    hparams : dict, optional
        Values for the declared hyperparameters; missing ones take their defaults,
        unknown names raise ValueError.
    optimizer : {"sgd", "adam"}
    placement : {"gradient", "update"}
        Where a mask method's elementwise multiplier acts (see the module docstring).
        Methods without a mask accept only ``"gradient"``.
    base_lr : float, > 0
        Base learning rate; the optimizer uses ``base_lr * hparams["lr_factor"]``.
    seed : int
        Seeds the initial parameters and any randomness of the method.
    nan_policy : {"raise", "skip"}
        On a non-finite direction: raise `NonFiniteError` (default), or skip the
        step and count it in the ``skipped`` diagnostic.
    """

    name: ClassVar[str] = ""
    source: ClassVar[str] = ""
    HPARAMS: ClassVar[tuple[HParam, ...]] = ()
    # True: an elementwise multiplier on theta exists, so both placements apply.
    has_mask: ClassVar[bool] = False
    # True: the method needs a LoRA predictor (``predictor.lora``).
    requires_lora: ClassVar[bool] = False
    # Optimizers of the sweep's variants for methods without a mask.
    optimizers: ClassVar[tuple[str, ...]] = ("adam",)

    def __init__(self, predictor: Predictor, n_domains: int, hparams: dict | None = None, *,
                 optimizer: str = "adam", placement: str = "gradient", base_lr: float = 1e-2,
                 seed: int = 0, nan_policy: str = "raise", dtype: torch.dtype = torch.float64):
        if not isinstance(predictor, Predictor):
            raise TypeError(f"predictor must be a Predictor; got {type(predictor).__name__}")
        self.n_domains = check_positive_int("n_domains", n_domains)
        if self.n_domains < 2:
            raise ValueError(f"n_domains must be >= 2 for a multi-domain method; got {n_domains}")
        if optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {sorted(OPTIMIZERS)}; got {optimizer!r}")
        if placement not in PLACEMENTS:
            raise ValueError(f"placement must be one of {PLACEMENTS}; got {placement!r}")
        if placement == "update" and not self.has_mask:
            raise ValueError(
                f"placement='update' applies a mask to the optimizer's step, but {self.name} has no "
                "mask; use placement='gradient'"
            )
        if nan_policy not in NAN_POLICIES:
            raise ValueError(f"nan_policy must be one of {NAN_POLICIES}; got {nan_policy!r}")
        if not (isinstance(base_lr, (int, float)) and np.isfinite(base_lr) and base_lr > 0):
            raise ValueError(f"base_lr must be a finite number > 0; got {base_lr!r}")

        self.predictor = predictor
        self.hparams = self.resolve_hparams(hparams)
        self.optimizer_name = optimizer
        self.placement = placement
        self.nan_policy = nan_policy
        self.lr = float(base_lr) * float(self.hparams["lr_factor"])
        self.rng = np.random.default_rng(seed)
        self.generator = torch.Generator().manual_seed(int(seed))
        initial = np.asarray(predictor.init(self.rng), dtype=np.float64)
        if initial.shape != (predictor.n_params,):
            raise ValueError(f"predictor.init returned shape {initial.shape}; expected ({predictor.n_params},)")
        self.theta = torch.nn.Parameter(torch.as_tensor(initial, dtype=dtype))
        self.reset_optimizer()
        self.step_count = 0
        self.skipped = 0

    # ----- hyperparameters --------------------------------------------------------------

    @classmethod
    def hparam_declarations(cls) -> tuple[HParam, ...]:
        """Return the shared hyperparameter declarations followed by the method's own."""
        return BASE_HPARAMS + cls.HPARAMS

    @classmethod
    def default_hparams(cls) -> dict[str, Any]:
        return draw_hparams(cls.hparam_declarations(), 0)

    @classmethod
    def random_hparams(cls, hparam_seed: int) -> dict[str, Any]:
        return draw_hparams(cls.hparam_declarations(), hparam_seed)

    @classmethod
    def resolve_hparams(cls, hparams: dict | None) -> dict[str, Any]:
        """Defaults overridden by ``hparams``; unknown names raise ValueError."""
        resolved = cls.default_hparams()
        unknown = sorted(set(hparams or {}) - set(resolved))
        if unknown:
            raise ValueError(
                f"unknown hyperparameter(s) {unknown} for {cls.name}; allowed: {sorted(resolved)}"
            )
        resolved.update(hparams or {})
        return resolved

    # ----- optimization -----------------------------------------------------------------

    def reset_optimizer(self) -> None:
        """Start a fresh optimizer state (used when a penalty weight jumps)."""
        self.optimizer = OPTIMIZERS[self.optimizer_name]([self.theta], self.lr)
        self.masked_optimizer = MaskedOptimizer(self.optimizer, placement=self.placement)

    def direction(self, X: torch.Tensor, y: torch.Tensor) -> Direction:
        """Compute the step direction from one batch per domain; subclasses implement it."""
        raise NotImplementedError

    def step(self, X: torch.Tensor, y: torch.Tensor) -> StepResult:
        """Take one optimization step on one minibatch per domain.

        Parameters
        ----------
        X : Tensor, shape (K, n, ...), float
        y : Tensor, shape (K, n, ...), float

        Returns
        -------
        StepResult
            ``update`` of shape (P,) and float diagnostics.
        """
        K, _ = check_domain_batches(X, y)
        if K != self.n_domains:
            raise ValueError(f"expected one batch per training domain (K = {self.n_domains}); got K = {K}")
        before = self.theta.detach().clone()

        # Direction of the method (computed at a detached theta: no graph is kept).
        direction = self.direction(X, y)
        diagnostics = dict(direction.diagnostics)
        if not bool(torch.isfinite(direction.gradient).all()):
            if self.nan_policy == "raise":
                raise NonFiniteError(
                    f"{self.name}: non-finite direction at step {self.step_count}; lower the learning "
                    "rate or the penalty weight, or pass nan_policy='skip'"
                )
            self.skipped += 1
            self.step_count += 1
            diagnostics["skipped"] = float(self.skipped)
            return StepResult(update=torch.zeros_like(before), diagnostics=diagnostics)

        # Optimizer step; a mask method hands its multiplier to the placement wrapper, which
        # masks the mean gradient (``gradient``) or the optimizer's change (``update``).
        if direction.multiplier is None:
            self.theta.grad = direction.gradient.detach().clone()
            self.optimizer.step()
        else:
            self.theta.grad = direction.mean_gradient.detach().clone()
            self.masked_optimizer.step({self.theta: direction.multiplier})

        self.step_count += 1
        diagnostics["skipped"] = float(self.skipped)
        return StepResult(update=self.theta.detach() - before, diagnostics=diagnostics)

    # ----- evaluation -------------------------------------------------------------------

    def parameters(self) -> np.ndarray:
        """Current theta as a float64 numpy array of shape (P,)."""
        return self.theta.detach().cpu().numpy().astype(np.float64)

    @torch.no_grad()
    def predict(self, X: torch.Tensor) -> torch.Tensor:
        """Predictions ``f(X)`` of the current theta; X of shape (n, ...)."""
        return self.predictor.forward(self.theta.detach(), X)
