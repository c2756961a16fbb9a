"""Mask placements `gradient` and `update` around torch optimizers."""

from __future__ import annotations

import pytest
import torch

from iga_theory.errors import NonFiniteError
from iga_theory.placement import MaskedOptimizer
from iga_theory.projection import project_rank


def make_problem(seed=0):
    generator = torch.Generator().manual_seed(seed)
    theta = torch.nn.Parameter(torch.randn(6, dtype=torch.float64, generator=generator))
    target = torch.randn(6, dtype=torch.float64, generator=generator)
    return theta, target


def set_gradient(theta, target):
    theta.grad = (theta.detach() - target)  # gradient of |theta - target|^2 / 2


def run(optimizer_factory, placement, mask, steps=20, seed=0):
    theta, target = make_problem(seed)
    wrapper = MaskedOptimizer(optimizer_factory([theta]), placement=placement)
    history = [theta.detach().clone()]
    for _ in range(steps):
        set_gradient(theta, target)
        wrapper.step({theta: mask(len(history))})
        history.append(theta.detach().clone())
    return torch.stack(history)


def constant_mask(values):
    return lambda step: torch.tensor(values, dtype=torch.float64)


MASK = [1.0, 0.5, 0.0, 1e-8, 0.25, 1.0]


def test_placements_agree_under_sgd():
    sgd = lambda params: torch.optim.SGD(params, lr=0.1)  # noqa: E731
    on_gradient = run(sgd, "gradient", constant_mask(MASK))
    on_update = run(sgd, "update", constant_mask(MASK))
    # theta - lr (m g) against theta + m (-lr g): equal up to the rounding of one
    # subtraction and one addition per step, 4 eps max|theta| per step over 20 steps.
    atol = 20 * 4 * torch.finfo(torch.float64).eps * on_gradient.abs().max().item()
    torch.testing.assert_close(on_gradient, on_update, rtol=0, atol=atol)


def test_only_update_keeps_masked_coordinate_still_under_adam():
    adam = lambda params: torch.optim.Adam(params, lr=0.05)  # noqa: E731
    # Unmasked for 5 steps (Adam's moments fill up), then coordinate 2 is masked to 0
    # and coordinate 3 to 1e-8.
    def mask(step):
        return torch.ones(6, dtype=torch.float64) if step <= 5 else torch.tensor(MASK, dtype=torch.float64)

    on_gradient = run(adam, "gradient", mask)
    on_update = run(adam, "update", mask)
    after = slice(6, None)
    # update: a zero mask keeps the coordinate exactly still; 1e-8 moves it by <= 1e-8 lr per step.
    assert torch.all(on_update[after, 2] == on_update[5, 2])
    assert torch.all((on_update[after, 3] - on_update[5, 3]).abs() <= 15 * 1e-8 * 0.05)
    # gradient: Adam's momentum moves the zero-masked coordinate, and it rescales the
    # 1e-8-masked gradient back to steps of order lr.
    assert (on_gradient[-1, 2] - on_gradient[5, 2]).abs() > 1e-3
    assert (on_gradient[-1, 3] - on_gradient[5, 3]).abs() > 0.05


def test_update_placement_masks_decoupled_weight_decay():
    theta, target = make_problem()
    wrapper = MaskedOptimizer(torch.optim.AdamW([theta], lr=0.1, weight_decay=0.5), placement="update")
    start = theta.detach().clone()
    for _ in range(3):
        set_gradient(theta, target)
        wrapper.step({theta: torch.tensor(MASK, dtype=torch.float64)})
    assert theta[2] == start[2]


def test_transform_projects_the_update():
    W = torch.nn.Parameter(torch.randn(5, 4, dtype=torch.float64))
    start = W.detach().clone()
    wrapper = MaskedOptimizer(torch.optim.SGD([W], lr=0.1), placement="update",
                              transform=lambda p, t: project_rank(t, 1))
    W.grad = torch.randn(5, 4, dtype=torch.float64)
    wrapper.step({W: torch.ones(5, 4, dtype=torch.float64)})
    assert torch.linalg.matrix_rank(W.detach() - start) == 1


