"""Fused numba kernels for the conflict mask: same numbers as `iga_theory.mask`, fewer passes.

The numpy reference makes about ten passes over the ``(K, P)`` gradient block
(mean, difference, square, sum, score, sigmoid, ...). These kernels read the block
once, in blocks of ``BLOCK`` coordinates that stay in cache while both passes of the
two-pass variance run over them, and split the work across threads with
``numba.prange``:

1. `_moments_kernel` reads ``g`` once and writes ``mu`` and ``s2`` (2 P values) and
   the float64 sum of ``mu^2 + s2`` that the relative eps needs;
2. `_mask_kernel` reads ``mu`` and ``s2`` and writes the mask (and ``d = m * mu``).

With an absolute eps (``eps=`` a number) the two steps fuse into one pass
(`_fused_mask_kernel`), because no statistic of the whole tensor is needed first.

Each coordinate follows the reference's order of operations: domains summed in
order ``e = 0 .. K-1``, everything in the gradients' dtype. ``fastmath`` stays off so
that LLVM does not reassociate the sums or fuse multiply-adds, which keeps ``mu`` and
``s2`` equal to the reference's bit for bit whenever numpy also sums in that order
(for P > 1; with P = 1 numpy sums the contiguous axis pairwise). The float32
exponential is a polynomial that LLVM can vectorise (`_exp_nonpositive_f32`), so the
mask differs from the reference's by a few units in the last place.

Finiteness is checked on the outputs, not on ``g``: a NaN or Inf gradient makes the
float64 total of ``mu^2 + s2`` non-finite, and only then is ``g`` scanned to count
the bad entries for the error message. This saves a full pass over ``g``.

Kernels compile on first use for float32 and float64 and are cached on disk
(``cache=True``). ``g`` is made C-contiguous first, which copies it when it is not.
"""

from __future__ import annotations

import math

import numba
import numpy as np
from scipy import special

from iga_theory.errors import NonFiniteError, check_domain_stack, check_finite, check_in_range
from iga_theory.mask import (
    CONFLICT_SCORES,
    DEFAULT_EPS_REL,
    DEFAULT_KAPPA0,
    VARIANCE_DIVISORS,
    _as_float_array,
    _check_variance,
    _domain_mean,
    check_mask_parameters,
    default_tau,
)

# Coordinates per block: K * BLOCK values (128 KiB for K = 8 in float32) stay in the
# L2 cache between the two passes of the variance.
BLOCK = 4096
# Independent float64 partial sums for the total of mu^2 + s2: without fastmath LLVM
# may not reorder one running sum, so separate lanes let it vectorise the loop.
LANES = 16

# Constants of the float32 exponential below (Cody-Waite range reduction).
_LOG2E = np.float32(1.4426950408889634)
_LN2_HI = np.float32(0.693359375)  # ln 2 rounded to 10 bits, so k * _LN2_HI is exact
_LN2_LO = np.float32(-2.12194440e-4)  # ln 2 - _LN2_HI
_ROUND_MAGIC = np.float32(12582912.0)  # 1.5 * 2^23: adding and subtracting it rounds to an integer
_EXP_MIN_ARG = np.float32(-87.33654)  # ln of the smallest normal float32


