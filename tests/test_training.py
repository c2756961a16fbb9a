"""ERM and IGA by gradient descent on S1's exact gradients."""

import numpy as np
import pytest

from iga_theory.synthetic.s1 import S1Model
from iga_theory.synthetic.training import MaskOptions, train_population


@pytest.fixture
def setup():
    model = S1Model()
    domains = model.draw_domains(8, np.random.default_rng(0))
    return model, domains, 1.0 / model.smoothness(domains)


def test_erm_converges_to_pooled_optimum(setup):
    model, domains, eta = setup
    history = train_population(model, domains, "erm", 4000, eta, np.zeros(model.n_params))
    np.testing.assert_allclose(history.thetas[-1], model.erm_solution(domains), atol=1e-8)
    assert np.all(history.masks == 1.0)


def test_iga_recovers_invariant_oracle(setup):
    model, domains, eta = setup
    history = train_population(model, domains, "iga", 4000, eta, np.zeros(model.n_params))
    np.testing.assert_allclose(history.thetas[-1], model.invariant_solution(), atol=1e-8)
    # The spurious coordinates are masked (the mask underflows far below 1e-12) and the
    # invariant ones are not.
    assert np.all(history.masks[-1][model.invariant_mask] == 1.0)
    assert np.all(history.masks[-1][~model.invariant_mask] < 1e-12)


def test_same_start_and_direction_definitions(setup):
    model, domains, eta = setup
    theta0 = np.random.default_rng(1).standard_normal(model.n_params)
    erm = train_population(model, domains, "erm", 5, eta, theta0)
    iga = train_population(model, domains, "iga", 5, eta, theta0, MaskOptions(tau=0.1))
    np.testing.assert_array_equal(erm.thetas[0], iga.thetas[0])
    np.testing.assert_allclose(iga.directions, iga.masks * iga.mean_gradients, rtol=0, atol=0)
    np.testing.assert_allclose(np.diff(iga.thetas, axis=0), -eta * iga.directions, rtol=1e-15, atol=1e-15)


def test_shortcut_in_the_start_is_kept(setup):
    """A spurious weight already in theta_0 is not removed: the mask only slows its coordinates."""
    model, domains, eta = setup
    theta0 = model.from_unrotated(np.r_[np.zeros(model.d_inv), 0.3 * np.ones(model.d_sp)])
    history = train_population(model, domains, "iga", 2000, eta, theta0)
    assert model.spurious_weight(history.thetas[-1]) > 0.1


@pytest.mark.parametrize("kwargs, message", [
    (dict(method="sgd"), "method must be one of"),
    (dict(steps=0), "steps must be >= 1"),
    (dict(eta=0.0), "eta must lie"),
])
def test_invalid_arguments(setup, kwargs, message):
    model, domains, eta = setup
    arguments = dict(model=model, domains=domains, method="erm", steps=3, eta=eta, theta0=np.zeros(model.n_params))
    arguments.update(kwargs)
    with pytest.raises(ValueError, match=message):
        train_population(**arguments)


def test_single_domain_rejected(setup):
    model, domains, eta = setup
    with pytest.raises(ValueError, match="K >= 2"):
        train_population(model, domains[:1], "iga", 3, eta, np.zeros(model.n_params))
