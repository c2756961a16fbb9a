"""One entry point for the mask operators, with a choice of backend.

Three implementations compute the same numbers:

========  ===========================  ==============================================
backend   module                       use it for
========  ===========================  ==============================================
numpy     `iga_theory.mask`            reference: clear code, every check on the input
numba     `iga_theory.mask_numba`      large numpy arrays on CPU: fused, multi-threaded
                                       kernels (compiled on first use, cached on disk)
torch     `iga_theory.mask_torch`      tensors on CPU or CUDA, with autograd
========  ===========================  ==============================================

Each function below takes ``backend=None`` (the default) or one of the names above.
``None`` picks ``"torch"`` for a ``torch.Tensor`` and ``"numpy"`` for anything else;
pass ``backend="numba"`` explicitly for speed on large arrays. A tensor passed to the
numpy or numba backend is rejected rather than copied silently, and so is an array
passed to the torch backend.

Example::

    from iga_theory import operators
    mask = operators.conflict_mask(g, backend="numba")      # g: (K, P) numpy array
    d, mask = operators.iga_direction(g_tensor)             # torch, differentiable

The projections of `iga_theory.projection` accept numpy arrays and tensors directly.
"""

from __future__ import annotations

import importlib
from types import ModuleType

BACKENDS: dict[str, str] = {
    "numpy": "iga_theory.mask",
    "numba": "iga_theory.mask_numba",
    "torch": "iga_theory.mask_torch",
}


def _is_tensor(x) -> bool:
    torch = importlib.import_module("torch")
    return isinstance(x, torch.Tensor)


def backend_module(g, backend: str | None = None) -> ModuleType:
    """Return the module implementing ``backend`` for input ``g`` (see the module docstring)."""
    if backend is None:
        backend = "torch" if _is_tensor(g) else "numpy"
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {sorted(BACKENDS)} or None; got {backend!r}")
    is_tensor = _is_tensor(g)
    if backend == "torch" and not is_tensor:
        raise TypeError(
            f"backend='torch' needs a torch.Tensor; got {type(g).__name__}. "
            "Convert with torch.as_tensor(g) or choose backend='numpy' or 'numba'."
        )
    if backend != "torch" and is_tensor:
        raise TypeError(
            f"backend={backend!r} needs a numpy array; got a torch.Tensor. "
            "Use backend='torch' or convert with tensor.detach().cpu().numpy()."
        )
    return importlib.import_module(BACKENDS[backend])


def cross_domain_moments(g, variance: str = "unbiased", *, backend: str | None = None):
    """Cross-domain mean and variance ``(mu, s2)`` of ``g`` with shape (K, ...)."""
    return backend_module(g, backend).cross_domain_moments(g, variance=variance)


def sign_conflict_score(g, *, backend: str | None = None):
    """Sign-agreement score ``1 - |sum_e g_e| / sum_e |g_e|`` of ``g`` with shape (K, ...)."""
    return backend_module(g, backend).sign_conflict_score(g)


def conflict_mask(g, *, backend: str | None = None, **mask_options):
    """Conflict mask of ``g`` (shape (K, ...)); options as in `iga_theory.mask.conflict_mask`."""
    return backend_module(g, backend).conflict_mask(g, **mask_options)


def iga_direction(g, *, backend: str | None = None, **mask_options):
    """IGA direction ``d = mask * mu`` and the mask; options as in `conflict_mask`."""
    return backend_module(g, backend).iga_direction(g, **mask_options)