@numba.njit(inline="always", error_model="numpy")
def _exp_nonpositive_f32(x, out, bits):  # pragma: no cover - compiled
    """``out = exp(x)`` for float32 ``x <= 0``, vectorisable (no libm call).

    Range reduction ``x = k ln 2 + r`` with ``|r| <= ln(2)/2`` and a degree-7 Taylor
    polynomial (truncation error below 2e-9 relative), then scaling by ``2^k`` built
    from its bit pattern. Results below the smallest normal float32 are flushed to 0.
    ``out`` may alias ``x``; ``bits`` is int32 scratch space of the same length.
    """
    n = x.shape[0]
    for i in range(n):
        xi = max(x[i], _EXP_MIN_ARG)
        kf = (xi * _LOG2E + _ROUND_MAGIC) - _ROUND_MAGIC
        r = (xi - kf * _LN2_HI) - kf * _LN2_LO
        p = np.float32(1.0 / 5040.0)
        p = p * r + np.float32(1.0 / 720.0)
        p = p * r + np.float32(1.0 / 120.0)
        p = p * r + np.float32(1.0 / 24.0)
        p = p * r + np.float32(1.0 / 6.0)
        p = p * r + np.float32(0.5)
        p = p * r + np.float32(1.0)
        p = p * r + np.float32(1.0)
        bits[i] = (np.int32(kf) + np.int32(127)) << np.int32(23)
        out[i] = p if x[i] >= _EXP_MIN_ARG else np.float32(0.0)
    scale = bits.view(np.float32)
    for i in range(n):
        out[i] = out[i] * scale[i]


@numba.njit(inline="always", error_model="numpy")
def _block_moments(g, start, stop, K_t, divisor_t, m, v):  # pragma: no cover - compiled
    """Mean and variance of coordinates ``start:stop`` into ``m`` and ``v``; returns sum(m^2 + v)."""
    n = stop - start
    # Mean shifted by the first domain, as in the reference: exact when all agree.
    g0 = g[0, start:stop]
    m[:] = 0
    for e in range(1, g.shape[0]):
        row = g[e, start:stop]
        for i in range(n):
            m[i] += row[i] - g0[i]
    for i in range(n):
        m[i] = g0[i] + m[i] / K_t
    v[:] = 0
    for e in range(g.shape[0]):
        row = g[e, start:stop]
        for i in range(n):
            d = row[i] - m[i]
            v[i] += d * d
    for i in range(n):
        v[i] = v[i] / divisor_t
    lanes = np.zeros(LANES)
    n_lanes = n - n % LANES
    for i0 in range(0, n_lanes, LANES):
        for lane in range(LANES):
            x = float(m[i0 + lane])
            lanes[lane] += x * x + float(v[i0 + lane])
    partial = 0.0
    for i in range(n_lanes, n):
        x = float(m[i])
        partial += x * x + float(v[i])
    for lane in range(LANES):
        partial += lanes[lane]
    return partial


