r"""Rank-r projection onto the LoRA manifold: exact, randomized and thin-factor SVDs.

For a matrix :math:`D \in \mathbb R^{p \times q}` and a rank r,
:math:`\Pi_r(D) = U_r S_r V_r^\top` is a best rank-r approximation in the Frobenius
and spectral norms (Eckart-Young-Mirsky); it is unique only when
:math:`\sigma_r > \sigma_{r+1}`, and ties at the cut give one valid choice among many.

Methods (``method=``):

* ``"exact"``: LAPACK's SVD (``numpy.linalg.svd`` or ``torch.linalg.svd``);
* ``"randomized"``: the Halko-Martinsson-Tropp range finder (Halko, Martinsson &
  Tropp 2011, randomized subspace iteration): sketch ``Y = D Omega`` with ``r + oversample``
  Gaussian columns drawn from ``seed``, ``power_iters`` rounds of re-orthonormalised
  power iteration, then the SVD of the small matrix ``Q^T D``. Its error exceeds the
  optimum by a factor that `relative_excess_error` measures.

Thin factors: when ``D = L R^T`` with ``L`` of shape (p, k) and ``R`` of shape (q, k),
`thin_factor_svd` returns the truncated SVD from QR factorisations of L and R and the
SVD of the k x k core. It takes ``O((p + q) k^2 + k^3)`` time and forms no p x q
matrix. `tangent_project` is the orthogonal projection onto the tangent space of the
manifold of rank-r matrices at ``X = U S V^T``.

All functions accept numpy arrays or torch tensors (2-D, floating, finite) and return
the same kind on the same device. float16 and bfloat16 inputs are computed in float32
(LAPACK has no half-precision SVD) and cast back to their dtype. ``r >= min(p, q)``
returns the input unchanged (a copy): the projection is the identity.
"""

from __future__ import annotations

import numbers

import numpy as np

from iga_theory.errors import NonFiniteError, check_finite, check_positive_int

PROJECTION_METHODS = ("exact", "randomized")
# Extra sketch columns beyond r: 10 is also the default of scikit-learn's
# randomized_svd, and it keeps the sketch well conditioned.
DEFAULT_OVERSAMPLE = 10
# Power iterations sharpen a slowly decaying spectrum. With 2, the excess error on the
# 4096 x 4096 masked low-rank-plus-noise matrix of `iga bench` was below 1e-4.
DEFAULT_POWER_ITERS = 2


# ----- array backend ------------------------------------------------------------------

def _is_tensor(x) -> bool:
    return type(x).__module__.startswith("torch")


class _Numpy:
    @staticmethod
    def svd(a):
        return np.linalg.svd(a, full_matrices=False)

    @staticmethod
    def qr(a):
        return np.linalg.qr(a)

    @staticmethod
    def gaussian(shape, seed, like):
        return np.random.default_rng(seed).standard_normal(shape).astype(like.dtype)

    @staticmethod
    def copy(a):
        return np.array(a, copy=True)


class _Torch:
    @staticmethod
    def svd(a):
        import torch

        return torch.linalg.svd(a, full_matrices=False)

    @staticmethod
    def qr(a):
        import torch

        return torch.linalg.qr(a)

    @staticmethod
    def gaussian(shape, seed, like):
        import torch

        generator = torch.Generator().manual_seed(int(seed) if seed is not None else torch.seed())
        return torch.randn(shape, generator=generator, dtype=like.dtype).to(like.device)

    @staticmethod
    def copy(a):
        return a.clone()


def _backend(x):
    return _Torch if _is_tensor(x) else _Numpy


def _as_matrix(name: str, D):
    """Validate a 2-D finite floating matrix; return (computation copy, original dtype)."""
    if _is_tensor(D):
        if not D.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor; got dtype {D.dtype}")
        original = D.dtype
        work = D.float() if D.element_size() < 4 else D
    else:
        D = np.asarray(D)
        if not np.issubdtype(D.dtype, np.floating):
            raise TypeError(f"{name} must be a floating-point array; got dtype {D.dtype}")
        original = D.dtype
        work = D.astype(np.float32) if D.dtype.itemsize < 4 else D
    if work.ndim != 2:
        raise ValueError(
            f"{name} must be a 2-D matrix; got {work.ndim}-D input of shape {tuple(work.shape)}. "
            "Reshape a weight gradient to (p, q) first."
        )
    if min(work.shape) == 0:
        raise ValueError(f"{name} is empty: shape {tuple(work.shape)}")
    check_finite(name, work.detach() if _is_tensor(work) else work)
    return work, original


