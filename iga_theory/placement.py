"""Mask placement around any torch optimizer: on the `gradient` or on the `update`.

Adaptive optimizers divide each coordinate by its own running root mean square, so a
mask applied to the gradient cancels out wherever it is roughly constant over time:
``(m mu) / sqrt(m^2 v) = mu / sqrt(v)`` under Adam. `MaskedOptimizer` therefore offers
two placements:

* ``"gradient"``: ``grad <- transform(mask * grad)``, then the wrapped optimizer steps;
* ``"update"``: the wrapped optimizer steps on the unmasked gradient, and the change it
  made, ``delta = theta_new - theta_old``, is replaced by ``transform(mask * delta)``.
  A coordinate whose mask is 0 then does not move under any optimizer (decoupled
  weight decay included, because it is part of delta).

Under plain SGD (no momentum, no weight decay) the two placements take the same step
up to rounding. ``transform`` is an optional callable ``(param, tensor) -> tensor``
applied after the mask, for example a rank-r projection of a matrix parameter.

The optimizer's state (moments, step counts) is the wrapped optimizer's own: under the
``update`` placement Adam's moments see the unmasked gradients.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping

import torch

from iga_theory import mask_torch
from iga_theory.errors import NonFiniteError, check_finite

logger = logging.getLogger(__name__)

PLACEMENTS = ("gradient", "update")
NAN_POLICIES = ("raise", "skip")


class MaskedOptimizer:
    """Wrap a torch optimizer and apply per-parameter masks at a named placement.

    Parameters
    ----------
    optimizer : torch.optim.Optimizer
        Any optimizer, already built on the parameters.
    placement : {"gradient", "update"}
        Where the mask (and ``transform``) acts; see the module docstring.
    transform : callable or None
        ``transform(param, tensor) -> tensor`` of the same shape, applied after the mask.
    nan_policy : {"raise", "skip"}
        A NaN or Inf gradient raises `NonFiniteError` (default), or skips the whole step,
        which ``skipped_steps`` counts.

    Attributes
    ----------
    steps, skipped_steps : int
    """

    def __init__(self, optimizer: torch.optim.Optimizer, placement: str = "update",
                 transform: Callable | None = None, nan_policy: str = "raise"):
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"optimizer must be a torch.optim.Optimizer; got {type(optimizer).__name__}")
        if placement not in PLACEMENTS:
            raise ValueError(f"placement must be one of {PLACEMENTS}; got {placement!r}")
        if nan_policy not in NAN_POLICIES:
            raise ValueError(f"nan_policy must be one of {NAN_POLICIES}; got {nan_policy!r}")
        if transform is not None and not callable(transform):
            raise TypeError(f"transform must be callable (param, tensor) -> tensor; got {type(transform).__name__}")
        self.optimizer = optimizer
        self.placement = placement
        self.transform = transform
        self.nan_policy = nan_policy
        self.steps = 0
        self.skipped_steps = 0

    # ----- delegation ---------------------------------------------------------------

    @property
    def param_groups(self):
        return self.optimizer.param_groups

    @property
    def state(self):
        return self.optimizer.state

    def state_dict(self):
        return self.optimizer.state_dict()

    def load_state_dict(self, state_dict):
        self.optimizer.load_state_dict(state_dict)

    def zero_grad(self, set_to_none: bool = True):
        self.optimizer.zero_grad(set_to_none=set_to_none)

    # ----- steps --------------------------------------------------------------------

    def _parameters(self):
        return [p for group in self.optimizer.param_groups for p in group["params"]]

    def _resolve_masks(self, masks) -> dict:
        resolved = {}
        if masks is None:
            return resolved
        if not callable(masks) and not isinstance(masks, Mapping):
            raise TypeError(f"masks must be a mapping param -> mask or a callable; got {type(masks).__name__}")
        for p in self._parameters():
            m = masks(p) if callable(masks) else masks.get(p)
            if m is None:
                continue
            if tuple(m.shape) != tuple(p.shape):
                raise ValueError(f"mask of shape {tuple(m.shape)} does not match parameter of shape {tuple(p.shape)}")
            resolved[p] = m.detach().to(device=p.device, dtype=p.dtype)
        return resolved

    def _transformed(self, p, tensor):
        return self.transform(p, tensor) if self.transform is not None else tensor

    def _gradients_finite(self) -> bool:
        for p in self._parameters():
            if p.grad is not None and not bool(torch.isfinite(p.grad).all()):
                if self.nan_policy == "raise":
                    check_finite("parameter gradient", p.grad)
                self.skipped_steps += 1
                logger.warning("skipped optimizer step %d: non-finite gradient (%d skipped so far)",
                               self.steps, self.skipped_steps)
                return False
        return True

    @torch.no_grad()
    def step(self, masks=None):
        """Apply the masks at the placement and step the wrapped optimizer.

        Parameters
        ----------
        masks : mapping param -> Tensor, callable param -> Tensor or None, or None
            Mask per parameter, shaped like it, values in [0, 1] (not checked: any
            multiplier works). Parameters without a mask are stepped unmasked.

        Returns
        -------
        bool
            False when the step was skipped under ``nan_policy="skip"``.
        """
        resolved = self._resolve_masks(masks)
        if not self._gradients_finite():
            return False

        if self.placement == "gradient":
            for p, m in resolved.items():
                if p.grad is not None:
                    p.grad.copy_(self._transformed(p, m * p.grad))
            self.optimizer.step()
        else:
            before = {p: p.detach().clone() for p in resolved}
            self.optimizer.step()
            for p, m in resolved.items():
                delta = p - before[p]
                p.copy_(before[p] + self._transformed(p, m * delta))
        self.steps += 1
        return True

    @torch.no_grad()
    def step_from_domain_gradients(self, domain_gradients: Mapping, **mask_options):
        """Set each parameter's gradient to the cross-domain mean and step with its mask.

        Parameters
        ----------
        domain_gradients : mapping param -> Tensor of shape (K, *param.shape)
            Per-domain gradients of each masked parameter.
        **mask_options
            Passed to `iga_theory.mask_torch.iga_direction` (tau, kappa0, m_min, ...).

        Returns
        -------
        dict param -> mask (the masks used), or an empty dict when the step was skipped.
        """
        masks = {}
        for p, g in domain_gradients.items():
            if tuple(g.shape[1:]) != tuple(p.shape):
                raise ValueError(
                    f"domain gradients of shape {tuple(g.shape)} do not match parameter shape "
                    f"{tuple(p.shape)}; expected (K, *{tuple(p.shape)})"
                )
            try:
                mu, _ = mask_torch.cross_domain_moments(g.detach(), variance=mask_options.get("variance", "unbiased"))
                masks[p] = mask_torch.conflict_mask(g.detach(), **mask_options)
            except NonFiniteError:
                if self.nan_policy == "raise":
                    raise
                self.skipped_steps += 1
                logger.warning("skipped optimizer step %d: non-finite domain gradient (%d skipped so far)",
                               self.steps, self.skipped_steps)
                return {}
            p.grad = mu.to(p.dtype)
        self.step(masks)
        return masks
