r"""Gradient-combination methods: AND-mask, SAND-mask, PCGrad and IGA.

Each method takes the per-domain gradients ``g`` of shape ``(K, P)`` of one set of
minibatches and combines them into one direction. With ``mu = (1/K) sum_e g_e``:

==========  ======================================================================
AND-mask    ``d = M * mu``, ``M_j = a_j / mean(a)``, ``a_j = 1[|mean_e sign(g_ej)| >= tau]``
SAND-mask   ``d = M * mu``, ``M_j = a_j / mean(a)``,
            ``a_j = max(0, tanh(k (|mean_e sign(g_ej)| - tau) / s2_j))``
PCGrad      ``d = (1/K) sum_e g_e^PC``: each g_e loses its component along every
            g_f it conflicts with (``<g_e, g_f> < 0``), the f in random order
IGA         ``d = m * mu`` with the continuous gradient conflict mask m of
            `iga_theory.mask` (statistics smoothed across steps, see `IGA`)
IGA LoRA    the same mask on the weight-space gradient of a LoRA layer, projected
            to rank r and mapped to the factors (`IGALoRA`)
==========  ======================================================================

``s2_j`` is the unbiased cross-domain variance. The mask methods (AND-mask, SAND-mask,
IGA) expose their elementwise multiplier, so they run under both placements of the
base class: on the gradient, or on the optimizer's update (the only placement whose
mask survives Adam's per-coordinate normalisation).
"""

from __future__ import annotations

import torch

from iga_theory import mask as cgcm
from iga_theory import mask_torch, stats
from iga_theory.synthetic.algorithms_base import (Algorithm, Choice, Direction, HParam, LogUniform,
                                                  Uniform, register_algorithm)
from iga_theory.lora_step import IGALoRAStep
from iga_theory.synthetic.per_domain import (domain_losses, per_domain_gradients_and_losses, per_domain_weight_gradients,
                                             per_sample_gradients)

# Guard of the AND-mask and SAND-mask rescaling 1 / mean(a), as in DomainBed: an
# all-zero mask then gives a zero step instead of 0/0.
RESCALE_GUARD = 1e-10


# ----- combiners as pure functions (tested one by one) ---------------------------------------


def sign_agreement(g: torch.Tensor) -> torch.Tensor:
    """``|mean_e sign(g_ej)|`` of per-domain gradients (K, P); shape (P,), values in [0, 1]."""
    return torch.sign(g).mean(dim=0).abs()


def and_mask(g: torch.Tensor, tau: float) -> torch.Tensor:
    """AND-mask ``a_j = 1[|mean_e sign(g_ej)| >= tau]`` as a float tensor of shape (P,).

    ``tau = 1`` keeps the coordinates on which every domain has the same (non-zero)
    sign; a coordinate whose gradient is 0 in every domain has agreement 0.
    """
    return (sign_agreement(g) >= tau).to(g.dtype)


def sand_mask(g: torch.Tensor, tau: float, k: float) -> torch.Tensor:
    """SAND-mask ``a_j = max(0, tanh(k (|mean_e sign(g_ej)| - tau) / s2_j))``; shape (P,).

    ``s2_j`` is the unbiased cross-domain variance of coordinate j. Where ``s2_j = 0``
    (identical gradients) the argument of tanh is ``+inf``, ``-inf`` or 0 by the sign of
    ``agreement - tau``, so the mask is 1, 0 or 0 there instead of NaN.
    """
    agreement = sign_agreement(g)
    s2 = g.var(dim=0, unbiased=True)
    margin = agreement - tau
    limit = torch.where(margin > 0, torch.inf, torch.where(margin < 0, -torch.inf, 0.0)).to(g.dtype)
    safe_s2 = torch.where(s2 > 0, s2, torch.ones_like(s2))
    z = torch.where(s2 > 0, k * margin / safe_s2, limit)
    return torch.clamp(torch.tanh(z), min=0.0)


def rescale_mask(a: torch.Tensor, blocks: dict | None = None) -> torch.Tensor:
    """AND-mask rescaling ``M = a / (guard + mean(a))``, per parameter block when given.

    ``blocks`` maps names to slices of the flat parameter vector (one rescaling per
    parameter tensor, as DomainBed does per ``torch.nn.Parameter``).
    """
    if not blocks:
        return a / (RESCALE_GUARD + a.mean())
    out = torch.empty_like(a)
    for block in blocks.values():
        out[block] = a[block] / (RESCALE_GUARD + a[block].mean())
    return out


