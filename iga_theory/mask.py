r"""Continuous Gradient Conflict Mask (CGCM), numpy reference implementation.

Given per-domain gradients ``g`` of shape ``(K, ...)`` the mask is computed
coordinate by coordinate from the cross-domain mean and variance:

.. math::

    \mu_j = \frac1K \sum_e g_{e,j}, \qquad
    s^2_j = \frac1{K-1} \sum_e (g_{e,j} - \mu_j)^2, \qquad
    c_j = \frac{s^2_j}{\mu_j^2 + \varepsilon},

    m_j = m_{\min} + (1 - m_{\min})
          \frac{\sigma(\kappa_0 (1 - c_j / \tau))}{\sigma(\kappa_0)},

with :math:`\sigma` the logistic function. Symbols: ``mu`` cross-domain mean, ``s2``
cross-domain variance (unbiased by default, ``variance="population"`` divides by K),
``c`` conflict score, ``tau`` threshold, ``kappa0`` scale-free sharpness, ``m_min``
floor. The default ``eps = eps_rel * mean_j(mu_j^2 + s2_j)`` is relative to the tensor,
which keeps the mask exactly invariant to a rescaling of all gradients. A coordinate
with ``mu_j = s2_j = 0`` has ``c_j = 0`` (full agreement) by definition.

Dividing by :math:`\sigma(\kappa_0)` makes full agreement (``c = 0``) give exactly 1,
so IGA reduces to plain gradient descent when all domains agree.

Precision. Everything is computed in the gradients' dtype (float32 or float64;
float16 is computed in float32) with the two-pass formula for the variance. The mean
is shifted by the first domain (``mu = g_0 + mean_e(g_e - g_0)``) and the domains are
summed in order ``e = 0 .. K-1``. Only the relative eps is summed in float64. The
numba kernels of `iga_theory.mask_numba` follow the same order of operations, and
`iga_theory.mask_torch` is the autograd version. `mask_rounding_bound` bounds how far
two such implementations can differ.

Exactness. Scaling all gradients by a power of 2 leaves the mask bitwise unchanged,
K equal gradients give ``s2 = 0`` and ``m = 1`` exactly, and two opposing domains
give ``mu = 0`` exactly.

The sign-agreement score ``c_sign = 1 - |sum_e g_e| / sum_e |g_e|`` is a named
alternative (``score="sign"``) that ignores differences of scale between domains whose
signs agree.
"""

from __future__ import annotations

import numpy as np
from scipy import special, stats

from iga_theory.errors import check_domain_stack, check_finite, check_in_range

# Sharpness of the sigmoid in units of the threshold: kappa0 = 20 takes the mask from
# 0.99 to 0.01 while c moves from 0.77 tau to 1.23 tau.
DEFAULT_KAPPA0 = 20.0
# Effect-size threshold: keep a coordinate whose cross-domain mean lies at least
# sqrt(1 / tau0) ~ 3.2 cross-domain standard deviations from zero.
DEFAULT_TAU0 = 0.1
# Two-sided level of the significance cap on tau (see `default_tau`).
DEFAULT_ALPHA = 0.05
# Relative regulariser of the conflict score's denominator.
DEFAULT_EPS_REL = 1e-8

VARIANCE_DIVISORS = {"unbiased": lambda K: K - 1, "population": lambda K: K}
CONFLICT_SCORES = ("variance", "sign")


def _as_float_array(name: str, g) -> np.ndarray:
    """Return ``g`` as a float32 or float64 array (float16 is upcast to float32)."""
    if isinstance(g, (list, tuple)) and len({np.shape(item) for item in g}) > 1:
        raise ValueError(
            f"{name} must stack one gradient per domain, all of one shape; got shapes "
            f"{[np.shape(item) for item in g]}. Flatten or pad them to a common shape."
        )
    g = np.asarray(g)
    if not np.issubdtype(g.dtype, np.floating):
        raise TypeError(
            f"{name} must be a floating-point array; got dtype {g.dtype}. "
            "Convert it with .astype(np.float32) or .astype(np.float64)."
        )
    if g.dtype not in (np.float32, np.float64):
        g = g.astype(np.float32)  # float16 and friends: compute in float32
    return g


def _check_variance(variance: str) -> None:
    if variance not in VARIANCE_DIVISORS:
        raise ValueError(
            f"variance must be one of {sorted(VARIANCE_DIVISORS)}; got {variance!r}"
        )


