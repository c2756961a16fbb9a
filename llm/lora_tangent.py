r"""Orthonormal coordinates of the tangent space of a LoRA adapter, and the maps in and out.

A LoRA layer adds :math:`\Delta W = s B A` to a frozen weight, with ``B`` of shape
``(p, r)``, ``A`` of shape ``(r, q)`` and the scaling ``s = alpha / r``. A factor
update ``(dB, dA)`` moves the weight, to first order, by :math:`s (dB A + B dA)`;
the set of such moves is the tangent space

.. math::

    T = \{ X V^T + U Y \} ,

with ``U`` an orthonormal basis of the column space of ``B`` (``k_B`` columns) and
``V`` one of the row space of ``A`` (``k_A`` columns), so ``dim T = p k_A + k_B q - k_B k_A``.

Basis. With the thin SVDs ``B = U diag(S_B) W_B^T`` and ``A = W_A diag(S_A) V^T``
and the Householder completions ``Q_U = [U, U_perp]`` (``p x p``) and
``Q_V = [V, V_perp]`` (``q x q``), the matrices ``Q_U[:, i] V[:, j]^T`` and
``U[:, i] V_perp[:, j]^T`` form an orthonormal basis of ``T``. A matrix ``G``
(a weight-space gradient) has the coordinates

* ``core  = U^T G V``            shape ``(k_B, k_A)``,
* ``left  = U_perp^T G V``       shape ``(p - k_B, k_A)``,
* ``right = U^T G V_perp``       shape ``(k_B, q - k_A)``,

and ``||P_T(G)||_F^2 = ||core||^2 + ||left||^2 + ||right||^2``. Only the thin
sketches ``G V`` (``p x k_A``) and ``U^T G`` (``k_B x q``) are needed: the forward
and backward hooks compute them per domain at the cost of the adapter's own matmuls,
and ``Q_U``, ``Q_V`` are applied in Householder form (``torch.ormqr``) without ever
forming a ``p x p`` or ``q x q`` matrix.

Rank. Singular values below ``RANK_RTOL * max(shape) * eps * sigma_max``, with ``eps``
of the working dtype, count as zero. So ``B = 0`` (PEFT's initialisation) gives
``k_B = 0``, ``U`` empty and ``U_perp = I``, and every map below stays finite with
no singular solve.

All factorisations run in float32 (or float64 when the factors are float64)
whatever the model's dtype, because LAPACK has no bfloat16 or float16 SVD.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

# Relative rank cut, in units of max(shape) * eps * sigma_max: the tolerance numpy's
# matrix_rank uses, so a singular value at rounding level is treated as zero.
RANK_RTOL = 1.0


def factor_dtype(dtype: torch.dtype) -> torch.dtype:
    """Working dtype of factorisations: float64 stays float64, every other float becomes float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


@dataclass
class Householder:
    """An orthonormal ``n x k`` matrix ``Y`` stored as Householder reflectors of ``Q = [Y, Y_perp]``.

    ``Y`` itself is kept with its column signs flipped so that ``Q[:, :k] = Y`` exactly.
    """

    Y: torch.Tensor                 # (n, k) orthonormal columns
    reflectors: torch.Tensor | None  # (n, k) output of geqrf, None when k = 0
    tau: torch.Tensor | None        # (k,)

    @property
    def n(self) -> int:
        return self.Y.shape[0]

    @property
    def k(self) -> int:
        return self.Y.shape[1]

    def apply_transpose(self, X: torch.Tensor) -> torch.Tensor:
        """Return ``Q^T X`` for ``X`` of shape ``(n, m)``: first k rows ``Y^T X``, the rest ``Y_perp^T X``."""
        if self.k == 0:
            return X
        return torch.ormqr(self.reflectors, self.tau, X, left=True, transpose=True)

    def apply(self, X: torch.Tensor) -> torch.Tensor:
        """Return ``Q X`` for ``X`` of shape ``(n, m)``."""
        if self.k == 0:
            return X
        return torch.ormqr(self.reflectors, self.tau, X, left=True, transpose=False)


