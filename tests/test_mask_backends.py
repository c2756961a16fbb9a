"""M9: the numpy reference, the numba kernels and the torch kernel give the same mask.

Tolerance: the target relative tolerance (1e-12 in float64, 1e-5 in float32) where
the mask is well-conditioned, widened per coordinate by `mask_rounding_bound` where
the conflict score is ill-conditioned (cancellation in mu) or the mask is below the
dtype's normal range.

Hypothesis draws a fixed sequence of examples (derandomize) so that runs are reproducible.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from iga_theory import mask as reference
from iga_theory import mask_numba, mask_torch, operators

RELATIVE_TOLERANCE = {np.float32: 1e-5, np.float64: 1e-12}


@st.composite
def cases(draw):
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    K = draw(st.integers(2, 64))
    P = draw(st.integers(1, 300))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    offset = rng.choice([-1.0, 1.0], size=P) * 10.0 ** rng.uniform(-2, 2, size=P)
    spread = 10.0 ** rng.uniform(-3, 2, size=P)
    g = (offset + spread * rng.standard_normal((K, P))).astype(dtype)
    options = {
        "tau": draw(st.one_of(st.none(), st.floats(1e-2, 10.0))),
        "kappa0": draw(st.floats(0.1, 50.0)),
        "m_min": draw(st.sampled_from([0.0, 0.01, 0.3])),
        "eps": draw(st.sampled_from([None, 0.0, 1e-3])),
        "variance": draw(st.sampled_from(["unbiased", "population"])),
    }
    return g, options


def assert_masks_agree(m_reference, m_other, g, options):
    tau = options["tau"] if options["tau"] is not None else reference.default_tau(g.shape[0], variance=options["variance"])
    bound_options = {k: v for k, v in options.items() if k != "tau"}
    bound = reference.mask_rounding_bound(g, tau, **bound_options)
    allowed = RELATIVE_TOLERANCE[g.dtype.type] * np.abs(m_reference) + bound
    assert m_other.dtype == m_reference.dtype
    assert np.all(np.abs(m_other.astype(np.float64) - m_reference) <= allowed)


@settings(max_examples=40, deadline=None, derandomize=True)
@given(case=cases())
def test_m9_numba_matches_reference(case):
    g, options = case
    m_reference = reference.conflict_mask(g, **options)
    assert_masks_agree(m_reference, mask_numba.conflict_mask(g, **options), g, options)
    d_reference, _ = reference.iga_direction(g, **options)
    d_numba, m_numba = mask_numba.iga_direction(g, **options)
    assert_masks_agree(m_reference, m_numba, g, options)
    # d = m * mu: |dd| <= |dm| |mu| + m |dmu| + rounding of the product. mu usually
    # agrees bitwise, but numpy sums pairwise when axis 0 is contiguous (P = 1), so
    # allow the summation bound |dmu| <= 4 (K + 2) u max_e |g_e|.
    mu = reference.cross_domain_moments(g)[0]
    u = np.finfo(g.dtype).eps / 2
    dmu = 4 * (g.shape[0] + 2) * u * np.abs(g).max(axis=0)
    allowed = (np.abs(m_numba.astype(np.float64) - m_reference) * np.abs(mu) + m_reference * dmu
               + 2 * u * np.abs(mu))
    assert np.all(np.abs(d_numba.astype(np.float64) - d_reference) <= allowed)


@settings(max_examples=40, deadline=None, derandomize=True)
@given(case=cases())
def test_m9_torch_matches_reference(case):
    g, options = case
    m_reference = reference.conflict_mask(g, **options)
    m_torch = mask_torch.conflict_mask(torch.from_numpy(g), **options).numpy()
    assert_masks_agree(m_reference, m_torch, g, options)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_numba_moments_bitwise_equal_reference(dtype):
    # With P > 1 numpy sums axis 0 in order e = 0 .. K-1, as the kernel does.
    g = np.random.default_rng(3).standard_normal((9, 5000)).astype(dtype) + dtype(1e3)
    mu, s2 = reference.cross_domain_moments(g)
    mu_numba, s2_numba = mask_numba.cross_domain_moments(g)
    np.testing.assert_array_equal(mu_numba, mu)
    np.testing.assert_array_equal(s2_numba, s2)


def test_sign_score_backends_agree():
    g = np.random.default_rng(4).standard_normal((6, 700))
    expected = reference.sign_conflict_score(g)
    np.testing.assert_array_equal(mask_numba.sign_conflict_score(g), expected)
    # torch may sum in another order: agreement to a few ulps of the ratio.
    np.testing.assert_allclose(mask_torch.sign_conflict_score(torch.from_numpy(g)).numpy(), expected,
                               rtol=0, atol=16 * np.finfo(np.float64).eps)


@pytest.mark.parametrize("half", [torch.float16, torch.bfloat16])
def test_torch_half_precision_computed_in_float32(half):
    g = torch.randn(4, 50, generator=torch.Generator().manual_seed(0)).to(half)
    d, m = mask_torch.iga_direction(g, tau=1.0)
    expected = reference.conflict_mask(g.float().numpy(), tau=1.0)
    assert m.dtype == torch.float32
    assert d.dtype == torch.float32
    assert_masks_agree(expected, m.numpy(), g.float().numpy(), {"tau": 1.0, "kappa0": 20.0, "m_min": 0.0,
                                                                 "eps": None, "variance": "unbiased"})


def test_numpy_float16_computed_in_float32():
    g = np.random.default_rng(5).standard_normal((3, 20)).astype(np.float16)
    m = reference.conflict_mask(g, tau=1.0)
    assert m.dtype == np.float32
    assert mask_numba.conflict_mask(g, tau=1.0).dtype == np.float32


def test_multidimensional_and_noncontiguous_input():
    g = np.random.default_rng(6).standard_normal((5, 8, 6))
    view = g[:, ::2, :]  # not contiguous
    expected = reference.conflict_mask(view, tau=0.5)
    assert expected.shape == (4, 6)
    np.testing.assert_allclose(mask_numba.conflict_mask(view, tau=0.5), expected, rtol=1e-12, atol=0)
    np.testing.assert_allclose(mask_torch.conflict_mask(torch.from_numpy(view), tau=0.5).numpy(), expected,
                               rtol=1e-12, atol=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_torch_cuda_matches_reference():
    g = np.random.default_rng(7).standard_normal((8, 10000)).astype(np.float32)
    options = {"tau": 0.5, "kappa0": 20.0, "m_min": 0.0, "eps": None, "variance": "unbiased"}
    m_cuda = mask_torch.conflict_mask(torch.from_numpy(g).cuda(), **options)
    assert m_cuda.device.type == "cuda"
    assert_masks_agree(reference.conflict_mask(g, **options), m_cuda.cpu().numpy(), g, options)


def test_operators_dispatch_by_type():
    g = np.random.default_rng(8).standard_normal((3, 10))
    assert isinstance(operators.conflict_mask(g, tau=1.0), np.ndarray)
    assert isinstance(operators.conflict_mask(torch.from_numpy(g), tau=1.0), torch.Tensor)
    with pytest.raises(TypeError, match="needs a torch.Tensor"):
        operators.conflict_mask(g, backend="torch")
    with pytest.raises(TypeError, match="needs a numpy array"):
        operators.conflict_mask(torch.from_numpy(g), backend="numba")
    with pytest.raises(ValueError, match="backend must be one of"):
        operators.conflict_mask(g, backend="jax")
