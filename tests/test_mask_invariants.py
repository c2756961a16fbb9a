"""Invariants M1 to M6, M8 and M10 of the conflict mask, on every backend, as hypothesis properties.

Gradients are drawn as ``g_e = offset + spread * noise_e`` per coordinate with
log-uniform offsets and spreads, so the conflict scores cover agreement (c << tau),
the sigmoid's transition and conflict (c >> tau) in one draw. Hypothesis draws the
dtype (float32, float64), K (2 to 64), the shape and the mask parameters; numpy
generates the values from a drawn seed.

Tolerances: exact equalities where the arithmetic is exact (scaling by powers of 2,
coordinate separability, agreement); elsewhere `mask_rounding_bound`, the first-order
rounding analysis of the mask, per coordinate.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from iga_theory import mask as reference
from iga_theory import operators
from iga_theory.mask_torch import mask_from_score as mask_from_score_torch

BACKENDS = ["numpy", "numba", "torch"]
DTYPES = [np.float32, np.float64]
# A fixed sequence of examples (derandomize) keeps runs reproducible; drop it and raise
# max_examples to explore further.
PROPERTY_SETTINGS = settings(max_examples=25, deadline=None, derandomize=True)


def run_mask(backend, g, **options):
    """Mask of numpy ``g`` on ``backend``, returned as a numpy array."""
    if backend == "torch":
        return operators.conflict_mask(torch.from_numpy(np.ascontiguousarray(g)), **options).numpy()
    return operators.conflict_mask(g, backend=backend, **options)


def run_moments(backend, g, **options):
    if backend == "torch":
        mu, s2 = operators.cross_domain_moments(torch.from_numpy(np.ascontiguousarray(g)), **options)
        return mu.numpy(), s2.numpy()
    return operators.cross_domain_moments(g, backend=backend, **options)


def run_direction(backend, g, **options):
    if backend == "torch":
        d, m = operators.iga_direction(torch.from_numpy(np.ascontiguousarray(g)), **options)
        return d.numpy(), m.numpy()
    return operators.iga_direction(g, backend=backend, **options)


@st.composite
def gradient_stacks(draw, max_k=64, max_p=40):
    """(g, options): g of shape (K, *shape) and random mask parameters."""
    dtype = draw(st.sampled_from(DTYPES))
    K = draw(st.integers(2, max_k))
    shape = draw(st.sampled_from([(draw(st.integers(1, max_p)),), (draw(st.integers(1, 6)), draw(st.integers(1, 6)))]))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    offset = rng.choice([-1.0, 1.0], size=shape) * 10.0 ** rng.uniform(-2, 2, size=shape)
    spread = 10.0 ** rng.uniform(-3, 2, size=shape)
    g = (offset + spread * rng.standard_normal((K, *shape))).astype(dtype)
    options = {
        "tau": draw(st.floats(1e-2, 10.0)),
        "kappa0": draw(st.floats(0.1, 50.0)),
        "m_min": draw(st.sampled_from([0.0, 0.01, 0.3])),
        "variance": draw(st.sampled_from(["unbiased", "population"])),
    }
    return g, options


@pytest.mark.parametrize("backend", BACKENDS)
@PROPERTY_SETTINGS
@given(case=gradient_stacks())
def test_m1_range_and_direction_sign(backend, case):
    g, options = case
    d, m = run_direction(backend, g, **options)
    mu = run_moments(backend, g)[0]  # the backend's own mean: summation orders differ
    floor = g.dtype.type(options["m_min"])  # the floor rounded to the output dtype

    assert np.all(m >= floor)
    assert np.all(m <= 1)
    assert np.all(np.sign(d) * np.sign(mu) >= 0)
    # |fl(m mu)| <= |mu| holds exactly because m <= 1 and rounding is monotone.
    assert np.all(np.abs(d) <= np.abs(mu))


def test_m1_both_ends_reached():
    g = np.array([[1.0, 1.0], [1.0, -1.0]])  # coordinate 0 agrees, coordinate 1 cancels
    m = reference.conflict_mask(g, tau=0.5, m_min=0.2)
    assert m[0] == 1.0
    assert m[1] == 0.2


@pytest.mark.parametrize("backend", BACKENDS)
@PROPERTY_SETTINGS
@given(case=gradient_stacks(), data=st.data())
def test_m2_domain_permutation(backend, case, data):
    g, options = case
    permutation = data.draw(st.permutations(range(g.shape[0])))
    m = run_mask(backend, g, **options)
    m_permuted = run_mask(backend, g[list(permutation)], **options)
    # Permuting changes the order of the sums, hence the rounding only.
    bound = reference.mask_rounding_bound(g, **options)
    assert np.all(np.abs(m - m_permuted) <= bound)


@pytest.mark.parametrize("backend", BACKENDS)
@PROPERTY_SETTINGS
@given(case=gradient_stacks(), exponent=st.integers(-20, 20), negative=st.booleans())
def test_m3_scale_by_power_of_two_is_exact(backend, case, exponent, negative):
    g, options = case
    a = (-1.0 if negative else 1.0) * 2.0**exponent
    # Multiplying by a power of 2 is exact and commutes with every rounding step, so the
    # default relative eps and eps = 0 give bitwise equal masks.
    for eps in (None, 0.0):
        m = run_mask(backend, g, eps=eps, **options)
        m_scaled = run_mask(backend, (a * g).astype(g.dtype), eps=eps, **options)
        np.testing.assert_array_equal(m, m_scaled)


@pytest.mark.parametrize("backend", BACKENDS)
@PROPERTY_SETTINGS
@given(case=gradient_stacks(), a=st.floats(1e-3, 1e3), negative=st.booleans())
def test_m3_scale_by_any_factor(backend, case, a, negative):
    g, options = case
    a = -a if negative else a
    m = run_mask(backend, g, **options)
    m_scaled = run_mask(backend, (a * g).astype(g.dtype), **options)
    # a * g is rounded once more than g: bound with the analysis of g's two routes
    # doubled (one extra relative error u per input value).
    bound = 2.0 * reference.mask_rounding_bound(g, **options)
    assert np.all(np.abs(m - m_scaled) <= bound)


@PROPERTY_SETTINGS
@given(case=gradient_stacks(), exponent=st.integers(-8, 8), eps_exponent=st.integers(-6, 2))
def test_m3_absolute_eps_rescales(case, exponent, eps_exponent):
    g, options = case
    a = 2.0**exponent
    eps = 2.0**eps_exponent
    # m(aG; eps) = m(G; eps / a^2): exact for powers of 2.
    m_scaled = reference.conflict_mask((a * g).astype(g.dtype), eps=eps, **options)
    m_shifted = reference.conflict_mask(g, eps=eps / a**2, **options)
    np.testing.assert_array_equal(m_scaled, m_shifted)


@pytest.mark.parametrize("backend", BACKENDS)
@PROPERTY_SETTINGS
@given(case=gradient_stacks())
def test_m4_agreement_gives_exactly_one(backend, case):
    g, options = case
    same = np.broadcast_to(g[:1], g.shape).copy()
    d, m = run_direction(backend, same, **options)
    mu, s2 = reference.cross_domain_moments(same, variance=options["variance"])

    assert np.all(s2 == 0)
    assert np.all(reference.conflict_score(mu, s2) == 0)
    assert np.all(m == 1)
    np.testing.assert_array_equal(d, g[0])  # IGA reduces to the (common) gradient


@PROPERTY_SETTINGS
@given(case=gradient_stacks(max_k=8), coordinate=st.integers(0, 1000), factor=st.floats(1.01, 100.0))
def test_m5_monotone_in_s2_and_mu(case, coordinate, factor):
    g, options = case
    K = g.shape[0]
    variance = options.pop("variance")
    mu, s2 = reference.cross_domain_moments(g, variance=variance)
    mu, s2 = mu.ravel(), s2.ravel()
    j = coordinate % mu.size
    u = np.finfo(g.dtype).eps / 2

    for eps in (1e-3, None):  # a fixed absolute eps, then the relative default
        m = reference.mask_from_moments(mu, s2, K, eps=eps, variance=variance, **options)
        more_conflict = s2.copy()
        more_conflict[j] *= g.dtype.type(factor)
        more_agreement = mu.copy()
        more_agreement[j] *= g.dtype.type(factor)
        m_conflict = reference.mask_from_moments(mu, more_conflict, K, eps=eps, variance=variance, **options)
        m_agreement = reference.mask_from_moments(more_agreement, s2, K, eps=eps, variance=variance, **options)
        # Exact arithmetic is monotone; rounding of c and of the sigmoid can break it by
        # a few ulps: 8 u relative in c, moved through |dm/dc| c, plus 8 u of m.
        c = reference.conflict_score(mu, s2, eps=eps)[j]
        slack = (np.abs(reference.mask_score_derivative(c, options["tau"], options["kappa0"], options["m_min"])) * c
                 * 8 * u + 8 * u * m[j] + 4 * np.finfo(g.dtype).tiny)
        assert m_conflict[j] <= m[j] + slack
        assert m_agreement[j] >= m[j] - slack


@pytest.mark.parametrize("backend", ["numpy", "torch"])
@given(c=st.lists(st.floats(0.0, 20.0), min_size=1, max_size=20), tau=st.floats(0.05, 5.0),
       m_min=st.sampled_from([0.0, 0.2]), dtype=st.sampled_from(DTYPES))
@settings(max_examples=40, deadline=None, derandomize=True)
def test_m6_hard_limit(backend, c, tau, m_min, dtype):
    scores = np.array(c, dtype=dtype)
    ratio = scores.astype(np.float64) / tau
    distance = np.abs(ratio - 1.0)
    hard = m_min + (1.0 - m_min) * (ratio < 1.0)
    u = np.finfo(dtype).eps / 2
    for kappa0 in (1e2, 1e3, 1e4):
        if backend == "torch":
            m = mask_from_score_torch(torch.from_numpy(scores), tau, kappa0=kappa0, m_min=m_min).numpy()
        else:
            m = reference.mask_from_score(scores, tau, kappa0=kappa0, m_min=m_min)
        # Below tau, 1 - sigmoid(kappa0 delta) <= exp(-kappa0 delta); above, the ratio is
        # sigmoid(-kappa0 delta) / sigmoid(kappa0) <= 2 exp(-kappa0 delta). Computing
        # z = kappa0 (1 - c/tau) in the dtype errs by up to kappa0 u (1 + 2 c/tau), which
        # enters the exponent, and the result is rounded once more (4 u).
        z_error = kappa0 * u * (1.0 + 2.0 * ratio)
        off_threshold = distance > 2.0 * z_error / kappa0
        bound = 2.0 * np.exp(-kappa0 * distance + z_error) + 4 * u
        assert np.all(np.abs(m.astype(np.float64) - hard)[off_threshold] <= bound[off_threshold])


@pytest.mark.parametrize("m_min", [0.0, 0.3])
def test_m6_at_threshold_half_way(m_min):
    for kappa0 in (1e2, 1e3, 1e4):
        m = float(reference.mask_from_score(np.array([0.7]), 0.7, kappa0=kappa0, m_min=m_min)[0])
        # At c = tau the ratio is sigmoid(0)/sigmoid(kappa0) = (1 + e^-kappa0)/2.
        assert abs(m - (m_min + (1.0 - m_min) / 2)) <= (1.0 - m_min) * np.exp(-kappa0) + 1e-16


@pytest.mark.parametrize("backend", BACKENDS)
@PROPERTY_SETTINGS
@given(case=gradient_stacks(), coordinate=st.integers(0, 1000), data=st.data())
def test_m8_coordinate_separability(backend, case, coordinate, data):
    g, options = case
    flat = g.reshape(g.shape[0], -1)
    j = coordinate % flat.shape[1]
    others = [i for i in range(flat.shape[1]) if i != j]
    changed = flat.copy()
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    changed[:, others] = (changed[:, others] * rng.uniform(0.1, 10.0, size=(1, len(others)))).astype(g.dtype)

    # With an absolute eps the mask at j is a function of column j alone: bitwise equal.
    m = run_mask(backend, flat, eps=0.5, **options)
    m_changed = run_mask(backend, changed, eps=0.5, **options)
    assert m[j] == m_changed[j]

    # With the relative eps, other coordinates enter only through the scalar eps.
    mu, s2 = reference.cross_domain_moments(changed, variance=options["variance"])
    eps_changed = reference.relative_eps(mu, s2)
    m_relative = reference.conflict_mask(changed, **options)
    m_absolute = reference.conflict_mask(changed, eps=eps_changed, **options)
    np.testing.assert_array_equal(m_relative, m_absolute)


@pytest.mark.parametrize("backend", BACKENDS)
@PROPERTY_SETTINGS
@given(case=gradient_stacks(max_k=32))
def test_m10_opposing_domains_at_floor(backend, case):
    g, options = case
    K = g.shape[0]
    half = g[: max(K // 2, 1)]
    opposed = np.concatenate([half, -half])  # every domain has its negation
    mu, s2 = reference.cross_domain_moments(opposed)
    u = np.finfo(g.dtype).eps / 2
    # mu is 0 up to the rounding of the sum, |mu| <= 4 (K + 2) u max|g|.
    assert np.all(np.abs(mu) <= 4 * (K + 2) * u * np.abs(opposed).max(axis=0))
    # Then the score is at least c_low = s2 / (mu_max^2 + eps) with the relative eps, and
    # infinite or at least s2 / mu_max^2 with eps = 0, so the mask is within
    # (1 - m_min) exp(-kappa0 (c_low / tau - 1)) / sigmoid(kappa0) of its floor, and
    # exactly at it where that bound is below half the smallest subnormal.
    mu_max = 4 * (K + 2) * u * np.abs(opposed).max(axis=0).astype(np.float64)
    s2 = s2.astype(np.float64)
    eps = reference.relative_eps(mu, s2)
    floor = g.dtype.type(options["m_min"])
    tau, kappa0, m_min = options["tau"], options["kappa0"], options["m_min"]
    smallest = np.finfo(g.dtype).smallest_subnormal

    for eps_used, m in ((eps, run_mask(backend, opposed, **options)),
                        (0.0, run_mask(backend, opposed, eps=0.0, **options))):
        with np.errstate(divide="ignore", over="ignore"):
            c_low = s2 / (mu_max**2 + eps_used)
            gap = (1 - m_min) * np.exp(-kappa0 * (c_low / tau - 1)) / 0.5
        conflicting = c_low > 10 * tau  # the coordinates that are not negligible against eps
        assert np.all(m >= floor)
        # Slack: the rounding of m_min + (1 - m_min) ratio (one spacing of the floor) and
        # results below the normal range.
        slack = np.spacing(floor) + 4 * np.finfo(g.dtype).tiny
        assert np.all((m - floor)[conflicting] <= gap[conflicting] + slack)
        assert np.all(m[conflicting & (gap < smallest / 2)] == floor)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_m10_two_opposing_domains_exact(backend, dtype):
    g1 = np.array([0.3, -2.0, 1e-3, 7.0], dtype=dtype)
    g = np.stack([g1, -g1])
    mu, _ = reference.cross_domain_moments(g)
    assert np.all(mu == 0)  # g_0 + (-g_0 - g_0)/2 = 0 exactly
    np.testing.assert_array_equal(run_mask(backend, g, m_min=0.05), dtype(0.05))
