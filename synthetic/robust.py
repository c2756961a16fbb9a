r"""Minimax-robust predictor over a convex set of domains, solved with cvxpy.

The uncertainty set is the convex hull of a finite list of domains ``e_1..e_M``: every
mixture ``sum_i lambda_i P_{e_i}`` of their data distributions. The risk of a mixture is
linear in lambda, so its maximum over the hull is attained at a vertex and

.. math::

    \theta_{rob} = \arg\min_\theta \max_{i} R_{e_i}(\theta),

solved in epigraph form ``min t s.t. R_{e_i}(theta) <= t``. Every risk of S1 to S4 is
convex in beta for a fixed scale, so the hull of the two domains at the ends of a beta
interval also covers every domain with beta inside the interval.

* S1 and S4 (squared loss): the risks are convex quadratics, written exactly in cvxpy.
* S2 and S3 (logistic loss): the Gaussian-smoothed logistic risk has no DCP form, so
  cvxpy solves the sample-average problem on a fixed common sample (``n_saa`` examples per
  domain, the exact DCP atom ``logistic``).

In both cases the cvxpy solution is then polished on the exact risks by SLSQP from that
start, because the conic solver's objective accuracy (~1e-8) leaves a stationarity
residual near its square root, and for S2 and S3 the sample average is not the
population risk.

Every solution is accepted only when cvxpy reports status ``"optimal"`` and two
residuals computed from the exact risks are small: the epigraph gap
``max_i R_i(theta) - t`` and the minimax stationarity residual
``min_{lambda in simplex(active)} |sum_i lambda_i grad R_i(theta)|`` (zero exactly at a
minimax point of convex risks). Anything else raises `RobustSolveError`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import cvxpy as cp
import numpy as np
from scipy import optimize

from iga_theory.synthetic.s1 import S1Model
from iga_theory.synthetic.s2 import S2Model
from iga_theory.synthetic.s4 import S4Model

logger = logging.getLogger(__name__)

# Conic solvers tried in turn until one reports "optimal" (both ship with cvxpy 1.9).
SOLVERS = ("CLARABEL", "SCS")
# Domains within this relative distance of the max risk count as active constraints.
ACTIVE_RTOL = 1e-6
# Accepted residuals, relative to max(max risk, 1).
GAP_RTOL = 1e-7
STATIONARITY_RTOL = 1e-5


class RobustSolveError(RuntimeError):
    """cvxpy did not return an optimal, verified minimax solution."""


@dataclass
class RobustResult:
    """Minimax-robust predictor and its verification.

    Attributes
    ----------
    theta : ndarray, shape (P,)
    max_risk : float
        ``max_i R_{e_i}(theta)`` from the exact risks.
    risks : ndarray, shape (M,)
        Exact risks on the vertex domains.
    weights : ndarray, shape (M,)
        Worst-case mixture weights lambda (zero on inactive domains).
    gap : float
        ``max_i R_i(theta) - t`` (epigraph residual).
    stationarity : float
        ``|sum_i lambda_i grad R_i(theta)|``.
    status : str
        cvxpy status of the convex solve.
    """

    theta: np.ndarray
    max_risk: float
    risks: np.ndarray
    weights: np.ndarray
    gap: float
    stationarity: float
    status: str


def _quadratic_risk_expressions(model, theta, domains):
    """Exact cvxpy expressions of convex quadratic risks (S1 and S4)."""
    expressions = []
    for domain in domains:
        if isinstance(model, S1Model):
            sigma, c, y2 = model.second_moments(domain)
            sigma = 0.5 * (sigma + sigma.T)
            expressions.append(0.5 * cp.quad_form(theta, cp.psd_wrap(sigma)) - c @ theta + 0.5 * y2)
        else:
            target = model.to_vector(model.domain_weight(domain))
            u = domain.scale**2
            const = 0.5 * model.params.q * model.params.sigma_y**2
            expressions.append(0.5 * u * cp.sum_squares(theta - target) + const)
    return expressions


def _saa_risk_expressions(model, theta, domains, n_saa, seed):
    """Sample-average logistic risks on a fixed sample per domain (S2, S3)."""
    expressions = []
    rng = np.random.default_rng(seed)
    for domain in domains:
        X, y = model.sample(n_saa, domain, rng)
        expressions.append(cp.sum(cp.logistic(-cp.multiply(y, X @ theta))) / n_saa)
    return expressions


def _stationarity(gradients: np.ndarray) -> tuple[float, np.ndarray]:
    """``min_{lambda in simplex} |lambda^T G|`` and its minimiser, by cvxpy."""
    weights = cp.Variable(gradients.shape[0], nonneg=True)
    problem = cp.Problem(cp.Minimize(cp.sum_squares(gradients.T @ weights)), [cp.sum(weights) == 1])
    problem.solve()
    if problem.status != cp.OPTIMAL:
        raise RobustSolveError(f"the stationarity check failed with cvxpy status {problem.status!r}")
    w = np.clip(weights.value, 0.0, None)
    w = w / w.sum()
    return float(np.linalg.norm(gradients.T @ w)), w


def _polish(model, theta0, domains):
    """Exact epigraph problem by SLSQP from ``theta0`` (logistic models)."""
    P = model.n_params

    def objective(z):
        return z[-1]

    def objective_grad(z):
        grad = np.zeros(P + 1)
        grad[-1] = 1.0
        return grad

    constraints = {
        "type": "ineq",
        "fun": lambda z: z[-1] - model.risks(z[:P], domains),
        "jac": lambda z: np.hstack([-model.gradients(z[:P], domains), np.ones((len(domains), 1))]),
    }
    start = np.r_[theta0, np.max(model.risks(theta0, domains))]
    result = optimize.minimize(objective, start, jac=objective_grad, constraints=[constraints],
                               method="SLSQP", options={"ftol": 1e-14, "maxiter": 1000})
    if not result.success:
        # SLSQP often stops with a line-search message when the start is already optimal
        # to rounding. The caller's residual checks decide whether the point is accepted.
        logger.debug("SLSQP polishing stopped early: %s", result.message)
    candidates = [start, result.x]
    best = min(candidates, key=lambda z: float(np.max(model.risks(z[:P], domains))))
    return best[:P], float(np.max(model.risks(best[:P], domains)))


def minimax_predictor(model, domains, n_saa: int = 1000, seed: int = 0) -> RobustResult:
    """Minimax-robust predictor over the convex hull of ``domains``.

    Parameters
    ----------
    model : S1Model, S2Model, S3Model or S4Model
    domains : sequence of domains, at least 1
        Vertices of the uncertainty set.
    n_saa : int
        Sample size per domain of the sample-average problem (logistic models only).
    seed : int
        Seed of that sample.

    Returns
    -------
    RobustResult

    Raises
    ------
    RobustSolveError
        When cvxpy's status is not ``"optimal"`` or a residual exceeds its tolerance.
    """
    domains = list(domains)
    if not domains:
        raise ValueError("domains is empty; pass at least one vertex domain of the uncertainty set")
    if not isinstance(model, (S1Model, S2Model, S4Model)):
        raise TypeError(f"minimax_predictor supports S1 to S4; got {type(model).__name__}")
    theta = cp.Variable(model.n_params)
    t = cp.Variable()
    if isinstance(model, (S1Model, S4Model)):
        expressions = _quadratic_risk_expressions(model, theta, domains)
    else:
        expressions = _saa_risk_expressions(model, theta, domains, n_saa, seed)

    problem = cp.Problem(cp.Minimize(t), [expression <= t for expression in expressions])
    outcomes = []
    for solver in SOLVERS:
        try:
            problem.solve(solver=solver)
        except cp.error.SolverError as error:
            outcomes.append(f"{solver}: {error}")
            continue
        outcomes.append(f"{solver}: status {problem.status!r}")
        if problem.status == cp.OPTIMAL:
            break
    if problem.status != cp.OPTIMAL:
        raise RobustSolveError(
            f"no solver returned status 'optimal' for the minimax problem on {len(domains)} domains "
            f"({'; '.join(outcomes)}). Check that the domains' risks are finite and bounded below."
        )
    # The conic solver stops at ~1e-8 relative accuracy in the objective, which leaves
    # the stationarity residual near its square root; SLSQP on the exact risks polishes.
    solution, level = _polish(model, np.asarray(theta.value, dtype=np.float64), domains)

    risks = np.asarray(model.risks(solution, domains), dtype=np.float64)
    max_risk = float(risks.max())
    gap = max_risk - level
    active = risks >= max_risk - ACTIVE_RTOL * max(abs(max_risk), 1.0)
    gradients = np.asarray(model.gradients(solution, domains))[active]
    stationarity, active_weights = _stationarity(gradients)
    weights = np.zeros(len(domains))
    weights[active] = active_weights
    scale = max(abs(max_risk), 1.0)
    if abs(gap) > GAP_RTOL * scale or stationarity > STATIONARITY_RTOL * scale:
        raise RobustSolveError(
            f"the minimax solution failed its residual checks: epigraph gap {gap:.3g} "
            f"(tolerance {GAP_RTOL * scale:.3g}), stationarity residual {stationarity:.3g} "
            f"(tolerance {STATIONARITY_RTOL * scale:.3g})"
        )
    logger.debug("minimax on %d domains: max risk %.6g, %d active", len(domains), max_risk, int(active.sum()))
    return RobustResult(theta=solution, max_risk=max_risk, risks=risks, weights=weights, gap=gap,
                        stationarity=stationarity, status=problem.status)
