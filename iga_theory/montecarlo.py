r"""Vectorised Monte Carlo engines behind the theory checks of ``iga validate``.

Every engine runs R independent replications at once along a leading axis, so the
loops over steps are Python loops over a few numpy calls on arrays of shape
``(R, K, P)`` and nothing loops over replications or domains:

* `population_gradients` / `population_risks`: exact per-domain quantities of S1 to S4
  for R predictors and R sets of domains (shape ``(R, K)`` of betas and scales);
* `batched_conflict_mask`: the continuous gradient conflict mask of every replication,
  identical to `iga_theory.mask.conflict_mask` applied to each one;
* `train_population_batched`: full-batch ERM or IGA on exact population gradients;
* `sgd_s1_batched`: minibatch SGD on S1 with the statistics options of the mask
  (lagged EMA, an independent minibatch, the same minibatch, noise correction);
* `bernstein_bounds` (numpy, with `bernstein_bounds_numba` and `bernstein_bounds_torch`
  as alternative kernels) and `quantile_certificates`: Theorem 2 over R replications.

Random draws are made with numpy Generators only, so the torch versions of the same
quantities take the same draws and agree to rounding (tests compare them at 1e-12
relative in float64).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import numba
import numpy as np
import torch
from scipy import stats

from iga_theory import bounds
from iga_theory import mask as cgcm
from iga_theory.errors import check_in_range, check_positive_int
from iga_theory.synthetic.s1 import S1Model
from iga_theory.synthetic.s2 import S2Model, logistic_gaussian_moments
from iga_theory.synthetic.s4 import S4Model

logger = logging.getLogger(__name__)

STATISTICS = ("ema", "independent", "same", "noise_corrected")


# ----- exact per-domain quantities, batched --------------------------------------------


def _s1_moments(model: S1Model, betas: np.ndarray, scales: np.ndarray):
    """Unrotated ``Sigma_e`` (..., P, P) and ``c_e`` (..., P) of S1 for arrays of domains."""
    p = model.params
    w = model.w_star
    u = scales**2
    var_y = u * float(w @ w) + p.sigma_y**2
    d_inv, d_sp, P = model.d_inv, model.d_sp, model.n_params
    shape = betas.shape
    sigma = np.zeros(shape + (P, P))
    sigma[..., :d_inv, :d_inv] = u[..., None, None] * np.eye(d_inv)
    cross = (betas * u)[..., None, None] * np.outer(w, np.ones(d_sp))
    sigma[..., :d_inv, d_inv:] = cross
    sigma[..., d_inv:, :d_inv] = np.swapaxes(cross, -1, -2)
    sigma[..., d_inv:, d_inv:] = ((betas**2 * var_y)[..., None, None] * np.ones((d_sp, d_sp))
                                  + p.sigma_s**2 * np.eye(d_sp))
    c = np.concatenate([u[..., None] * w, (betas * var_y)[..., None] * np.ones(d_sp)], axis=-1)
    return sigma, c, var_y


def _s1_gradients(model, thetas, betas, scales):
    sigma, c, _ = _s1_moments(model, betas, scales)
    v = thetas @ model.rotation  # (R, P) unrotated
    g = np.einsum("rkij,rj->rki", sigma, v) - c
    return g @ model.rotation.T


def _s1_risks(model, thetas, betas, scales):
    u = scales**2
    features = np.stack([np.ones_like(u), u, u * betas, u * betas**2, betas**2, betas], axis=-1)
    return np.einsum("rkf,rf->rk", features, model.risk_coefficients(thetas))


def _s2_margins(model, thetas, betas, scales):
    v = thetas @ model.rotation
    v_inv, v_sp = v[:, : model.d_inv], v[:, model.d_inv:]
    a = scales * (v_inv @ model.nu)[:, None] + betas * v_sp.sum(axis=1)[:, None]
    b2 = scales**2 * (v_inv * v_inv).sum(axis=1)[:, None] + model.params.sigma_s**2 * (v_sp * v_sp).sum(axis=1)[:, None]
    return v, a, np.sqrt(b2)


def _s2_gradients(model, thetas, betas, scales):
    v, a, b = _s2_margins(model, thetas, betas, scales)
    _, s_neg, s_prod = logistic_gaussian_moments(a.ravel(), b.ravel())
    s_neg, s_prod = s_neg.reshape(a.shape), s_prod.reshape(a.shape)
    means = np.concatenate([scales[..., None] * model.nu,
                            betas[..., None] * np.ones(model.d_sp)], axis=-1)
    sigma_v = np.concatenate([scales[..., None] ** 2 * v[:, None, : model.d_inv],
                              np.broadcast_to(model.params.sigma_s**2 * v[:, None, model.d_inv:],
                                              betas.shape + (model.d_sp,))], axis=-1)
    g = -s_neg[..., None] * means + s_prod[..., None] * sigma_v
    return g @ model.rotation.T


def _s2_risks(model, thetas, betas, scales):
    _, a, b = _s2_margins(model, thetas, betas, scales)
    return logistic_gaussian_moments(a.ravel(), b.ravel())[0].reshape(a.shape)


def _s4_gradients(model, thetas, betas, scales):
    target = model.to_vector(model.W0 + model.W_star)
    shortcut = model.to_vector(model.shortcut)
    offset = thetas[:, None, :] - target - betas[..., None] * shortcut
    return (scales**2)[..., None] * offset


def _s4_risks(model, thetas, betas, scales):
    coefficients = np.stack([model.risk_coefficients(theta) for theta in thetas])  # (R, 4)
    u = scales**2
    return coefficients[:, :1] + u * (coefficients[:, 1:2] + coefficients[:, 2:3] * betas
                                      + coefficients[:, 3:4] * betas**2)


# model class -> (gradient kernel, risk kernel); subclasses (S3) use their base's entry.
KERNELS = {
    S1Model: (_s1_gradients, _s1_risks),
    S2Model: (_s2_gradients, _s2_risks),
    S4Model: (_s4_gradients, _s4_risks),
}


def _kernels(model):
    for cls in type(model).__mro__:
        if cls in KERNELS:
            return KERNELS[cls]
    raise TypeError(f"no batched kernels for {type(model).__name__}; supported: "
                    f"{[cls.__name__ for cls in KERNELS]}")


def _check_batch(model, thetas, betas, scales):
    thetas = np.asarray(thetas, dtype=np.float64)
    betas = np.asarray(betas, dtype=np.float64)
    scales = np.asarray(scales, dtype=np.float64)
    if thetas.ndim != 2 or thetas.shape[1] != model.n_params:
        raise ValueError(f"thetas must have shape (R, {model.n_params}); got {thetas.shape}")
    if betas.ndim != 2 or betas.shape != scales.shape or betas.shape[0] != thetas.shape[0]:
        raise ValueError(
            f"betas and scales must both have shape (R, K) with R = {thetas.shape[0]}; "
            f"got {betas.shape} and {scales.shape}"
        )
    return thetas, betas, scales


def gradient_function(model, betas, scales):
    """Exact per-domain gradients as a function of thetas (R, P) -> (R, K, P), for fixed domains.

    For S1 the domain moments ``Sigma_e`` and ``c_e`` are computed once, so that each call
    costs one batched matrix-vector product; the other models evaluate their kernel.
    """
    betas = np.asarray(betas, dtype=np.float64)
    scales = np.asarray(scales, dtype=np.float64)
    if isinstance(model, S1Model):
        sigma, c, _ = _s1_moments(model, betas, scales)
        rotation = model.rotation

        def s1_gradients(thetas):
            return (np.einsum("rkij,rj->rki", sigma, thetas @ rotation) - c) @ rotation.T

        return s1_gradients
    kernel = _kernels(model)[0]
    return lambda thetas: kernel(model, thetas, betas, scales)


def population_gradients(model, thetas, betas, scales) -> np.ndarray:
    """Exact per-domain gradients of R predictors on R sets of K domains.

    Parameters
    ----------
    model : S1Model, S2Model, S3Model or S4Model
    thetas : array_like, shape (R, P)
    betas, scales : array_like, shape (R, K)
        Domain parameters; replication r uses ``thetas[r]`` on its own K domains.

    Returns
    -------
    g : ndarray, shape (R, K, P), float64
    """
    thetas, betas, scales = _check_batch(model, thetas, betas, scales)
    return _kernels(model)[0](model, thetas, betas, scales)


def population_risks(model, thetas, betas, scales) -> np.ndarray:
    """Exact per-domain risks of R predictors on R sets of K domains; shape (R, K)."""
    thetas, betas, scales = _check_batch(model, thetas, betas, scales)
    return _kernels(model)[1](model, thetas, betas, scales)


def draw_domain_arrays(model, R: int, K: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Betas and scales of R x K i.i.d. domains from the model's Q, each of shape (R, K)."""
    R = check_positive_int("R", R)
    K = check_positive_int("K", K)
    p = model.params
    t = p.beta_trunc
    betas = p.mu_beta + p.tau_beta * stats.truncnorm.rvs(-t, t, size=(R, K), random_state=rng)
    if p.hetero > 0:
        scales = np.exp(p.hetero * stats.truncnorm.rvs(-t, t, size=(R, K), random_state=rng))
    else:
        scales = np.ones((R, K))
    return betas, scales


