"""What a training loop does when a per-domain gradient or statistic contains NaN or Inf.

A NaN policy is chosen by name:

=========  ==========================================================================
policy     on a non-finite value
=========  ==========================================================================
``raise``  (default) raise `NonFiniteError` naming the step, every offending domain
           and parameter, and how many entries are NaN or Inf
``skip``   the caller skips the step (no parameter or state update); the guard counts
           it and logs a warning with the step, domain and parameter names
=========  ==========================================================================

A training loop creates one `NanGuard` per run and calls `NanGuard.check` on the
values of each step before using them::

    guard = NanGuard("skip")
    for t in range(steps):
        g = per_domain_gradients(theta)            # (K, P)
        if not guard.check({"theta": g}, step=t):
            continue                               # step skipped, counted and logged
        theta = theta - eta * direction(g)
    guard.summary()      # {"policy": "skip", "skipped_steps": ..., "skipped_at": [...]}

The values may be numpy arrays or torch tensors (any floating dtype, any device), or a
mapping from parameter names to them. Each has the domains on axis 0, shape
``(K, ...)``; with ``per_domain=False`` the values are cross-domain statistics (mu, s2)
without a domain axis. On the common path, where everything is finite, the check costs
one ``isfinite`` reduction per parameter (and, for a tensor, one device sync).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from iga_theory.errors import NonFiniteError

logger = logging.getLogger(__name__)

DEFAULT_NAN_POLICY = "raise"
# Skipped steps logged at WARNING level. Later ones are counted and logged at DEBUG
# level only, so that a run that skips every step does not flood the log.
MAX_LOGGED_SKIPS = 20
# Skipped steps whose details (domains, parameters, counts) are kept in `NanGuard.events`.
MAX_RECORDED_EVENTS = 1000
# Entries spelled out in one message; the rest are summarised by their number.
MAX_DESCRIBED_ENTRIES = 8
# Name of the values when a bare array or tensor is checked.
DEFAULT_PARAMETER_NAME = "gradient"


@dataclass(frozen=True)
class NonFiniteEntry:
    """Non-finite values of one parameter in one domain.

    Attributes
    ----------
    parameter : str
        Name of the parameter (the key of the checked mapping).
    domain : str or None
        Name of the domain, or None for a cross-domain statistic.
    n_nan, n_inf : int
        Numbers of NaN and of +-Inf entries.
    size : int
        Entries of the parameter in that domain.
    first_index : tuple of int
        Index (within the domain's slice) of the first non-finite entry, in C order.
    """

    parameter: str
    domain: str | None
    n_nan: int
    n_inf: int
    size: int
    first_index: tuple[int, ...]

    def describe(self) -> str:
        """Return one phrase naming the parameter, the domain and the counts."""
        where = "cross-domain statistic" if self.domain is None else f"domain {self.domain!r}"
        return (f"parameter {self.parameter!r} in {where}: {self.n_nan} NaN and {self.n_inf} Inf "
                f"of {self.size} entries, first at index {self.first_index}")


@dataclass(frozen=True)
class SkippedStep:
    """A step skipped by the ``skip`` policy, with what was non-finite in it."""

    step: int | None
    entries: tuple[NonFiniteEntry, ...]


def _torch_tensor_type():
    """``torch.Tensor`` if torch is already imported, else None (torch is never imported here)."""
    torch = sys.modules.get("torch")
    return None if torch is None else torch.Tensor


def _as_named_values(values, name: str) -> dict[str, object]:
    """Turn one array/tensor or a mapping of them into a non-empty ``{name: values}`` dict."""
    if isinstance(values, Mapping):
        if not values:
            raise ValueError("values is an empty mapping; pass at least one parameter's gradients")
        named = dict(values)
    else:
        named = {name: values}
    tensor_type = _torch_tensor_type()
    for key, value in named.items():
        if not isinstance(key, str):
            raise TypeError(f"parameter names must be strings; got {key!r} of type {type(key).__name__}")
        if tensor_type is not None and isinstance(value, tensor_type):
            continue
        if not isinstance(value, np.ndarray):
            raise TypeError(
                f"values of parameter {key!r} must be a numpy array or a torch tensor; got "
                f"{type(value).__name__}. Convert lists with np.asarray first."
            )
        if not (np.issubdtype(value.dtype, np.number) or value.dtype == np.bool_):
            raise TypeError(f"values of parameter {key!r} must be numeric; got dtype {value.dtype}")
    return named


def _per_domain_counts(value, per_domain: bool):
    """``(n_nan, n_inf, first_bad)`` per domain (rows) as numpy arrays, for one array or tensor."""
    tensor_type = _torch_tensor_type()
    if tensor_type is not None and isinstance(value, tensor_type):
        flat = value.detach().reshape(value.shape[0], -1) if per_domain else value.detach().reshape(1, -1)
        if not flat.is_floating_point() and not flat.is_complex():
            return None
        nan = flat.isnan()
        inf = flat.isinf()
        torch = sys.modules["torch"]
        first = (nan | inf).to(torch.uint8).argmax(dim=1)  # argmax is not defined for bool
        return (nan.sum(dim=1).cpu().numpy(), inf.sum(dim=1).cpu().numpy(),
                first.cpu().numpy(), flat.shape[1])
    flat = value.reshape(value.shape[0], -1) if per_domain else value.reshape(1, -1)
    if not np.issubdtype(flat.dtype, np.inexact):
        return None
    nan = np.isnan(flat)
    inf = np.isinf(flat)
    return nan.sum(axis=1), inf.sum(axis=1), (nan | inf).argmax(axis=1), flat.shape[1]


def _all_finite(value) -> bool:
    """Fast path: one reduction, no per-domain breakdown."""
    tensor_type = _torch_tensor_type()
    if tensor_type is not None and isinstance(value, tensor_type):
        if not (value.is_floating_point() or value.is_complex()):
            return True
        return bool(value.detach().isfinite().all().item())
    if not np.issubdtype(value.dtype, np.inexact):
        return True
    return bool(np.isfinite(value).all())


def find_non_finite(values, *, domains: Sequence[str] | None = None, per_domain: bool = True,
                    name: str = DEFAULT_PARAMETER_NAME) -> list[NonFiniteEntry]:
    """List every (parameter, domain) pair whose values hold NaN or Inf.

    Parameters
    ----------
    values : ndarray or torch.Tensor or mapping of str to them
        Per-domain values of shape ``(K, ...)`` (``per_domain=True``), or cross-domain
        statistics of any shape (``per_domain=False``). A bare array is named ``name``.
        Integer and boolean values are always finite.
    domains : sequence of str, optional
        Names of the K domains, in the order of axis 0; default ``"0"``, ``"1"``, ....
    per_domain : bool
        Whether axis 0 indexes domains.
    name : str
        Parameter name of a bare array or tensor.

    Returns
    -------
    list of NonFiniteEntry
        Empty when everything is finite; otherwise in parameter order, then domain order.
    """
    named = _as_named_values(values, name)
    entries = []
    for parameter, value in named.items():
        if per_domain and len(value.shape) == 0:
            raise ValueError(
                f"values of parameter {parameter!r} must have shape (n_domains, ...) with the domains "
                "on axis 0; got a scalar. Pass per_domain=False for cross-domain statistics."
            )
        if _all_finite(value):
            continue
        n_domains = value.shape[0] if per_domain else 1
        if per_domain and domains is not None and len(domains) != n_domains:
            raise ValueError(
                f"domains has {len(domains)} name(s) but parameter {parameter!r} has "
                f"{n_domains} on axis 0 (shape {tuple(value.shape)}); pass one name per domain"
            )
        n_nan, n_inf, first, size = _per_domain_counts(value, per_domain)
        inner_shape = tuple(value.shape[1:]) if per_domain else tuple(value.shape)
        for row in range(n_domains):
            if n_nan[row] + n_inf[row] == 0:
                continue
            if not per_domain:
                domain = None
            elif domains is not None:
                domain = str(domains[row])
            else:
                domain = str(row)
            index = tuple(int(i) for i in np.unravel_index(int(first[row]), inner_shape)) if inner_shape else ()
            entries.append(NonFiniteEntry(parameter, domain, int(n_nan[row]), int(n_inf[row]), int(size), index))
    return entries


def _describe_step(step: int | None) -> str:
    return "" if step is None else f" at step {step}"


def _describe_entries(entries: list[NonFiniteEntry]) -> str:
    text = "; ".join(entry.describe() for entry in entries[:MAX_DESCRIBED_ENTRIES])
    if len(entries) > MAX_DESCRIBED_ENTRIES:
        text += f"; and {len(entries) - MAX_DESCRIBED_ENTRIES} more (parameter, domain) pair(s)"
    return text


def _handle_raise(guard: "NanGuard", entries: list[NonFiniteEntry], step: int | None) -> bool:
    details = _describe_entries(entries)
    raise NonFiniteError(
        f"non-finite {guard.quantity}{_describe_step(step)}: {details}. Lower the learning rate or check "
        "the loss and the data of that domain, or pass nan_policy='skip' to skip such steps"
    )


def _handle_skip(guard: "NanGuard", entries: list[NonFiniteEntry], step: int | None) -> bool:
    guard.skipped_steps += 1
    if len(guard.skipped_at) < MAX_RECORDED_EVENTS:
        guard.skipped_at.append(step)
        guard.events.append(SkippedStep(step, tuple(entries)))
    details = _describe_entries(entries)
    if guard.skipped_steps <= MAX_LOGGED_SKIPS:
        guard.logger.warning("skipping%s (nan_policy='skip', %d skipped so far): non-finite %s: %s",
                             _describe_step(step), guard.skipped_steps, guard.quantity, details)
        if guard.skipped_steps == MAX_LOGGED_SKIPS:
            guard.logger.warning("further skipped steps are counted and logged at DEBUG level only")
    else:
        guard.logger.debug("skipping%s (nan_policy='skip', %d skipped so far): non-finite %s: %s",
                           _describe_step(step), guard.skipped_steps, guard.quantity, details)
    return False


# Policy name -> handler called with the non-finite entries; returns whether to take the step.
_HANDLERS = {"raise": _handle_raise, "skip": _handle_skip}
NAN_POLICIES = tuple(_HANDLERS)


def check_nan_policy(policy) -> str:
    """Return ``policy`` after checking that it names a NaN policy."""
    if not isinstance(policy, str) or policy not in _HANDLERS:
        raise ValueError(f"nan_policy must be one of {list(NAN_POLICIES)}; got {policy!r}")
    return policy


@dataclass
class NanGuard:
    """Per-run state of a NaN policy: checks each step's values and counts skipped steps.

    Parameters
    ----------
    policy : {"raise", "skip"}
        What to do with a non-finite value (see the module docstring).
    quantity : str
        Noun for the checked values in messages (``"gradient"``, ``"statistic"``, ...).
    logger : logging.Logger, optional
        Where skipped steps are logged; default this module's logger.

    Attributes
    ----------
    skipped_steps : int
        Steps skipped so far (every one, also past `MAX_RECORDED_EVENTS`).
    skipped_at : list of int or None
        Step numbers of the first `MAX_RECORDED_EVENTS` skipped steps.
    events : list of SkippedStep
        Their details.
    """

    policy: str = DEFAULT_NAN_POLICY
    quantity: str = "gradient"
    logger: logging.Logger = field(default=logger, repr=False)
    skipped_steps: int = 0
    skipped_at: list = field(default_factory=list)
    events: list = field(default_factory=list, repr=False)

    def __post_init__(self):
        check_nan_policy(self.policy)

    def check(self, values, *, step: int | None = None, domains: Sequence[str] | None = None,
              per_domain: bool = True, name: str = DEFAULT_PARAMETER_NAME) -> bool:
        """Return True when every value is finite, so the step may be taken.

        Otherwise apply the policy. ``raise`` raises `NonFiniteError` naming the step,
        the domains and the parameters. ``skip`` counts and logs the step and returns
        False, and the caller must then leave its parameters and state unchanged. The
        arguments are those of `find_non_finite`, and ``step`` only labels messages.
        """
        entries = find_non_finite(values, domains=domains, per_domain=per_domain, name=name)
        if not entries:
            return True
        return _HANDLERS[self.policy](self, entries, step)

    def summary(self) -> dict:
        """Plain-data summary for a results file: policy, count and steps of the skips."""
        return {"policy": self.policy, "skipped_steps": self.skipped_steps, "skipped_at": list(self.skipped_at)}


def nan_guard(policy: "str | NanGuard" = DEFAULT_NAN_POLICY, **kwargs) -> NanGuard:
    """Create a `NanGuard` for a policy name, or return ``policy`` itself when it is a guard.

    Passing a guard lets a caller share one count across several loops.
    """
    if isinstance(policy, NanGuard):
        return policy
    return NanGuard(check_nan_policy(policy), **kwargs)
