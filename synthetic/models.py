r"""Common interface of the synthetic models S1 to S4, their registry and an external adapter.

Every model draws its domains from the same meta-distribution Q over a spurious
coefficient ``beta`` and an input scale ``s``:

.. math::

    \beta_e = \mu_\beta + \tau_\beta z_\beta,\quad s_e = \exp(h\, z_s),\quad
    z_\beta, z_s \sim N(0, 1) \text{ truncated to } [-t, t],

with ``t = beta_trunc`` and ``h = hetero`` (``h = 0`` gives ``s_e = 1``). A domain is an
`S1Domain` ``(beta, scale)``. Because every per-domain quantity of S2 to S4 is a smooth
function of ``(z_beta, z_s)`` on a bounded box, its mean and variance over Q are
computed by Gauss-Legendre quadrature against the truncated normal density
(`q_quadrature`), which converges exponentially for analytic integrands and is
accurate to near machine precision at the default node counts.

Interface shared by every model (`SyntheticModel`; S1 provides the same names):
``draw_domains(K, rng)``, ``shifted_domain()``, ``risk``, ``risks``, ``gradient``,
``gradients`` (exact population quantities), ``expected_risk``, ``risk_variance``,
``risk_range`` (over Q), ``sample(n, domain, rng) -> (X, y)``, ``erm_solution``,
``invariant_solution``, ``spurious_weight``, ``smoothness``, ``n_params``.
"""

from __future__ import annotations

import abc
import functools
import importlib
import logging
import zlib
from dataclasses import dataclass
from typing import Any, Callable, Hashable, Protocol, Sequence, runtime_checkable

import numpy as np
from scipy import special, stats

from iga_theory.errors import check_in_range, check_positive_int
from iga_theory.synthetic.s1 import S1Domain

logger = logging.getLogger(__name__)

# Domains of every synthetic model are (beta, scale) pairs.
Domain = S1Domain

# Gauss-Legendre nodes per axis of Q. The integrands are analytic in (z_beta, z_s) on a
# box of half-width t = 3, so the error falls exponentially with the node count; 96
# nodes reach the float64 rounding level on the tests' predictors (checked against
# scipy.integrate.quad in the tests).
DEFAULT_Q_NODES = 96


@runtime_checkable
class ModelProtocol(Protocol):
    """Structural type of a synthetic model (S1 to S4 and `ExternalGeneratorModel`)."""

    n_params: int

    def draw_domains(self, K: int, rng: np.random.Generator) -> list: ...

    def shifted_domain(self): ...

    def risks(self, theta: np.ndarray, domains: Sequence) -> np.ndarray: ...

    def gradients(self, theta: np.ndarray, domains: Sequence) -> np.ndarray: ...

    def sample(self, n: int, domain, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]: ...


# ----- the meta-distribution Q ---------------------------------------------------------


def check_q_params(mu_beta: float, tau_beta: float, beta_trunc: float, hetero: float) -> None:
    """Validate the parameters of Q (shared by every model's parameter class)."""
    check_in_range("mu_beta", mu_beta, -np.inf, np.inf)
    check_in_range("tau_beta", tau_beta, 0.0, np.inf)
    if isinstance(beta_trunc, bool) or not isinstance(beta_trunc, (int, float)) or not beta_trunc > 0:
        raise ValueError(f"beta_trunc must be > 0 (inf for no truncation); got {beta_trunc!r}")
    check_in_range("hetero", hetero, 0.0, np.inf)


def draw_q_domains(params, K: int, rng: np.random.Generator) -> list[Domain]:
    """Draw K i.i.d. domains from Q, with the same draws as `S1Model.draw_domains`."""
    K = check_positive_int("K", K)
    t = params.beta_trunc
    betas = params.mu_beta + params.tau_beta * stats.truncnorm.rvs(-t, t, size=K, random_state=rng)
    if params.hetero > 0:
        scales = np.exp(params.hetero * stats.truncnorm.rvs(-t, t, size=K, random_state=rng))
    else:
        scales = np.ones(K)
    return [Domain(float(b), float(s)) for b, s in zip(betas, scales)]


