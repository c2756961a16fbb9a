r"""The IGA step for one LoRA-adapted linear layer, ``W = W0 + (alpha / r) B A``.

Symbols: ``B`` of shape (p, r), ``A`` of shape (r, q), ``scale = alpha / r``, per-domain
weight gradients ``G_e = Delta_e^T X_e`` of shape (p, q) (`weight_gradient`), their
cross-domain mean ``mu`` and mask ``M``, the masked direction ``D = M * mu`` and its
rank-r projection ``P = Pi_r(D)``.

One step (`IGALoRAStep.step`):

1. ``mu``, ``M`` and ``D = M * mu`` from the stacked ``G_e`` (any mask backend);
2. the direction, by name (``direction=``):

   * ``"projected"`` (default): ``P = Pi_r(D)``, kept as thin factors ``U S V^T``;
   * ``"direct"``: ``D`` itself (the retraction then truncates ``scale B A - eta D``);
   * ``"symmetric"``: the lagged symmetric operator
     ``d = M_lag^{1/2} * (U U^T (M_lag^{1/2} * mu) V V^T)``, with the mask ``M_lag``
     and the singular subspaces ``U, V`` of ``Pi_r(D)`` from the previous step, which
     is symmetric positive semidefinite with norm <= 1 (the operator of the
     convergence theorem). The first step has no previous step and uses its own.

3. the update, by name (``mode=``):

   * ``"factor"``: adapter gradients ``grad_B = scale P A^T``, ``grad_A = scale B^T P``,
     the chain rule for a weight gradient P, handed to any optimizer;
   * ``"retraction"``: the new adapter is the best rank-r approximation of
     ``scale B A - eta P``, computed from thin factors (`retract`) and split back
     into ``B`` and ``A``.

Descent safeguard (``"projected"`` only): ``<mu, Pi_r(D)>`` can be negative (the mask
and the projection do not commute), so when it is <= 0 the step falls back to the
masked direction D itself, retracted to rank r in retraction mode, and
``safeguard_events`` counts it.

Dense parameters such as biases use the mask alone (`masked_direction`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from iga_theory import operators
from iga_theory.errors import NonFiniteError, check_in_range
from iga_theory.projection import (
    DEFAULT_OVERSAMPLE,
    DEFAULT_POWER_ITERS,
    PROJECTION_METHODS,
    _as_matrix,
    _cast,
    _is_tensor,
    _transpose,
    thin_factor_svd,
    truncated_svd,
)

logger = logging.getLogger(__name__)

STEP_MODES = ("factor", "retraction")
DIRECTIONS = ("projected", "direct", "symmetric")
NAN_POLICIES = ("raise", "skip")


def _concat_columns(blocks):
    if _is_tensor(blocks[0]):
        import torch

        return torch.cat(blocks, dim=1)
    return np.concatenate(blocks, axis=1)


def _sqrt(x):
    return x.sqrt() if _is_tensor(x) else np.sqrt(x)


def _check_adapter(B, A):
    B_work, dtype = _as_matrix("B", B)
    A_work, _ = _as_matrix("A", A)
    if B_work.shape[1] != A_work.shape[0]:
        raise ValueError(
            f"B must have shape (p, r) and A shape (r, q) with the same r; got B {tuple(B_work.shape)} "
            f"and A {tuple(A_work.shape)}"
        )
    return B_work, _cast(A_work, B_work.dtype), dtype


def weight_gradient(inputs, output_grads):
    """Weight gradient ``G = Delta^T X`` of a linear layer, summed over tokens.

    Parameters
    ----------
    inputs : shape (..., q)
        The layer's input activations X (any leading token axes).
    output_grads : shape (..., p)
        Gradients of the loss with respect to the layer's outputs, Delta.

    Returns
    -------
    G : shape (p, q)
        ``sum_tokens Delta_t X_t^T``, without per-example gradients.
    """
    if tuple(inputs.shape[:-1]) != tuple(output_grads.shape[:-1]):
        raise ValueError(
            f"inputs {tuple(inputs.shape)} and output_grads {tuple(output_grads.shape)} must share their "
            "token axes (all but the last)"
        )
    X = inputs.reshape(-1, inputs.shape[-1])
    Delta = output_grads.reshape(-1, output_grads.shape[-1])
    if X.shape[0] == 0:
        raise ValueError("inputs hold no tokens: an empty domain batch has no gradient")
    return _transpose(Delta) @ X


def masked_direction(G, backend: str | None = None, **mask_options):
    """Masked direction ``D = M * mu`` of stacked per-domain gradients ``G`` (K, ...).

    Returns
    -------
    D, mu, mask : shape G.shape[1:]
    """
    D, mask = operators.iga_direction(G, backend=backend, **mask_options)
    mu = operators.cross_domain_moments(G, backend=backend, variance=mask_options.get("variance", "unbiased"))[0]
    return D, mu, mask


def factor_gradients(P, B, A, alpha: float):
    """Adapter gradients for a weight gradient P: ``grad_B = s P A^T``, ``grad_A = s B^T P``, s = alpha / r.

    Parameters
    ----------
    P : shape (p, q), or thin factors ``(U, S, Vh)`` with P = U diag(S) Vh
    B : shape (p, r); A : shape (r, q)
    alpha : float > 0
        LoRA scaling numerator.

    Returns
    -------
    grad_B : shape (p, r); grad_A : shape (r, q)
    """
    alpha = check_in_range("alpha", alpha, 0.0, float("inf"), low_open=True)
    B_work, A_work, dtype = _check_adapter(B, A)
    scale = alpha / B_work.shape[1]
    if isinstance(P, tuple):
        U, S, Vh = _check_thin_factors(P, B_work.shape[0], A_work.shape[1], B_work.dtype)
        grad_B = scale * (U * S) @ (Vh @ _transpose(A_work))
        grad_A = scale * ((_transpose(B_work) @ U) * S) @ Vh
    else:
        P_work, _ = _as_matrix("P", P)
        if tuple(P_work.shape) != (B_work.shape[0], A_work.shape[1]):
            raise ValueError(f"P has shape {tuple(P_work.shape)}; expected (p, q) = {(B_work.shape[0], A_work.shape[1])}")
        grad_B = scale * P_work @ _transpose(A_work)
        grad_A = scale * _transpose(B_work) @ P_work
    return _cast(grad_B, dtype), _cast(grad_A, dtype)


def _check_thin_factors(P, p, q, dtype):
    """Validate thin factors ``(U, S, Vh)`` of a p x q matrix: U (p, k), S (k,), Vh (k, q)."""
    if len(P) != 3:
        raise ValueError(f"thin factors must be a tuple (U, S, Vh); got a tuple of length {len(P)}")
    U, _ = _as_matrix("U", P[0])
    Vh, _ = _as_matrix("Vh", P[2])
    S = P[1]
    k = U.shape[1]
    if U.shape[0] != p or tuple(Vh.shape) != (k, q) or tuple(S.shape) != (k,):
        raise ValueError(
            f"thin factors must be U (p, k), S (k,), Vh (k, q) with (p, q) = {(p, q)}; got U "
            f"{tuple(U.shape)}, S {tuple(S.shape)}, Vh {tuple(Vh.shape)}"
        )
    return _cast(U, dtype), _cast(S, dtype), _cast(Vh, dtype)


def _split(U, S, Vh, scale):
    """Balanced split of ``U S Vh`` into ``B = U sqrt(S / scale)`` and ``A = sqrt(S / scale) Vh``."""
    root = _sqrt(S / scale)
    return U * root, root[:, None] * Vh


def retract(B, A, alpha: float, eta: float, P):
    """Best rank-r approximation of ``scale B A - eta P``, re-split into adapter factors.

    With P as thin factors ``(U, S, Vh)`` the computation uses only the thin matrices
    ``L = [scale B, -eta U S]`` (p x (r + k)) and ``R = [A^T, Vh^T]`` (q x (r + k)).
    It takes a QR of both and an SVD of the (r + k) x (r + k) core (`thin_factor_svd`),
    in ``O((p + q)(r + k)^2 + (r + k)^3)`` time, without forming a p x q matrix. A dense P
    (the ``"direct"`` and ``"symmetric"`` variants) forms ``scale B A - eta P`` and
    truncates it with an exact SVD.

    The result is split evenly, ``B = U sqrt(S / scale)``, ``A = sqrt(S / scale) V^T``,
    so that ``scale B A`` is the rank-r approximation. When ``scale B A - eta P`` has
    rank below r the missing columns are zero.

    Returns
    -------
    B_new : shape (p, r); A_new : shape (r, q); in B's dtype
    """
    alpha = check_in_range("alpha", alpha, 0.0, float("inf"), low_open=True)
    eta = check_in_range("eta", eta, 0.0, float("inf"))
    B_work, A_work, dtype = _check_adapter(B, A)
    r = B_work.shape[1]
    scale = alpha / r
    if isinstance(P, tuple):
        U_p, S_p, Vh_p = _check_thin_factors(P, B_work.shape[0], A_work.shape[1], B_work.dtype)
        L = _concat_columns([scale * B_work, -eta * (U_p * S_p)])
        R = _concat_columns([_transpose(A_work), _transpose(Vh_p)])
        U, S, Vh = thin_factor_svd(L, R, r)
    else:
        P_work, _ = _as_matrix("P", P)
        if tuple(P_work.shape) != (B_work.shape[0], A_work.shape[1]):
            raise ValueError(f"P has shape {tuple(P_work.shape)}; expected (p, q) = {(B_work.shape[0], A_work.shape[1])}")
        U, S, Vh = truncated_svd(scale * (B_work @ A_work) - eta * _cast(P_work, B_work.dtype), r)
    B_new, A_new = _split(U, S, Vh, scale)
    missing = r - B_new.shape[1]
    if missing:  # scale B A - eta P has rank below r: zero columns of B, zero rows of A
        B_new = _concat_columns([B_new, 0 * B_work[:, :missing]])
        A_new = _transpose(_concat_columns([_transpose(A_new), 0 * _transpose(A_work[:missing])]))
    return _cast(B_new, dtype), _cast(A_new, dtype)


def symmetric_direction(mu, mask, U, V):
    """Lagged symmetric operator ``d = m^{1/2} * (U U^T (m^{1/2} * mu) V V^T)``.

    For a mask in [0, 1] and orthonormal U (p, k), V (q, k) this is a symmetric positive
    semidefinite map of mu with operator norm <= 1.
    """
    root = _sqrt(mask)
    inner = root * mu
    return root * (U @ ((_transpose(U) @ inner @ V) @ _transpose(V)))


def thin_inner_product(mu, factors) -> float:
    """``<mu, U diag(S) Vh>`` from thin factors, in O(p q k) without forming the product."""
    U, S, Vh = factors
    return float(((_transpose(U) @ mu @ _transpose(Vh)).diagonal() * S).sum())


@dataclass
class IGALoRAStep:
    """Stateful IGA step for one LoRA layer (lagged statistics, event counters).

    Parameters
    ----------
    alpha : float > 0
        LoRA scaling numerator (``scale = alpha / r``).
    mode : {"factor", "retraction"}
    direction : {"projected", "direct", "symmetric"}
    safeguard : bool
        Fall back to D when ``<mu, Pi_r(D)> <= 0`` (``"projected"`` only).
    method, oversample, power_iters, seed
        Projection options (`iga_theory.projection.truncated_svd`).
    nan_policy : {"raise", "skip"}
        On a NaN or Inf gradient: raise `NonFiniteError`, or skip the step (the adapter
        is returned unchanged, or zero gradients in factor mode) and count it.
    mask_options : dict
        Passed to the mask (tau, kappa0, m_min, eps, eps_rel, variance, score).
    backend : str or None
        Mask backend (see `iga_theory.operators`).

    Attributes
    ----------
    steps, safeguard_events, skipped_steps : int
    """

    alpha: float
    mode: str = "retraction"
    direction: str = "projected"
    safeguard: bool = True
    method: str = "exact"
    oversample: int = DEFAULT_OVERSAMPLE
    power_iters: int = DEFAULT_POWER_ITERS
    seed: int | None = 0
    nan_policy: str = "raise"
    mask_options: dict = field(default_factory=dict)
    backend: str | None = None
    steps: int = 0
    safeguard_events: int = 0
    skipped_steps: int = 0
    _lagged: tuple | None = field(default=None, repr=False)

    def __post_init__(self):
        check_in_range("alpha", self.alpha, 0.0, float("inf"), low_open=True)
        for name, value, allowed in (("mode", self.mode, STEP_MODES), ("direction", self.direction, DIRECTIONS),
                                     ("method", self.method, PROJECTION_METHODS),
                                     ("nan_policy", self.nan_policy, NAN_POLICIES)):
            if value not in allowed:
                raise ValueError(f"{name} must be one of {allowed}; got {value!r}")

    def step(self, B, A, G, eta: float = 1.0):
        """Run one IGA step from stacked per-domain weight gradients ``G`` of shape (K, p, q).

        Returns
        -------
        (B_new, A_new) in retraction mode, or (grad_B, grad_A) in factor mode, and an
        info dict: ``inner_product`` (<mu, P>), ``safeguard`` (bool), ``mask_mean``,
        ``skipped`` (bool).
        """
        eta = check_in_range("eta", eta, 0.0, float("inf"))
        B_work, A_work, _ = _check_adapter(B, A)
        p, q = B_work.shape[0], A_work.shape[1]
        if G.ndim != 3 or tuple(G.shape[1:]) != (p, q):
            raise ValueError(f"G must have shape (K, p, q) = (K, {p}, {q}); got {tuple(G.shape)}")
        try:
            D, mu, mask = masked_direction(G, backend=self.backend, **self.mask_options)
        except NonFiniteError:
            if self.nan_policy == "raise":
                raise
            self.skipped_steps += 1
            logger.warning("skipped IGA LoRA step %d: non-finite gradient (%d skipped so far)",
                           self.steps, self.skipped_steps)
            info = {"inner_product": float("nan"), "safeguard": False, "mask_mean": float("nan"), "skipped": True}
            if self.mode == "factor":
                return (0 * B_work, 0 * A_work), info
            return (B, A), info
        return self.step_from_direction(B, A, D, mu, mask, eta=eta)

    def step_from_direction(self, B, A, D, mu, mask, eta: float = 1.0):
        """Steps 2 and 3 from a given masked direction ``D = mask * mu`` (all shape (p, q)).

        Use it when the statistics come from elsewhere (a streaming accumulator, an EMA,
        a previous step). Returns what `step` returns.
        """
        eta = check_in_range("eta", eta, 0.0, float("inf"))
        B_work, A_work, _ = _check_adapter(B, A)
        p, q = B_work.shape[0], A_work.shape[1]
        for name, value in (("D", D), ("mu", mu), ("mask", mask)):
            if tuple(value.shape) != (p, q):
                raise ValueError(f"{name} must have shape (p, q) = {(p, q)}; got {tuple(value.shape)}")
        self.steps += 1
        info = {"safeguard": False, "mask_mean": float(mask.mean()), "skipped": False}
        direction = self._direction(D, mu, mask, B_work.shape[1], info)
        if self.mode == "factor":
            return factor_gradients(direction, B, A, self.alpha), info
        return retract(B, A, self.alpha, eta, direction), info

    def _direction(self, D, mu, mask, r, info):
        factors = truncated_svd(D, r, method=self.method, oversample=self.oversample,
                                power_iters=self.power_iters, seed=self.seed)
        if self.direction == "direct":
            info["inner_product"] = float((mu * D).sum())
            return D
        if self.direction == "symmetric":
            lagged_mask, U, V = self._lagged if self._lagged is not None else (mask, factors[0], _transpose(factors[2]))
            self._lagged = (mask, factors[0], _transpose(factors[2]))
            d = symmetric_direction(mu, lagged_mask, U, V)
            info["inner_product"] = float((mu * d).sum())
            return d
        inner = thin_inner_product(mu, factors)
        info["inner_product"] = inner
        if self.safeguard and inner <= 0:
            self.safeguard_events += 1
            info["safeguard"] = True
            logger.info("descent safeguard at step %d: <mu, Pi_r(D)> = %.3g <= 0; using D (%d events)",
                        self.steps, inner, self.safeguard_events)
            return D
        return factors
