r"""Theory quantities: the Theorem 2 OOD bound over domains and the Theorem 1 rate bound.

Theorem 2 (empirical Bernstein over domains, Maurer & Pontil 2009, Theorem 4). For a
predictor that does not depend on the K certification domains, and per-domain risks
in an interval of length B, with probability at least 1 - delta over the draw of the
domains,

.. math::

    E_{e\sim Q} R_e \le \bar R_K + \sqrt{\frac{2 V_K \ln(2/\delta)}{K}}
    + \frac{7 B \ln(2/\delta)}{3 (K - 1)},

with :math:`\bar R_K` the mean and :math:`V_K` the unbiased sample variance of the K
domain risks. Symbols: ``risks`` the K certification risks, ``B`` the length of the
interval that contains every per-domain risk, ``delta`` the failure probability.

Theorem 1 (convergence of the lagged masked step). For an L-smooth pooled risk bounded
below by ``R_inf``, an unbiased stochastic mean gradient with variance at most
``sigma2`` and a step operator A_t that is symmetric PSD, ``||A_t|| <= 1`` and
independent of the current minibatch, for ``eta <= 1/L``:

.. math::

    \frac1T \sum_t E \|A_t^{1/2} \nabla R(\theta_t)\|^2
    \le \frac{2 (R(\theta_0) - R_{\inf})}{\eta T} + L \eta \sigma^2 .
"""

from __future__ import annotations

import math

import numpy as np
from scipy import integrate, special, stats

from iga_theory.errors import check_finite, check_in_range, check_positive_int


def _check_risks(risks) -> np.ndarray:
    risks = np.asarray(risks, dtype=np.float64)
    if risks.ndim != 1:
        raise ValueError(f"risks must be a 1-D array of per-domain risks; got shape {risks.shape}")
    if risks.size < 2:
        raise ValueError(
            f"the empirical Bernstein bound needs K >= 2 certification domains; got K = {risks.size}"
        )
    check_finite("risks", risks)
    return risks


def bernstein_terms(risks, B: float, delta: float) -> dict[str, float]:
    """Terms of the Theorem 2 bound for one set of K certification risks.

    Parameters
    ----------
    risks : array_like, shape (K,), float, K >= 2
        Per-domain risks of a predictor chosen without these domains.
    B : float, > 0
        Length of an interval known in advance to contain every per-domain risk.
    delta : float, in (0, 1)
        Failure probability.

    Returns
    -------
    dict with ``mean`` (Rbar_K), ``variance`` (V_K, unbiased), ``variance_term``
    sqrt(2 V_K ln(2/delta) / K), ``range_term`` 7 B ln(2/delta) / (3 (K-1)),
    ``bound`` (their sum) and ``K``.
    """
    risks = _check_risks(risks)
    B = check_in_range("B", B, 0.0, np.inf, low_open=True)
    delta = check_in_range("delta", delta, 0.0, 1.0, low_open=True, high_open=True)
    K = risks.size

    log_term = math.log(2.0 / delta)
    mean = float(risks.mean())
    variance = float(risks.var(ddof=1))
    variance_term = math.sqrt(2.0 * variance * log_term / K)
    range_term = 7.0 * B * log_term / (3.0 * (K - 1))
    return {
        "K": K,
        "mean": mean,
        "variance": variance,
        "variance_term": variance_term,
        "range_term": range_term,
        "bound": mean + variance_term + range_term,
    }


def bernstein_bound(risks, B: float, delta: float) -> float:
    """Theorem 2 upper confidence bound on E_{e~Q} R_e; see `bernstein_terms`."""
    return bernstein_terms(risks, B, delta)["bound"]


def vacuous_below(delta: float) -> int:
    """Smallest K for which the range term 7 ln(2/delta) / (3 (K-1)) is below 1 (B = 1).

    Below this K the bound exceeds B whatever the risks, so it certifies nothing.
    """
    delta = check_in_range("delta", delta, 0.0, 1.0, low_open=True, high_open=True)
    return int(math.floor(7.0 * math.log(2.0 / delta) / 3.0 + 1.0)) + 1


def bernstein_crossover(B: float, V: float, delta: float) -> float:
    """Crossover K* = (49/18) B^2 ln(2/delta) / V where the two excess terms are equal.

    Equating sqrt(2 V ln(2/delta) / K) with 7 B ln(2/delta) / (3 K) (the range term
    with K - 1 replaced by K) gives K*. Below K* the range term, of order 1/K,
    dominates the excess; above it the variance term, of order sqrt(V/K), does.
    Returns ``inf`` when V = 0.
    """
    B = check_in_range("B", B, 0.0, np.inf, low_open=True)
    V = check_in_range("V", V, 0.0, np.inf)
    delta = check_in_range("delta", delta, 0.0, 1.0, low_open=True, high_open=True)
    if V == 0.0:
        return math.inf
    return 49.0 / 18.0 * B**2 * math.log(2.0 / delta) / V


