r"""Functional predictors and their per-domain and per-sample gradients (torch.func).

Every algorithm of the comparison harness accesses the model through one object, a
`Predictor`: a flat parameter vector ``theta`` of shape ``(P,)``, a pure function
``forward(theta, X) -> f`` and a per-sample loss. Because the forward pass is a pure
function of ``theta``, `torch.func.grad` and `torch.func.vmap` give every derivative
the baselines need without module hooks:

.. math::

    L_e(\theta) = \frac1n \sum_{i=1}^n \ell(f_\theta(x_{e,i}), y_{e,i}),\qquad
    g_e = \nabla_\theta L_e(\theta),\qquad
    g_{e,i} = \nabla_\theta \ell(f_\theta(x_{e,i}), y_{e,i}).

Batches are stacked per domain: ``X`` has shape ``(K, n, ...)`` and ``y`` shape
``(K, n, ...)``, one equal-sized minibatch per domain. All the functions here are
differentiable again (``create_graph`` is implicit in torch.func), which is what the
penalties of Fishr and of Koyama & Yamaguchi need.

Losses (dispatch table `LOSSES`):

* ``"squared"``: ``l(f, y) = |f - y|^2 / 2`` summed over output coordinates;
* ``"logistic"``: ``l(f, y) = log(1 + exp(-y f))`` for labels ``y`` in {-1, +1}.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch.func import grad, vmap


def squared_loss(f: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-sample squared loss ``|f - y|^2 / 2``; f, y of shape (n,) or (n, q); returns (n,)."""
    residual = (f - y).reshape(f.shape[0], -1)
    return 0.5 * (residual * residual).sum(dim=-1)