def spurious_projector(model) -> np.ndarray:
    """Orthogonal projector (P, P) onto the model's spurious subspace, in the parameter basis."""
    if isinstance(model, S4Model):
        s = model.to_vector(model.shortcut)
        return np.outer(s, s)
    selector = np.diag((~model.invariant_mask).astype(np.float64))
    return model.rotation @ selector @ model.rotation.T


# ----- the mask, batched -------------------------------------------------------------------


def batched_conflict_scores(g, eps_rel: float = cgcm.DEFAULT_EPS_REL, variance: str = "unbiased",
                            score: str = "variance", s2_correction=None) -> tuple[np.ndarray, np.ndarray]:
    """Conflict scores and cross-domain means of R stacks of per-domain gradients.

    ``g`` has shape (R, K, P). For ``score="variance"`` each replication gets its own
    relative eps, ``eps_rel * mean_j(mu_j^2 + s2_j)``, exactly as `iga_theory.mask`
    computes it for one stack. ``s2_correction`` (shape (R, P)) is subtracted from s2
    before clipping at 0 (the minibatch noise correction).

    Returns
    -------
    c, mu : ndarray, shape (R, P)
    """
    g = np.asarray(g, dtype=np.float64)
    if g.ndim != 3 or g.shape[1] < 2:
        raise ValueError(f"g must have shape (R, K, P) with K >= 2; got {g.shape}")
    K = g.shape[1]
    mu = g.mean(axis=1)
    if score == "sign":
        total = np.abs(g).sum(axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.where(total == 0, 1.0, np.abs(g.sum(axis=1)) / total)
        return np.clip(1.0 - ratio, 0.0, 1.0), mu
    if score != "variance":
        raise ValueError(f"score must be one of {cgcm.CONFLICT_SCORES}; got {score!r}")
    s2 = ((g - mu[:, None, :]) ** 2).sum(axis=1) / cgcm.VARIANCE_DIVISORS[variance](K)
    if s2_correction is not None:
        s2 = np.maximum(s2 - s2_correction, 0.0)
    eps = eps_rel * np.mean(mu**2 + s2, axis=1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        c = np.where(s2 == 0, 0.0, s2 / (mu * mu + eps))
    return c, mu


def batched_conflict_mask(g, tau=None, kappa0: float = cgcm.DEFAULT_KAPPA0, m_min: float = 0.0,
                          eps_rel: float = cgcm.DEFAULT_EPS_REL, variance: str = "unbiased",
                          score: str = "variance", s2_correction=None) -> tuple[np.ndarray, np.ndarray]:
    """Mask and mean gradient of R stacks (R, K, P); ``tau=None`` uses `iga_theory.mask.default_tau`.

    Equal to `iga_theory.mask.conflict_mask` on each stack (tested to rounding).

    Returns
    -------
    mask, mu : ndarray, shape (R, P)
    """
    g = np.asarray(g, dtype=np.float64)
    c, mu = batched_conflict_scores(g, eps_rel=eps_rel, variance=variance, score=score,
                                    s2_correction=s2_correction)
    if tau is None:
        if score == "sign":
            raise ValueError("score='sign' needs an explicit tau in (0, 1]; got tau=None")
        tau = cgcm.default_tau(g.shape[1], variance=variance)
    return cgcm.mask_from_score(c, tau, kappa0=kappa0, m_min=m_min), mu


# ----- population training -----------------------------------------------------------------


@dataclass
class BatchedRun:
    """Result of R runs of full-batch training.

    Attributes
    ----------
    thetas : ndarray, shape (R, P)
        Final iterates.
    budget : ndarray, shape (R, steps + 1)
        Theorem 3 (b) invariance budget ``sum_{s<t} eta |P d_s|`` (zeros for ERM).
    spurious_moved : ndarray, shape (R, steps + 1)
        ``|P (theta_t - theta_0)|`` along the runs.
    spurious_path : ndarray, shape (R, steps + 1)
        The model's `spurious_weight` along the runs.
    mask_spurious : ndarray, shape (R, steps)
        Mean mask over the spurious subspace (``tr(P diag(m)) / tr(P)``) at each step.
    """

    thetas: np.ndarray
    budget: np.ndarray
    spurious_moved: np.ndarray
    spurious_path: np.ndarray
    mask_spurious: np.ndarray
    extra: dict = field(default_factory=dict)


def train_population_batched(model, betas, scales, method: str, steps: int, eta,
                             theta0=None, mask_options: dict | None = None,
                             record_every: int = 1) -> BatchedRun:
    """Full-batch gradient descent (ERM) or IGA on exact population gradients, R runs at once.

    Update: ``theta <- theta - eta * d`` with ``d = mu`` (ERM) or ``d = mask * mu`` (IGA),
    ``mu`` the mean over the run's K domains of the exact gradients.

    Parameters
    ----------
    model : S1Model, S2Model, S3Model or S4Model
    betas, scales : array_like, shape (R, K), K >= 2
    method : {"erm", "iga"}
    steps : int, >= 1
    eta : float or array_like of shape (R,)
        Step size of each run (``eta <= 1 / L`` keeps ERM stable).
    theta0 : array_like, shape (P,) or (R, P), optional
        Start (default 0).
    mask_options : dict, optional
        Keyword arguments of `batched_conflict_mask` (tau, kappa0, m_min, score, ...).
    record_every : int
        Paths (budget, spurious weight) are stored every this many steps and at the end.
    """
    if method not in ("erm", "iga"):
        raise ValueError(f"method must be 'erm' or 'iga'; got {method!r}")
    steps = check_positive_int("steps", steps)
    betas = np.asarray(betas, dtype=np.float64)
    scales = np.asarray(scales, dtype=np.float64)
    R, K = betas.shape
    if K < 2:
        raise ValueError(f"training needs K >= 2 domains per run; got K = {K}")
    eta = np.broadcast_to(np.asarray(eta, dtype=np.float64), (R,))
    theta = np.zeros((R, model.n_params)) if theta0 is None else np.array(
        np.broadcast_to(theta0, (R, model.n_params)), dtype=np.float64)
    start = theta.copy()
    projector = spurious_projector(model)
    trace = float(np.trace(projector))
    options = dict(mask_options or {})

    budget = np.zeros(R)
    records = {"budget": [budget.copy()], "moved": [np.zeros(R)],
               "spurious": [np.asarray(model.spurious_weight(theta), dtype=np.float64)]}
    mask_spurious = np.empty((R, steps))
    gradients_of = gradient_function(model, betas, scales)
    for t in range(steps):
        g = gradients_of(theta)
        if method == "iga":
            mask, mu = batched_conflict_mask(g, **options)
            d = mask * mu
            mask_spurious[:, t] = np.einsum("ij,rj->r", projector * np.eye(len(projector)), mask) / trace
        else:
            d = g.mean(axis=1)
            mask_spurious[:, t] = 1.0
        step = eta[:, None] * d
        budget = budget + np.linalg.norm(step @ projector, axis=1)
        theta = theta - step
        if (t + 1) % record_every == 0 or t + 1 == steps:
            records["budget"].append(budget.copy())
            records["moved"].append(np.linalg.norm((theta - start) @ projector, axis=1))
            records["spurious"].append(np.asarray(model.spurious_weight(theta), dtype=np.float64))
    return BatchedRun(thetas=theta, budget=np.stack(records["budget"], axis=1),
                      spurious_moved=np.stack(records["moved"], axis=1),
                      spurious_path=np.stack(records["spurious"], axis=1), mask_spurious=mask_spurious)


# ----- minibatch SGD on S1 (Theorem 1 and the statistics options) ---------------------------


def sample_s1_batched(model: S1Model, betas, scales, n: int, R: int, rng: np.random.Generator):
    """Minibatches of n examples from each of K S1 domains, R times: X (R, K, n, P), y (R, K, n).

    Same generative model as `S1Model.sample`, vectorised over replications and domains.
    """
    p = model.params
    betas = np.asarray(betas, dtype=np.float64)
    scales = np.asarray(scales, dtype=np.float64)
    K = betas.size
    x_inv = scales[None, :, None, None] * rng.standard_normal((R, K, n, p.d_inv))
    y = x_inv @ model.w_star + p.sigma_y * rng.standard_normal((R, K, n))
    x_sp = betas[None, :, None, None] * y[..., None] + p.sigma_s * rng.standard_normal((R, K, n, p.d_sp))
    X = np.concatenate([x_inv, x_sp], axis=-1) @ model.rotation.T
    return X, y


@dataclass
class SGDRun:
    """Result of R minibatch SGD runs on S1 (see `sgd_s1_batched`)."""

    lhs: np.ndarray              # (R,) (1/T) sum_t |A_t^{1/2} grad R(theta_t)|^2
    plain: np.ndarray            # (R,) (1/T) sum_t |grad R(theta_t)|^2
    sigma2: np.ndarray           # (R,) max over the path of the exact minibatch-gradient variance
    alignment: np.ndarray        # (R, T) cos(grad R(theta_t), d_t)
    final_thetas: np.ndarray     # (R, P)
    initial_gap: float
    L: float
    eta: float


def sgd_s1_batched(model: S1Model, domains, T: int, eta: float, n: int, R: int,
                   rng: np.random.Generator, statistics: str = "ema", rho: float = 0.9,
                   mask_options: dict | None = None, method: str = "iga",
                   theta0=None) -> SGDRun:
    """Minibatch SGD with the IGA mask on S1's K training domains, R runs at once.

    Step: ``theta <- theta - eta * m_t * mean_e g_hat_e`` with ``g_hat_e`` the mean
    gradient of n fresh examples of domain e. The mask m_t comes from:

    * ``"ema"``: an exponential moving average (rate rho) of past per-domain minibatch
      means, lagged one step (independent of the current minibatch: Theorem 1 applies);
    * ``"independent"``: a second, independent minibatch at theta_t (Theorem 1 applies);
    * ``"same"``: the current minibatch itself (biased; outside Theorem 1);
    * ``"noise_corrected"``: the current minibatch with
      ``s2_corr = max(s2 - mean_e(v_e / n), 0)``, v_e the within-domain variance of the
      per-example gradients (outside Theorem 1, because it uses the current minibatch).

    ``method="erm"`` uses mask 1. Theorem 1's left side uses the exact pooled gradient.

    Returns
    -------
    SGDRun
    """
    if statistics not in STATISTICS:
        raise ValueError(f"statistics must be one of {STATISTICS}; got {statistics!r}")
    T = check_positive_int("T", T)
    n = check_positive_int("n", n)
    R = check_positive_int("R", R)
    rho = check_in_range("rho", rho, 0.0, 1.0, high_open=True)
    K = len(domains)
    options = dict(mask_options or {})
    if options.get("tau") is None:
        options["tau"] = cgcm.default_tau(K)
    betas = np.array([d.beta for d in domains])
    scales = np.array([d.scale for d in domains])
    sigmas = np.stack([model.second_moments(d)[0] for d in domains])  # (K, P, P)
    cs = np.stack([model.second_moments(d)[1] for d in domains])
    hessian, c_bar = sigmas.mean(axis=0), cs.mean(axis=0)
    L = float(np.linalg.eigvalsh(hessian)[-1])
    theta = np.zeros((R, model.n_params)) if theta0 is None else np.tile(theta0, (R, 1)).astype(np.float64)

    def minibatch(theta_):
        X, y = sample_s1_batched(model, betas, scales, n, R, rng)
        residual = np.einsum("rknp,rp->rkn", X, theta_) - y
        per_example = X * residual[..., None]  # (R, K, n, P)
        return per_example.mean(axis=2), per_example

    def mask_of(g, correction=None):
        if method == "erm":
            return np.ones((R, model.n_params))
        return batched_conflict_mask(g, s2_correction=correction, **options)[0]

    ema = minibatch(theta)[0] if statistics == "ema" else None
    lhs = np.zeros(R)
    plain = np.zeros(R)
    path = np.empty((T, R, model.n_params))
    alignment = np.empty((R, T))
    for t in range(T):
        full = theta @ hessian - c_bar  # exact pooled gradient, (R, P)
        path[t] = theta
        g, per_example = minibatch(theta)
        if statistics == "ema":
            mask = mask_of(ema)
            ema = rho * ema + (1.0 - rho) * g
        elif statistics == "independent":
            mask = mask_of(minibatch(theta)[0])
        elif statistics == "same":
            mask = mask_of(g)
        else:
            within = per_example.var(axis=2, ddof=1) if n > 1 else np.zeros_like(g)
            mask = mask_of(g, correction=(within / n).mean(axis=1))
        d = mask * g.mean(axis=1)
        lhs += (mask * full**2).sum(axis=1)
        plain += (full**2).sum(axis=1)
        norms = np.linalg.norm(full, axis=1) * np.linalg.norm(d, axis=1)
        alignment[:, t] = np.where(norms > 0, (full * d).sum(axis=1) / np.where(norms > 0, norms, 1.0), 1.0)
        theta = theta - eta * d

    # Exact minibatch-gradient variance at every visited point; its max bounds sigma^2.
    sigma2 = model.sample_gradient_variance(path.reshape(-1, model.n_params), domains, n).reshape(T, R).max(axis=0)
    r_inf = float(np.mean(model.risks(model.erm_solution(domains), domains)))
    start = np.zeros(model.n_params) if theta0 is None else np.asarray(theta0, dtype=np.float64)
    gap = max(float(np.mean(model.risks(start, domains))) - r_inf, 0.0)
    return SGDRun(lhs=lhs / T, plain=plain / T, sigma2=sigma2, alignment=alignment,
                  final_thetas=theta, initial_gap=gap, L=L, eta=float(eta))


def sgd_s1_step_torch(theta: torch.Tensor, X: torch.Tensor, y: torch.Tensor, mask: torch.Tensor,
                      eta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """One masked SGD step in torch from given minibatches: returns (new theta, per-domain means).

    Shapes: theta (R, P), X (R, K, n, P), y (R, K, n), mask (R, P). The numpy engine
    computes the same quantities; the tests feed both the same draws.
    """
    residual = torch.einsum("rknp,rp->rkn", X, theta) - y
    g = (X * residual[..., None]).mean(dim=2)
    return theta - eta * mask * g.mean(dim=1), g


# ----- Theorem 2 over replications ---------------------------------------------------------


def bernstein_bounds(risks, B, delta: float) -> dict[str, np.ndarray]:
    """Theorem 2 terms for R replications at once (numpy); see `iga_theory.bounds.bernstein_terms`.

    Parameters
    ----------
    risks : array_like, shape (R, K), K >= 2
    B : float or array_like of shape (R,)
    delta : float in (0, 1)

    Returns
    -------
    dict of arrays of shape (R,): ``mean``, ``variance``, ``variance_term``,
    ``range_term``, ``bound``.
    """
    risks = np.asarray(risks, dtype=np.float64)
    if risks.ndim != 2 or risks.shape[1] < 2:
        raise ValueError(f"risks must have shape (R, K) with K >= 2; got {risks.shape}")
    delta = check_in_range("delta", delta, 0.0, 1.0, low_open=True, high_open=True)
    K = risks.shape[1]
    log_term = math.log(2.0 / delta)
    mean = risks.mean(axis=1)
    variance = risks.var(axis=1, ddof=1)
    variance_term = np.sqrt(2.0 * variance * log_term / K)
    range_term = 7.0 * np.asarray(B, dtype=np.float64) * log_term / (3.0 * (K - 1)) * np.ones_like(mean)
    return {"mean": mean, "variance": variance, "variance_term": variance_term,
            "range_term": range_term, "bound": mean + variance_term + range_term}


@numba.njit(cache=True)
def _bernstein_kernel(risks, B, log_term, out):  # pragma: no cover - compiled
    R, K = risks.shape
    for r in range(R):
        mean = 0.0
        for k in range(K):
            mean += risks[r, k]
        mean /= K
        squares = 0.0
        for k in range(K):
            diff = risks[r, k] - mean
            squares += diff * diff
        variance = squares / (K - 1)
        out[r] = mean + math.sqrt(2.0 * variance * log_term / K) + 7.0 * B[r] * log_term / (3.0 * (K - 1))


def bernstein_bounds_numba(risks, B, delta: float) -> np.ndarray:
    """Theorem 2 bound of each of R replications, numba kernel (one pass per row); shape (R,)."""
    risks = np.ascontiguousarray(risks, dtype=np.float64)
    if risks.ndim != 2 or risks.shape[1] < 2:
        raise ValueError(f"risks must have shape (R, K) with K >= 2; got {risks.shape}")
    delta = check_in_range("delta", delta, 0.0, 1.0, low_open=True, high_open=True)
    B = np.ascontiguousarray(np.broadcast_to(np.asarray(B, dtype=np.float64), (risks.shape[0],)))
    out = np.empty(risks.shape[0])
    _bernstein_kernel(risks, B, math.log(2.0 / delta), out)
    return out


def bernstein_bounds_torch(risks: torch.Tensor, B, delta: float) -> torch.Tensor:
    """Theorem 2 bound of each of R replications in torch; shape (R,)."""
    if risks.ndim != 2 or risks.shape[1] < 2:
        raise ValueError(f"risks must have shape (R, K) with K >= 2; got {tuple(risks.shape)}")
    delta = check_in_range("delta", delta, 0.0, 1.0, low_open=True, high_open=True)
    K = risks.shape[1]
    log_term = math.log(2.0 / delta)
    variance = risks.var(dim=1, unbiased=True)
    B = torch.as_tensor(B, dtype=risks.dtype)
    return risks.mean(dim=1) + torch.sqrt(2.0 * variance * log_term / K) + 7.0 * B * log_term / (3.0 * (K - 1))


def quantile_certificates(risks, alpha: float, delta: float) -> np.ndarray | None:
    """New-domain quantile certificate of each of R replications, shape (R,), or None below min K.

    The k-th smallest of each row, with k from `iga_theory.bounds.quantile_rank`.
    """
    risks = np.asarray(risks, dtype=np.float64)
    k = bounds.quantile_rank(risks.shape[1], alpha, delta)
    if k is None:
        return None
    return np.partition(risks, k - 1, axis=1)[:, k - 1]


def coverage_of_fixed_predictor(model, theta, K: int, R: int, delta: float, rng: np.random.Generator,
                                B: float | None = None) -> dict:
    """Monte Carlo coverage of Theorem 2 for one fixed predictor: R draws of K certification domains."""
    low, high = model.risk_range(theta)
    B = (high - low) if B is None else B
    B = max(B, np.finfo(np.float64).tiny)
    betas, scales = draw_domain_arrays(model, R, K, rng)
    risks = population_risks(model, np.tile(theta, (R, 1)), betas, scales)
    bound = bernstein_bounds_numba(risks, B, delta)
    expected = float(model.expected_risk(theta))
    summary = bounds.coverage_summary(bound >= expected, delta)
    summary.update(expected_risk=expected, B=float(B), mean_bound=float(bound.mean()))
    return summary
