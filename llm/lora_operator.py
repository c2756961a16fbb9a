r"""The IGA operator on one PEFT LoRA layer: modes, placements and the descent safeguard.

Per optimizer step each LoRA layer ``W0 + s B A`` (``B`` of shape ``(p, r)``, ``A`` of
shape ``(r, q)``) has per-domain mean gradients from `iga_theory.llm.lora_hooks`. The
operator turns them into new adapter gradients (placement ``gradient``) or into a mask
applied to the wrapped optimizer's step (placement ``update``).

Modes (`MODES`)
---------------
``"full"``
    The weight-space operator. With the per-domain ``G_e`` (``p x q``): the cross-domain
    mean ``mu`` and variance ``s2``, the conflict mask ``M``, the masked direction
    ``D = M * mu``, its best rank-r approximation ``P = Pi_r(D)`` (exact SVD or
    randomized range finder, float32), and the descent safeguard: when
    ``<mu, P> <= 0`` the step uses ``D`` itself and counts the event. ``P`` is pulled
    back to the factors by the chain rule, ``grad_B = s P A^T`` and ``grad_A = s B^T P``.
    Cost per layer and step: one ``p x q`` outer product per domain in the backward
    hook and one rank-r SVD.
``"tangent"``
    The cheap operator. The per-domain gradients are kept only through their
    coordinates in an orthonormal basis of the adapter's tangent space (see
    `iga_theory.llm.lora_tangent`); the mask acts on those coordinates and the masked
    tangent vector is pulled back by the same chain rule. No ``p x q`` matrix is formed
    and no projection is needed, because a tangent vector is what the factors can
    express to first order. ``<mu, d> = sum_c m_c mu_c^2 >= 0`` holds by construction,
    so the safeguard never fires. With every mask value 1 the gradients equal those of
    plain LoRA on the same loss exactly.

Placements (`PLACEMENTS`)
-------------------------
``"gradient"``
    The adapter gradients are replaced before gradient clipping and the optimizer step.
``"update"``
    The optimizer steps with the unmasked mean gradient and its step ``(dB, dA)`` is
    then masked: in mode ``tangent``, `lora_tangent.masked_factor_update` re-splits the
    step so that each tangent coordinate of the first-order weight move is multiplied
    by its mask value (a coordinate with mask 0 does not move, whatever the optimizer);
    in mode ``full``, the first-order weight move ``s (dB A + B dA)`` is masked,
    projected to rank r (with the safeguard) and realised by the minimum-norm factor
    update (`lora_tangent.tangent_pullback_update`). Adam divides each coordinate by
    its own running RMS, which cancels a mask applied to the gradient; ``update``
    avoids that.

Retraction
----------
`retract` is the opt-in plain-SGD step of the theory: the new adapter is the best
rank-r approximation of ``s B A - lr P``, computed from thin factors (QR of each
factor, SVD of the small core) and split back into ``B`` and ``A``.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch

from iga_theory import lora_step, mask_torch
from iga_theory.config import field
from iga_theory.errors import check_in_range
from iga_theory.llm.lora_hooks import LoraLayerRef
from iga_theory.llm.lora_tangent import (
    TangentBasis,
    apply_batched,
    coordinates,
    factor_dtype,
    masked_factor_update,
    tangent_pullback_update,
)
from iga_theory.mask import DEFAULT_EPS_REL, DEFAULT_KAPPA0, default_tau
from iga_theory.projection import DEFAULT_OVERSAMPLE, DEFAULT_POWER_ITERS, truncated_svd
from iga_theory.stats import DEFAULT_RHO

MODES = ("full", "tangent")
PLACEMENTS = ("gradient", "update")
PROJECTIONS = ("auto", "exact", "randomized")
# "auto" takes the randomized range finder when its sketch is at most this share of
# min(p, q): there it needs a few thin products instead of a full SVD.
AUTO_RANDOMIZED_SHARE = 0.25
REMEDIES = ("ema", "none")
NAN_POLICIES = ("raise", "skip")
# Default placement for LoRA under AdamW: under AdamW it kept 4.5 to 6.5 times less of
# each step on masked coordinates than "gradient" (docs/llm.md, "The default placement").
DEFAULT_PLACEMENT = "update"
# Default mode: cheaper than "full" in the step-time benchmark and K (p + q) r instead of
# K p q statistics per layer (docs/llm.md, "Step time").
DEFAULT_MODE = "tangent"


@dataclass
class LoraIGAConfig:
    """Settings of the IGA operator on LoRA layers (validated on creation)."""

    mode: str = field(DEFAULT_MODE, "operator: 'full' (weight-space mask, rank-r projection) or "
                      "'tangent' (mask in an orthonormal tangent basis; cheaper)", choices=MODES)
    placement: str = field(DEFAULT_PLACEMENT, "where the mask acts: on the gradient, or on the "
                           "wrapped optimizer's step", choices=PLACEMENTS)
    tau: float | None = field(None, "conflict threshold; None uses the default min(tau0, K / t^2) "
                              "for the number of domains present", low=0.0)
    kappa0: float = field(DEFAULT_KAPPA0, "scale-free sharpness of the mask", low=0.0)
    m_min: float = field(0.0, "floor of the mask, in [0, 1)", low=0.0, high=1.0)
    eps_rel: float = field(DEFAULT_EPS_REL, "relative regulariser of the conflict score, per layer", low=0.0)
    variance: str = field("unbiased", "cross-domain variance convention", choices=("unbiased", "population"))
    remedy: str = field("ema", "minibatch-noise remedy for the per-domain means: exponential moving "
                        "average over steps, or none", choices=REMEDIES)
    rho: float = field(DEFAULT_RHO, "EMA rate of the per-domain means, in [0, 1)", low=0.0, high=1.0)
    projection: str = field("auto", "rank-r projection of mode 'full': exact SVD, randomized range "
                            "finder, or 'auto' (randomized when r + oversampling <= min(p, q) / 4)",
                            choices=PROJECTIONS)
    oversampling: int = field(DEFAULT_OVERSAMPLE, "extra columns of the randomized range finder", low=0)
    power_iterations: int = field(DEFAULT_POWER_ITERS, "power iterations of the randomized range finder",
                                  low=0)
    safeguard: bool = field(True, "fall back to the masked direction when the projected one is not a "
                            "descent direction (mode 'full')")
    nan_policy: str = field("raise", "on a non-finite statistic or a failed SVD: raise, or skip the "
                            "optimizer step and count it", choices=NAN_POLICIES)

    def __post_init__(self):
        for name, allowed in (("mode", MODES), ("placement", PLACEMENTS), ("projection", PROJECTIONS),
                              ("remedy", REMEDIES), ("nan_policy", NAN_POLICIES),
                              ("variance", ("unbiased", "population"))):
            value = getattr(self, name)
            if value not in allowed:
                raise ValueError(f"{name} must be one of {list(allowed)}; got {value!r}")
        if self.tau is not None:
            check_in_range("tau", self.tau, 0.0, math.inf, low_open=True)
        check_in_range("kappa0", self.kappa0, 0.0, math.inf, low_open=True)
        check_in_range("m_min", self.m_min, 0.0, 1.0, high_open=True)
        check_in_range("eps_rel", self.eps_rel, 0.0, math.inf)
        check_in_range("rho", self.rho, 0.0, 1.0, high_open=True)
        for name in ("oversampling", "power_iterations"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be an integer >= 0; got {value!r}")


@dataclass
class Direction:
    """A ``p x q`` matrix held as thin factors ``L @ R`` (``L``: (p, k), ``R``: (k, q)).

    ``R = None`` stands for the identity: ``L`` is then the dense ``p x q`` matrix.
    """

    L: torch.Tensor
    R: torch.Tensor | None = None

    def dense(self) -> torch.Tensor:
        return self.L if self.R is None else self.L @ self.R

    def right_times(self, X: torch.Tensor) -> torch.Tensor:
        """``R @ X`` (``X`` itself when ``R`` is the identity)."""
        return X if self.R is None else self.R @ X

    def inner(self, X: torch.Tensor) -> torch.Tensor:
        """Frobenius inner product ``<X, L R>`` without forming ``L R``: ``sum((L^T X) * R)``."""
        if self.R is None:
            return (self.L * X).sum()
        return ((self.L.T @ X) * self.R).sum()


# --------------------------------------------------------------------------- layout
def domain_vectors(mode: str, means: dict[str, torch.Tensor], basis: TangentBasis | None) -> torch.Tensor:
    """Per-domain vectors the mask acts on: shape ``(K, P)``.

    ``full``: the flattened ``G_e`` (``P = p q``); ``tangent``: the concatenated
    coordinates ``[core, left, right]`` (``P = dim T``).
    """
    if mode == "full":
        G = means["G"]
        return G.reshape(G.shape[0], -1)
    blocks = coordinates(basis, means["GV"], means["UG"])
    K = means["GV"].shape[0]
    return torch.cat([blocks[name].reshape(K, -1) for name in ("core", "left", "right")], dim=1)


def split_blocks(basis: TangentBasis, flat: torch.Tensor) -> dict[str, torch.Tensor]:
    """Inverse of the concatenation in `domain_vectors`: ``(..., dim T)`` to blocks ``(..., rows, cols)``."""
    out = {}
    start = 0
    lead = flat.shape[:-1]
    for name, shape in basis.coordinate_shapes().items():
        size = shape[0] * shape[1]
        out[name] = flat[..., start:start + size].reshape(*lead, *shape)
        start += size
    return out


# ------------------------------------------------------------------- projections
def project_rank_r(D: torch.Tensor, r: int, config: LoraIGAConfig) -> Direction:
    """Best rank-r approximation ``Pi_r(D)`` of a ``p x q`` matrix as thin factors ``(U S) Vh``.

    `iga_theory.projection.truncated_svd` with the method of ``config.projection``. The
    randomized sketch uses a fixed seed, so the same statistics give the same step.
    """
    method = config.projection
    if method == "auto":
        small_sketch = r + config.oversampling <= AUTO_RANDOMIZED_SHARE * min(D.shape)
        method = "randomized" if small_sketch else "exact"
    U, S, Vh = truncated_svd(D, r, method=method, oversample=config.oversampling,
                             power_iters=config.power_iterations, seed=0)
    return Direction(U * S, Vh)


# ------------------------------------------------------------ gradient placement
@dataclass
class LayerOutcome:
    """What the operator produced for one layer in one step."""

    grad_B: torch.Tensor | None = None
    grad_A: torch.Tensor | None = None
    direction: Direction | None = None      # the weight-space direction behind the gradients
    mask: torch.Tensor | None = None        # flat, (P,)
    mu: torch.Tensor | None = None          # flat, (P,)
    safeguard_fired: bool = False
    projection_residual: float = float("nan")


def masked_moments(vectors: torch.Tensor, config: LoraIGAConfig,
                   mask_vectors: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Cross-domain ``mu`` of ``(K, P)`` per-domain vectors, and ``s2`` and the mask.

    ``mask_vectors`` (shape ``(K', P)``, for example moving averages of the per-domain
    means) set ``s2`` and the mask when given; ``mu``, the direction that is masked, is
    always the mean of ``vectors``, so the step stays an unbiased minibatch gradient.
    """
    source = vectors if mask_vectors is None else mask_vectors
    K = source.shape[0]
    tau = config.tau if config.tau is not None else cached_default_tau(K, config.variance)
    mu_source, s2 = mask_torch.cross_domain_moments(source, variance=config.variance)
    mask = mask_torch.mask_from_moments(mu_source, s2, K, tau=tau, kappa0=config.kappa0, m_min=config.m_min,
                                        eps_rel=config.eps_rel, variance=config.variance)
    mu = mu_source if mask_vectors is None else vectors.mean(dim=0)
    return mu, s2, mask


