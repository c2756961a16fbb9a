"""Bad input to the mask operators: each error names the argument, the value and the fix."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from iga_theory import mask as reference
from iga_theory import mask_numba, mask_torch, operators
from iga_theory.errors import NonFiniteError

BACKENDS = ["numpy", "numba", "torch"]


def call(backend, g, **options):
    if backend == "torch":
        return mask_torch.conflict_mask(torch.as_tensor(g), **options)
    return operators.conflict_mask(np.asarray(g), backend=backend, **options)


@pytest.mark.parametrize("backend", BACKENDS)
def test_single_domain_rejected(backend):
    with pytest.raises(ValueError, match="K = 1 domain"):
        call(backend, np.ones((1, 5)))


@pytest.mark.parametrize("backend", BACKENDS)
def test_one_dimensional_input_rejected(backend):
    with pytest.raises(ValueError, match="shape \\(n_domains, ...\\)"):
        call(backend, np.ones(5))


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_parameter_axis_rejected(backend):
    with pytest.raises(ValueError, match="empty parameter axis"):
        call(backend, np.ones((3, 0)))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_gradient_rejected(backend, bad):
    g = np.ones((3, 4))
    g[1, 2] = bad
    with pytest.raises(NonFiniteError, match="1 non-finite value"):
        call(backend, g)


def test_numba_overflow_named():
    g = np.full((2, 3), 3e38, dtype=np.float32)
    with pytest.raises(NonFiniteError, match="overflowed in float32"):
        mask_numba.conflict_mask(g)


@pytest.mark.parametrize("backend", BACKENDS)
def test_integer_gradients_rejected(backend):
    with pytest.raises(TypeError, match="floating-point"):
        call(backend, np.ones((3, 4), dtype=np.int64))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("name", "value", "message"), [
    ("tau", 0.0, "tau must lie in \\(0.0, inf\\]"),
    ("tau", -1.0, "tau must lie in"),
    ("kappa0", 0.0, "kappa0 must lie in"),
    ("m_min", 1.0, "m_min must lie in \\[0.0, 1.0\\)"),
    ("m_min", -0.1, "m_min must lie in"),
    ("eps", -1e-3, "eps must lie in"),
    ("eps_rel", -1.0, "eps_rel must lie in"),
    ("variance", "sample", "variance must be one of"),
    ("score", "cosine", "score must be one of"),
])
def test_invalid_parameters_rejected(backend, name, value, message):
    with pytest.raises(ValueError, match=message):
        call(backend, np.random.default_rng(0).standard_normal((3, 4)), **{name: value})


@pytest.mark.parametrize("backend", BACKENDS)
def test_non_numeric_parameter_rejected(backend):
    with pytest.raises(TypeError, match="tau must be a real number"):
        call(backend, np.ones((3, 4)), tau="0.1")


def test_moments_shape_mismatch_rejected():
    with pytest.raises(ValueError, match="same shape"):
        reference.conflict_score(np.ones(3), np.ones(4))
    with pytest.raises(ValueError, match="same shape"):
        mask_torch.conflict_score(torch.ones(3), torch.ones(4))


def test_negative_variance_rejected():
    with pytest.raises(ValueError, match="s2 must be >= 0"):
        reference.mask_from_moments(np.ones(3), -np.ones(3), K=4)
    with pytest.raises(ValueError, match="s2 must be >= 0"):
        mask_torch.mask_from_moments(torch.ones(3), -torch.ones(3), K=4)


def test_negative_score_rejected():
    with pytest.raises(ValueError, match="conflict score in \\[0, inf\\]"):
        reference.mask_from_score(np.array([-1.0]), tau=1.0)


def test_torch_backend_rejects_numpy_input():
    with pytest.raises(TypeError, match="must be a torch.Tensor"):
        mask_torch.conflict_mask(np.ones((3, 4)))


@pytest.mark.parametrize("K", [1, 0, 2.5, True])
def test_default_tau_rejects_bad_K(K):
    with pytest.raises(ValueError, match="K must be an integer >= 2"):
        reference.default_tau(K)


def test_numba_iga_direction_rejects_unknown_option():
    with pytest.raises(TypeError, match="unknown mask options \\['sharpness'\\]"):
        mask_numba.iga_direction(np.ones((2, 3)), sharpness=3.0)
