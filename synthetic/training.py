"""Gradient-descent training of linear predictors on the synthetic models: ERM and IGA.

Both methods start from the same point and take the same steps; only the direction
differs:

* ERM: ``theta <- theta - eta * mu`` with ``mu`` the mean of the per-domain gradients;
* IGA: ``theta <- theta - eta * mask * mu`` with the continuous gradient conflict mask.

`train_population` uses the exact per-domain population gradients of a model that
provides ``second_moments(domain) -> (Sigma, c, E[y^2])`` (a quadratic risk, as in S1).
The history it returns holds every iterate, so the risks along the path are evaluated
afterwards in one vectorised call instead of inside the loop.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from iga_theory import mask as cgcm
from iga_theory.errors import check_in_range, check_positive_int
from iga_theory.nan_policy import DEFAULT_NAN_POLICY, NanGuard, nan_guard

METHODS = ("erm", "iga")


@dataclass(frozen=True)
class MaskOptions:
    """Parameters of the conflict mask used by IGA (see `iga_theory.mask.conflict_mask`)."""

    tau: float | None = None
    kappa0: float = cgcm.DEFAULT_KAPPA0
    m_min: float = 0.0
    eps_rel: float = cgcm.DEFAULT_EPS_REL
    variance: str = "unbiased"

    def as_kwargs(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class TrainingHistory:
    """Iterates and masks of one run.

    Attributes
    ----------
    thetas : ndarray, shape (steps + 1, P)
        theta_0 .. theta_T.
    masks : ndarray, shape (steps, P)
        Mask applied at each step (all ones for ERM).
    directions : ndarray, shape (steps, P)
        Step direction d_t (before multiplying by eta).
    mean_gradients : ndarray, shape (steps, P)
        Mean of the per-domain gradients mu_t.
    eta : float
        Step size.
    skipped_steps : list of int
        Steps skipped by the ``skip`` NaN policy (their direction is 0, their mean
        gradient NaN and their mask the one of the step before, or ones at step 0).
    """

    thetas: np.ndarray
    masks: np.ndarray
    directions: np.ndarray
    mean_gradients: np.ndarray
    eta: float
    skipped_steps: list[int] = dataclasses.field(default_factory=list)


def stack_second_moments(model, domains) -> tuple[np.ndarray, np.ndarray]:
    """Per-domain ``Sigma_e`` (K, P, P) and ``c_e`` (K, P), so that g_e = Sigma_e theta - c_e."""
    moments = [model.second_moments(domain) for domain in domains]
    return np.stack([m[0] for m in moments]), np.stack([m[1] for m in moments])


def train_population(model, domains, method: str, steps: int, eta: float,
                     theta0: np.ndarray, mask_options: MaskOptions | None = None, *,
                     nan_policy: str | NanGuard = DEFAULT_NAN_POLICY) -> TrainingHistory:
    """Run full-batch gradient descent on the exact per-domain population gradients.

    Parameters
    ----------
    model : object with ``second_moments(domain)``, e.g. `S1Model`
    domains : list of K >= 2 domains of that model (the training domains)
    method : {"erm", "iga"}
    steps : int, >= 1
    eta : float, > 0
        Step size; ``eta <= 1 / L`` (L the smoothness constant) keeps ERM stable.
    theta0 : ndarray, shape (P,)
        Starting point, shared by the methods being compared.
    mask_options : MaskOptions, optional
        Mask parameters for IGA (ignored by ERM).
    nan_policy : {"raise", "skip"} or NanGuard
        What a step with a NaN or Inf per-domain gradient does: raise `NonFiniteError`
        naming the step, domain and coordinate (default), or leave theta unchanged,
        count the step and log it (see `iga_theory.nan_policy`).

    Returns
    -------
    TrainingHistory
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}; got {method!r}")
    steps = check_positive_int("steps", steps)
    eta = check_in_range("eta", eta, 0.0, np.inf, low_open=True)
    if len(domains) < 2:
        raise ValueError(f"training needs K >= 2 domains; got K = {len(domains)}")
    guard = nan_guard(nan_policy)
    mask_options = mask_options or MaskOptions()
    options = mask_options.as_kwargs()
    if options["tau"] is None:
        options["tau"] = cgcm.default_tau(len(domains), variance=mask_options.variance)

    sigmas, cs = stack_second_moments(model, domains)
    theta = np.array(theta0, dtype=np.float64)
    P = theta.size
    thetas = np.empty((steps + 1, P))
    masks = np.ones((steps, P))
    directions = np.empty((steps, P))
    mean_gradients = np.empty((steps, P))
    thetas[0] = theta
    skipped = []

    for t in range(steps):
        # Exact per-domain gradients, shape (K, P).
        g = np.einsum("kij,j->ki", sigmas, theta) - cs
        if not guard.check({"theta": g}, step=t):
            # Skipped step: theta stays; the mask in force is the previous one.
            thetas[t + 1] = theta
            directions[t] = 0.0
            mean_gradients[t] = np.nan
            masks[t] = masks[t - 1] if t > 0 else 1.0
            skipped.append(t)
            continue
        mu = g.mean(axis=0)

        if method == "iga":
            mask = cgcm.conflict_mask(g, **options)
            masks[t] = mask
            d = mask * mu
        else:
            d = mu

        theta = theta - eta * d
        thetas[t + 1] = theta
        directions[t] = d
        mean_gradients[t] = mu

    return TrainingHistory(thetas=thetas, masks=masks, directions=directions,
                           mean_gradients=mean_gradients, eta=eta, skipped_steps=skipped)