def test_step_from_domain_gradients_sets_mean_and_masks():
    theta = torch.nn.Parameter(torch.zeros(3, dtype=torch.float64))
    g = torch.tensor([[1.0, 1.0, 1.0], [1.0, -1.0, 2.0]], dtype=torch.float64)
    wrapper = MaskedOptimizer(torch.optim.SGD([theta], lr=1.0), placement="gradient")
    masks = wrapper.step_from_domain_gradients({theta: g}, tau=0.5)
    mask = masks[theta]
    assert mask[0] == 1.0  # full agreement
    assert mask[1] == 0.0  # opposing domains: the floor
    torch.testing.assert_close(theta.detach(), -(mask * g.mean(0)))


def test_unmasked_parameters_step_normally():
    a = torch.nn.Parameter(torch.ones(2, dtype=torch.float64))
    b = torch.nn.Parameter(torch.ones(2, dtype=torch.float64))
    wrapper = MaskedOptimizer(torch.optim.SGD([a, b], lr=1.0), placement="update")
    a.grad = torch.ones(2, dtype=torch.float64)
    b.grad = torch.ones(2, dtype=torch.float64)
    wrapper.step({a: torch.zeros(2, dtype=torch.float64)})
    assert torch.all(a == 1.0)
    assert torch.all(b == 0.0)


def test_state_dict_round_trip():
    theta, target = make_problem()
    wrapper = MaskedOptimizer(torch.optim.Adam([theta], lr=0.1))
    set_gradient(theta, target)
    wrapper.step({theta: torch.ones(6, dtype=torch.float64)})
    state = wrapper.state_dict()
    fresh = MaskedOptimizer(torch.optim.Adam([theta], lr=0.1))
    fresh.load_state_dict(state)
    assert fresh.state[theta]["step"] == 1
    assert fresh.param_groups[0]["lr"] == 0.1


@pytest.mark.parametrize("placement", ["gradient", "update"])
def test_nan_policy(placement):
    theta, _ = make_problem()
    theta.grad = torch.full((6,), float("nan"), dtype=torch.float64)
    with pytest.raises(NonFiniteError):
        MaskedOptimizer(torch.optim.SGD([theta], lr=0.1), placement=placement).step()
    skipping = MaskedOptimizer(torch.optim.SGD([theta], lr=0.1), placement=placement, nan_policy="skip")
    start = theta.detach().clone()
    assert skipping.step() is False
    assert skipping.skipped_steps == 1
    assert torch.equal(theta.detach(), start)


@pytest.mark.parametrize(("call", "error", "message"), [
    (lambda: MaskedOptimizer("sgd"), TypeError, "torch.optim.Optimizer"),
    (lambda: MaskedOptimizer(torch.optim.SGD([torch.nn.Parameter(torch.ones(1))], lr=1), placement="loss"),
     ValueError, "placement must be one of"),
    (lambda: MaskedOptimizer(torch.optim.SGD([torch.nn.Parameter(torch.ones(1))], lr=1), nan_policy="zero"),
     ValueError, "nan_policy must be one of"),
    (lambda: MaskedOptimizer(torch.optim.SGD([torch.nn.Parameter(torch.ones(1))], lr=1), transform=3),
     TypeError, "transform must be callable"),
])
def test_wrapper_errors(call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_mask_shape_mismatch_rejected():
    theta = torch.nn.Parameter(torch.ones(3))
    theta.grad = torch.ones(3)
    wrapper = MaskedOptimizer(torch.optim.SGD([theta], lr=1.0))
    with pytest.raises(ValueError, match="does not match parameter"):
        wrapper.step({theta: torch.ones(4)})
    with pytest.raises(TypeError, match="mapping param -> mask or a callable"):
        wrapper.step([torch.ones(3)])
    with pytest.raises(ValueError, match="expected \\(K, \\*\\(3,\\)\\)"):
        wrapper.step_from_domain_gradients({theta: torch.ones(2, 4)})
