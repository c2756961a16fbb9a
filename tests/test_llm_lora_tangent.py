"""Orthonormal tangent coordinates of a LoRA adapter: invariants against dense references."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from iga_theory.llm import lora_tangent as lt

EPS64 = torch.finfo(torch.float64).eps


@st.composite
def adapters(draw):
    """Random (B, A, G, s) with B of full rank, rank 1 or zero (PEFT's initialisation)."""
    p = draw(st.integers(1, 9))
    q = draw(st.integers(1, 9))
    r = draw(st.integers(1, 4))
    kind = draw(st.sampled_from(["full", "rank1", "zero"]))
    generator = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    A = torch.randn(r, q, generator=generator, dtype=torch.float64)
    B = torch.randn(p, r, generator=generator, dtype=torch.float64)
    if kind == "rank1":
        B = B[:, :1] @ torch.randn(1, r, generator=generator, dtype=torch.float64)
    elif kind == "zero":
        B = torch.zeros(p, r, dtype=torch.float64)
    G = torch.randn(p, q, generator=generator, dtype=torch.float64)
    s = draw(st.sampled_from([0.5, 2.0]))
    return B, A, G, s


def tangent_projection(basis, G):
    """Dense ``P_T(G) = G V V^T + U U^T G (I - V V^T)``."""
    U, V = basis.U.Y, basis.V.Y
    return G @ V @ V.T + U @ (U.T @ G) @ (torch.eye(G.shape[1], dtype=G.dtype) - V @ V.T)


def tolerance(*matrices):
    """Rounding bound ~ 100 eps (p + q) ||M||, summed over the matrices involved."""
    size = sum(m.shape[0] + m.shape[1] for m in matrices)
    return 100 * EPS64 * size * max(1.0, *(float(m.abs().max()) for m in matrices))


@given(adapters())
def test_coordinates_are_an_isometry(case):
    B, A, G, s = case
    basis = lt.tangent_basis(B, A, s)
    coords = lt.coordinates_dense(basis, G)
    projected = tangent_projection(basis, G)
    norm_coords = sum(float((block ** 2).sum()) for block in coords.values())
    assert abs(norm_coords - float((projected ** 2).sum())) <= tolerance(G) * max(1.0, norm_coords)
    assert torch.allclose(lt.dense_from_coordinates(basis, coords), projected, rtol=0, atol=tolerance(G))


@given(adapters())
def test_dimension_matches_ranks(case):
    B, A, _, s = case
    basis = lt.tangent_basis(B, A, s)
    p, q = B.shape[0], A.shape[1]
    assert basis.k_B == int(torch.linalg.matrix_rank(B))
    assert basis.k_A == int(torch.linalg.matrix_rank(A))
    assert basis.dimension() == p * basis.k_A + basis.k_B * q - basis.k_A * basis.k_B


@given(adapters())
def test_householder_completion_starts_with_basis(case):
    B, A, _, s = case
    basis = lt.tangent_basis(B, A, s)
    for side in (basis.U, basis.V):
        identity = torch.eye(side.n, dtype=torch.float64)
        Q = side.apply(identity)
        assert torch.allclose(Q.T @ Q, identity, atol=tolerance(Q))
        assert torch.allclose(Q[:, :side.k], side.Y, atol=tolerance(Q))


@given(adapters())
def test_factor_gradients_follow_chain_rule(case):
    B, A, G, s = case
    basis = lt.tangent_basis(B, A, s)
    grad_B, grad_A = lt.factor_gradients(basis, lt.coordinates_dense(basis, G))
    scale = tolerance(G, A, B) * s * max(1.0, float(A.abs().max()), float(B.abs().max()))
    assert torch.allclose(grad_B, s * G @ A.T, atol=scale)
    assert torch.allclose(grad_A, s * B.T @ G, atol=scale)


@given(adapters(), st.integers(0, 2**31 - 1))
def test_masked_update_scales_each_coordinate(case, seed):
    B, A, _, s = case
    generator = torch.Generator().manual_seed(seed)
    basis = lt.tangent_basis(B, A, s)
    dB = torch.randn(B.shape, generator=generator, dtype=torch.float64)
    dA = torch.randn(A.shape, generator=generator, dtype=torch.float64)
    mask = {name: torch.rand(shape, generator=generator, dtype=torch.float64)
            for name, shape in basis.coordinate_shapes().items()}

    dB_new, dA_new = lt.masked_factor_update(basis, dB, dA, mask)
    before = lt.coordinates_dense(basis, s * (dB @ A + B @ dA))
    after = lt.coordinates_dense(basis, s * (dB_new @ A + B @ dA_new))
    scale = tolerance(dB, dA, A, B) * s * max(1.0, float(A.abs().max()), float(B.abs().max())) ** 2
    for name in mask:
        assert torch.allclose(after[name], mask[name] * before[name], atol=scale)
    assert bool(dB_new.isfinite().all() and dA_new.isfinite().all())


@given(adapters(), st.integers(0, 2**31 - 1))
def test_masked_update_with_ones_keeps_move(case, seed):
    B, A, _, s = case
    generator = torch.Generator().manual_seed(seed)
    basis = lt.tangent_basis(B, A, s)
    dB = torch.randn(B.shape, generator=generator, dtype=torch.float64)
    dA = torch.randn(A.shape, generator=generator, dtype=torch.float64)
    ones = {name: torch.ones(shape, dtype=torch.float64) for name, shape in basis.coordinate_shapes().items()}
    dB_new, dA_new = lt.masked_factor_update(basis, dB, dA, ones)
    assert torch.allclose(dB_new, dB, atol=tolerance(dB, A))
    assert torch.allclose(dA_new, dA, atol=tolerance(dA, B))


@given(adapters())
def test_pullback_update_realises_tangent_target(case):
    B, A, G, s = case
    basis = lt.tangent_basis(B, A, s)
    target = tangent_projection(basis, G)
    V, U = basis.V.Y, basis.U.Y
    Z_left = target @ V
    Z_right = U.T @ target - (U.T @ target @ V) @ V.T
    dB, dA = lt.tangent_pullback_update(basis, Z_left, Z_right)
    realised = s * (dB @ A + B @ dA)
    # The solve divides by the singular values of A and B: rounding grows with their
    # condition numbers.
    conditioning = 1.0
    for S in (basis.S_A, basis.S_B):
        if S.numel():
            conditioning *= float(S[0] / S[-1])
    assert torch.allclose(realised, target, atol=tolerance(G, A, B) * conditioning)


def test_zero_B_gives_finite_everything():
    A = torch.randn(3, 5, dtype=torch.float64)
    B = torch.zeros(4, 3, dtype=torch.float64)
    basis = lt.tangent_basis(B, A, 2.0)
    G = torch.randn(4, 5, dtype=torch.float64)
    coords = lt.coordinates_dense(basis, G)
    assert coords["core"].shape == (0, 3) and coords["right"].shape == (0, 2)
    grad_B, grad_A = lt.factor_gradients(basis, coords)
    assert torch.equal(grad_A, torch.zeros_like(grad_A))
    dB, dA = lt.tangent_pullback_update(basis, G @ basis.V.Y, coords["right"])
    assert bool(dB.isfinite().all()) and torch.equal(dA, torch.zeros_like(dA))


def test_basis_rejects_mismatched_factors():
    with pytest.raises(ValueError, match="shapes"):
        lt.tangent_basis(torch.zeros(4, 3), torch.zeros(2, 5), 1.0)