def pcgrad_projections(g: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    r"""PCGrad: remove from each g_e its component along every g_f it conflicts with.

    For each e, in an independent random order over f != e:
    ``if <g_e^PC, g_f> < 0: g_e^PC <- g_e^PC - <g_e^PC, g_f> / |g_f|^2 g_f``,
    projecting against the original (unprojected) g_f. A zero g_f is skipped.

    Parameters
    ----------
    g : Tensor, shape (K, P)
    generator : torch.Generator, optional
        Source of the random orders (None: the identity order f = 0, 1, ...).

    Returns
    -------
    Tensor, shape (K, P): the projected gradients ``g_e^PC``.
    """
    K = g.shape[0]
    if generator is None:
        orders = torch.arange(K).repeat(K, 1)
    else:
        orders = torch.stack([torch.randperm(K, generator=generator) for _ in range(K)])
    norms2 = (g * g).sum(dim=1)
    projected = g.clone()
    rows = torch.arange(K)
    # One pass per position of the orders, over all e at once.
    for position in range(K):
        f = orders[:, position]
        g_f = g[f]
        dots = (projected * g_f).sum(dim=1)
        conflict = (f != rows) & (dots < 0) & (norms2[f] > 0)
        coefficient = torch.where(conflict, dots / torch.where(norms2[f] > 0, norms2[f], 1.0), 0.0)
        projected = projected - coefficient[:, None] * g_f
    return projected


# ----- algorithms -------------------------------------------------------------------------------


class _MaskAlgorithm(Algorithm):
    """Base of the mask methods: direction ``multiplier * mu``, multiplier exposed for placement."""

    has_mask = True

    def multiplier(self, g: torch.Tensor, X: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """Elementwise multiplier (P,) from the per-domain gradients (K, P), and diagnostics."""
        raise NotImplementedError

    def direction(self, X, y) -> Direction:
        g, losses = per_domain_gradients_and_losses(self.predictor, self.theta.detach(), X, y)
        mu = g.mean(dim=0)
        multiplier, diagnostics = self.multiplier(g, X, y)
        diagnostics = {"loss": float(losses.mean()), **diagnostics}
        return Direction(gradient=multiplier * mu, diagnostics=diagnostics,
                         mean_gradient=mu, multiplier=multiplier)


@register_algorithm
class ANDMask(_MaskAlgorithm):
    """AND-mask: keep the coordinates whose gradient sign agrees across domains.

    ``a_j = 1[|mean_e sign(g_ej)| >= tau]`` and ``d = a * mu / mean(a)`` (the rescaling
    keeps the step's size when few coordinates are kept; per parameter block).

    Source: Parascandolo, Neitz, Orvieto, Gresele & Schoelkopf, "Learning explanations
    that are hard to vary" (ICLR 2021); default and search range as in DomainBed.
    """

    name = "and_mask"
    source = "Parascandolo et al. (2021), ICLR"
    HPARAMS = (HParam("tau", 1.0, Uniform(0.5, 1.0), "minimum sign agreement |mean_e sign(g_e)| to keep a coordinate"),)

    def multiplier(self, g, X, y):
        a = and_mask(g, float(self.hparams["tau"]))
        return rescale_mask(a, self.predictor.blocks), {"mask_mean": float(a.mean())}


@register_algorithm
class SANDMask(_MaskAlgorithm):
    """SAND-mask: a smooth AND-mask, ``a_j = max(0, tanh(k (agreement_j - tau) / s2_j))``.

    ``d = a * mu / mean(a)`` as for AND-mask. The default ``tau = 0.5`` departs from
    DomainBed's 1.0: with tau = 1 the argument of tanh is never positive, so the mask
    is 0 on every coordinate and the model never moves.

    Source: Shahtalebi, Gagnon-Audet, Laleh, Faramarzi, Ahuja & Rish, "SAND-mask: An
    Enhanced Gradient Masking Strategy for the Discovery of Invariances in Domain
    Generalization" (arXiv:2106.02266, 2021); k and the search ranges as in DomainBed.
    """

    name = "sand_mask"
    source = "Shahtalebi et al. (2021), arXiv:2106.02266"
    HPARAMS = (
        HParam("tau", 0.5, Uniform(0.0, 1.0), "sign agreement at which the smooth mask opens"),
        HParam("k", 1e1, LogUniform(-3, 5), "sharpness of the smooth mask, in units of 1 / variance"),
    )

    def multiplier(self, g, X, y):
        a = sand_mask(g, float(self.hparams["tau"]), float(self.hparams["k"]))
        return rescale_mask(a, self.predictor.blocks), {"mask_mean": float(a.mean())}


@register_algorithm
class PCGrad(Algorithm):
    """PCGrad: project out pairwise gradient conflicts, then average.

    ``d = (1/K) sum_e g_e^PC`` with `pcgrad_projections` (random order per domain and
    step, seeded). Agreeing gradients (all pairwise inner products >= 0) are left alone,
    so d = mu. The mean replaces the original sum, which only rescales the learning rate.

    Source: Yu, Kumar, Gupta, Levine, Hausman & Finn, "Gradient Surgery for Multi-Task
    Learning" (NeurIPS 2020).
    """

    name = "pcgrad"
    source = "Yu et al. (2020), NeurIPS"

    def direction(self, X, y) -> Direction:
        g, losses = per_domain_gradients_and_losses(self.predictor, self.theta.detach(), X, y)
        projected = pcgrad_projections(g, self.generator)
        changed = (projected - g).abs().sum(dim=1) > 0
        return Direction(gradient=projected.mean(dim=0), diagnostics={
            "loss": float(losses.mean()), "projected_share": float(changed.to(g.dtype).mean()),
        })


@register_algorithm
class IGA(_MaskAlgorithm):
    r"""IGA: the mean gradient times the continuous gradient conflict mask.

    ``d = m * mu``, with ``m = m_min + (1 - m_min) sigmoid(kappa0 (1 - c / tau)) /
    sigmoid(kappa0)``, ``c = s2 / (mu^2 + eps)`` and ``tau = min(tau0, K / t^2_{K-1,
    0.975})`` (`iga_theory.mask.default_tau`). With minibatch gradients the cross-domain
    variance also measures sampling noise, which alone can push every coordinate to the
    floor, so the statistics of the mask come from
    `iga_theory.stats.MinibatchDomainStatistics` with one of its remedies (``noise``):

    * ``"ema"`` (default): bias-corrected exponential moving averages of each domain's
      minibatch gradient, ``G_e <- rho G_e + (1 - rho) g_e``;
    * ``"noise_correction"``: ``s2_corr = max(s2 - mean_e(v_e / n), 0)``, with v_e the
      unbiased within-domain variance of the per-sample gradients (batch size n >= 2);
    * ``"none"``: the raw minibatch statistics.

    The step always uses the current minibatch mean ``mu``; the mask comes from the
    torch kernel `iga_theory.mask_torch.mask_from_moments`.

    Source: this library (`iga_theory.mask`).
    """

    name = "iga"
    source = "this library"
    HPARAMS = (
        HParam("tau0", cgcm.DEFAULT_TAU0, LogUniform(-2, 0.5), "effect-size threshold on the conflict score"),
        HParam("kappa0", cgcm.DEFAULT_KAPPA0, LogUniform(0.5, 2), "scale-free sharpness of the mask"),
        HParam("m_min", 0.0, Choice((0.0, 0.01, 0.1)), "floor of the mask"),
        HParam("noise", stats.DEFAULT_REMEDY, Choice((stats.DEFAULT_REMEDY,)),
               "remedy for minibatch noise: " + ", ".join(stats.MINIBATCH_REMEDIES)),
        HParam("rho", stats.DEFAULT_RHO, Uniform(0.9, 0.999), "rate of the moving average of the per-domain gradients"),
    )

    def __init__(self, predictor, n_domains, hparams=None, **options):
        super().__init__(predictor, n_domains, hparams, **options)
        if self.hparams["noise"] not in stats.MINIBATCH_REMEDIES:
            raise ValueError(f"noise must be one of {stats.MINIBATCH_REMEDIES}; got {self.hparams['noise']!r}")
        self.tau = cgcm.default_tau(self.n_domains, tau0=float(self.hparams["tau0"]))
        self.average = None      # EMA of the per-domain gradients, shape (K, P)
        self.average_weight = 0.0  # 1 - rho^t, the EMA's bias correction

    def moments(self, g: torch.Tensor, X: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Cross-domain ``(mu, s2)`` of the mask's statistics under the chosen remedy, each (P,).

        Same numbers as `iga_theory.stats.MinibatchDomainStatistics`, with the K domains
        held in one (K, P) tensor: the per-domain accumulators there cost more than the
        whole training step on these small models.
        """
        remedy = self.hparams["noise"]
        if remedy == "ema":
            rho = float(self.hparams["rho"])
            self.average = (1.0 - rho) * g if self.average is None else rho * self.average + (1.0 - rho) * g
            self.average_weight = 1.0 - rho * (1.0 - self.average_weight)
            return mask_torch.cross_domain_moments(self.average / self.average_weight)
        mu, s2 = mask_torch.cross_domain_moments(g)
        if remedy == "noise_correction":
            samples = per_sample_gradients(self.predictor, self.theta.detach(), X, y)   # (K, n, P)
            n = samples.shape[1]
            if n < 2:
                raise ValueError(f"noise='noise_correction' needs batches of at least 2 samples; got {n}")
            within = samples.var(dim=1, unbiased=True)
            s2 = stats.noise_corrected_variance(s2, within, [n] * self.n_domains)
        return mu, s2

    def multiplier(self, g, X, y):
        mu, s2 = self.moments(g, X, y)
        mask = mask_torch.mask_from_moments(mu, s2, self.n_domains, tau=self.tau,
                                            kappa0=float(self.hparams["kappa0"]),
                                            m_min=float(self.hparams["m_min"])).to(g.dtype)
        return mask, {"mask_mean": float(mask.mean()), "mask_min": float(mask.min())}


@register_algorithm
class IGALoRA(IGA):
    r"""IGA's LoRA step: mask the weight-space gradient, project to rank r, map to the factors.

    For a LoRA predictor ``W = W0 + (alpha / r) B A`` (S4), the per-domain weight
    gradients ``G_e = dL_e / dW`` (K, p, q) give the mask M exactly as for `IGA`, with
    the same threshold, sharpness, floor and EMA statistics over the p q entries of W.
    The masked direction is ``D = M * mu_W`` and ``P = Pi_r(D)`` its best rank-r
    approximation. The optimizer receives the chain-rule factor gradients
    ``grad_B = (alpha/r) P A^T`` and ``grad_A = (alpha/r) B^T P`` (`iga_theory.lora_step`
    in factor mode). Its descent safeguard uses ``D`` in place of ``P`` when
    ``<mu_W, P> <= 0``. The mask acts on W, not on theta, so there is no elementwise
    multiplier on theta and only the gradient placement exists.

    Source: this library (`iga_theory.lora_step.IGALoRAStep`).
    """

    name = "iga_lora"
    source = "this library (IGA LoRA step)"
    has_mask = False
    requires_lora = True
    optimizers = ("sgd", "adam")

    def __init__(self, predictor, n_domains, hparams=None, **options):
        if predictor.lora is None:
            raise ValueError("iga_lora needs a LoRA predictor (predictor.lora is None); use iga for other models")
        super().__init__(predictor, n_domains, hparams, **options)
        if self.hparams["noise"] == "noise_correction":
            raise NotImplementedError("iga_lora supports noise='ema' and noise='none'; noise_correction would "
                                      "need per-sample weight gradients")
        self.operator = IGALoRAStep(alpha=predictor.lora.alpha, mode="factor")

    def direction(self, X, y) -> Direction:
        lora = self.predictor.lora
        theta = self.theta.detach()
        G = per_domain_weight_gradients(self.predictor, theta, X, y)      # (K, p, q)
        K, p, q = G.shape
        g = G.reshape(K, p * q)

        # Mask over the entries of W from the smoothed statistics; step along the current mean.
        mu_statistics, s2 = self.moments(g, X, y)
        mask = mask_torch.mask_from_moments(mu_statistics, s2, K, tau=self.tau,
                                            kappa0=float(self.hparams["kappa0"]),
                                            m_min=float(self.hparams["m_min"])).to(g.dtype)
        mu = g.mean(dim=0)
        D = (mask * mu).reshape(p, q)

        # Rank-r projection and the chain rule to the factors.
        B, A = lora.factors(theta)
        (grad_B, grad_A), info = self.operator.step_from_direction(B, A, D, mu.reshape(p, q), mask.reshape(p, q))
        loss = float(domain_losses(self.predictor, theta, X, y).mean())
        return Direction(gradient=torch.cat([grad_B.reshape(-1), grad_A.reshape(-1)]), diagnostics={
            "loss": loss, "mask_mean": float(mask.mean()), "mask_min": float(mask.min()),
            "safeguard_events": float(self.operator.safeguard_events)})