@functools.lru_cache(maxsize=64)
def truncated_normal_nodes(trunc: float, n_nodes: int) -> tuple[np.ndarray, np.ndarray]:
    """Nodes z and weights w with ``sum_i w_i f(z_i) ~= E[f(Z)]``, Z ~ N(0, 1) truncated to +-trunc.

    Gauss-Legendre on ``[-trunc, trunc]`` times the normalised normal density. For
    ``trunc = inf`` the nodes of the probabilists' Gauss-Hermite rule are returned.
    """
    n_nodes = check_positive_int("n_nodes", n_nodes)
    if not np.isfinite(trunc):
        z, w = special.roots_hermitenorm(n_nodes)
        return z, w / w.sum()
    x, w = special.roots_legendre(n_nodes)
    z = trunc * x
    w = w * trunc * np.exp(-0.5 * z * z)
    return z, w / w.sum()


def q_quadrature(params, n_beta: int = DEFAULT_Q_NODES,
                 n_scale: int = DEFAULT_Q_NODES // 4) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Quadrature rule over Q: ``betas``, ``scales`` and ``weights``, each of shape (N,).

    ``sum_i weights_i f(betas_i, scales_i)`` approximates ``E_{e~Q} f(beta_e, s_e)``. A
    degenerate axis (``tau_beta = 0`` or ``hetero = 0``) contributes a single node.
    """
    if params.tau_beta > 0:
        zb, wb = truncated_normal_nodes(params.beta_trunc, n_beta)
    else:
        zb, wb = np.zeros(1), np.ones(1)
    if params.hetero > 0:
        zs, ws = truncated_normal_nodes(params.beta_trunc, n_scale)
    else:
        zs, ws = np.zeros(1), np.ones(1)
    betas = params.mu_beta + params.tau_beta * zb
    scales = np.exp(params.hetero * zs)
    B, S = np.meshgrid(betas, scales, indexing="ij")
    W = np.outer(wb, ws)
    return B.ravel(), S.ravel(), W.ravel()


def q_support(params) -> tuple[tuple[float, float], tuple[float, float]]:
    """Bounds ``(beta_lo, beta_hi), (s_lo, s_hi)`` of the support of Q (finite truncation only)."""
    if not np.isfinite(params.beta_trunc):
        raise ValueError(
            "the risk range needs a bounded domain distribution; got beta_trunc=inf. "
            "Set beta_trunc to a finite value (for example 3.0)."
        )
    t = params.beta_trunc
    beta = (params.mu_beta - t * params.tau_beta, params.mu_beta + t * params.tau_beta)
    scale = (float(np.exp(-params.hetero * t)), float(np.exp(params.hetero * t)))
    return beta, scale


def domain_arrays(domains: Sequence[Domain]) -> tuple[np.ndarray, np.ndarray]:
    """Stack a list of domains into ``betas`` and ``scales`` arrays of shape (K,)."""
    if len(domains) == 0:
        raise ValueError("domains is empty; pass at least one domain (for example from draw_domains)")
    betas = np.array([float(d.beta) for d in domains])
    scales = np.array([float(d.scale) for d in domains])
    return betas, scales


def random_rotation(n: int, rng: np.random.Generator) -> np.ndarray:
    """Haar-random rotation of R^n (identity for n = 1)."""
    if n == 1:
        return np.eye(1)
    return stats.special_ortho_group.rvs(n, random_state=rng)


# ----- the common base ------------------------------------------------------------------


class SyntheticModel(abc.ABC):
    """Base of S2 to S4: exact per-domain quantities from vectorised ``*_at`` kernels.

    A subclass defines `risks_at` and `gradients_at` on arrays of domain parameters
    ``(betas, scales)``; everything over lists of domains or over Q derives from them.
    Subclasses set ``params``, ``n_params``, ``name``.
    """

    name: str = "model"
    params: Any
    n_params: int

    # ----- kernels a subclass provides ------------------------------------------

    @abc.abstractmethod
    def risks_at(self, theta: np.ndarray, betas: np.ndarray, scales: np.ndarray) -> np.ndarray:
        """Exact risks of ``theta`` (P,) at domain parameters of shape (N,); shape (N,)."""

    @abc.abstractmethod
    def gradients_at(self, theta: np.ndarray, betas: np.ndarray, scales: np.ndarray) -> np.ndarray:
        """Exact gradients of the risk at domain parameters of shape (N,); shape (N, P)."""

    @abc.abstractmethod
    def sample(self, n: int, domain: Domain, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Draw n examples of one domain."""

    @abc.abstractmethod
    def invariant_solution(self) -> np.ndarray:
        """Invariant oracle predictor, shape (P,)."""

    @abc.abstractmethod
    def spurious_weight(self, theta: np.ndarray) -> np.ndarray:
        """Size of theta's component along the spurious mechanism."""

    # ----- domains ----------------------------------------------------------------

    def draw_domains(self, K: int, rng: np.random.Generator) -> list[Domain]:
        """Draw K i.i.d. domains from the meta-distribution Q."""
        return draw_q_domains(self.params, K, rng)

    def shifted_domain(self) -> Domain:
        """Return the shifted test domain: the spurious mechanism reversed (beta = -mu_beta, scale 1)."""
        return Domain(-self.params.mu_beta, 1.0)

    # ----- exact per-domain quantities --------------------------------------------

    def risk(self, theta: np.ndarray, domain: Domain) -> float:
        """Exact population risk R_e(theta) of one domain."""
        return float(self.risks_at(self._check_theta(theta), np.array([domain.beta]),
                                   np.array([domain.scale]))[0])

    def risks(self, theta: np.ndarray, domains: Sequence[Domain]) -> np.ndarray:
        """Exact risks of ``theta`` (P,) on each domain; shape (K,)."""
        betas, scales = domain_arrays(domains)
        return self.risks_at(self._check_theta(theta), betas, scales)

    def gradient(self, theta: np.ndarray, domain: Domain) -> np.ndarray:
        """Exact population gradient of one domain; shape (P,)."""
        return self.gradients_at(self._check_theta(theta), np.array([domain.beta]),
                                 np.array([domain.scale]))[0]

    def gradients(self, theta: np.ndarray, domains: Sequence[Domain]) -> np.ndarray:
        """Exact per-domain gradients, shape (K, P)."""
        betas, scales = domain_arrays(domains)
        return self.gradients_at(self._check_theta(theta), betas, scales)

    # ----- the meta-distribution Q ------------------------------------------------

    def expected_risk(self, theta: np.ndarray) -> float:
        """Expected OOD risk E_{e~Q} R_e(theta), by quadrature over Q (see `q_quadrature`)."""
        betas, scales, weights = q_quadrature(self.params)
        return float(weights @ self.risks_at(self._check_theta(theta), betas, scales))

    def expected_gradient(self, theta: np.ndarray) -> np.ndarray:
        """Gradient of the expected risk over Q, shape (P,)."""
        betas, scales, weights = q_quadrature(self.params)
        return weights @ self.gradients_at(self._check_theta(theta), betas, scales)

    def risk_variance(self, theta: np.ndarray) -> float:
        """Variance Var_{e~Q} R_e(theta) of the per-domain risk over Q, by quadrature."""
        betas, scales, weights = q_quadrature(self.params)
        r = self.risks_at(self._check_theta(theta), betas, scales)
        mean = weights @ r
        return float(max(weights @ (r - mean) ** 2, 0.0))

    def risk_range(self, theta: np.ndarray) -> tuple[float, float]:
        """Exact (min, max) of R_e(theta) over the support of Q; see the subclass."""
        raise NotImplementedError(f"{type(self).__name__} does not provide a risk range")

    # ----- helpers -----------------------------------------------------------------

    def pooled_risk(self, theta: np.ndarray, domains: Sequence[Domain]) -> float:
        """Pooled training risk (1/K) sum_e R_e(theta)."""
        return float(np.mean(self.risks(theta, domains)))

    def _check_theta(self, theta) -> np.ndarray:
        theta = np.asarray(theta, dtype=np.float64)
        if theta.shape != (self.n_params,):
            raise ValueError(
                f"theta must have shape (P,) = ({self.n_params},); got shape {theta.shape}"
            )
        return theta


# ----- the external adapter -------------------------------------------------------------

LOSSES: dict[str, tuple[Callable, Callable]] = {
    # name -> (loss(pred, y) per example, d loss / d pred per example)
    "squared": (lambda f, y: 0.5 * (f - y) ** 2, lambda f, y: f - y),
    "logistic": (lambda f, y: np.logaddexp(0.0, -y * f), lambda f, y: -y * special.expit(-y * f)),
}


@dataclass(frozen=True)
class ExternalDomain:
    """A domain of an external generator: any hashable key passed to its ``sample``."""

    key: Hashable


class ExternalGeneratorModel:
    """Run any multi-domain generator ``sample(n, domain, rng) -> (X, y)`` through the harness.

    The predictor is linear, ``f(x) = theta^T x``, with the squared loss
    ``(f - y)^2 / 2`` or the logistic loss ``log(1 + exp(-y f))`` (labels in {-1, +1}).
    Risks and gradients are NOT exact here. Each domain's population quantities are
    replaced by the empirical ones on a fixed evaluation sample of ``n_eval`` examples.
    The sample is drawn once per domain, with a seed derived from ``seed`` and the
    domain key, so the same domain always gives the same numbers.

    Parameters
    ----------
    sample : callable ``(n, domain, rng) -> (X, y)``
        X of shape (n, P) and y of shape (n,), finite floats. ``domain`` is the key.
    domains : sequence of hashable
        The domain keys that ``draw_domains`` draws from (uniformly, with replacement).
    loss : {"squared", "logistic"}
    n_eval : int
        Evaluation sample size per domain.
    shifted : hashable, optional
        Key of the shifted test domain returned by `shifted_domain`.
    seed : int
        Seed of the evaluation samples.
    """

    name = "external"

    def __init__(self, sample: Callable, domains: Sequence[Hashable], loss: str = "squared",
                 n_eval: int = 20_000, shifted: Hashable | None = None, seed: int = 0):
        if not callable(sample):
            raise TypeError(f"sample must be a callable (n, domain, rng) -> (X, y); got {sample!r}")
        if loss not in LOSSES:
            raise ValueError(f"loss must be one of {sorted(LOSSES)}; got {loss!r}")
        self.domain_keys = list(domains)
        if not self.domain_keys:
            raise ValueError("domains is empty; pass the keys of the generator's domains")
        self._sample = sample
        self.loss = loss
        self.n_eval = check_positive_int("n_eval", n_eval)
        self.shifted = shifted
        self.seed = int(seed)
        self._cache: dict[Hashable, tuple[np.ndarray, np.ndarray]] = {}
        X, _ = self._evaluation_sample(ExternalDomain(self.domain_keys[0]))
        self.n_params = X.shape[1]

    def sample(self, n: int, domain: ExternalDomain, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Call the generator and check its output: X (n, P), y (n,), finite."""
        n = check_positive_int("n", n)
        key = domain.key if isinstance(domain, ExternalDomain) else domain
        X, y = self._sample(n, key, rng)
        X = np.asarray(X, dtype=np.float64)
        y = np.asarray(y, dtype=np.float64)
        if X.ndim != 2 or X.shape[0] != n or y.shape != (n,):
            raise ValueError(
                f"the external generator must return X of shape (n, P) and y of shape (n,) "
                f"with n = {n}; got X {X.shape} and y {y.shape}"
            )
        if not (np.all(np.isfinite(X)) and np.all(np.isfinite(y))):
            raise ValueError(f"the external generator returned NaN or Inf for domain {key!r}")
        return X, y

    def _evaluation_sample(self, domain: ExternalDomain) -> tuple[np.ndarray, np.ndarray]:
        if domain.key not in self._cache:
            # crc32, not hash(): str hashes change between processes (PYTHONHASHSEED).
            entropy = [self.seed, zlib.crc32(repr(domain.key).encode("utf-8"))]
            rng = np.random.default_rng(entropy)
            self._cache[domain.key] = self.sample(self.n_eval, domain, rng)
        return self._cache[domain.key]

    def draw_domains(self, K: int, rng: np.random.Generator) -> list[ExternalDomain]:
        """Draw K domain keys uniformly with replacement."""
        K = check_positive_int("K", K)
        picks = rng.integers(len(self.domain_keys), size=K)
        return [ExternalDomain(self.domain_keys[i]) for i in picks]

    def shifted_domain(self) -> ExternalDomain:
        """Return the shifted test domain given at construction."""
        if self.shifted is None:
            raise ValueError("no shifted domain was given; pass shifted=KEY to ExternalGeneratorModel")
        return ExternalDomain(self.shifted)

    def risk(self, theta: np.ndarray, domain: ExternalDomain) -> float:
        """Empirical risk of ``theta`` on the domain's evaluation sample."""
        loss, _ = LOSSES[self.loss]
        X, y = self._evaluation_sample(domain)
        return float(np.mean(loss(X @ self._check_theta(theta), y)))

    def risks(self, theta: np.ndarray, domains: Sequence[ExternalDomain]) -> np.ndarray:
        """Empirical risks on each domain, shape (K,)."""
        return np.array([self.risk(theta, d) for d in domains])

    def gradient(self, theta: np.ndarray, domain: ExternalDomain) -> np.ndarray:
        """Empirical risk gradient on the domain's evaluation sample, shape (P,)."""
        _, dloss = LOSSES[self.loss]
        X, y = self._evaluation_sample(domain)
        return X.T @ dloss(X @ self._check_theta(theta), y) / X.shape[0]

    def gradients(self, theta: np.ndarray, domains: Sequence[ExternalDomain]) -> np.ndarray:
        """Empirical per-domain gradients, shape (K, P)."""
        return np.stack([self.gradient(theta, d) for d in domains])

    def _check_theta(self, theta) -> np.ndarray:
        theta = np.asarray(theta, dtype=np.float64)
        if theta.shape != (self.n_params,):
            raise ValueError(f"theta must have shape ({self.n_params},); got shape {theta.shape}")
        return theta


# ----- registry -------------------------------------------------------------------------

# name -> "module:Class". Imported on demand, because the model modules import this one.
MODELS: dict[str, str] = {
    "s1": "iga_theory.synthetic.s1:S1Model",
    "s2": "iga_theory.synthetic.s2:S2Model",
    "s3": "iga_theory.synthetic.s3:S3Model",
    "s4": "iga_theory.synthetic.s4:S4Model",
}


def model_class(name: str) -> type:
    """Class of the registered model ``name`` (one of `MODELS`)."""
    if name not in MODELS:
        raise ValueError(f"unknown synthetic model {name!r}; choose one of {sorted(MODELS)}")
    module_name, class_name = MODELS[name].split(":")
    return getattr(importlib.import_module(module_name), class_name)


def make_model(name: str, **params):
    """Build the registered model ``name`` with parameter overrides, e.g. ``make_model("s2", hetero=0.5)``."""
    return model_class(name)(**params)