def householder(Y: torch.Tensor) -> tuple[Householder, torch.Tensor]:
    """Complete orthonormal columns ``Y`` (``n x k``) to an orthogonal ``Q = [Y D, Y_perp]``.

    Returns the completion and the signs ``D`` (``(k,)``, entries +-1) such that
    ``Q[:, :k] = Y * D``: the QR factor of an orthonormal matrix is diagonal with
    entries +-1, and the caller flips its own columns by ``D`` to match.
    """
    n, k = Y.shape
    if k == 0:
        return Householder(Y, None, None), torch.ones(0, dtype=Y.dtype, device=Y.device)
    reflectors, tau = torch.geqrf(Y)
    signs = torch.sign(torch.diagonal(reflectors))
    signs = torch.where(signs == 0, torch.ones_like(signs), signs)
    return Householder(Y * signs, reflectors, tau), signs


def _rank_cut(S: torch.Tensor, shape: tuple[int, int]) -> int:
    """Number of singular values above the rank tolerance (``S`` sorted descending)."""
    if S.numel() == 0 or float(S[0]) == 0.0:
        return 0
    tol = RANK_RTOL * max(shape) * torch.finfo(S.dtype).eps * S[0]
    return int((S > tol).sum())


@dataclass
class TangentBasis:
    r"""Orthonormal basis of the tangent space at ``s B A`` (see the module docstring).

    Attributes
    ----------
    U : Householder, ``Y`` of shape (p, k_B)
        Column space of B with its completion ``U_perp``.
    S_B : (k_B,) float, W_B : (r, k_B)
        ``B = U.Y diag(S_B) W_B^T`` (B's numerical rank-k_B part).
    V : Householder, ``Y`` of shape (q, k_A)
        Row space of A with its completion ``V_perp``.
    S_A : (k_A,) float, W_A : (r, k_A)
        ``A = W_A diag(S_A) V.Y^T``.
    scaling : float
        LoRA scaling ``s = alpha / r``.
    """

    U: Householder
    S_B: torch.Tensor
    W_B: torch.Tensor
    V: Householder
    S_A: torch.Tensor
    W_A: torch.Tensor
    scaling: float

    @property
    def k_B(self) -> int:
        return self.U.k

    @property
    def k_A(self) -> int:
        return self.V.k

    @property
    def shape(self) -> tuple[int, int]:
        return self.U.n, self.V.n

    def coordinate_shapes(self) -> dict[str, tuple[int, int]]:
        """Shapes of the three coordinate blocks."""
        p, q = self.shape
        return {"core": (self.k_B, self.k_A), "left": (p - self.k_B, self.k_A),
                "right": (self.k_B, q - self.k_A)}

    def dimension(self) -> int:
        """Dimension of the tangent space, ``p k_A + k_B q - k_B k_A``."""
        return sum(a * b for a, b in self.coordinate_shapes().values())


def tangent_basis(B: torch.Tensor, A: torch.Tensor, scaling: float) -> TangentBasis:
    """Compute the orthonormal tangent basis at ``scaling * B @ A`` from the factors.

    Parameters
    ----------
    B : Tensor, shape (p, r)
        LoRA ``lora_B`` weight, any float dtype (factorised in float32 or float64).
    A : Tensor, shape (r, q)
        LoRA ``lora_A`` weight.
    scaling : float
        LoRA scaling ``alpha / r`` (``alpha / sqrt(r)`` with rsLoRA).

    Returns
    -------
    TangentBasis
        Cost ``O((p + q) r^2)``; no ``p x q`` matrix is formed.
    """
    if B.ndim != 2 or A.ndim != 2 or B.shape[1] != A.shape[0]:
        raise ValueError(f"B and A must be (p, r) and (r, q) matrices; got shapes {tuple(B.shape)} and {tuple(A.shape)}")
    dtype = factor_dtype(B.dtype)
    B = B.detach().to(dtype)
    A = A.detach().to(dtype)

    U, S_B, W_Bt = torch.linalg.svd(B, full_matrices=False)
    k_B = _rank_cut(S_B, tuple(B.shape))
    U, S_B, W_B = U[:, :k_B], S_B[:k_B], W_Bt[:k_B].T

    W_A, S_A, Vt = torch.linalg.svd(A, full_matrices=False)
    k_A = _rank_cut(S_A, tuple(A.shape))
    W_A, S_A, V = W_A[:, :k_A], S_A[:k_A], Vt[:k_A].T

    # Flip singular-vector signs so that the Householder completions start with U and V
    # exactly; flipping the paired column of W keeps B and A unchanged.
    U_h, signs_U = householder(U.contiguous())
    V_h, signs_V = householder(V.contiguous())
    return TangentBasis(U=U_h, S_B=S_B, W_B=W_B * signs_U, V=V_h, S_A=S_A, W_A=W_A * signs_V,
                        scaling=float(scaling))