@numba.njit(parallel=True, cache=True, error_model="numpy")
def _moments_kernel(g, K_t, divisor_t, mu, s2):  # pragma: no cover - compiled
    P = g.shape[1]
    total = 0.0
    for b in numba.prange((P + BLOCK - 1) // BLOCK):
        start = b * BLOCK
        stop = min(start + BLOCK, P)
        total += _block_moments(g, start, stop, K_t, divisor_t, mu[start:stop], s2[start:stop])
    return total


@numba.njit(inline="always", error_model="numpy")
def _block_mask_f32(m, v, eps, tau, kappa0, m_min, span, sig_kappa0, out, z, t, bits):  # pragma: no cover
    """Float32 mask of one block; ``out`` may alias ``v``. z, t, bits: scratch arrays.

    ``span`` is ``1 - m_min`` rounded once from float64, as the reference rounds it.
    """
    one = np.float32(1.0)
    zero = np.float32(0.0)
    n = m.shape[0]
    for i in range(n):
        c = v[i] / (m[i] * m[i] + eps) if v[i] != zero else zero
        z[i] = kappa0 * (one - c / tau)
        t[i] = -abs(z[i])
    _exp_nonpositive_f32(t, t, bits)
    for i in range(n):
        s = one / (one + t[i]) if z[i] >= zero else t[i] / (one + t[i])
        ratio = s / sig_kappa0
        value = m_min + span * ratio
        if ratio >= one:
            value = one
        out[i] = min(max(value, m_min), one)


@numba.njit(inline="always", error_model="numpy")
def _block_mask_f64(m, v, eps, tau, kappa0, m_min, span, sig_kappa0, out):  # pragma: no cover
    """Float64 mask of one block with libm's exp; ``out`` may alias ``v``."""
    for i in range(m.shape[0]):
        c = v[i] / (m[i] * m[i] + eps) if v[i] != 0.0 else 0.0
        z = kappa0 * (1.0 - c / tau)
        ez = math.exp(-abs(z))
        s = 1.0 / (1.0 + ez) if z >= 0.0 else ez / (1.0 + ez)
        ratio = s / sig_kappa0
        value = m_min + span * ratio
        if ratio >= 1.0:
            value = 1.0
        out[i] = min(max(value, m_min), 1.0)


@numba.njit(parallel=True, cache=True, error_model="numpy")
def _mask_kernel_f32(mu, s2, eps, tau, kappa0, m_min, span, sig_kappa0, mask, direction):  # pragma: no cover
    # ``mask`` may alias ``s2`` and ``direction`` may alias ``mu``: each block is read
    # before it is written.
    P = mu.shape[0]
    write_direction = direction.shape[0] == P
    for b in numba.prange((P + BLOCK - 1) // BLOCK):
        start = b * BLOCK
        stop = min(start + BLOCK, P)
        n = stop - start
        z = np.empty(n, np.float32)
        t = np.empty(n, np.float32)
        bits = np.empty(n, np.int32)
        _block_mask_f32(mu[start:stop], s2[start:stop], eps, tau, kappa0, m_min, span, sig_kappa0,
                        mask[start:stop], z, t, bits)
        if write_direction:
            for j in range(start, stop):
                direction[j] = mask[j] * mu[j]


@numba.njit(parallel=True, cache=True, error_model="numpy")
def _mask_kernel_f64(mu, s2, eps, tau, kappa0, m_min, span, sig_kappa0, mask, direction):  # pragma: no cover
    P = mu.shape[0]
    write_direction = direction.shape[0] == P
    for b in numba.prange((P + BLOCK - 1) // BLOCK):
        start = b * BLOCK
        stop = min(start + BLOCK, P)
        _block_mask_f64(mu[start:stop], s2[start:stop], eps, tau, kappa0, m_min, span, sig_kappa0,
                        mask[start:stop])
        if write_direction:
            for j in range(start, stop):
                direction[j] = mask[j] * mu[j]


@numba.njit(parallel=True, cache=True, error_model="numpy")
def _fused_mask_kernel_f32(g, K_t, divisor_t, eps, tau, kappa0, m_min, span, sig_kappa0, mask, mu):  # pragma: no cover
    P = g.shape[1]
    total = 0.0
    for b in numba.prange((P + BLOCK - 1) // BLOCK):
        start = b * BLOCK
        stop = min(start + BLOCK, P)
        n = stop - start
        z = np.empty(n, np.float32)
        t = np.empty(n, np.float32)
        bits = np.empty(n, np.int32)
        total += _block_moments(g, start, stop, K_t, divisor_t, mu[start:stop], mask[start:stop])
        _block_mask_f32(mu[start:stop], mask[start:stop], eps, tau, kappa0, m_min, span, sig_kappa0,
                        mask[start:stop], z, t, bits)
    return total


@numba.njit(parallel=True, cache=True, error_model="numpy")
def _fused_mask_kernel_f64(g, K_t, divisor_t, eps, tau, kappa0, m_min, span, sig_kappa0, mask, mu):  # pragma: no cover
    P = g.shape[1]
    total = 0.0
    for b in numba.prange((P + BLOCK - 1) // BLOCK):
        start = b * BLOCK
        stop = min(start + BLOCK, P)
        total += _block_moments(g, start, stop, K_t, divisor_t, mu[start:stop], mask[start:stop])
        _block_mask_f64(mu[start:stop], mask[start:stop], eps, tau, kappa0, m_min, span, sig_kappa0,
                        mask[start:stop])
    return total


_MASK_KERNELS = {np.dtype(np.float32): _mask_kernel_f32, np.dtype(np.float64): _mask_kernel_f64}
_FUSED_KERNELS = {np.dtype(np.float32): _fused_mask_kernel_f32, np.dtype(np.float64): _fused_mask_kernel_f64}


@numba.njit(parallel=True, cache=True, error_model="numpy")
def _sign_score_kernel(g, out):  # pragma: no cover - compiled
    K, P = g.shape
    for b in numba.prange((P + BLOCK - 1) // BLOCK):
        start = b * BLOCK
        stop = min(start + BLOCK, P)
        n = stop - start
        signed = np.empty_like(out[start:stop])
        absolute = np.empty_like(out[start:stop])
        signed[:] = g[0, start:stop]
        absolute[:] = np.abs(g[0, start:stop])
        for e in range(1, K):
            row = g[e, start:stop]
            for i in range(n):
                signed[i] += row[i]
                absolute[i] += abs(row[i])
        for i in range(n):
            if absolute[i] == 0:
                ratio = 1.0
            else:
                ratio = float(abs(signed[i]) / absolute[i])
            out[start + i] = min(max(1.0 - ratio, 0.0), 1.0)
    return 0


@numba.njit(parallel=True, cache=True, error_model="numpy")
def domain_sum_kernel(g, out):  # pragma: no cover - compiled
    """Sum over domains, ``out[j] = sum_e g[e, j]``: the one-read-pass floor of the benchmarks."""
    K, P = g.shape
    for b in numba.prange((P + BLOCK - 1) // BLOCK):
        start = b * BLOCK
        stop = min(start + BLOCK, P)
        o = out[start:stop]
        o[:] = g[0, start:stop]
        for e in range(1, K):
            row = g[e, start:stop]
            for i in range(stop - start):
                o[i] += row[i]
    return 0


def _prepare(g) -> tuple[np.ndarray, int, tuple[int, ...]]:
    """Validate ``g`` and return it as a C-contiguous ``(K, P)`` float array, K and the shape."""
    g = _as_float_array("g", g)
    K = check_domain_stack("g", g.shape)
    flat = np.ascontiguousarray(g.reshape(K, -1))
    return flat, K, g.shape[1:]


def _raise_non_finite(g: np.ndarray, what: str) -> None:
    """Name the cause of a non-finite statistic: bad input, or overflow of the dtype."""
    check_finite("g", g)
    raise NonFiniteError(
        f"{what} overflowed in {g.dtype} although every gradient is finite "
        f"(largest |g| = {float(np.abs(g).max()):.3g}); rescale the gradients or pass float64"
    )


def cross_domain_moments(g, variance: str = "unbiased") -> tuple[np.ndarray, np.ndarray]:
    """Cross-domain mean and variance in one read of ``g``; same contract as the reference.

    Parameters
    ----------
    g : array_like, shape (K, ...), float32 or float64 (float16 is computed in float32)
    variance : {"unbiased", "population"}

    Returns
    -------
    mu, s2 : ndarray, shape g.shape[1:], dtype of g
    """
    _check_variance(variance)
    flat, K, shape = _prepare(g)
    dtype = flat.dtype.type
    mu = np.empty(flat.shape[1], dtype=flat.dtype)
    s2 = np.empty_like(mu)
    total = _moments_kernel(flat, dtype(K), dtype(VARIANCE_DIVISORS[variance](K)), mu, s2)
    if not math.isfinite(total):
        _raise_non_finite(flat, "the cross-domain mean or variance")
    return mu.reshape(shape), s2.reshape(shape)


def sign_conflict_score(g) -> np.ndarray:
    """Sign-agreement score ``1 - |sum_e g_e| / sum_e |g_e|`` in one read; see the reference."""
    flat, _, shape = _prepare(g)
    check_finite("g", flat)
    out = np.empty(flat.shape[1], dtype=flat.dtype)
    _sign_score_kernel(flat, out)
    return out.reshape(shape)


def _masked(g, tau, kappa0, m_min, eps, eps_rel, variance, score, want_direction):
    if score not in CONFLICT_SCORES:
        raise ValueError(f"score must be one of {CONFLICT_SCORES}; got {score!r}")
    _check_variance(variance)
    flat, K, shape = _prepare(g)
    if tau is None:
        if score == "sign":
            raise ValueError("score='sign' needs an explicit tau in (0, 1]; got tau=None")
        tau = default_tau(K, variance=variance)
    tau, kappa0, m_min = check_mask_parameters(tau, kappa0, m_min)
    P = flat.shape[1]

    if score == "sign":
        from iga_theory.mask import mask_from_score  # the score is one P-vector: no fusion needed

        mask = mask_from_score(sign_conflict_score(flat), tau, kappa0=kappa0, m_min=m_min)
        if not want_direction:
            return mask.reshape(shape), None
        mu = _domain_mean(flat)
        return mask.reshape(shape), (mask * mu).reshape(shape)

    # Scalars in the gradients' dtype, rounded as the reference rounds them.
    dtype = flat.dtype.type
    K_t, divisor_t = dtype(K), dtype(VARIANCE_DIVISORS[variance](K))
    scalars = (dtype(tau), dtype(kappa0), dtype(m_min), dtype(1.0 - m_min),
               dtype(special.expit(dtype(kappa0))))
    mu = np.empty(P, dtype=flat.dtype)
    mask = np.empty(P, dtype=flat.dtype)
    if eps is not None and not want_direction:
        # Absolute eps: one fused pass.
        eps_t = dtype(check_in_range("eps", eps, 0.0, np.inf))
        total = _FUSED_KERNELS[flat.dtype](flat, K_t, divisor_t, eps_t, *scalars, mask, mu)
        if not math.isfinite(total):
            _raise_non_finite(flat, "the cross-domain mean or variance")
        return mask.reshape(shape), None

    # Relative eps: moments first (s2 is written into the mask buffer), then the mask.
    total = _moments_kernel(flat, K_t, divisor_t, mu, mask)
    if not math.isfinite(total):
        _raise_non_finite(flat, "the cross-domain mean or variance")
    if eps is None:
        eps = check_in_range("eps_rel", eps_rel, 0.0, np.inf) * (total / P)
    else:
        eps = check_in_range("eps", eps, 0.0, np.inf)
    direction = mu if want_direction else np.empty(0, dtype=flat.dtype)
    _MASK_KERNELS[flat.dtype](mu, mask, dtype(eps), *scalars, mask, direction)
    return mask.reshape(shape), (direction.reshape(shape) if want_direction else None)


def conflict_mask(g, tau: float | None = None, kappa0: float = DEFAULT_KAPPA0, m_min: float = 0.0,
                  eps: float | None = None, eps_rel: float = DEFAULT_EPS_REL,
                  variance: str = "unbiased", score: str = "variance") -> np.ndarray:
    """Conflict mask of stacked per-domain gradients; same contract as `iga_theory.mask.conflict_mask`.

    Parameters
    ----------
    g : array_like, shape (K, ...), float32 or float64 (float16 is computed in float32)
    tau, kappa0, m_min, eps, eps_rel, variance, score
        As in the reference. An absolute ``eps`` runs one fused pass over ``g``.

    Returns
    -------
    m : ndarray, shape g.shape[1:], dtype of g, values in [m_min, 1]
    """
    mask, _ = _masked(g, tau, kappa0, m_min, eps, eps_rel, variance, score, want_direction=False)
    return mask


def iga_direction(g, **mask_options) -> tuple[np.ndarray, np.ndarray]:
    """IGA direction ``d = mask * mu`` and the mask, computed with one read of ``g``.

    Returns
    -------
    d, mask : ndarray, shape g.shape[1:], dtype of g
    """
    options = {"tau": None, "kappa0": DEFAULT_KAPPA0, "m_min": 0.0, "eps": None,
               "eps_rel": DEFAULT_EPS_REL, "variance": "unbiased", "score": "variance"}
    unknown = sorted(set(mask_options) - set(options))
    if unknown:
        raise TypeError(f"iga_direction got unknown mask options {unknown}; allowed: {sorted(options)}")
    options.update(mask_options)
    mask, direction = _masked(g, want_direction=True, **options)
    return direction, mask