def _check_moments(mu, s2) -> tuple[np.ndarray, np.ndarray]:
    """Validate a (mean, variance) pair: same shape, float, finite, s2 >= 0."""
    mu = _as_float_array("mu", mu)
    s2 = _as_float_array("s2", s2)
    if mu.shape != s2.shape:
        raise ValueError(f"mu and s2 must have the same shape; got {mu.shape} and {s2.shape}")
    if mu.size == 0:
        raise ValueError(f"mu and s2 are empty (shape {mu.shape}); pass at least one coordinate")
    check_finite("mu", mu)
    check_finite("s2", s2)
    if np.any(s2 < 0):
        raise ValueError(
            f"s2 must be >= 0 (a variance); got minimum {float(s2.min())}. "
            "Pass the cross-domain variance, not a difference of second moments."
        )
    return mu, s2.astype(mu.dtype, copy=False)


def _domain_mean(g: np.ndarray) -> np.ndarray:
    """``mu = g_0 + (1/K) sum_e (g_e - g_0)``, summed in order e = 0 .. K-1.

    Shifting by the first domain costs one subtraction per value and makes the mean of
    K equal gradients exactly that gradient, so that full agreement gives s2 = 0 and
    c = 0 exactly (the plain sum does not: 0.1 + 0.1 + 0.1 = 0.30000000000000004).
    """
    g0 = g[0]
    return g0 + (g - g0).sum(axis=0) / g.dtype.type(g.shape[0])


def cross_domain_moments(g, variance: str = "unbiased") -> tuple[np.ndarray, np.ndarray]:
    """Cross-domain mean and variance of stacked per-domain gradients.

    Uses the two-pass formula (mean first, then centred squares), which stays exact to
    rounding when ``|mu| >> sqrt(s2)``. The streaming accumulator in
    `iga_theory.stats` gives the same numbers without keeping all K gradients. The
    mean is shifted by the first domain (see `_domain_mean`), so K equal gradients
    give ``s2 = 0`` exactly.

    Parameters
    ----------
    g : array_like, shape (K, ...), float
        One gradient per domain, K >= 2, finite.
    variance : {"unbiased", "population"}
        Divide the sum of squares by K - 1 (default) or by K.

    Returns
    -------
    mu, s2 : ndarray, shape g.shape[1:], dtype of g (float32 or float64)
    """
    _check_variance(variance)
    g = _as_float_array("g", g)
    K = check_domain_stack("g", g.shape)
    check_finite("g", g)

    mu = _domain_mean(g)
    s2 = ((g - mu) ** 2).sum(axis=0) / g.dtype.type(VARIANCE_DIVISORS[variance](K))
    return mu, s2


def relative_eps(mu: np.ndarray, s2: np.ndarray, eps_rel: float = DEFAULT_EPS_REL) -> float:
    """Relative denominator regulariser ``eps_rel * mean_j(mu_j^2 + s2_j)``, summed in float64.

    Returns 0 for all-zero input.
    """
    mu64 = np.asarray(mu, dtype=np.float64)
    return float(eps_rel * np.mean(mu64 * mu64 + np.asarray(s2, dtype=np.float64)))


def _resolve_eps(mu, s2, eps, eps_rel) -> float:
    if eps is None:
        return relative_eps(mu, s2, check_in_range("eps_rel", eps_rel, 0.0, np.inf))
    return check_in_range("eps", eps, 0.0, np.inf)


def conflict_score(mu, s2, eps: float | None = None, eps_rel: float = DEFAULT_EPS_REL) -> np.ndarray:
    """Conflict score ``c = s2 / (mu^2 + eps)``, with ``c = 0`` where ``s2 = 0``.

    Parameters
    ----------
    mu, s2 : array_like, same shape, float, finite, s2 >= 0
        Cross-domain mean and variance.
    eps : float >= 0 or None
        Absolute regulariser. ``None`` (default) uses the relative rule
        ``eps = eps_rel * mean(mu^2 + s2)``, which keeps c invariant to rescaling.
    eps_rel : float >= 0
        Relative regulariser, used when ``eps`` is None.

    Returns
    -------
    c : ndarray, same shape and dtype as mu, values in [0, inf]
        ``inf`` where ``mu_j^2 + eps = 0 < s2_j`` (pure conflict with eps = 0).
    """
    mu, s2 = _check_moments(mu, s2)
    eps = _resolve_eps(mu, s2, eps, eps_rel)

    denominator = mu * mu + mu.dtype.type(eps)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        c = np.where(s2 == 0, mu.dtype.type(0), s2 / denominator)
    return c.astype(mu.dtype, copy=False)


