r"""S4: low-rank matrix regression, the LoRA analogue of S1.

Generative model of domain e = (beta, s):

.. math::

    x \sim N(0, s^2 I_p),\quad y = W_e^\top x + \sigma_y \xi,\ \xi \sim N(0, I_q),\quad
    W_e = W_0 + W_* + \beta\, u v^\top,

with ``W_0`` the fixed base weight (the pretrained weight of a LoRA layer), ``W_*`` of
rank ``r_star`` shared by all domains, and the shortcut ``Delta_e = beta_e u v^T`` whose
mean ``mu_beta u v^T`` over Q is not zero; ``u`` and ``v`` are unit vectors orthogonal to
the row and column spaces of ``W_*``. Without rotation ``u = e_p``, ``v = e_q`` (the last
coordinates), so the shortcut sits on one entry of W; with ``rotate=True`` everything
is conjugated by fixed random rotations, ``W -> O_p W O_q^T``, which spreads the
shortcut over every entry. The predictor is ``f(x) = W^T x`` with ``W`` of shape
``(p, q)``, parametrised as the flat vector ``theta = W.ravel()`` (row-major, ``P = p q``)
or, for LoRA, as ``W = W_0 + (alpha / r) B A`` (`lora_weight`).

Exact quantities, with the loss ``|W^T x - y|^2 / 2`` and ``D_e = W - W_e``:

.. math::

    R_e(W) = \frac{s^2}{2} \|D_e\|_F^2 + \frac{q \sigma_y^2}{2},\qquad
    \nabla R_e(W) = s^2 D_e,

and the per-example gradient ``x (x^T W - y^T)`` has total variance
``tr Cov = s^4 (p + 1) |D_e|_F^2 + p q s^2 sigma_y^2`` (Isserlis' theorem).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from iga_theory.errors import check_in_range, check_positive_int
from iga_theory.synthetic.models import (Domain, SyntheticModel, check_q_params, domain_arrays,
                                         q_support, random_rotation)
from iga_theory.synthetic.s1 import _truncated_lognormal_moments, _truncated_normal_raw_moments


@dataclass(frozen=True)
class S4Params:
    """Parameters of S4. Units are those of the features and targets."""

    p: int = 6                   # input dimension
    q: int = 5                   # output dimension
    r_star: int = 2              # rank of the shared weight W_*
    sigma_y: float = 0.5         # output noise
    w0_scale: float = 0.0        # entries of the base weight W_0 ~ N(0, w0_scale^2 / p)
    mu_beta: float = 0.5         # mean shortcut strength over Q
    tau_beta: float = 1.0        # spread of the shortcut strength over Q
    beta_trunc: float = 3.0      # Q truncated at mu_beta +- beta_trunc * tau_beta
    hetero: float = 0.0          # log-scale spread of the input scale s over domains
    rotate: bool = False
    seed: int = 0

    def __post_init__(self):
        check_positive_int("p", self.p)
        check_positive_int("q", self.q)
        check_positive_int("r_star", self.r_star)
        if self.p < 2 or self.q < 2 or self.r_star > min(self.p, self.q) - 1:
            raise ValueError(
                f"S4 needs p, q >= 2 and r_star <= min(p, q) - 1 so that the shortcut u v^T is "
                f"orthogonal to W_*; got p={self.p}, q={self.q}, r_star={self.r_star}"
            )
        check_in_range("sigma_y", self.sigma_y, 0.0, np.inf)
        check_in_range("w0_scale", self.w0_scale, 0.0, np.inf)
        check_q_params(self.mu_beta, self.tau_beta, self.beta_trunc, self.hetero)


def lora_weight(W0: np.ndarray, B: np.ndarray, A: np.ndarray, alpha: float) -> np.ndarray:
    """LoRA weight ``W_0 + (alpha / r) B A`` with B of shape (p, r) and A of shape (r, q)."""
    B, A = np.asarray(B, dtype=np.float64), np.asarray(A, dtype=np.float64)
    if B.ndim != 2 or A.ndim != 2 or B.shape[1] != A.shape[0] or B.shape[1] == 0:
        raise ValueError(f"B must be (p, r) and A (r, q) with r >= 1; got B {B.shape} and A {A.shape}")
    if (B.shape[0], A.shape[1]) != np.shape(W0):
        raise ValueError(f"B A has shape {(B.shape[0], A.shape[1])} but W0 has shape {np.shape(W0)}")
    return W0 + (alpha / B.shape[1]) * B @ A


def lora_factor_gradients(G: np.ndarray, B: np.ndarray, A: np.ndarray,
                          alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """Chain rule through ``W = W_0 + (alpha/r) B A``: ``((alpha/r) G A^T, (alpha/r) B^T G)``.

    G is the weight-space gradient dR/dW of shape (p, q).
    """
    scale = alpha / B.shape[1]
    return scale * G @ A.T, scale * B.T @ G


class S4Model(SyntheticModel):
    """Exact population quantities and a sampler for S4 (low-rank matrix regression).

    Parameters
    ----------
    params : S4Params, optional
    **overrides
        Field overrides of ``params``.
    """

    name = "s4"
    params_class = S4Params

    def __init__(self, params: S4Params | None = None, **overrides):
        params = params or self.params_class()
        self.params = dataclasses.replace(params, **overrides) if overrides else params
        p = self.params
        self.shape = (p.p, p.q)
        self.n_params = p.p * p.q
        rng = np.random.default_rng(p.seed)

        # W_* of rank r_star and unit Frobenius norm on the leading (p-1) x (q-1) block.
        left = rng.standard_normal((p.p - 1, p.r_star))
        right = rng.standard_normal((p.r_star, p.q - 1))
        core = left @ right
        w_star = np.zeros(self.shape)
        w_star[: p.p - 1, : p.q - 1] = core / np.linalg.norm(core)
        u = np.zeros(p.p)
        u[-1] = 1.0
        v = np.zeros(p.q)
        v[-1] = 1.0

        rot_p = random_rotation(p.p, rng) if p.rotate else np.eye(p.p)
        rot_q = random_rotation(p.q, rng) if p.rotate else np.eye(p.q)
        self.rotation_in, self.rotation_out = rot_p, rot_q
        self.W_star = rot_p @ w_star @ rot_q.T
        self.u, self.v = rot_p @ u, rot_q @ v
        self.W0 = p.w0_scale / np.sqrt(p.p) * rng.standard_normal(self.shape)
        self.shortcut = np.outer(self.u, self.v)

        self._beta_moments = _truncated_normal_raw_moments(p.mu_beta, p.tau_beta, p.beta_trunc, 4)
        self._u_moments = _truncated_lognormal_moments(p.hetero, p.beta_trunc, 2)

    # ----- coordinates ------------------------------------------------------------------

    def to_matrix(self, theta: np.ndarray) -> np.ndarray:
        """W of shape (p, q) (or (n, p, q)) from the flat parameter (P,) (or (n, P))."""
        theta = np.asarray(theta, dtype=np.float64)
        return theta.reshape(theta.shape[:-1] + self.shape)

    def to_vector(self, W: np.ndarray) -> np.ndarray:
        """Flat parameter (P,) from W of shape (p, q), row-major."""
        W = np.asarray(W, dtype=np.float64)
        if W.shape[-2:] != self.shape:
            raise ValueError(f"W must have shape {self.shape}; got {W.shape}")
        return W.reshape(W.shape[:-2] + (self.n_params,))

    def domain_weight(self, domain: Domain) -> np.ndarray:
        """Target weight ``W_e = W_0 + W_* + beta u v^T`` of one domain, shape (p, q)."""
        return self.W0 + self.W_star + domain.beta * self.shortcut

    # ----- exact per-domain quantities -----------------------------------------------------

    def _offset_terms(self, theta) -> tuple[float, float]:
        """``|D0|_F^2`` and ``u^T D0 v`` for ``D0 = W - W_0 - W_*``."""
        D0 = self.to_matrix(theta) - self.W0 - self.W_star
        return float(np.sum(D0 * D0)), float(self.u @ D0 @ self.v)

    def risk_coefficients(self, theta: np.ndarray) -> np.ndarray:
        """Coefficients of the risk in the features ``(1, u, u beta, u beta^2)``, ``u = s^2``.

        ``R = q sigma_y^2 / 2 + u (|D0|^2 / 2 - beta c + beta^2 / 2)`` with ``c = u^T D0 v``.
        """
        norm2, c = self._offset_terms(self._check_theta(theta))
        return np.array([0.5 * self.params.q * self.params.sigma_y**2, 0.5 * norm2, -c, 0.5])

    def risks_at(self, theta, betas, scales) -> np.ndarray:
        """Exact risks ``(s^2/2) |W - W_e|_F^2 + q sigma_y^2 / 2``; shape (N,)."""
        a0, a1, a2, a3 = self.risk_coefficients(theta)
        betas = np.asarray(betas, dtype=np.float64)
        u = np.asarray(scales, dtype=np.float64) ** 2
        return a0 + u * (a1 + a2 * betas + a3 * betas**2)

    def gradients_at(self, theta, betas, scales) -> np.ndarray:
        """Exact gradients ``s^2 (W - W_e)``, flattened; shape (N, P)."""
        theta = self._check_theta(theta)
        betas = np.asarray(betas, dtype=np.float64)
        u = np.asarray(scales, dtype=np.float64) ** 2
        D0 = theta - self.to_vector(self.W0 + self.W_star)
        return u[:, None] * (D0[None, :] - betas[:, None] * self.to_vector(self.shortcut)[None, :])

    def sample_gradient_variance(self, theta: np.ndarray, domains, n: int) -> float:
        """Exact ``E|g_hat - grad R|^2`` of the pooled minibatch mean gradient, n examples per domain.

        Per domain ``tr Cov(x (x^T W - y^T)) = s^4 (p + 1) |D_e|_F^2 + p q s^2 sigma_y^2``;
        the pooled mean of K domains has variance ``sum_e tr Cov_e / (n K^2)``.
        """
        n = check_positive_int("n", n)
        theta = self._check_theta(theta)
        p = self.params
        total = 0.0
        for domain in domains:
            D = self.to_matrix(theta) - self.domain_weight(domain)
            u = domain.scale**2
            total += u * u * (p.p + 1) * float(np.sum(D * D)) + p.p * p.q * u * p.sigma_y**2
        return total / (n * len(domains) ** 2)

    def smoothness(self, domains) -> float:
        """Smoothness constant of the pooled risk: its Hessian is ``mean_e(s_e^2) I``."""
        _, scales = domain_arrays(domains)
        return float(np.mean(scales**2))

    # ----- the meta-distribution Q (exact through the moments of beta and u) -------------

    def _feature_moments(self) -> tuple[np.ndarray, np.ndarray]:
        mb, mu_ = self._beta_moments, self._u_moments
        powers = [(0, 0), (1, 0), (1, 1), (1, 2)]
        first = np.array([mu_[i] * mb[j] for i, j in powers])
        second = np.array([[mu_[i + k] * mb[j + l] for k, l in powers] for i, j in powers])
        return first, second

    def expected_risk(self, theta: np.ndarray) -> float:
        """Exact E_{e~Q} R_e(theta) from the moments of beta and u = s^2."""
        return float(self.risk_coefficients(theta) @ self._feature_moments()[0])

    def risk_variance(self, theta: np.ndarray) -> float:
        """Exact Var_{e~Q} R_e(theta) from the moments of beta and u = s^2."""
        first, second = self._feature_moments()
        a = self.risk_coefficients(theta)
        return float(max(a @ second @ a - (a @ first) ** 2, 0.0))

    def risk_range(self, theta: np.ndarray) -> tuple[float, float]:
        """Exact (min, max) of R_e(theta) over the support of Q.

        R is a constant plus ``u = s^2 > 0`` times a convex parabola in beta. So the
        maximum is at the largest u and a beta end, and the minimum is at the smallest u
        and the vertex ``beta = u^T D0 v`` clipped to the beta interval.
        """
        (beta_lo, beta_hi), (s_lo, s_hi) = q_support(self.params)
        _, c = self._offset_terms(self._check_theta(theta))
        high = float(np.max(self.risks_at(theta, [beta_lo, beta_hi], [s_hi, s_hi])))
        low = float(self.risks_at(theta, [np.clip(c, beta_lo, beta_hi)], [s_lo])[0])
        return low, high

    # ----- closed-form predictors --------------------------------------------------------

    def erm_solution(self, domains) -> np.ndarray:
        """Pooled ERM optimum ``W_0 + W_* + (sum s^2 beta / sum s^2) u v^T``, flattened."""
        betas, scales = domain_arrays(domains)
        weights = scales**2
        beta_bar = float(weights @ betas / weights.sum())
        return self.to_vector(self.W0 + self.W_star + beta_bar * self.shortcut)

    def invariant_solution(self) -> np.ndarray:
        """Invariant oracle ``W_0 + W_*``, flattened."""
        return self.to_vector(self.W0 + self.W_star)

    def spurious_weight(self, theta: np.ndarray) -> np.ndarray:
        """Absolute shortcut component ``|u^T (W - W_0) v|``."""
        W = self.to_matrix(theta)
        return np.abs(np.einsum("i,...ij,j->...", self.u, W - self.W0, self.v))

    # ----- sampling --------------------------------------------------------------------

    def sample(self, n: int, domain: Domain, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Draw n examples of ``domain``: X of shape (n, p) and Y of shape (n, q), float64."""
        n = check_positive_int("n", n)
        p = self.params
        X = domain.scale * rng.standard_normal((n, p.p))
        Y = X @ self.domain_weight(domain) + p.sigma_y * rng.standard_normal((n, p.q))
        return X, Y
