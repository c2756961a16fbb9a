"""The cvxpy minimax-robust predictor against predictors that are minimax by construction."""

from __future__ import annotations

import numpy as np
import pytest

from iga_theory.synthetic.models import Domain, make_model
from iga_theory.synthetic.robust import RobustSolveError, minimax_predictor


@pytest.mark.parametrize("variant", [{}, {"rotate": True}], ids=["plain", "rotated"])
def test_s1_minimax_is_invariant_oracle(variant):
    """With a beta = 0 domain in the set, no predictor beats the oracle's constant risk there."""
    model = make_model("s1", **variant)
    domains = [Domain(-1.0, 1.0), Domain(0.0, 1.0), Domain(2.0, 1.0)]
    result = minimax_predictor(model, domains)
    assert result.status == "optimal"
    # The polished solution is optimal to ~1e-12 in risk; the oracle is unique here, so
    # theta is within sqrt(1e-12 / curvature) ~ 1e-6 of it.
    np.testing.assert_allclose(result.theta, model.invariant_solution(), atol=1e-5)
    assert result.max_risk == pytest.approx(model.params.sigma_y**2 / 2, abs=1e-10)


def test_s4_minimax_is_midpoint():
    """Equal scales: the minimax of (s^2/2)|W - W_e|^2 over two domains is the midpoint target."""
    model = make_model("s4", rotate=True)
    domains = [Domain(-0.5, 1.0), Domain(1.5, 1.0)]
    result = minimax_predictor(model, domains)
    expected = model.to_vector(model.W0 + model.W_star + 0.5 * model.shortcut)
    np.testing.assert_allclose(result.theta, expected, atol=1e-6)
    np.testing.assert_allclose(result.weights, [0.5, 0.5], atol=1e-6)


@pytest.mark.parametrize("name", ["s2", "s3"])
def test_logistic_minimax_is_stationary(name):
    model = make_model(name)
    domains = [Domain(-1.0, 1.0), Domain(0.0, 1.0), Domain(2.0, 1.0)]
    result = minimax_predictor(model, domains, n_saa=800)
    # The beta = 0 domain makes the spurious block useless in the worst case.
    assert model.spurious_weight(result.theta) < 1e-4
    assert result.stationarity < 1e-5
    # No other predictor tried has a smaller worst-case risk.
    for other in (model.invariant_solution(), model.erm_solution(domains)):
        assert result.max_risk <= np.max(model.risks(other, domains)) + 1e-9


def test_minimax_rejects_empty_and_unknown():
    with pytest.raises(ValueError, match="domains is empty"):
        minimax_predictor(make_model("s1"), [])
    with pytest.raises(TypeError, match="supports S1 to S4"):
        minimax_predictor(object(), [Domain(0.0, 1.0)])


def test_minimax_error_class_is_runtime_error():
    assert issubclass(RobustSolveError, RuntimeError)