def _cast(x, dtype):
    return x.to(dtype) if _is_tensor(x) else x.astype(dtype, copy=False)


def _check_rank(r) -> int:
    if isinstance(r, bool) or not isinstance(r, numbers.Integral):
        raise TypeError(f"r must be an integer rank; got {r!r} of type {type(r).__name__}")
    if r <= 0:
        raise ValueError(f"r must be a positive rank (r >= 1); got r = {r}. Use r >= 1 or skip the projection.")
    return int(r)


def _check_method(method: str) -> None:
    if method not in PROJECTION_METHODS:
        raise ValueError(f"method must be one of {PROJECTION_METHODS}; got {method!r}")


def _transpose(a):
    return a.mT if _is_tensor(a) else a.T


# ----- truncated SVD ------------------------------------------------------------------

def _exact_svd(D, r):
    U, S, Vh = _backend(D).svd(D)
    return U[:, :r], S[:r], Vh[:r]


def _randomized_svd(D, r, oversample, power_iters, seed):
    xp = _backend(D)
    p, q = D.shape
    width = min(r + oversample, min(p, q))
    Omega = xp.gaussian((q, width), seed, D)
    Q, _ = xp.qr(D @ Omega)
    for _ in range(power_iters):
        # Re-orthonormalise after each product: without it the columns align with the
        # top singular vector and rounding erases the rest.
        Z, _ = xp.qr(_transpose(D) @ Q)
        Q, _ = xp.qr(D @ Z)
    Ub, S, Vh = xp.svd(_transpose(Q) @ D)
    return (Q @ Ub)[:, :r], S[:r], Vh[:r]


def truncated_svd(D, r: int, method: str = "exact", oversample: int = DEFAULT_OVERSAMPLE,
                  power_iters: int = DEFAULT_POWER_ITERS, seed: int | None = 0):
    """Leading r singular triplets of D.

    Parameters
    ----------
    D : ndarray or Tensor, shape (p, q), floating, finite
    r : int >= 1
        Rank; values above min(p, q) are clipped to it.
    method : {"exact", "randomized"}
    oversample : int >= 0
        Extra sketch columns of the randomized method.
    power_iters : int >= 0
        Power iterations of the randomized method.
    seed : int or None
        Seed of the randomized sketch (same seed, same result); None draws a fresh one.

    Returns
    -------
    U : shape (p, k), orthonormal columns; S : shape (k,), non-increasing, >= 0;
    Vh : shape (k, q), orthonormal rows; with k = min(r, p, q), in D's dtype.
    """
    _check_method(method)
    r = _check_rank(r)
    work, dtype = _as_matrix("D", D)
    oversample = _check_non_negative_int("oversample", oversample)
    power_iters = _check_non_negative_int("power_iters", power_iters)
    k = min(r, *work.shape)
    if method == "exact" or k == min(work.shape):
        U, S, Vh = _exact_svd(work, k)
    else:
        U, S, Vh = _randomized_svd(work, k, oversample, power_iters, seed)
    return _cast(U, dtype), _cast(S, dtype), _cast(Vh, dtype)


def _check_non_negative_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
        raise ValueError(f"{name} must be an integer >= 0; got {value!r}")
    return int(value)


def project_rank(D, r: int, method: str = "exact", oversample: int = DEFAULT_OVERSAMPLE,
                 power_iters: int = DEFAULT_POWER_ITERS, seed: int | None = 0):
    """Best rank-r approximation ``Pi_r(D) = U_r S_r V_r^T`` as a dense matrix.

    Parameters are those of `truncated_svd`. ``r >= min(p, q)`` returns a copy of D
    (the identity, exactly).

    Returns
    -------
    D_r : same kind, shape and dtype as D, rank <= r
    """
    _check_method(method)
    r = _check_rank(r)
    work, dtype = _as_matrix("D", D)
    if r >= min(work.shape):
        return _backend(D).copy(D)
    U, S, Vh = truncated_svd(work, r, method=method, oversample=oversample, power_iters=power_iters, seed=seed)
    return _cast((U * S) @ Vh, dtype)