def coordinates(basis: TangentBasis, GV: torch.Tensor, UG: torch.Tensor) -> dict[str, torch.Tensor]:
    """Tangent coordinates from the sketches ``G V`` and ``U^T G``.

    Parameters
    ----------
    GV : Tensor, shape (..., p, k_A)
        ``G @ V`` for one or a stack of weight-space matrices ``G``.
    UG : Tensor, shape (..., k_B, q)
        ``U^T @ G``.

    Returns
    -------
    dict with ``core`` (..., k_B, k_A), ``left`` (..., p - k_B, k_A), ``right`` (..., k_B, q - k_A)
    """
    k_B, k_A = basis.k_B, basis.k_A
    QtGV = apply_batched(basis.U.apply_transpose, GV)
    GQv = apply_batched(basis.V.apply_transpose, UG.transpose(-1, -2)).transpose(-1, -2)
    return {"core": QtGV[..., :k_B, :], "left": QtGV[..., k_B:, :], "right": GQv[..., k_A:]}


def coordinates_dense(basis: TangentBasis, G: torch.Tensor) -> dict[str, torch.Tensor]:
    """Tangent coordinates of dense ``(..., p, q)`` matrices ``G`` (reference and tests)."""
    G = G.to(basis.U.Y.dtype)
    return coordinates(basis, G @ basis.V.Y, basis.U.Y.T @ G)


def apply_batched(apply, X: torch.Tensor) -> torch.Tensor:
    """Apply an ``(n, m) -> (n, m)`` map to each matrix of a ``(..., n, m)`` stack."""
    if X.ndim == 2:
        return apply(X)
    if X.numel() == 0:
        return X
    lead = X.shape[:-2]
    n, m = X.shape[-2:]
    # Stack the batch along the columns: Q^T [X_1, ..., X_b] = [Q^T X_1, ..., Q^T X_b].
    wide = X.reshape(-1, n, m).permute(1, 0, 2).reshape(n, -1)
    out = apply(wide.contiguous())
    return out.reshape(n, -1, m).permute(1, 0, 2).reshape(*lead, n, m)


def dense_from_coordinates(basis: TangentBasis, coords: dict[str, torch.Tensor]) -> torch.Tensor:
    """The ``p x q`` tangent vector ``Q_U [core; left] V^T + U right V_perp^T`` (reference and tests)."""
    YV = basis.U.apply(torch.cat([coords["core"], coords["left"]], dim=0))
    padded = torch.cat([coords["right"].new_zeros(basis.k_B, basis.k_A), coords["right"]], dim=1)
    right_full = basis.V.apply(padded.T.contiguous()).T
    return YV @ basis.V.Y.T + basis.U.Y @ right_full