def sign_conflict_score(g) -> np.ndarray:
    """Sign-agreement conflict score ``c_sign = 1 - |sum_e g_e| / sum_e |g_e|``.

    The score is 0 when all domains share the sign of a coordinate (whatever their
    scales) and 1 when they cancel exactly. A coordinate where every gradient is 0 has
    score 0.

    Parameters
    ----------
    g : array_like, shape (K, ...), float, K >= 2, finite

    Returns
    -------
    c_sign : ndarray, shape g.shape[1:], dtype of g, values in [0, 1]
    """
    g = _as_float_array("g", g)
    check_domain_stack("g", g.shape)
    check_finite("g", g)

    total = np.abs(g).sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(total == 0, 1.0, np.abs(g.sum(axis=0)) / total)
    # Rounding can push |sum g| / sum |g| above 1, hence the clip.
    return np.clip(1.0 - ratio, 0.0, 1.0).astype(g.dtype, copy=False)


def default_tau(K: int, tau0: float = DEFAULT_TAU0, alpha: float = DEFAULT_ALPHA,
                variance: str = "unbiased") -> float:
    """Default threshold ``tau = min(tau0, K / t^2_{K-1, 1 - alpha/2})``.

    With the unbiased variance ``c_j = K / t_j^2`` for the one-sample t-statistic
    ``t_j = sqrt(K) mu_j / s_j``, so ``c_j < K / t^2_{K-1,1-alpha/2}`` is a two-sided
    t-test of ``mu_j != 0`` at level alpha. The cap keeps a pure-noise coordinate with
    probability about alpha at small K; tau0 is the effect-size target that takes over
    as K grows. For ``variance="population"`` the threshold is multiplied by (K-1)/K,
    because the population conflict score is (K-1)/K times the unbiased one.
    """
    if isinstance(K, bool) or not isinstance(K, (int, np.integer)) or K < 2:
        raise ValueError(f"K must be an integer >= 2 for a cross-domain variance; got {K!r}")
    tau0 = check_in_range("tau0", tau0, 0.0, np.inf, low_open=True)
    alpha = check_in_range("alpha", alpha, 0.0, 1.0, low_open=True, high_open=True)
    _check_variance(variance)

    t_crit = stats.t.ppf(1.0 - alpha / 2.0, df=K - 1)
    tau = min(tau0, K / t_crit**2)
    if variance == "population":
        tau *= (K - 1) / K
    return float(tau)


def check_mask_parameters(tau: float, kappa0: float, m_min: float) -> tuple[float, float, float]:
    """Validate ``tau > 0``, ``kappa0 > 0`` and ``0 <= m_min < 1``; return them as floats."""
    tau = check_in_range("tau", tau, 0.0, np.inf, low_open=True)
    kappa0 = check_in_range("kappa0", kappa0, 0.0, np.inf, low_open=True)
    m_min = check_in_range("m_min", m_min, 0.0, 1.0, high_open=True)
    return tau, kappa0, m_min


def mask_from_score(c, tau: float, kappa0: float = DEFAULT_KAPPA0, m_min: float = 0.0) -> np.ndarray:
    """Map conflict scores to ``m = m_min + (1-m_min) sigmoid(kappa0 (1 - c/tau)) / sigmoid(kappa0)``.

    Parameters
    ----------
    c : array_like, float, values in [0, inf]
    tau : float, > 0
    kappa0 : float, > 0
    m_min : float, in [0, 1)

    Returns
    -------
    m : ndarray, same shape and dtype as c (float16 gives float32), values in
        [m_min, 1]; exactly 1 where c = 0 and exactly m_min once the sigmoid underflows.
    """
    tau, kappa0, m_min = check_mask_parameters(tau, kappa0, m_min)
    c = _as_float_array("c", c)
    if np.any(np.isnan(c)) or np.any(c < 0):
        raise ValueError("c must be a conflict score in [0, inf]; it contains NaN or negative values")

    # Everything below runs in the dtype of c (float32 or float64), and Python floats
    # are rounded to it once. The numba kernels round the same scalars the same way.
    dtype = c.dtype.type
    with np.errstate(over="ignore"):
        z = dtype(kappa0) * (1.0 - c / dtype(tau))
    ratio = special.expit(z) / special.expit(dtype(kappa0))
    # Writing the ratio = 1 case separately keeps m = 1 exact for c = 0, where
    # m_min + (1 - m_min) * 1 can round to 1 - ulp; the clip removes the last ulp of
    # rounding at the floor.
    m = np.where(ratio >= 1, dtype(1), dtype(m_min) + dtype(1.0 - m_min) * ratio)
    return np.clip(m, dtype(m_min), dtype(1)).astype(c.dtype, copy=False)