def relative_excess_error(D, approximation, r: int) -> float:
    """``||D - A||_F / ||D - Pi_r(D)||_F - 1``: how much worse than optimal a rank-r A is.

    The optimum comes from the exact singular values, ``||D - Pi_r(D)||_F^2 =
    sum_{i>r} sigma_i^2``. Returns 0.0 when D has rank <= r and A equals D.
    """
    r = _check_rank(r)
    work, _ = _as_matrix("D", D)
    approximation, _ = _as_matrix("approximation", approximation)
    if tuple(approximation.shape) != tuple(work.shape):
        raise ValueError(f"approximation has shape {tuple(approximation.shape)}; expected {tuple(work.shape)}")
    to_numpy = (lambda a: a.detach().cpu().double().numpy()) if _is_tensor(work) else (lambda a: np.asarray(a, np.float64))
    D64, A64 = to_numpy(work), to_numpy(approximation)
    sigma = np.linalg.svd(D64, compute_uv=False)
    optimal = float(np.sqrt(np.sum(sigma[r:] ** 2)))
    error = float(np.linalg.norm(D64 - A64))
    if optimal == 0.0:
        return 0.0 if error == 0.0 else float("inf")
    return error / optimal - 1.0


# ----- thin factors -------------------------------------------------------------------

def thin_factor_svd(L, R, r: int):
    """Truncated SVD of ``D = L R^T`` from its thin factors, never forming D.

    QR of each factor, ``L = Q_L R_L`` and ``R = Q_R R_R``, then the SVD of the k x k
    core ``R_L R_R^T = U_c S V_c^T`` gives ``D = (Q_L U_c) S (Q_R V_c)^T``. Cost
    ``O((p + q) k^2 + k^3)``, memory ``O((p + q) k)``.

    Parameters
    ----------
    L : shape (p, k); R : shape (q, k); same kind (numpy or torch), floating, finite
    r : int >= 1

    Returns
    -------
    U : (p, m), S : (m,), Vh : (m, q) with m = min(r, k, p, q), in L's dtype.
    """
    r = _check_rank(r)
    L_work, dtype = _as_matrix("L", L)
    R_work, _ = _as_matrix("R", R)
    if _is_tensor(L_work) != _is_tensor(R_work):
        raise TypeError("L and R must both be numpy arrays or both torch tensors; convert one of them")
    if L_work.shape[1] != R_work.shape[1]:
        raise ValueError(
            f"L and R must have the same number of columns k (D = L R^T); got L {tuple(L_work.shape)} "
            f"and R {tuple(R_work.shape)}"
        )
    R_work = _cast(R_work, L_work.dtype)
    xp = _backend(L_work)
    Q_left, R_left = xp.qr(L_work)
    Q_right, R_right = xp.qr(R_work)
    U_core, S, Vh_core = xp.svd(R_left @ _transpose(R_right))
    m = min(r, S.shape[0])
    U = Q_left @ U_core[:, :m]
    Vh = Vh_core[:m] @ _transpose(Q_right)
    return _cast(U, dtype), _cast(S[:m], dtype), _cast(Vh, dtype)


# ----- tangent space of the fixed-rank manifold ---------------------------------------

def tangent_project(U, V, Z):
    r"""Orthogonal projection of Z onto the tangent space at ``X = U S V^T`` of rank-r matrices.

    .. math::

        P_T(Z) = U U^\top Z + Z V V^\top - U U^\top Z V V^\top.

    It is self-adjoint and idempotent, fixes X, and annihilates ``U_perp A V_perp^T``.

    Parameters
    ----------
    U : shape (p, r), orthonormal columns
    V : shape (q, r), orthonormal columns
    Z : shape (p, q)

    Returns
    -------
    P_T(Z) : shape (p, q), Z's kind and dtype
    """
    U_work, _ = _as_matrix("U", U)
    V_work, _ = _as_matrix("V", V)
    Z_work, dtype = _as_matrix("Z", Z)
    p, q = Z_work.shape
    if U_work.shape[0] != p or V_work.shape[0] != q or U_work.shape[1] != V_work.shape[1]:
        raise ValueError(
            f"shapes do not fit P_T(Z) = U U^T Z + Z V V^T - U U^T Z V V^T: U {tuple(U_work.shape)}, "
            f"V {tuple(V_work.shape)}, Z {tuple(Z_work.shape)}; expected U (p, r), V (q, r), Z (p, q)"
        )
    U_work, V_work = _cast(U_work, Z_work.dtype), _cast(V_work, Z_work.dtype)
    UtZ = _transpose(U_work) @ Z_work  # (r, q)
    ZV = Z_work @ V_work  # (p, r)
    UtZV = UtZ @ V_work  # (r, r)
    result = U_work @ UtZ + ZV @ _transpose(V_work) - U_work @ (UtZV @ _transpose(V_work))
    return _cast(result, dtype)


__all__ = [
    "DEFAULT_OVERSAMPLE", "DEFAULT_POWER_ITERS", "NonFiniteError", "PROJECTION_METHODS",
    "project_rank", "relative_excess_error", "tangent_project", "thin_factor_svd", "truncated_svd",
]