def quantile_rank(K: int, alpha: float, delta: float) -> int | None:
    """Order-statistic rank k of the new-domain quantile certificate, or None.

    k is the least integer with P(Bin(K, 1 - alpha) >= k) <= delta. Then the k-th
    smallest of K i.i.d. domain risks is, with probability >= 1 - delta, at least the
    (1 - alpha)-quantile of R_e over Q. Such k <= K exists only when
    (1 - alpha)^K <= delta, that is K >= ln(delta) / ln(1 - alpha).
    """
    K = check_positive_int("K", K)
    alpha = check_in_range("alpha", alpha, 0.0, 1.0, low_open=True, high_open=True)
    delta = check_in_range("delta", delta, 0.0, 1.0, low_open=True, high_open=True)

    ks = np.arange(1, K + 1)
    tail = stats.binom.sf(ks - 1, K, 1.0 - alpha)  # P(Bin >= k)
    admissible = ks[tail <= delta]
    return int(admissible[0]) if admissible.size else None


def min_domains_for_quantile(alpha: float, delta: float) -> int:
    """Least K with (1 - alpha)^K <= delta, the condition for `quantile_rank` to exist."""
    alpha = check_in_range("alpha", alpha, 0.0, 1.0, low_open=True, high_open=True)
    delta = check_in_range("delta", delta, 0.0, 1.0, low_open=True, high_open=True)
    return int(math.ceil(math.log(delta) / math.log(1.0 - alpha) - 1e-12))


def quantile_certificate(risks, alpha: float, delta: float) -> float | None:
    """Distribution-free upper confidence bound on the (1 - alpha)-quantile of R_e over Q.

    Returns the k-th smallest certification risk (k from `quantile_rank`), or None
    when K is too small for any order statistic to certify the quantile.
    """
    risks = _check_risks(risks)
    k = quantile_rank(risks.size, alpha, delta)
    if k is None:
        return None
    return float(np.sort(risks)[k - 1])


def sgd_rate_bound(initial_gap: float, L: float, eta: float, sigma2: float, T: int) -> float:
    """Right side of Theorem 1: 2 (R(theta_0) - R_inf) / (eta T) + L eta sigma^2.

    Parameters
    ----------
    initial_gap : float, >= 0
        R(theta_0) - R_inf.
    L : float, > 0
        Smoothness constant of the pooled risk.
    eta : float, in (0, 1/L]
        Constant step size; the theorem needs eta <= 1/L.
    sigma2 : float, >= 0
        Bound on the variance E||g_hat - grad R||^2 of the stochastic mean gradient.
    T : int, >= 1
        Number of steps.
    """
    initial_gap = check_in_range("initial_gap", initial_gap, 0.0, np.inf)
    L = check_in_range("L", L, 0.0, np.inf, low_open=True)
    eta = check_in_range("eta", eta, 0.0, np.inf, low_open=True)
    if eta > 1.0 / L * (1.0 + 1e-12):
        raise ValueError(f"Theorem 1 needs eta <= 1/L = {1.0 / L:.6g}; got eta = {eta:.6g}")
    sigma2 = check_in_range("sigma2", sigma2, 0.0, np.inf)
    T = check_positive_int("T", T)
    return 2.0 * initial_gap / (eta * T) + L * eta * sigma2


# ----- Theorem 2: certification routes for learned predictors ---------------------------


def union_delta(delta: float, n_candidates: int) -> float:
    """Per-candidate failure probability ``delta / N`` of the union bound over N candidates.

    A predictor chosen from a finite set of N candidates fixed before the certification
    domains are seen (N hyperparameter settings, or N trained predictors) is certified
    by applying Theorem 2 to every candidate at level delta / N: with probability at
    least 1 - delta all N bounds hold at once, so the chosen one's does too, whatever
    the selection rule. In the bound this adds ``ln N`` to ``ln(2 / delta)``.
    """
    delta = check_in_range("delta", delta, 0.0, 1.0, low_open=True, high_open=True)
    n_candidates = check_positive_int("n_candidates", n_candidates)
    return delta / n_candidates


def union_bernstein_terms(risks, B: float, delta: float, n_candidates: int) -> dict[str, float]:
    """Theorem 2 terms for a predictor selected among ``n_candidates``: `bernstein_terms` at delta / N."""
    terms = bernstein_terms(risks, B, union_delta(delta, n_candidates))
    terms["n_candidates"] = int(n_candidates)
    return terms