def mask_score_derivative(c, tau: float, kappa0: float = DEFAULT_KAPPA0, m_min: float = 0.0) -> np.ndarray:
    r"""Analytic derivative ``dm/dc`` of `mask_from_score`, in float64.

    .. math::

        \frac{\partial m}{\partial c} = -(1 - m_{\min}) \frac{\kappa_0}{\tau}
            \frac{\sigma(z)(1 - \sigma(z))}{\sigma(\kappa_0)},
        \qquad z = \kappa_0 (1 - c / \tau).

    It is <= 0 everywhere (the mask never grows with conflict) and its magnitude is at
    most ``(1 - m_min) kappa0 / (4 tau sigma(kappa0))``. Tests use it for M7 and to size
    rounding tolerances: a relative error ``delta`` in c moves m by about
    ``|dm/dc| c delta``.

    Returns
    -------
    dm_dc : ndarray, float64, same shape as c
    """
    tau, kappa0, m_min = check_mask_parameters(tau, kappa0, m_min)
    c = np.asarray(c, dtype=np.float64)
    z = kappa0 * (1.0 - c / tau)
    s = special.expit(z)
    return -(1.0 - m_min) * (kappa0 / tau) * s * (1.0 - s) / special.expit(kappa0)


def mask_from_moments(mu, s2, K: int, tau: float | None = None, kappa0: float = DEFAULT_KAPPA0,
                      m_min: float = 0.0, eps: float | None = None, eps_rel: float = DEFAULT_EPS_REL,
                      variance: str = "unbiased") -> np.ndarray:
    """Variance-score mask from precomputed moments (for example a streaming accumulator).

    Parameters
    ----------
    mu, s2 : array_like, same shape, float
        Cross-domain mean and variance (``s2`` in the convention named by ``variance``).
    K : int >= 2
        Number of domains, used only by the default tau.
    tau : float or None
        Threshold; None uses ``default_tau(K, variance=variance)``.
    kappa0, m_min, eps, eps_rel
        See `mask_from_score` and `conflict_score`.
    variance : {"unbiased", "population"}
        Convention of ``s2``, which sets the default tau.

    Returns
    -------
    m : ndarray, shape and dtype of mu, values in [m_min, 1]
    """
    _check_variance(variance)
    if tau is None:
        tau = default_tau(K, variance=variance)
    c = conflict_score(mu, s2, eps=eps, eps_rel=eps_rel)
    return mask_from_score(c, tau, kappa0=kappa0, m_min=m_min)


def conflict_mask(g, tau: float | None = None, kappa0: float = DEFAULT_KAPPA0, m_min: float = 0.0,
                  eps: float | None = None, eps_rel: float = DEFAULT_EPS_REL,
                  variance: str = "unbiased", score: str = "variance") -> np.ndarray:
    """Continuous gradient conflict mask of stacked per-domain gradients.

    Parameters
    ----------
    g : array_like, shape (K, ...), float32 or float64 (float16 is computed in float32)
        One gradient per domain, K >= 2, finite.
    tau : float or None
        Threshold on the conflict score; None uses `default_tau` for this K.
        For ``score="sign"`` the score lies in [0, 1] and tau must be given.
    kappa0, m_min, eps, eps_rel, variance
        See `mask_from_score`, `conflict_score` and `cross_domain_moments`.
    score : {"variance", "sign"}
        ``"variance"``: c = s2 / (mu^2 + eps). ``"sign"``: `sign_conflict_score`.

    Returns
    -------
    m : ndarray, shape g.shape[1:], values in [m_min, 1]
    """
    if score not in CONFLICT_SCORES:
        raise ValueError(f"score must be one of {CONFLICT_SCORES}; got {score!r}")
    _check_variance(variance)
    g = _as_float_array("g", g)
    K = check_domain_stack("g", g.shape)

    if score == "sign":
        if tau is None:
            raise ValueError("score='sign' needs an explicit tau in (0, 1]; got tau=None")
        c = sign_conflict_score(g)
        return mask_from_score(c, tau, kappa0=kappa0, m_min=m_min)

    mu, s2 = cross_domain_moments(g, variance=variance)
    return mask_from_moments(mu, s2, K, tau=tau, kappa0=kappa0, m_min=m_min, eps=eps,
                             eps_rel=eps_rel, variance=variance)


