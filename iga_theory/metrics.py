r"""Consistency metrics over isomer sets: the Logical Consistency Score and answer consistency.

An isomer set is one latent problem rendered in K domains (K surfaces of the same
question). Given, for each of ``n_sets`` sets, the K representations or predictions a
model produced:

.. math::

    \mathrm{LCS} = \frac1{|S|} \sum_S \frac1K \sum_{k=1}^K \lVert h_k - \bar h_S \rVert^2,
    \qquad \bar h_S = \frac1K \sum_k h_k ,

lower is better. ``h`` is normalised first, so that LCS lies in [0, 1]:

* representation vectors, ``h`` of shape ``(n_sets, K, dim)``: each vector is divided
  by its Euclidean norm, and then ``(1/K) sum_k |h_k - hbar|^2 = 1 - |hbar|^2``;
* scalar predictions, ``h`` of shape ``(n_sets, K)``: every prediction is divided by
  the root mean square of all ``n_sets * K`` predictions, so that the mean of ``h^2`` is
  1 and the within-set variance averages to at most 1.

Answer consistency is the share of isomer sets on which all K answers are equal
(higher is better).
"""

from __future__ import annotations

import numpy as np

# A representation vector with norm below this (relative to the largest norm in the
# batch) has no direction, because normalising it would turn rounding noise into a
# unit vector.
ZERO_NORM_RTOL = 1e-12


def _as_float(name: str, h) -> np.ndarray:
    h = np.asarray(h)
    if not (np.issubdtype(h.dtype, np.floating) or np.issubdtype(h.dtype, np.integer)):
        raise TypeError(f"{name} must be a numeric array; got dtype {h.dtype}")
    h = h.astype(np.float64)
    if not np.all(np.isfinite(h)):
        raise ValueError(f"{name} contains NaN or Inf; pass finite predictions or representations")
    return h


def _check_sets(name: str, shape: tuple[int, ...], ndims: tuple[int, ...]) -> None:
    if len(shape) not in ndims:
        raise ValueError(
            f"{name} must have shape (n_sets, K) for scalar predictions or (n_sets, K, dim) for "
            f"representations; got shape {shape}"
        )
    if shape[0] < 1 or shape[1] < 2 or any(size < 1 for size in shape[2:]):
        raise ValueError(
            f"{name} needs at least one isomer set of K >= 2 renderings; got shape {shape}"
        )


def normalize_representations(h) -> np.ndarray:
    """Unit-normalise each representation vector of ``h`` (n_sets, K, dim).

    Raises ValueError when a vector has (numerically) zero norm, since it has no direction.
    """
    h = _as_float("h", h)
    _check_sets("h", h.shape, (3,))
    norms = np.linalg.norm(h, axis=-1, keepdims=True)
    scale = float(norms.max())
    if scale == 0.0 or np.any(norms <= ZERO_NORM_RTOL * scale):
        raise ValueError(
            "h contains a representation vector of zero norm, which has no direction; "
            "drop it or use a representation that is never zero"
        )
    return h / norms


def normalize_predictions(f) -> np.ndarray:
    """Divide scalar predictions ``f`` (n_sets, K) by their root mean square over all entries.

    All-zero predictions are returned unchanged (every set is then trivially consistent).
    """
    f = _as_float("predictions", f)
    _check_sets("predictions", f.shape, (2,))
    rms = float(np.sqrt(np.mean(f * f)))
    return f if rms == 0.0 else f / rms


def per_set_lcs(h) -> np.ndarray:
    """LCS of each isomer set, ``(1/K) sum_k |h_k - hbar_S|^2`` after normalisation; shape (n_sets,).

    Parameters
    ----------
    h : array_like, shape (n_sets, K) or (n_sets, K, dim)
        Scalar predictions or representation vectors (see the module docstring).

    Returns
    -------
    ndarray, shape (n_sets,), float64, values in [0, 1] for representations; their
    mean lies in [0, 1] for scalar predictions.
    """
    h = np.asarray(h)
    if h.ndim == 2:
        u = normalize_predictions(h)[..., None]
    else:
        u = normalize_representations(h)
    centred = u - u.mean(axis=1, keepdims=True)
    return (centred * centred).sum(axis=-1).mean(axis=1)


def logical_consistency_score(h) -> float:
    """Logical Consistency Score: the mean of `per_set_lcs` over isomer sets (lower is better).

    ``h`` has shape (n_sets, K) for scalar predictions (divided by their root mean
    square) or (n_sets, K, dim) for representations (unit-normalised). Returns a float
    in [0, 1]: 0 when every set's K renderings give the same normalised output.
    """
    return float(np.mean(per_set_lcs(h)))


def answer_consistency(answers, atol: float | None = None) -> float:
    """Share of isomer sets on which all K answers agree (higher is better).

    Parameters
    ----------
    answers : array_like, shape (n_sets, K)
        One answer per rendering: labels, integers, strings, or floats.
    atol : float, optional
        For float answers, treat answers within ``atol`` of each other as equal (the set
        agrees when ``max - min <= atol``). None compares exactly.

    Returns
    -------
    float in [0, 1]
    """
    answers = np.asarray(answers)
    _check_sets("answers", answers.shape, (2,))
    if atol is None:
        agree = np.all(answers == answers[:, :1], axis=1)
    else:
        if not (isinstance(atol, (int, float)) and atol >= 0 and np.isfinite(atol)):
            raise ValueError(f"atol must be a finite number >= 0; got {atol!r}")
        values = _as_float("answers", answers)
        agree = (values.max(axis=1) - values.min(axis=1)) <= atol
    return float(np.mean(agree))