def select_and_certify(candidate_risks, B, delta: float, union: bool = True) -> dict[str, float]:
    """Pick the candidate with the smallest mean certification risk and bound its expected risk.

    Parameters
    ----------
    candidate_risks : array_like, shape (N, K)
        Risks of N candidates (fixed before the K domains were drawn) on the K
        certification domains.
    B : float or array_like of shape (N,)
        Range length of each candidate's per-domain risk.
    delta : float, in (0, 1)
    union : bool
        True: the union-bound route (level delta / N), valid for any selection rule.
        False: naive reuse at level delta, which ignores the selection and is invalid
        when N > 1 (kept as the control that shows the failure).

    Returns
    -------
    dict of `bernstein_terms` plus ``index`` (the chosen candidate) and ``n_candidates``.
    """
    risks = np.asarray(candidate_risks, dtype=np.float64)
    if risks.ndim != 2 or risks.shape[0] < 1:
        raise ValueError(f"candidate_risks must have shape (N, K) with N >= 1; got {risks.shape}")
    check_finite("candidate_risks", risks)
    N = risks.shape[0]
    B = np.broadcast_to(np.asarray(B, dtype=np.float64), (N,))
    index = int(np.argmin(risks.mean(axis=1)))
    level = union_delta(delta, N) if union else delta
    terms = bernstein_terms(risks[index], float(B[index]), level)
    terms.update(index=index, n_candidates=N)
    return terms


def is_vacuous(bound: float, risk_high: float) -> bool:
    """True when the bound is no smaller than ``risk_high``, the largest per-domain risk possible.

    A bound at or above the known maximum of R_e certifies nothing new.
    """
    return bool(bound >= risk_high)


# ----- coverage statistics ----------------------------------------------------------------


def binomial_interval(successes: int, trials: int, confidence: float = 0.95) -> tuple[float, float]:
    """Clopper-Pearson (exact) two-sided confidence interval of a binomial proportion.

    Uses ``scipy.stats.binomtest(...).proportion_ci(method="exact")``.
    """
    trials = check_positive_int("trials", trials)
    if isinstance(successes, bool) or not isinstance(successes, (int, np.integer)) or not 0 <= successes <= trials:
        raise ValueError(f"successes must be an integer in [0, trials = {trials}]; got {successes!r}")
    confidence = check_in_range("confidence", confidence, 0.0, 1.0, low_open=True, high_open=True)
    ci = stats.binomtest(int(successes), trials).proportion_ci(confidence_level=confidence, method="exact")
    return float(ci.low), float(ci.high)


def coverage_summary(covered, delta: float, confidence: float = 0.95) -> dict:
    """Monte Carlo coverage of a 1 - delta bound with its Clopper-Pearson interval.

    ``passed`` is True unless the interval lies entirely below 1 - delta, that is unless
    the data show under-coverage at the two-sided level 1 - confidence.
    """
    covered = np.asarray(covered, dtype=bool).ravel()
    if covered.size == 0:
        raise ValueError("covered is empty; pass one boolean per Monte Carlo replication")
    delta = check_in_range("delta", delta, 0.0, 1.0, low_open=True, high_open=True)
    successes = int(covered.sum())
    low, high = binomial_interval(successes, covered.size, confidence)
    return {"coverage": successes / covered.size, "interval": [low, high], "n": int(covered.size),
            "target": 1.0 - delta, "passed": bool(high >= 1.0 - delta)}


# ----- Theorem 3: what the mask changes ---------------------------------------------------


def invariance_budget(eta, directions, spurious_projector) -> np.ndarray:
    r"""Theorem 3 (b): running bound on how far the spurious part of theta can have moved.

    .. math::

        \|P(\theta_t - \theta_0)\| = \|\sum_{s<t} \eta_s P d_s\| \le \sum_{s<t} \eta_s \|P d_s\|,

    with ``d_s = m_s * mu_s`` the IGA direction and P the orthogonal projector onto the
    spurious subspace (the triangle inequality, so the bound holds along any run).

    Parameters
    ----------
    eta : float or array_like of shape (T,)
        Step sizes.
    directions : array_like, shape (T, P) or (R, T, P)
        Step directions d_t (R independent runs along axis 0 when 3-D).
    spurious_projector : array_like, shape (P, P)
        Orthogonal projector onto the spurious subspace.

    Returns
    -------
    budget : ndarray, shape (T + 1,) or (R, T + 1)
        ``budget[..., t] = sum_{s<t} eta_s |P d_s|``, starting at 0.
    """
    d = np.asarray(directions, dtype=np.float64)
    if d.ndim not in (2, 3):
        raise ValueError(f"directions must have shape (T, P) or (R, T, P); got {d.shape}")
    projector = np.asarray(spurious_projector, dtype=np.float64)
    if projector.shape != (d.shape[-1],) * 2:
        raise ValueError(f"spurious_projector must have shape ({d.shape[-1]}, {d.shape[-1]}); got {projector.shape}")
    eta = np.broadcast_to(np.asarray(eta, dtype=np.float64), (d.shape[-2],))
    steps = eta[:, None] * (d @ projector.T)
    lengths = np.linalg.norm(steps, axis=-1)
    zeros = np.zeros(lengths.shape[:-1] + (1,))
    return np.concatenate([zeros, np.cumsum(lengths, axis=-1)], axis=-1)