def factor_gradients(basis: TangentBasis, coords: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Pull a tangent vector ``Y`` back to the factors: ``grad_B = s Y A^T``, ``grad_A = s B^T Y``.

    These are the chain-rule gradients of the factors for a weight-space gradient ``Y``.
    With ``A^T = V S_A W_A^T`` and ``B^T = W_B S_B U^T``:
    ``Y A^T = (Y V) S_A W_A^T`` and ``B^T Y = W_B S_B (U^T Y)``, where
    ``Y V = Q_U [core; left]`` and ``U^T Y = [core, right] Q_V^T``.

    Returns
    -------
    grad_B : (p, r), grad_A : (r, q), in the basis dtype.
    """
    s = basis.scaling
    YV = basis.U.apply(torch.cat([coords["core"], coords["left"]], dim=0))
    UY = basis.V.apply(torch.cat([coords["core"], coords["right"]], dim=1).T.contiguous()).T
    grad_B = s * (YV * basis.S_A) @ basis.W_A.T
    grad_A = s * (basis.W_B * basis.S_B) @ UY
    return grad_B, grad_A


def update_coordinates(basis: TangentBasis, dB: torch.Tensor, dA: torch.Tensor) -> dict[str, dict[str, torch.Tensor]]:
    r"""Tangent coordinates of the first-order weight move ``s (dB A + B dA)``, by source.

    The move of ``dB`` has ``[core; left] = s Q_U^T (dB W_A) diag(S_A)`` and no right
    block; the move of ``dA`` has ``[core, right] = s diag(S_B) (W_B^T dA) Q_V`` and no
    left block. Both are returned unscaled by ``S``: ``{"B": Q_U^T dB W_A, "A": W_B^T dA Q_V}``,
    so that an elementwise mask commutes with the diagonal ``S`` scaling.
    """
    return {"B": basis.U.apply_transpose((dB.to(basis.W_A.dtype) @ basis.W_A).contiguous()),
            "A": basis.V.apply_transpose((dA.to(basis.W_B.dtype).T @ basis.W_B).contiguous()).T}


def masked_factor_update(basis: TangentBasis, dB: torch.Tensor, dA: torch.Tensor,
                         mask: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Re-split a factor update so that its tangent coordinates are multiplied by ``mask``.

    With the blocks of `update_coordinates`, the new update is
    ``dB' = Q_U (m_[core;left] * (Q_U^T dB W_A)) W_A^T + dB (I - W_A W_A^T)`` and
    ``dA' = W_B (m_[core,right] * (W_B^T dA Q_V)) Q_V^T + (I - W_B W_B^T) dA``.
    Then ``s (dB' A + B dA')`` has tangent coordinates ``mask * coords(s (dB A + B dA))``
    exactly: the mask acts on each source linearly and commutes with ``S_A``, ``S_B``.
    The parts of ``dB`` and ``dA`` that do not move the weight at first order
    (``dB`` along the null space of ``A``, ``dA`` along that of ``B``) are kept as given.
    No inverse is taken, so ``B = 0`` is as safe as any other point.

    Parameters
    ----------
    dB : (p, r), dA : (r, q)
        The wrapped optimizer's step on the factors.
    mask : dict with ``core``, ``left``, ``right`` arrays of the coordinate shapes.

    Returns
    -------
    dB', dA' in the basis dtype.
    """
    dtype = basis.W_A.dtype
    dB = dB.to(dtype)
    dA = dA.to(dtype)
    blocks = update_coordinates(basis, dB, dA)
    mask_B = torch.cat([mask["core"], mask["left"]], dim=0)
    mask_A = torch.cat([mask["core"], mask["right"]], dim=1)

    dB_new = basis.U.apply(mask_B * blocks["B"]) @ basis.W_A.T + dB - (dB @ basis.W_A) @ basis.W_A.T
    dA_new = basis.W_B @ basis.V.apply((mask_A * blocks["A"]).T.contiguous()).T \
        + dA - basis.W_B @ (basis.W_B.T @ dA)
    return dB_new, dA_new


def tangent_pullback_update(basis: TangentBasis, Z_left: torch.Tensor, Z_right: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Factor update that moves the weight, to first order, by a target tangent vector.

    The target is ``Y = Z_left V^T + U Z_right`` given by ``Z_left = Y V`` (``p x k_A``)
    and ``Z_right = U^T Y (I - V V^T)`` (``k_B x q``). The minimum-norm solution of
    ``s (dB A + B dA) = Y`` is ``dB = Z_left S_A^{-1} W_A^T / s`` and
    ``dA = W_B S_B^{-1} Z_right / s``. The inverses run only over the singular values
    above the rank cut, so ``B = 0`` gives ``dA = 0`` instead of a singular solve; a
    badly conditioned factor amplifies the step by at most its condition number.
    """
    s = basis.scaling
    dB = (Z_left / basis.S_A) @ basis.W_A.T / s
    dA = (basis.W_B / basis.S_B) @ Z_right / s
    return dB, dA
