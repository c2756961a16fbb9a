"""Sign-agreement conflict score: range, permutation, scale, agreement, opposition, per-domain scale."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from iga_theory import mask as reference
from iga_theory import operators

BACKENDS = ["numpy", "numba", "torch"]
# A fixed sequence of examples (derandomize) keeps runs reproducible; drop it and raise
# max_examples to explore further.
SETTINGS = settings(max_examples=25, deadline=None, derandomize=True)


def score(backend, g):
    if backend == "torch":
        return operators.sign_conflict_score(torch.from_numpy(g)).numpy()
    return operators.sign_conflict_score(g, backend=backend)


def sign_mask(backend, g, **options):
    if backend == "torch":
        return operators.conflict_mask(torch.from_numpy(g), score="sign", **options).numpy()
    return operators.conflict_mask(g, backend=backend, score="sign", **options)


@st.composite
def stacks(draw):
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    K = draw(st.integers(2, 64))
    P = draw(st.integers(1, 30))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    g = rng.standard_normal((K, P)) * 10.0 ** rng.uniform(-3, 3, size=(K, P))
    return (g + rng.standard_normal(P)).astype(dtype)


@pytest.mark.parametrize("backend", BACKENDS)
@SETTINGS
@given(g=stacks())
def test_sign_score_range(backend, g):
    c = score(backend, g)
    assert np.all(c >= 0)
    assert np.all(c <= 1)


@pytest.mark.parametrize("backend", BACKENDS)
@SETTINGS
@given(g=stacks(), data=st.data())
def test_sign_score_permutation(backend, g, data):
    permutation = list(data.draw(st.permutations(range(g.shape[0]))))
    # Reordering the sums changes the result by rounding only: |d sum g| <= 2 (K-1) u
    # sum|g| in both sums, so the ratio moves by at most 4 (K + 1) u.
    tolerance = 4 * (g.shape[0] + 1) * np.finfo(g.dtype).eps
    np.testing.assert_allclose(score(backend, g[permutation]), score(backend, g), rtol=0, atol=tolerance)


@pytest.mark.parametrize("backend", BACKENDS)
@SETTINGS
@given(g=stacks(), exponent=st.integers(-20, 20), negative=st.booleans())
def test_sign_score_scale_invariant(backend, g, exponent, negative):
    a = (-1.0 if negative else 1.0) * 2.0**exponent  # exact scaling: bitwise equal
    np.testing.assert_array_equal(score(backend, (a * g).astype(g.dtype)), score(backend, g))


@pytest.mark.parametrize("backend", BACKENDS)
@SETTINGS
@given(g=stacks())
def test_sign_agreement_gives_mask_one(backend, g):
    same_sign = np.abs(g) * np.sign(g[:1])  # every domain takes domain 0's sign
    assert np.all(score(backend, same_sign) == 0)
    assert np.all(sign_mask(backend, same_sign, tau=0.5) == 1)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("m_min", [0.0, 0.1])
def test_sign_opposing_domains_give_floor(backend, m_min):
    g1 = np.array([0.5, -3.0, 1e-4, 20.0])
    g = np.stack([g1, -g1])
    assert np.all(score(backend, g) == 1)
    tau, kappa0 = 0.5, 20.0
    m = sign_mask(backend, g, tau=tau, kappa0=kappa0, m_min=m_min)
    # c = 1 gives m_min + (1 - m_min) sigmoid(kappa0 (1 - 1/tau)) / sigmoid(kappa0), which is
    # within (1 - m_min) exp(-kappa0 (1/tau - 1)) / sigmoid(kappa0) of the floor.
    gap = (1 - m_min) * np.exp(-kappa0 * (1 / tau - 1)) / 0.5
    assert np.all(m >= m_min)
    assert np.all(m - m_min <= gap)


@pytest.mark.parametrize("backend", BACKENDS)
@SETTINGS
@given(g=stacks(), domain=st.integers(0, 63), factor=st.floats(1e-3, 1e3))
def test_sign_single_domain_scale_unchanged_when_signs_agree(backend, g, domain, factor):
    same_sign = np.abs(g) * np.sign(g[:1])
    scaled = same_sign.copy()
    scaled[domain % g.shape[0]] *= g.dtype.type(factor)
    np.testing.assert_array_equal(score(backend, scaled), score(backend, same_sign))
    np.testing.assert_array_equal(sign_mask(backend, scaled, tau=0.3), sign_mask(backend, same_sign, tau=0.3))


def test_variance_score_is_not_single_domain_scale_invariant():
    # Control: the variance score does change when one domain's scale changes.
    g = np.array([[1.0, 2.0], [1.0, 2.0], [1.0, 2.0]])
    scaled = g.copy()
    scaled[0] *= 10
    assert np.all(reference.conflict_mask(g, tau=0.5) == 1)
    assert np.all(reference.conflict_mask(scaled, tau=0.5) < 1e-3)


def test_sign_score_needs_tau():
    with pytest.raises(ValueError, match="needs an explicit tau"):
        reference.conflict_mask(np.ones((2, 3)), score="sign")
