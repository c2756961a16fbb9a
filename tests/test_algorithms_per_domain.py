"""Per-domain and per-sample gradients from torch.func against torch.autograd.grad loops."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from iga_theory.synthetic.benchmarks import FAMILIES
from iga_theory.synthetic.models import make_model
from iga_theory.synthetic.per_domain import (domain_losses, linear_predictor, per_domain_gradients,
                                             per_domain_gradients_and_losses, per_sample_gradients)

# Both routes compute the same float64 sums in a different order: the difference is a
# few ulps of the largest term, far below 1e-12 relative for these O(1) inputs.
RTOL = 1e-12
ATOL = 1e-13


def _batches(K, n, P, loss, seed):
    generator = torch.Generator().manual_seed(seed)
    X = torch.randn(K, n, P, dtype=torch.float64, generator=generator)
    if loss == "logistic":
        y = torch.where(torch.rand(K, n, generator=generator, dtype=torch.float64) < 0.5, -1.0, 1.0)
        y = y.to(torch.float64)
    else:
        y = torch.randn(K, n, dtype=torch.float64, generator=generator)
    theta = torch.randn(P, dtype=torch.float64, generator=generator)
    return theta, X, y


def _autograd_per_domain(predictor, theta, X, y):
    rows = []
    for e in range(X.shape[0]):
        t = theta.detach().clone().requires_grad_(True)
        (g,) = torch.autograd.grad(predictor.mean_loss(t, X[e], y[e]), t)
        rows.append(g)
    return torch.stack(rows)


def _autograd_per_sample(predictor, theta, X, y):
    K, n = X.shape[:2]
    out = torch.empty((K, n, theta.shape[0]), dtype=theta.dtype)
    for e in range(K):
        for i in range(n):
            t = theta.detach().clone().requires_grad_(True)
            loss = predictor.sample_losses(t, X[e, i:i + 1], y[e, i:i + 1])[0]
            (out[e, i],) = torch.autograd.grad(loss, t)
    return out


@settings(max_examples=15, deadline=None)
@given(K=st.integers(1, 5), n=st.integers(1, 6), P=st.integers(1, 7), loss=st.sampled_from(["squared", "logistic"]),
       seed=st.integers(0, 10_000))
def test_per_domain_gradients_match_autograd(K, n, P, loss, seed):
    predictor = linear_predictor(P, loss)
    theta, X, y = _batches(K, n, P, loss, seed)
    expected = _autograd_per_domain(predictor, theta, X, y)
    torch.testing.assert_close(per_domain_gradients(predictor, theta, X, y), expected, rtol=RTOL, atol=ATOL)
    g, losses = per_domain_gradients_and_losses(predictor, theta, X, y)
    torch.testing.assert_close(g, expected, rtol=RTOL, atol=ATOL)
    torch.testing.assert_close(losses, domain_losses(predictor, theta, X, y), rtol=RTOL, atol=ATOL)


@settings(max_examples=15, deadline=None)
@given(K=st.integers(1, 3), n=st.integers(1, 4), P=st.integers(1, 5), loss=st.sampled_from(["squared", "logistic"]),
       seed=st.integers(0, 10_000))
def test_per_sample_gradients_match_autograd(K, n, P, loss, seed):
    predictor = linear_predictor(P, loss)
    theta, X, y = _batches(K, n, P, loss, seed)
    samples = per_sample_gradients(predictor, theta, X, y)
    torch.testing.assert_close(samples, _autograd_per_sample(predictor, theta, X, y), rtol=RTOL, atol=ATOL)
    # The mean of the per-sample gradients is the per-domain gradient.
    torch.testing.assert_close(samples.mean(dim=1), per_domain_gradients(predictor, theta, X, y),
                               rtol=RTOL, atol=ATOL)


def test_lora_predictor_gradients_match_autograd():
    model = make_model("s4")
    predictor = FAMILIES["s4"].make_predictor(model)
    rng = np.random.default_rng(3)
    theta = torch.as_tensor(rng.standard_normal(predictor.n_params))
    domains = model.draw_domains(3, rng)
    data = [model.sample(5, d, rng) for d in domains]
    X = torch.as_tensor(np.stack([d[0] for d in data]))
    y = torch.as_tensor(np.stack([d[1] for d in data]))
    torch.testing.assert_close(per_domain_gradients(predictor, theta, X, y),
                               _autograd_per_domain(predictor, theta, X, y), rtol=RTOL, atol=ATOL)
    torch.testing.assert_close(per_sample_gradients(predictor, theta, X, y),
                               _autograd_per_sample(predictor, theta, X, y), rtol=RTOL, atol=ATOL)


def test_linear_gradient_closed_form():
    # Squared loss: g_e = X_e^T (X_e theta - y_e) / n exactly.
    predictor = linear_predictor(4, "squared")
    theta, X, y = _batches(3, 6, 4, "squared", 0)
    closed = torch.einsum("knp,kn->kp", X, X @ theta - y) / 6
    torch.testing.assert_close(per_domain_gradients(predictor, theta, X, y), closed, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("X, y, message", [
    (torch.zeros(3, 4), torch.zeros(3, 4), "stacked per domain"),
    (torch.zeros(2, 3, 4, dtype=torch.float64), torch.zeros(2, 4, dtype=torch.float64), "disagree"),
    (torch.zeros(2, 0, 4, dtype=torch.float64), torch.zeros(2, 0, dtype=torch.float64), "non-empty"),
])
def test_domain_batches_rejected(X, y, message):
    predictor = linear_predictor(4, "squared")
    with pytest.raises(ValueError, match=message):
        per_domain_gradients(predictor, torch.zeros(4, dtype=torch.float64), X, y)


def test_integer_batches_rejected():
    predictor = linear_predictor(2, "squared")
    with pytest.raises(TypeError, match="floating-point"):
        per_domain_gradients(predictor, torch.zeros(2), torch.zeros(2, 3, 2, dtype=torch.int64),
                             torch.zeros(2, 3))


def test_unknown_loss_rejected():
    with pytest.raises(ValueError, match="loss must be one of"):
        linear_predictor(2, "hinge")