def logistic_loss(f: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-sample logistic loss ``softplus(-y f)`` for y in {-1, +1}; shapes (n,) -> (n,)."""
    return torch.nn.functional.softplus(-y * f)


LOSSES: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "squared": squared_loss,
    "logistic": logistic_loss,
}


@dataclass(frozen=True)
class Predictor:
    """A model as a pure function of a flat parameter vector.

    Attributes
    ----------
    n_params : int
        P, the length of ``theta``.
    forward : callable
        ``forward(theta, X) -> f`` with ``theta`` of shape (P,), ``X`` of shape
        (n, ...) and ``f`` of shape (n,) or (n, q). Must be written with torch
        operations only, so that torch.func can transform it.
    loss : str
        Key of `LOSSES`.
    init : callable
        ``init(rng) -> ndarray (P,)``, the initial parameters drawn from ``rng``.
    blocks : dict
        Named slices of ``theta`` (for example ``{"B": slice(0, 8)}``), one per
        parameter tensor.
    lora : LoRAStructure, optional
        Present when the predictor is one LoRA layer ``f(x) = x^T W(theta)``.
    """

    n_params: int
    forward: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    loss: str
    init: Callable[[np.random.Generator], np.ndarray]
    blocks: dict | None = None
    lora: "LoRAStructure | None" = None

    def __post_init__(self):
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {sorted(LOSSES)}; got {self.loss!r}")
        if isinstance(self.n_params, bool) or not isinstance(self.n_params, int) or self.n_params < 1:
            raise ValueError(f"n_params must be a positive integer; got {self.n_params!r}")

    def sample_losses(self, theta: torch.Tensor, X: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Per-sample losses of one batch: X (n, ...), y (n, ...) -> (n,)."""
        return LOSSES[self.loss](self.forward(theta, X), y)

    def mean_loss(self, theta: torch.Tensor, X: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Mean loss of one batch (a 0-d tensor)."""
        return self.sample_losses(theta, X, y).mean()


@dataclass(frozen=True)
class LoRAStructure:
    """A LoRA layer ``W = W0 + (alpha / r) B A`` inside a flat ``theta = (vec B, vec A)``.

    Attributes
    ----------
    W0 : Tensor, shape (p, q)
        Frozen base weight.
    rank : int
        r, the inner dimension of B (p, r) and A (r, q).
    alpha : float
        LoRA scaling numerator; the update is scaled by ``alpha / r``.
    """

    W0: torch.Tensor
    rank: int
    alpha: float

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.W0.shape)

    def factors(self, theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, A)`` of shapes (p, r) and (r, q) from the flat theta (views, row-major)."""
        p, q = self.shape
        n_b = p * self.rank
        return theta[:n_b].reshape(p, self.rank), theta[n_b:].reshape(self.rank, q)

    def weight(self, theta: torch.Tensor) -> torch.Tensor:
        """``W = W0 + (alpha / r) B A``, shape (p, q)."""
        B, A = self.factors(theta)
        return self.W0.to(theta.dtype) + (self.alpha / self.rank) * B @ A


def per_domain_weight_gradients(predictor: Predictor, theta: torch.Tensor, X: torch.Tensor,
                                y: torch.Tensor) -> torch.Tensor:
    """Gradient of each domain's mean loss with respect to the LoRA weight W; shape (K, p, q).

    For ``f(x) = x^T W`` this is ``G_e = X_e^T dL/df / n``, the weight-space gradient
    that the IGA LoRA step masks and projects.
    """
    check_domain_batches(X, y)
    if predictor.lora is None:
        raise ValueError("per_domain_weight_gradients needs a LoRA predictor (predictor.lora is None)")
    loss = LOSSES[predictor.loss]

    def weight_loss(W, X_e, y_e):
        return loss(X_e @ W, y_e).mean()

    return vmap(grad(weight_loss), in_dims=(None, 0, 0))(predictor.lora.weight(theta), X, y)


def linear_predictor(n_features: int, loss: str, init_scale: float = 0.0) -> Predictor:
    """Linear predictor ``f(x) = theta^T x`` (no bias) with ``theta`` of shape (n_features,).

    ``init_scale = 0`` starts at ``theta = 0``; otherwise ``theta ~ N(0, init_scale^2 I)``.
    """
    def forward(theta, X):
        return X @ theta

    def init(rng):
        return init_scale * rng.standard_normal(n_features) if init_scale else np.zeros(n_features)

    return Predictor(n_params=n_features, forward=forward, loss=loss, init=init)


def check_domain_batches(X, y) -> tuple[int, int]:
    """Validate stacked per-domain batches; return (K, n).

    ``X`` must have shape (K, n, features...) and ``y`` shape (K, n, ...) with the same
    K and n, n >= 1 and K >= 1, and both must be floating-point torch tensors.
    """
    for name, value in (("X", X), ("y", y)):
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor of shape (K, n, ...); got {type(value).__name__}")
        if not value.dtype.is_floating_point:
            raise TypeError(f"{name} must be a floating-point tensor; got dtype {value.dtype}")
    if X.ndim < 3 or y.ndim < 2:
        raise ValueError(
            f"X and y must be stacked per domain with shapes (K, n, features...) and (K, n, ...); "
            f"got X {tuple(X.shape)} and y {tuple(y.shape)}"
        )
    if X.shape[:2] != y.shape[:2]:
        raise ValueError(
            f"X and y disagree on (K, n): X has {tuple(X.shape[:2])}, y has {tuple(y.shape[:2])}"
        )
    K, n = int(X.shape[0]), int(X.shape[1])
    if K < 1 or n < 1:
        raise ValueError(f"every domain batch must be non-empty; got K = {K}, n = {n}")
    return K, n


def domain_losses(predictor: Predictor, theta: torch.Tensor, X: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean loss of each domain's batch, ``L_e(theta)``; returns shape (K,)."""
    check_domain_batches(X, y)
    return vmap(predictor.mean_loss, in_dims=(None, 0, 0))(theta, X, y)


def per_domain_gradients(predictor: Predictor, theta: torch.Tensor, X: torch.Tensor,
                         y: torch.Tensor) -> torch.Tensor:
    """Gradient of each domain's mean loss, ``g_e``; returns shape (K, P)."""
    check_domain_batches(X, y)
    return vmap(grad(predictor.mean_loss), in_dims=(None, 0, 0))(theta, X, y)


def per_domain_gradients_and_losses(predictor: Predictor, theta: torch.Tensor, X: torch.Tensor,
                                    y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(g, L)``: per-domain gradients (K, P) and mean losses (K,) in one pass."""
    check_domain_batches(X, y)

    def loss_and_aux(theta_, X_, y_):
        loss = predictor.mean_loss(theta_, X_, y_)
        return loss, loss.detach()

    return vmap(grad(loss_and_aux, has_aux=True), in_dims=(None, 0, 0))(theta, X, y)


def per_sample_gradients(predictor: Predictor, theta: torch.Tensor, X: torch.Tensor,
                         y: torch.Tensor) -> torch.Tensor:
    """Gradient of each sample's loss, ``g_{e,i}``; returns shape (K, n, P).

    The mean over ``i`` equals `per_domain_gradients` (the loss is an average).
    """
    check_domain_batches(X, y)

    def one_sample(theta_, x, target):
        return predictor.sample_losses(theta_, x.unsqueeze(0), target.unsqueeze(0))[0]

    per_batch = vmap(grad(one_sample), in_dims=(None, 0, 0))
    return vmap(per_batch, in_dims=(None, 0, 0))(theta, X, y)
