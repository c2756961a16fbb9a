"""Welford / Chan streaming statistics: exactness, merging, conventions, the naive fast path.

Hypothesis draws a fixed sequence of examples (derandomize) so that runs are reproducible.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from iga_theory import mask as reference
from iga_theory.errors import NonFiniteError
from iga_theory.stats import (
    MomentAccumulator,
    MomentTriple,
    NaiveMomentAccumulator,
    merge_triples,
    reduce_triples,
)


@st.composite
def streams(draw):
    n = draw(st.integers(2, 64))
    P = draw(st.integers(1, 20))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    offset = 10.0 ** rng.uniform(-3, 6, size=P)
    x = offset + rng.standard_normal((n, P)) * 10.0 ** rng.uniform(-3, 3, size=P)
    return x


def two_pass(x, ddof):
    mean = x.mean(axis=0)
    return mean, ((x - mean) ** 2).sum(axis=0) / (x.shape[0] - ddof)


# Known error bounds: the two-pass formula and the Welford / pairwise updates
# have relative error O(n u kappa) with the condition number kappa = sqrt(1 + mean^2 / var),
# against O(n u kappa^2) for sum x^2 - n mean^2. 8 n u kappa bounds both sides together.
def variance_tolerance(x):
    mean, var = two_pass(x, 1)
    kappa = np.sqrt(1 + mean**2 / var)
    return 8 * x.shape[0] * np.finfo(np.float64).eps * kappa


@settings(max_examples=40, deadline=None, derandomize=True)
@given(x=streams(), data=st.data())
def test_welford_and_merge_match_two_pass(x, data):
    n = x.shape[0]
    one_by_one = MomentAccumulator()
    for row in x:
        one_by_one.update(row)
    cuts = sorted(data.draw(st.lists(st.integers(1, n - 1), max_size=5, unique=True)))
    parts = [MomentAccumulator().update_batch(chunk) for chunk in np.split(x, cuts)]
    merged = parts[0]
    for part in parts[1:]:
        merged.merge(part)

    for ddof, kind in ((1, "unbiased"), (0, "population")):
        mean, var = two_pass(x, ddof)
        for accumulator in (one_by_one, merged):
            assert accumulator.count == n
            # A recursive sum of n terms errs by at most (n - 1) u sum|x| to first order.
            mean_tolerance = 4 * n * np.finfo(float).eps * np.abs(x).mean(axis=0)
            assert np.all(np.abs(accumulator.mean - mean) <= mean_tolerance)
            assert np.all(np.abs(accumulator.variance(kind) - var) <= variance_tolerance(x) * var)


@settings(max_examples=20, deadline=None, derandomize=True)
@given(x=streams(), workers=st.integers(1, 9))
def test_tree_reduce_of_worker_triples(x, workers):
    # Each worker holds some domains; the all-reduce merges their (count, mean, M2).
    chunks = [c for c in np.array_split(x, workers) if len(c)]
    triples = [MomentAccumulator().update_batch(c).triple() for c in chunks]
    total = reduce_triples(triples)
    mean, var = two_pass(x, 1)
    assert total.count == x.shape[0]
    assert np.all(np.abs(total.m2 / (total.count - 1) - var) <= variance_tolerance(x) * var)
    rebuilt = MomentAccumulator.from_triple(total.count, total.mean, total.m2)
    assert np.all(np.abs(rebuilt.variance() - var) <= variance_tolerance(x) * var)


def test_merge_with_empty_triple():
    a = MomentTriple(3, np.array([1.0]), np.array([2.0]))
    empty = MomentTriple(0, None, None)
    assert merge_triples(a, empty).count == 3
    assert merge_triples(empty, a).m2[0] == 2.0


def test_large_mean_stable_path_exact_naive_path_loses_everything():
    # |mu| = 1e8 times the spread: the stable path keeps the variance to rounding,
    # E[x^2] - mu^2 cancels ~16 digits and keeps none (float64 has ~16).
    rng = np.random.default_rng(0)
    spread = rng.standard_normal((1000, 5))
    x = 1e8 + spread
    exact_var = spread.var(axis=0, ddof=1)

    stable = MomentAccumulator()
    for chunk in np.array_split(x, 7):
        stable.merge(MomentAccumulator().update_batch(chunk))
    naive = NaiveMomentAccumulator()
    for chunk in np.array_split(x, 7):
        naive.update_batch(chunk)
    _, naive_var = naive.moments()

    # Rounding x to ulp(1e8) = 1.49e-8 perturbs each value by <= 7.5e-9: relative 1e-8 on a
    # unit variance, plus O(n u) from the algorithm.
    np.testing.assert_allclose(stable.variance(), exact_var, rtol=1e-7)
    relative_error = np.abs(naive_var - exact_var) / exact_var
    assert np.all(relative_error > 0.1)  # no correct digit left
    # The same stream, centred, is fine for the naive path too (control).
    centred = NaiveMomentAccumulator().update_batch(spread)
    np.testing.assert_allclose(centred.moments()[1], exact_var, rtol=1e-12)


def test_cross_domain_stream_equals_mask_moments():
    g = np.random.default_rng(1).standard_normal((12, 30)) + 3.0
    accumulator = MomentAccumulator()
    for g_e in g:
        accumulator.update(g_e)
    for kind in ("unbiased", "population"):
        mu, s2 = reference.cross_domain_moments(g, variance=kind)
        np.testing.assert_allclose(accumulator.mean, mu, rtol=1e-14)
        np.testing.assert_allclose(accumulator.variance(kind), s2, rtol=1e-13)


def test_torch_tensors_accumulate():
    x = torch.randn(50, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) + 100.0
    accumulator = MomentAccumulator()
    for row in x[:20]:
        accumulator.update(row)
    accumulator.update_batch(x[20:])
    assert isinstance(accumulator.mean, torch.Tensor)
    torch.testing.assert_close(accumulator.variance(), x.var(dim=0), rtol=1e-12, atol=0)


def test_half_precision_accumulated_in_float32():
    accumulator = MomentAccumulator().update_batch(np.ones((4, 3), dtype=np.float16))
    assert accumulator.mean.dtype == np.float32


def test_nan_policy_skip_counts():
    accumulator = MomentAccumulator(nan_policy="skip")
    accumulator.update(np.array([1.0, 2.0]))
    accumulator.update(np.array([np.nan, 2.0]))
    accumulator.update(np.array([3.0, 2.0]))
    assert accumulator.count == 2
    assert accumulator.skipped == 1
    np.testing.assert_array_equal(accumulator.mean, [2.0, 2.0])


def test_nan_raises_by_default():
    with pytest.raises(NonFiniteError, match="x contains 1 non-finite"):
        MomentAccumulator().update(np.array([np.inf, 1.0]))


@pytest.mark.parametrize(("call", "error", "message"), [
    (lambda: MomentAccumulator().variance(), ValueError, "needs at least 2 accumulated vectors"),
    (lambda: MomentAccumulator().update(np.ones(2)).variance(), ValueError, "got count = 1"),
    (lambda: MomentAccumulator().update(np.ones(2)).variance("sample"), ValueError, "variance must be one of"),
    (lambda: MomentAccumulator().update(np.ones(2)).update(np.ones(3)), ValueError, "does not match"),
    (lambda: MomentAccumulator().update_batch(np.ones((0, 3))), ValueError, "n >= 1"),
    (lambda: MomentAccumulator().update(np.ones(2, dtype=int)), TypeError, "floating-point"),
    (lambda: MomentAccumulator(nan_policy="ignore"), ValueError, "nan_policy must be one of"),
    (lambda: MomentAccumulator().merge(3), TypeError, "MomentAccumulator"),
    (lambda: MomentAccumulator.from_triple(0, np.ones(2), np.ones(2)), ValueError, "count must be >= 1"),
    (lambda: reduce_triples([]), ValueError, "at least one triple"),
])
def test_accumulator_errors(call, error, message):
    with pytest.raises(error, match=message):
        call()