def hard_limit_conflict(betas) -> float:
    r"""Conflict score of S1's spurious coordinates along the set where the spurious weights are 0.

    With ``b = 0`` every domain's spurious gradient is ``beta_e (u_e w_*^T alpha - Var_e(y)) 1``;
    for equal input scales the common factor cancels in ``s2 / mu^2``, so

    .. math::

        c_{sp} = \frac{s^2_\beta}{\bar\beta^2} = \frac{K}{t^2},\qquad
        t = \frac{\sqrt K \bar\beta}{s_\beta},

    the unbiased sample variance over the squared mean of the K training betas, for
    every invariant weight alpha (and ``inf`` when the betas average to 0).
    """
    betas = np.asarray(betas, dtype=np.float64)
    if betas.ndim != 1 or betas.size < 2:
        raise ValueError(f"betas must be 1-D with K >= 2 entries; got shape {betas.shape}")
    mean = float(betas.mean())
    variance = float(betas.var(ddof=1))
    if mean == 0.0:
        return math.inf
    return variance / mean**2


def hard_limit_spurious_weight(betas, tau: float) -> float | None:
    """Theorem 3 (c): spurious weight of S1's hard-limit IGA run started at b = 0, where it is closed form.

    In the hard limit (kappa0 -> inf, m_min = 0) with equal input scales, the spurious
    coordinates keep the conflict score `hard_limit_conflict` while b = 0. If it exceeds
    tau their mask is exactly 0, so b stays 0 for ever: the run's spurious weight is 0
    and the invariant coordinates, whose gradients are then equal in every domain (mask
    1), converge to the invariant solution. If the score is below tau the mask is 1, b
    leaves 0 and the score changes along the path (it grows without bound near ERM's
    solution, where mu = 0), so the run stops where the scores cross tau. That end point
    has no closed form and None is returned. At c = tau the hard mask is undefined.
    """
    tau = check_in_range("tau", tau, 0.0, np.inf, low_open=True)
    c = hard_limit_conflict(betas)
    if c == tau:
        raise ValueError(f"the hard-limit mask is undefined at c = tau = {tau}")
    return 0.0 if c > tau else None


def hard_limit_suppression_probability(K: int, tau: float, mu_over_tau: float) -> float:
    r"""Probability over the K training domains that the hard-limit mask suppresses the shortcut.

    For untruncated ``beta_e ~ N(mu_beta, tau_beta^2)`` the statistic
    ``t = sqrt(K) beta_bar / s_beta`` is noncentral-t with K - 1 degrees of freedom and
    noncentrality ``sqrt(K) mu_beta / tau_beta``, and suppression means
    ``c = K / t^2 > tau``:

    .. math::

        P(\text{suppressed}) = P(|T_{K-1}(\sqrt K \mu_\beta/\tau_\beta)| < \sqrt{K / \tau}).

    Parameters
    ----------
    K : int, >= 2
    tau : float, > 0
        Threshold on the unbiased conflict score.
    mu_over_tau : float
        Signal-to-spread ratio ``mu_beta / tau_beta`` of the shortcut over Q.
    """
    K = check_positive_int("K", K)
    if K < 2:
        raise ValueError(f"K must be >= 2 for a cross-domain variance; got {K}")
    tau = check_in_range("tau", tau, 0.0, np.inf, low_open=True)
    mu_over_tau = check_in_range("mu_over_tau", mu_over_tau, -np.inf, np.inf)
    limit = math.sqrt(K / tau)
    noncentrality = math.sqrt(K) * mu_over_tau
    df = K - 1
    # T = (Z + nc) / sqrt(V / df) with V ~ chi2(df): condition on V and integrate, which
    # stays accurate where scipy.stats.nct.cdf returns NaN (large nc, scipy 1.x).
    def integrand(v):
        half_width = limit * math.sqrt(v / df)
        return stats.chi2.pdf(v, df) * (special.ndtr(half_width - noncentrality)
                                        - special.ndtr(-half_width - noncentrality))

    value, _ = integrate.quad(integrand, 0.0, np.inf, epsabs=1e-13, epsrel=1e-11, limit=200)
    return float(min(max(value, 0.0), 1.0))
