"""Package warning class and the input checks shared by every public entry point.

Each check raises with a message that names the argument, the value received and
what to do instead: ``ValueError`` for bad values, ``TypeError`` for bad types.
"""

from __future__ import annotations

import numbers

import numpy as np


class IGAWarning(UserWarning):
    """Warning for inputs that are allowed but probably unintended."""


class NonFiniteError(ValueError):
    """A gradient, matrix or statistic contains NaN or Inf."""


def check_finite(name: str, array) -> None:
    """Raise `NonFiniteError` when ``array`` (numpy or torch) has a NaN or Inf entry."""
    if hasattr(array, "isfinite") and not isinstance(array, np.ndarray):
        bad = int((~array.isfinite()).sum().item())  # torch tensor
        size = array.numel()
    else:
        values = np.asarray(array)
        bad = int(values.size - np.count_nonzero(np.isfinite(values)))
        size = values.size
    if bad:
        raise NonFiniteError(
            f"{name} contains {bad} non-finite value(s) (NaN or Inf) out of {size}; "
            "check the loss and learning rate, or use the nan_policy='skip' option "
            "where the caller offers it"
        )


def check_domain_stack(name: str, shape: tuple[int, ...], min_domains: int = 2) -> int:
    """Check that ``shape`` is ``(n_domains, ...)`` with enough domains and no empty axis.

    Returns the number of domains K. ``min_domains`` is 2 wherever a cross-domain
    variance is needed, because the unbiased variance divides by K - 1.
    """
    if len(shape) < 2:
        raise ValueError(
            f"{name} must have shape (n_domains, ...) with at least 2 axes; got shape "
            f"{tuple(shape)}. Stack one gradient per domain along axis 0."
        )
    n_domains = int(shape[0])
    if n_domains < min_domains:
        raise ValueError(
            f"{name} holds K = {n_domains} domain(s), but at least {min_domains} are "
            "needed: the cross-domain variance is undefined for a single domain"
        )
    if any(int(size) == 0 for size in shape[1:]):
        raise ValueError(f"{name} has an empty parameter axis: shape {tuple(shape)}")
    return n_domains


def check_positive_int(name: str, value, upper: int | None = None) -> int:
    """Return ``value`` as an int after checking ``1 <= value`` (and ``<= upper``)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer; got {value!r} of type {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1; got {value}")
    if upper is not None and value > upper:
        raise ValueError(f"{name} must be <= {upper}; got {value}")
    return int(value)


def check_in_range(name: str, value, low: float, high: float, *,
                   low_open: bool = False, high_open: bool = False) -> float:
    """Return ``value`` as a float after checking that it lies in the stated interval."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number; got {value!r} of type {type(value).__name__}")
    value = float(value)
    too_low = value <= low if low_open else value < low
    too_high = value >= high if high_open else value > high
    left = "(" if low_open else "["
    right = ")" if high_open else "]"
    if not np.isfinite(value):
        raise ValueError(f"{name} must be a finite number in {left}{low}, {high}{right}; got {value}")
    if too_low or too_high:
        raise ValueError(f"{name} must lie in {left}{low}, {high}{right}; got {value}")
    return value