def iga_direction(g, **mask_options) -> tuple[np.ndarray, np.ndarray]:
    """IGA direction ``d = mask * mu`` of stacked per-domain gradients.

    Parameters
    ----------
    g : array_like, shape (K, ...), float
    **mask_options
        Passed to `conflict_mask`.

    Returns
    -------
    d : ndarray, shape g.shape[1:], dtype of the mask
        Masked mean gradient; ``|d_j| <= |mu_j|`` with the sign of ``mu_j``.
    mask : ndarray, shape g.shape[1:]
    """
    g = _as_float_array("g", g)
    mask = conflict_mask(g, **mask_options)
    return mask * _domain_mean(g), mask


def mask_rounding_bound(g, tau: float, kappa0: float = DEFAULT_KAPPA0, m_min: float = 0.0,
                        eps: float | None = None, eps_rel: float = DEFAULT_EPS_REL,
                        variance: str = "unbiased", dtype=None) -> np.ndarray:
    r"""First-order bound on how far two roundings of the same mask can differ, per coordinate.

    Take two implementations that evaluate the formulas of this module in a floating
    dtype with unit roundoff ``u`` (half the machine epsilon), but sum in another order,
    fuse operations differently or use another exponential. Their masks ``m_a`` and
    ``m_b`` satisfy ``|m_a - m_b| <= bound`` to first order in u. The bound follows the error
    analysis of each step, with ``G_j = max_e |g_ej|``:

    * mean (shifted recursive sum, error <= (K - 1) u sum|x|): ``|dmu| <= 4 (K + 2) u G`` for
      the two routes together;
    * variance (two-pass): relative ``2 (K + 3) u`` plus ``K dmu^2 / sum_e (g_e - mu)^2``
      from the error of the mean;
    * score: ``dc = (ds2 + c d(mu^2 + eps)) / (mu^2 + eps)``;
    * mask: ``|dm| <= max |dm/dc| dc`` over ``[c - dc, c + dc]``, plus the rounding of
      the sigmoid, ``4 (|z| + 4) u m``, plus ``4 * tiny`` for results flushed to zero
      below the smallest normal number.

    Coordinates where ``mu^2 + eps`` is within its own rounding error of 0 get the
    trivial bound ``1 - m_min``. Tests use this bound as their tolerance for route
    comparisons; it is not a rigorous interval enclosure.

    Parameters
    ----------
    g : array_like, shape (K, ...), float
        The per-domain gradients (as given to the implementations).
    tau, kappa0, m_min, eps, eps_rel, variance
        The mask parameters, as in `conflict_mask`.
    dtype : numpy dtype or None
        Working dtype of the implementations; default that of ``g`` (float16 gives float32).

    Returns
    -------
    bound : ndarray, float64, shape g.shape[1:]
    """
    work = _as_float_array("g", g)
    dtype = np.dtype(dtype) if dtype is not None else work.dtype
    tau, kappa0, m_min = check_mask_parameters(tau, kappa0, m_min)
    g64 = work.astype(np.float64)
    K = check_domain_stack("g", g64.shape)
    u = np.finfo(dtype).eps / 2
    tiny = float(np.finfo(dtype).tiny)

    mu, s2 = cross_domain_moments(g64, variance=variance)
    divisor = VARIANCE_DIVISORS[variance](K)
    eps_value = relative_eps(mu, s2, eps_rel) if eps is None else float(eps)
    G = np.abs(g64).max(axis=0)
    dmu = 4.0 * (K + 2) * u * G
    ds2 = 2.0 * (K + 3) * u * s2 + K * dmu**2 / divisor
    denominator = mu * mu + eps_value
    ddenominator = 2.0 * np.abs(mu) * dmu + dmu**2 + 4.0 * u * denominator
    resolved = denominator > 2.0 * ddenominator
    with np.errstate(divide="ignore", invalid="ignore"):
        c = np.where(s2 == 0, 0.0, s2 / denominator)
        dc = (ds2 + c * ddenominator) / denominator + 4.0 * u * c
    c = np.where(resolved, c, 0.0)
    dc = np.where(resolved, dc, 0.0)

    c_low, c_high = np.maximum(c - dc, 0.0), c + dc
    slope = np.maximum(np.abs(mask_score_derivative(c_low, tau, kappa0, m_min)),
                       np.abs(mask_score_derivative(c_high, tau, kappa0, m_min)))
    peak = (1.0 - m_min) * kappa0 / (4.0 * tau * special.expit(kappa0))
    slope = np.where((c_low <= tau) & (tau <= c_high), peak, slope)

    m = mask_from_score(c, tau, kappa0=kappa0, m_min=m_min).astype(np.float64)
    z = np.abs(kappa0 * (1.0 - c / tau))
    bound = slope * dc + 4.0 * (z + 4.0) * u * m + 4.0 * tiny
    return np.where(resolved, bound, 1.0 - m_min)
