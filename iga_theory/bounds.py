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
from scipy import stats

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
