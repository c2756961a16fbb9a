"""Logical Consistency Score and answer consistency: hand-computed values and invariants."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from iga_theory.metrics import (answer_consistency, logical_consistency_score, normalize_predictions,
                                per_set_lcs)

# Float64 sums of O(1) terms: rounding stays within a few ulps.
TOL = 1e-12


def test_lcs_scalar_hand_computed():
    f = np.array([[1.0, 1.0], [1.0, -1.0]])
    # RMS over all four entries is 1, so h = f; set 1 has variance 0, set 2 has
    # mean 0 and (1/2)(1 + 1) = 1; LCS = (0 + 1) / 2.
    np.testing.assert_allclose(per_set_lcs(f), [0.0, 1.0], atol=TOL)
    assert logical_consistency_score(f) == pytest.approx(0.5, abs=TOL)


def test_lcs_scalar_divides_by_rms():
    f = np.array([[2.0, 4.0], [2.0, 2.0]])
    # RMS = sqrt((4 + 16 + 4 + 4) / 4) = sqrt(7); set 1: (1/2)((2-3)^2 + (4-3)^2) / 7 = 1/7.
    assert logical_consistency_score(f) == pytest.approx((1.0 / 7.0) / 2.0, abs=TOL)


def test_lcs_vectors_hand_computed():
    h = np.array([[[1.0, 0.0], [0.0, 3.0]],       # orthogonal unit directions: 1 - |hbar|^2 = 1/2
                  [[2.0, 0.0], [5.0, 0.0]]])      # same direction: 0
    np.testing.assert_allclose(per_set_lcs(h), [0.5, 0.0], atol=TOL)
    h_opposite = np.array([[[1.0, 1.0], [-2.0, -2.0]]])
    assert logical_consistency_score(h_opposite) == pytest.approx(1.0, abs=TOL)


@settings(max_examples=40, deadline=None)
@given(arrays(np.float64, st.tuples(st.integers(1, 6), st.integers(2, 5), st.integers(1, 4)),
              elements=st.floats(-10, 10)).filter(lambda h: np.all(np.linalg.norm(h, axis=-1) > 1e-3)))
def test_lcs_vectors_range_and_identity(h):
    values = per_set_lcs(h)
    assert np.all(values >= -TOL)
    assert np.all(values <= 1 + TOL)
    # (1/K) sum |u_k - ubar|^2 = 1 - |ubar|^2 for unit vectors.
    u = h / np.linalg.norm(h, axis=-1, keepdims=True)
    np.testing.assert_allclose(values, 1 - (u.mean(axis=1) ** 2).sum(-1), atol=1e-10)
    # Permuting renderings within sets, and rescaling vectors, change nothing.
    rng = np.random.default_rng(0)
    permuted = h[:, rng.permutation(h.shape[1])]
    np.testing.assert_allclose(per_set_lcs(permuted), values, atol=1e-10)
    np.testing.assert_allclose(per_set_lcs(3.5 * h), values, atol=1e-10)


@settings(max_examples=40, deadline=None)
@given(arrays(np.float64, st.tuples(st.integers(1, 8), st.integers(2, 5)), elements=st.floats(-100, 100)),
       st.floats(0.01, 100))
def test_lcs_scalar_range_and_scale_invariance(f, scale):
    if not np.any(f != 0):
        return
    score = logical_consistency_score(f)
    assert -TOL <= score <= 1 + TOL
    assert logical_consistency_score(scale * f) == pytest.approx(score, abs=1e-10)
    assert logical_consistency_score(-f) == pytest.approx(score, abs=1e-10)


def test_lcs_zero_when_renderings_agree():
    f = np.repeat(np.arange(1.0, 6.0)[:, None], 4, axis=1)
    assert logical_consistency_score(f) == 0.0


def test_normalize_predictions_unit_mean_square():
    f = np.random.default_rng(1).standard_normal((7, 3))
    assert np.mean(normalize_predictions(f) ** 2) == pytest.approx(1.0, abs=TOL)


@pytest.mark.parametrize("h, message", [
    (np.zeros((3,)), "shape"),
    (np.zeros((2, 1)), "K >= 2"),
    (np.zeros((0, 3)), "at least one isomer set"),
    (np.array([[1.0, np.nan]]), "NaN"),
    (np.array([[[1.0, 0.0], [0.0, 0.0]]]), "zero norm"),
])
def test_lcs_bad_input(h, message):
    with pytest.raises(ValueError, match=message):
        logical_consistency_score(h)


def test_answer_consistency_hand_computed():
    answers = np.array([[1, 1, 1], [1, -1, 1], [0, 0, 0], [2, 2, 3]])
    assert answer_consistency(answers) == 0.5
    assert answer_consistency(np.array([["a", "a"], ["a", "b"]])) == 0.5
    floats = np.array([[1.0, 1.05], [1.0, 2.0]])
    assert answer_consistency(floats, atol=0.1) == 0.5
    assert answer_consistency(floats) == 0.0


def test_answer_consistency_bad_input():
    with pytest.raises(ValueError, match="K >= 2"):
        answer_consistency(np.array([[1], [2]]))
    with pytest.raises(ValueError, match="atol"):
        answer_consistency(np.array([[1.0, 1.0]]), atol=-1.0)