@functools.lru_cache(maxsize=64)
def cached_default_tau(K: int, variance: str) -> float:
    """`iga_theory.mask.default_tau`, cached: its t quantile costs about a millisecond per call."""
    return default_tau(K, variance=variance)


def _thin_or_dense(direction: Direction):
    """The direction in the form `iga_theory.lora_step` takes: ``(U, S, Vh)`` or a dense matrix."""
    if direction.R is None:
        return direction.L
    k = direction.L.shape[1]
    return (direction.L, torch.ones(k, dtype=direction.L.dtype, device=direction.L.device), direction.R)


def pull_back(ref: LoraLayerRef, direction: Direction, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Chain-rule factor gradients of a weight-space gradient ``P = L R``.

    ``grad_B = s P A^T`` and ``grad_A = s B^T P`` (`iga_theory.lora_step.factor_gradients`,
    from thin factors when ``P`` has them).
    """
    A = ref.lora_A.detach().to(dtype)
    B = ref.lora_B.detach().to(dtype)
    # lora_step takes alpha with scale = alpha / r; passing s r covers rsLoRA's alpha / sqrt(r) too.
    return lora_step.factor_gradients(_thin_or_dense(direction), B, A, ref.scaling * ref.rank)


def _full_gradient(ref: LoraLayerRef, basis: TangentBasis | None, mu: torch.Tensor, mask: torch.Tensor,
                   config: LoraIGAConfig) -> LayerOutcome:
    p, q = ref.shape
    mu_matrix = mu.reshape(p, q)
    D = mask.reshape(p, q) * mu_matrix
    P = project_rank_r(D, ref.rank, config)

    residual_norm = torch.linalg.matrix_norm(D - P.dense())
    D_norm = torch.linalg.matrix_norm(D)
    residual = float(residual_norm / D_norm) if float(D_norm) > 0 else 0.0
    fired = config.safeguard and float(P.inner(mu_matrix)) <= 0.0 and float(D_norm) > 0
    if fired:
        # <mu, D> = sum_j m_j mu_j^2 >= 0: the masked direction itself never ascends.
        P = Direction(D)
    grad_B, grad_A = pull_back(ref, P, D.dtype)
    return LayerOutcome(grad_B, grad_A, P, mask, mu, fired, residual)


def _tangent_gradient(ref: LoraLayerRef, basis: TangentBasis, mu: torch.Tensor, mask: torch.Tensor,
                      config: LoraIGAConfig) -> LayerOutcome:
    direction = tangent_direction(basis, mask * mu)
    grad_B, grad_A = pull_back(ref, direction, mu.dtype)
    return LayerOutcome(grad_B, grad_A, direction, mask, mu, False, 0.0)


def tangent_direction(basis: TangentBasis, flat: torch.Tensor) -> Direction:
    """Thin factors of the tangent vector with flat coordinates ``flat`` (shape ``(dim T,)``).

    ``Y = Q_U [core; left] V^T + U (V_perp right^T)^T = [Y V, U] @ [V^T; right_full]``.
    A stack ``(K, dim T)`` gives stacked factors ``(K, p, k_A + k_B)`` and ``(K, k_A + k_B, q)``.
    """
    blocks = split_blocks(basis, flat)
    lead = flat.shape[:-1]
    YV = apply_batched(basis.U.apply, torch.cat([blocks["core"], blocks["left"]], dim=-2))
    zeros = blocks["right"].new_zeros(*lead, basis.k_B, basis.k_A)
    padded = torch.cat([zeros, blocks["right"]], dim=-1)
    right_full = apply_batched(basis.V.apply, padded.transpose(-1, -2)).transpose(-1, -2)
    U = basis.U.Y.expand(*lead, *basis.U.Y.shape)
    Vt = basis.V.Y.T.expand(*lead, *basis.V.Y.T.shape)
    return Direction(torch.cat([YV, U], dim=-1), torch.cat([Vt, right_full], dim=-2))


# Mode -> gradient-placement operator on one layer.
GRADIENT_OPERATORS = {"full": _full_gradient, "tangent": _tangent_gradient}


def layer_gradients(ref: LoraLayerRef, vectors: torch.Tensor, basis: TangentBasis | None,
                    config: LoraIGAConfig, mask_vectors: torch.Tensor | None = None) -> LayerOutcome:
    """Run the operator of ``config.mode`` on one layer's ``(K, P)`` per-domain vectors.

    ``mask_vectors`` set the mask when given (see `masked_moments`).
    """
    mu, _, mask = masked_moments(vectors, config, mask_vectors)
    return GRADIENT_OPERATORS[config.mode](ref, basis, mu, mask, config)


def plain_gradients(ref: LoraLayerRef, mu: torch.Tensor, basis: TangentBasis | None,
                    mode: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Unmasked chain-rule factor gradients of the cross-domain mean ``mu`` (placement ``update``)."""
    if mode == "full":
        p, q = ref.shape
        direction = Direction(mu.reshape(p, q))
    else:
        direction = tangent_direction(basis, mu)
    return pull_back(ref, direction, mu.dtype)


# -------------------------------------------------------------- update placement
def _full_update(ref: LoraLayerRef, basis: TangentBasis, outcome: LayerOutcome, dB: torch.Tensor,
                 dA: torch.Tensor, config: LoraIGAConfig) -> tuple[torch.Tensor, torch.Tensor, bool]:
    dtype = basis.W_A.dtype
    s = ref.scaling
    A = ref.lora_A.detach().to(dtype)
    B = ref.lora_B.detach().to(dtype)
    p, q = ref.shape
    step = s * (dB.to(dtype) @ A + B @ dA.to(dtype))        # first-order weight move, (p, q)
    masked = outcome.mask.reshape(p, q) * step
    P = project_rank_r(masked, ref.rank, config)
    fired = config.safeguard and float(P.inner(step)) <= 0.0 and bool(masked.any())
    if fired:
        P = Direction(masked)

    V = basis.V.Y
    U = basis.U.Y
    Z_left = P.L @ P.right_times(V)                          # P V, (p, k_A)
    UP = (U.T @ P.dense()) if P.R is None else (U.T @ P.L) @ P.R   # U^T P, (k_B, q)
    Z_right = UP - (UP @ V) @ V.T
    # NOTE: the minimum-norm solve divides by the singular values of A and B above the
    # rank cut, so a nearly rank-deficient factor (B a few steps after B = 0) can get a
    # large step along its weak directions; no training run has measured how often.
    dB_new, dA_new = tangent_pullback_update(basis, Z_left, Z_right)
    return dB_new, dA_new, fired


def _tangent_update(ref: LoraLayerRef, basis: TangentBasis, outcome: LayerOutcome, dB: torch.Tensor,
                    dA: torch.Tensor, config: LoraIGAConfig) -> tuple[torch.Tensor, torch.Tensor, bool]:
    dB_new, dA_new = masked_factor_update(basis, dB, dA, split_blocks(basis, outcome.mask))
    return dB_new, dA_new, False


# Mode -> update-placement operator: (optimizer step on the factors) -> masked step.
UPDATE_OPERATORS = {"full": _full_update, "tangent": _tangent_update}


def masked_update(ref: LoraLayerRef, basis: TangentBasis, outcome: LayerOutcome, dB: torch.Tensor,
                  dA: torch.Tensor, config: LoraIGAConfig) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """Mask the wrapped optimizer's factor step ``(dB, dA)`` of one layer; see the module docstring.

    Returns ``(dB', dA', safeguard_fired)`` in the factorisation dtype.
    """
    return UPDATE_OPERATORS[config.mode](ref, basis, outcome, dB, dA, config)


# -------------------------------------------------------------------- retraction
def retract(ref: LoraLayerRef, direction: Direction, lr: float) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Best rank-r approximation of ``s B A - lr P``, split back into ``(B, A)``.

    `iga_theory.lora_step.retract`: from thin factors (QR of ``[s B, -lr L]`` and
    ``[A; R]^T``, SVD of the small core) when ``P`` has them, with a dense SVD otherwise;
    the split is balanced, ``B = U S^{1/2} / sqrt(s)`` and ``A = S^{1/2} V^T / sqrt(s)``.
    """
    dtype = direction.L.dtype
    A = ref.lora_A.detach().to(dtype)
    B = ref.lora_B.detach().to(dtype)
    return lora_step.retract(B, A, ref.scaling * ref.rank, float(lr), _thin_or_dense(direction))


def working_dtype(ref: LoraLayerRef) -> torch.dtype:
    """Dtype of the operator's arithmetic for a layer: float64 for float64 adapters, else float32."""
    return factor_dtype(ref.lora_A.dtype)
