"""Each baseline pinned to its definition with a known answer, plus numerical edge cases."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from iga_theory.synthetic.algorithms import ALGORITHMS, algorithm_class
from iga_theory.synthetic.algorithms_gradient import (and_mask, pcgrad_projections, rescale_mask, sand_mask,
                                                      sign_agreement)
from iga_theory.synthetic.algorithms_penalty import (fishr_penalty, gradient_alignment_penalty,
                                                     gradient_variances, groupdro_weights, irm_penalty,
                                                     irm_scale_gradients, vrex_penalty)
from iga_theory.synthetic.models import make_model
from iga_theory.synthetic.per_domain import (domain_losses, linear_predictor, per_domain_gradients,
                                             per_sample_gradients)

# Quantities that are exactly 0 in exact arithmetic come out as sums of O(1) float64
# terms, so their rounding error is a few multiples of 2.2e-16 times the term size.
EXACT_ZERO_ATOL = 1e-12
RTOL = 1e-12


def exact_moment_batch(model, domain, seed=0, repeat=1):
    """A batch whose empirical second moments equal the domain's population moments.

    With M the (P+1) x (P+1) second-moment matrix of (x, y) and L L^T = M, the rows of
    sqrt(m) Q L^T (Q an m x m random orthogonal matrix, m = P + 1) satisfy
    (1/m) R^T R = M, so every mean of a quadratic function of (x, y) (the squared loss,
    its gradient, the IRM derivative) is the population value. ``repeat`` copies each
    row in place, so the even and odd halves of the batch are each an exact batch.
    """
    sigma, c, ey2 = model.second_moments(domain)
    P = sigma.shape[0]
    M = np.block([[sigma, c[:, None]], [c[None, :], np.array([[ey2]])]])
    L = np.linalg.cholesky(M)
    m = P + 1
    Q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((m, m)))
    rows = np.sqrt(m) * Q @ L.T
    rows = np.repeat(rows, repeat, axis=0)
    return rows[:, :P], rows[:, P]


def exact_batches(model, domains, repeat=1):
    pairs = [exact_moment_batch(model, d, seed=i, repeat=repeat) for i, d in enumerate(domains)]
    X = torch.as_tensor(np.stack([p[0] for p in pairs]))
    y = torch.as_tensor(np.stack([p[1] for p in pairs]))
    return X, y


@pytest.fixture(scope="module")
def s1():
    model = make_model("s1")
    domains = model.draw_domains(6, np.random.default_rng(0))
    return model, domains


# ----- exact batches reproduce the population ----------------------------------------------------


def test_exact_batches_give_population_risks(s1):
    model, domains = s1
    X, y = exact_batches(model, domains)
    predictor = linear_predictor(model.n_params, "squared")
    theta = np.random.default_rng(1).standard_normal(model.n_params)
    losses = domain_losses(predictor, torch.as_tensor(theta), X, y).numpy()
    np.testing.assert_allclose(losses, model.risks(theta, domains), rtol=RTOL)
    grads = per_domain_gradients(predictor, torch.as_tensor(theta), X, y).numpy()
    np.testing.assert_allclose(grads, model.gradients(theta, domains), rtol=1e-10, atol=EXACT_ZERO_ATOL)


# ----- IRM ----------------------------------------------------------------------------------------


def test_irm_derivative_closed_form():
    # Squared loss: d/dw mean (w f - y)^2 / 2 at w = 1 is mean((f - y) f).
    predictor = linear_predictor(3, "squared")
    generator = torch.Generator().manual_seed(0)
    X = torch.randn(2, 8, 3, dtype=torch.float64, generator=generator)
    y = torch.randn(2, 8, dtype=torch.float64, generator=generator)
    theta = torch.randn(3, dtype=torch.float64, generator=generator)
    f = X @ theta
    d = irm_scale_gradients(predictor, theta, X, y, split=False)[:, 0]
    torch.testing.assert_close(d, ((f - y) * f).mean(dim=1), rtol=RTOL, atol=EXACT_ZERO_ATOL)
    halves = irm_scale_gradients(predictor, theta, X, y, split=True)
    torch.testing.assert_close(halves[:, 0], ((f - y) * f)[:, 0::2].mean(dim=1), rtol=RTOL, atol=EXACT_ZERO_ATOL)
    torch.testing.assert_close(halves[:, 1], ((f - y) * f)[:, 1::2].mean(dim=1), rtol=RTOL, atol=EXACT_ZERO_ATOL)


@pytest.mark.parametrize("split", [False, True])
def test_irm_penalty_vanishes_at_invariant_solution(s1, split):
    model, domains = s1
    predictor = linear_predictor(model.n_params, "squared")
    X, y = exact_batches(model, domains, repeat=2)
    invariant = torch.as_tensor(model.invariant_solution())
    assert abs(float(irm_penalty(predictor, invariant, X, y, split=split))) < EXACT_ZERO_ATOL
    # Control: the pooled ERM optimum uses the shortcut and has a clearly positive penalty.
    erm = torch.as_tensor(model.erm_solution(domains))
    assert float(irm_penalty(predictor, erm, X, y, split=split)) > 1e-4


def test_vrex_penalty_vanishes_at_invariant_solution(s1):
    model, domains = s1
    predictor = linear_predictor(model.n_params, "squared")
    X, y = exact_batches(model, domains)
    invariant = torch.as_tensor(model.invariant_solution())
    losses = domain_losses(predictor, invariant, X, y)
    assert float(vrex_penalty(losses)) < EXACT_ZERO_ATOL
    erm = torch.as_tensor(model.erm_solution(domains))
    assert float(vrex_penalty(domain_losses(predictor, erm, X, y))) > 1e-4


def test_vrex_penalty_is_population_variance():
    losses = torch.tensor([1.0, 2.0, 4.0], dtype=torch.float64)
    # mean 7/3; squared deviations 16/9, 1/9, 25/9; their mean is 42/27 = 14/9.
    assert float(vrex_penalty(losses)) == pytest.approx(14.0 / 9.0, rel=RTOL)


# ----- GroupDRO -----------------------------------------------------------------------------------


def test_groupdro_weights_formula():
    q = torch.tensor([0.2, 0.3, 0.5], dtype=torch.float64)
    losses = torch.tensor([1.0, 0.5, 2.0], dtype=torch.float64)
    expected = q * torch.exp(0.1 * losses)
    torch.testing.assert_close(groupdro_weights(q, losses, 0.1), expected / expected.sum(), rtol=RTOL, atol=0)


def test_groupdro_weights_move_to_worst_domain():
    q = torch.full((4,), 0.25, dtype=torch.float64)
    losses = torch.tensor([0.3, 0.9, 0.5, 0.1], dtype=torch.float64)
    history = [q]
    for _ in range(200):
        history.append(groupdro_weights(history[-1], losses, 0.1))
    weights = torch.stack(history)[:, 1]
    assert torch.all(weights[1:] > weights[:-1])      # the worst domain's weight only grows
    assert float(history[-1][1]) > 0.99


def test_groupdro_algorithm_upweights_worst_domain(s1):
    model, domains = s1
    predictor = linear_predictor(model.n_params, "squared")
    X, y = exact_batches(model, domains)
    y = y.clone()
    y[2] *= 3.0   # domain 2 has by far the largest loss at theta = 0
    method = algorithm_class("groupdro")(predictor, len(domains), {"groupdro_eta": 0.5}, seed=0)
    for _ in range(20):
        method.step(X, y)
    assert int(torch.argmax(method.q)) == 2
    assert float(method.q[2]) > 1.0 / len(domains)


# ----- Fishr and the Koyama-Yamaguchi penalty -----------------------------------------------------


def test_fishr_penalty_zero_when_variances_match():
    predictor = linear_predictor(3, "logistic")
    generator = torch.Generator().manual_seed(4)
    X0 = torch.randn(10, 3, dtype=torch.float64, generator=generator)
    y0 = torch.where(torch.rand(10, generator=generator) < 0.5, -1.0, 1.0).to(torch.float64)
    # Three domains holding the same samples in different orders: equal gradient variances.
    orders = [torch.randperm(10, generator=generator) for _ in range(3)]
    X = torch.stack([X0[o] for o in orders])
    y = torch.stack([y0[o] for o in orders])
    theta = torch.randn(3, dtype=torch.float64, generator=generator)
    variances = gradient_variances(per_sample_gradients(predictor, theta, X, y))
    assert float(fishr_penalty(variances)) < EXACT_ZERO_ATOL
    X[1] *= 2.0   # control: a different variance in one domain
    variances = gradient_variances(per_sample_gradients(predictor, theta, X, y))
    assert float(fishr_penalty(variances)) > 1e-3


def test_fishr_penalty_formula():
    v = torch.tensor([[1.0, 0.0], [3.0, 2.0]], dtype=torch.float64)
    # vbar = (2, 1); squared distances 2 and 2; mean 2.
    assert float(fishr_penalty(v)) == pytest.approx(2.0, rel=RTOL)


def test_gradient_alignment_penalty_gradient_matches_autograd(s1):
    model, domains = s1
    predictor = linear_predictor(model.n_params, "squared")
    X, y = exact_batches(model, domains)
    theta = torch.as_tensor(np.random.default_rng(2).standard_normal(model.n_params))
    method = algorithm_class("koyama_yamaguchi")(predictor, len(domains), {"ky_lambda": 3.0})
    # Reference: double backward through per-domain torch.autograd.grad.
    t = theta.clone().requires_grad_(True)
    method.theta.data.copy_(theta)
    direction = method.direction(X, y).gradient
    grads = torch.stack([torch.autograd.grad(predictor.mean_loss(t, X[e], y[e]), t, create_graph=True)[0]
                         for e in range(len(domains))])
    objective = domain_losses(predictor, t, X, y).mean() + 3.0 * ((grads - grads.mean(0)) ** 2).sum()
    (expected,) = torch.autograd.grad(objective, t)
    torch.testing.assert_close(direction, expected, rtol=1e-10, atol=EXACT_ZERO_ATOL)


def test_fishr_gradient_matches_autograd():
    predictor = linear_predictor(3, "logistic")
    generator = torch.Generator().manual_seed(5)
    X = torch.randn(3, 6, 3, dtype=torch.float64, generator=generator)
    y = torch.where(torch.rand(3, 6, generator=generator) < 0.5, -1.0, 1.0).to(torch.float64)
    method = algorithm_class("fishr")(predictor, 3, {"fishr_lambda": 7.0, "anneal_steps": 0, "ema": 0.9})
    direction = method.direction(X, y).gradient
    t = method.theta.detach().clone().requires_grad_(True)
    samples = torch.stack([torch.stack([
        torch.autograd.grad(predictor.sample_losses(t, X[e, i:i + 1], y[e, i:i + 1])[0], t, create_graph=True)[0]
        for i in range(6)]) for e in range(3)])
    variances = ((samples - samples.mean(1, keepdim=True)) ** 2).mean(1)
    # First step: the moving average starts at 0, so the penalty uses (0.1 v) / 0.1 = v.
    objective = domain_losses(predictor, t, X, y).mean() + 7.0 * fishr_penalty(variances)
    (expected,) = torch.autograd.grad(objective, t)
    torch.testing.assert_close(direction, expected, rtol=1e-10, atol=EXACT_ZERO_ATOL)


def test_gradient_alignment_penalty_formula():
    g = torch.tensor([[1.0, 2.0], [3.0, 0.0]], dtype=torch.float64)
    # gbar = (2, 1); |g_1 - gbar|^2 = 2, |g_2 - gbar|^2 = 2; summed over domains: 4.
    assert float(gradient_alignment_penalty(g)) == pytest.approx(4.0, rel=RTOL)


# ----- penalty weight 0 is ERM --------------------------------------------------------------------


@pytest.mark.parametrize("name, zero", [
    ("irm", {"irm_lambda": 0.0, "anneal_steps": 0}),
    ("vrex", {"vrex_lambda": 0.0, "anneal_steps": 0}),
    ("fishr", {"fishr_lambda": 0.0, "anneal_steps": 0}),
    ("koyama_yamaguchi", {"ky_lambda": 0.0}),
    ("groupdro", {"groupdro_eta": 0.0}),
])
def test_zero_penalty_weight_reduces_to_erm(s1, name, zero):
    model, domains = s1
    predictor = linear_predictor(model.n_params, "squared")
    X, y = exact_batches(model, domains, repeat=2)
    erm = algorithm_class("erm")(predictor, len(domains), seed=3)
    method = algorithm_class(name)(predictor, len(domains), zero, seed=3)
    for _ in range(5):
        erm_update = erm.step(X, y).update
        update = method.step(X, y).update
        torch.testing.assert_close(update, erm_update, rtol=RTOL, atol=EXACT_ZERO_ATOL)
    np.testing.assert_allclose(method.parameters(), erm.parameters(), rtol=RTOL, atol=EXACT_ZERO_ATOL)


def test_irm_annealing_resets_optimizer(s1):
    model, domains = s1
    predictor = linear_predictor(model.n_params, "squared")
    X, y = exact_batches(model, domains, repeat=2)
    method = algorithm_class("irm")(predictor, len(domains), {"anneal_steps": 3, "irm_lambda": 50.0})
    weights = []
    optimizers = []
    for _ in range(5):
        optimizers.append(method.optimizer)
        weights.append(method.step(X, y).diagnostics["penalty_weight"])
    assert weights == [1.0, 1.0, 1.0, 50.0, 50.0]
    # The same optimizer for steps 0-3, a fresh one from the switch (inside step 3) on.
    assert all(optimizer is optimizers[0] for optimizer in optimizers[:4])
    assert optimizers[4] is not optimizers[3]


# ----- masks and PCGrad ---------------------------------------------------------------------------


def test_and_mask_zeroes_disagreeing_coordinates():
    g = torch.tensor([[1.0, 2.0, -1.0, 0.5],
                      [2.0, -1.0, -3.0, 0.1],
                      [0.5, 1.0, -0.2, -0.3]], dtype=torch.float64)
    # Agreement |mean sign|: 1, 1/3, 1, 1/3.
    torch.testing.assert_close(sign_agreement(g), torch.tensor([1.0, 1 / 3, 1.0, 1 / 3], dtype=torch.float64))
    torch.testing.assert_close(and_mask(g, 1.0), torch.tensor([1.0, 0.0, 1.0, 0.0], dtype=torch.float64))
    torch.testing.assert_close(and_mask(g, 0.3), torch.ones(4, dtype=torch.float64))
    # Rescaled by 1 / mean(mask) = 2 (with DomainBed's 1e-10 guard in the denominator).
    torch.testing.assert_close(rescale_mask(and_mask(g, 1.0)), torch.tensor([2.0, 0.0, 2.0, 0.0], dtype=torch.float64),
                               rtol=1e-9, atol=0)


def test_sand_mask_formula_and_zeroing():
    g = torch.tensor([[1.0, 2.0], [3.0, -1.0], [2.0, 1.0]], dtype=torch.float64)
    a = sand_mask(g, tau=0.5, k=2.0)
    # Coordinate 0: agreement 1, unbiased variance 1 -> tanh(2 * 0.5 / 1).
    assert float(a[0]) == pytest.approx(np.tanh(1.0), rel=RTOL)
    # Coordinate 1: agreement 1/3 < tau -> clipped to 0.
    assert float(a[1]) == 0.0
    # tau = 1 (DomainBed's default) zeroes every coordinate: the reason for our default.
    assert float(sand_mask(g, tau=1.0, k=10.0).max()) == 0.0


def test_pcgrad_removes_conflicting_component():
    g = torch.tensor([[1.0, 0.0], [-1.0, 1.0]], dtype=torch.float64)
    projected = pcgrad_projections(g)
    # g_1 - (<g_1, g_2> / |g_2|^2) g_2 = (1, 0) + (1/2)(-1, 1) = (1/2, 1/2), orthogonal to g_2.
    torch.testing.assert_close(projected[0], torch.tensor([0.5, 0.5], dtype=torch.float64))
    torch.testing.assert_close(projected[1], torch.tensor([0.0, 1.0], dtype=torch.float64))
    assert abs(float(projected[0] @ g[1])) < EXACT_ZERO_ATOL
    assert abs(float(projected[1] @ g[0])) < EXACT_ZERO_ATOL


@settings(max_examples=30, deadline=None)
@given(K=st.integers(2, 5), P=st.integers(1, 6), seed=st.integers(0, 10_000))
def test_pcgrad_leaves_agreeing_gradients_alone(K, P, seed):
    generator = torch.Generator().manual_seed(seed)
    g = torch.rand(K, P, dtype=torch.float64, generator=generator)   # all entries >= 0: no conflicts
    assert torch.equal(pcgrad_projections(g, torch.Generator().manual_seed(seed)), g)


@settings(max_examples=30, deadline=None)
@given(K=st.integers(2, 5), P=st.integers(2, 6), seed=st.integers(0, 10_000))
def test_pcgrad_result_does_not_conflict_with_last_projection(K, P, seed):
    # After the last projection against g_f, <g_e^PC, g_f> >= 0 (to rounding).
    g = torch.randn(K, P, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    projected = pcgrad_projections(g)
    for e in range(K):
        last = K - 1 if e != K - 1 else K - 2
        assert float(projected[e] @ g[last]) >= -1e-12 * float(g[last].norm() * g[e].norm())


# ----- edge cases: identical domains, opposite domains, zero gradient -----------------------------

MASK_COMBINERS = {
    "and_mask": lambda g: rescale_mask(and_mask(g, 1.0)) * g.mean(0),
    "sand_mask": lambda g: rescale_mask(sand_mask(g, 0.5, 10.0)) * g.mean(0),
    "pcgrad": lambda g: pcgrad_projections(g, torch.Generator().manual_seed(0)).mean(0),
}


def _iga_direction(g):
    from iga_theory import mask_torch
    return mask_torch.iga_direction(g)[0]


MASK_COMBINERS["iga"] = _iga_direction


@pytest.mark.parametrize("name", sorted(MASK_COMBINERS))
def test_identical_domains_give_mean_gradient(name):
    row = torch.tensor([0.5, -2.0, 1e-3], dtype=torch.float64)
    g = row.repeat(4, 1)
    torch.testing.assert_close(MASK_COMBINERS[name](g), row, rtol=1e-9, atol=0)


@pytest.mark.parametrize("name", sorted(MASK_COMBINERS))
def test_opposite_domains_give_zero_direction(name):
    row = torch.tensor([0.5, -2.0, 3.0], dtype=torch.float64)
    d = MASK_COMBINERS[name](torch.stack([row, -row]))
    assert torch.all(torch.isfinite(d))
    assert float(d.abs().max()) <= EXACT_ZERO_ATOL


@pytest.mark.parametrize("name", sorted(MASK_COMBINERS))
def test_zero_gradient_gives_zero_direction(name):
    d = MASK_COMBINERS[name](torch.zeros(3, 4, dtype=torch.float64))
    assert torch.all(torch.isfinite(d))
    assert float(d.abs().max()) == 0.0


@pytest.mark.parametrize("name", sorted(n for n, cls in ALGORITHMS.items() if not cls.requires_lora))
def test_penalties_finite_on_identical_and_zero_batches(name):
    predictor = linear_predictor(3, "squared")
    X = torch.randn(1, 6, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0)).repeat(3, 1, 1)
    for y in (X @ torch.ones(3, dtype=torch.float64), torch.zeros(3, 6, dtype=torch.float64)):
        method = algorithm_class(name)(predictor, 3, seed=0)
        for _ in range(3):
            result = method.step(X, y)
            assert torch.all(torch.isfinite(result.update))
