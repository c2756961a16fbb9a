r"""Objective-based baselines: ERM, IRM, V-REx, GroupDRO, Fishr, Koyama-Yamaguchi.

Each method minimises the mean training loss plus a penalty over domains. With
``L_e`` the mean loss of domain e's minibatch, ``Lbar = (1/K) sum_e L_e`` and
``lambda_t`` the penalty weight at step t:

========================  ==================================================================
ERM                       ``Lbar``
IRM (IRMv1)               ``Lbar + lambda_t (1/K) sum_e d_{w,1} L_e^{(1)} d_{w,1} L_e^{(2)}``
V-REx                     ``Lbar + lambda_t (1/K) sum_e (L_e - Lbar)^2``
GroupDRO                  ``sum_e q_e L_e``, ``q <- q exp(eta L) / sum(q exp(eta L))``
Fishr                     ``Lbar + lambda_t (1/K) sum_e |v_e - vbar|^2``
Koyama-Yamaguchi          ``Lbar + lambda sum_e |g_e - gbar|^2``
========================  ==================================================================

``d_{w,1} L^{(h)}`` is the derivative of half h of the minibatch's loss with respect to
a scalar multiplier w of the predictions, at w = 1 (the product of two halves is an
unbiased estimate of the squared derivative); ``v_e`` is the per-coordinate variance of
the per-sample gradients in domain e, ``g_e`` the gradient of ``L_e``. The annealed
weight is ``lambda_t = 1`` for ``t < anneal_steps`` (Fishr: 0) and ``lambda`` after,
with a fresh optimizer state at ``t = anneal_steps``, as in DomainBed (Gulrajani &
Lopez-Paz, "In Search of Lost Domain Generalization", ICLR 2021). The implementations
and default hyperparameters follow DomainBed unless a class docstring states otherwise.

Gradients of the penalised objectives come from `torch.func.grad`, through the
per-sample and per-domain gradients of `iga_theory.synthetic.per_domain`.
"""

from __future__ import annotations

import torch
from torch.func import grad, vmap

from iga_theory.synthetic.algorithms_base import (Algorithm, Direction, HParam, IntLogUniform,
                                                  LogUniform, Uniform, register_algorithm)
from iga_theory.synthetic.per_domain import (LOSSES, Predictor, domain_losses,
                                             per_domain_gradients, per_domain_gradients_and_losses,
                                             per_sample_gradients)

# ----- penalties as pure functions (tested one by one) -------------------------------------


def irm_scale_gradients(predictor: Predictor, theta: torch.Tensor, X: torch.Tensor, y: torch.Tensor,
                        split: bool = True) -> torch.Tensor:
    r"""IRMv1 derivatives ``d/dw L_e(w f_theta)`` at the dummy multiplier w = 1.

    Parameters
    ----------
    predictor, theta
        The model and its parameters (P,).
    X, y : Tensor, shapes (K, n, ...)
        One minibatch per domain; with ``split=True`` n must be >= 2.
    split : bool
        True: derivatives on the even and the odd samples of each batch separately
        (their product is an unbiased estimate of the squared derivative);
        False: one derivative on the whole batch.

    Returns
    -------
    Tensor, shape (K, 2) for ``split=True``, (K, 1) otherwise.
    """
    loss_fn = LOSSES[predictor.loss]
    one = torch.ones((), dtype=theta.dtype)

    def scaled_loss(w, f, target):
        return loss_fn(w * f, target).mean()

    def per_domain(X_e, y_e):
        f = predictor.forward(theta, X_e)
        if split:
            return torch.stack([grad(scaled_loss)(one, f[0::2], y_e[0::2]),
                                grad(scaled_loss)(one, f[1::2], y_e[1::2])])
        return grad(scaled_loss)(one, f, y_e).unsqueeze(0)

    if split and X.shape[1] < 2:
        raise ValueError(f"the split IRM penalty needs at least 2 samples per domain; got n = {X.shape[1]}")
    return vmap(per_domain)(X, y)


def irm_penalty(predictor: Predictor, theta: torch.Tensor, X: torch.Tensor, y: torch.Tensor,
                split: bool = True) -> torch.Tensor:
    """IRMv1 penalty ``(1/K) sum_e (d_{w,1} L_e)^2`` (split: product of the two halves); a 0-d tensor."""
    d = irm_scale_gradients(predictor, theta, X, y, split=split)
    return (d[:, 0] * d[:, -1]).mean()


def vrex_penalty(losses: torch.Tensor) -> torch.Tensor:
    """V-REx penalty: the variance ``(1/K) sum_e (L_e - Lbar)^2`` of the domain losses (K,)."""
    return ((losses - losses.mean()) ** 2).mean()


def groupdro_weights(q: torch.Tensor, losses: torch.Tensor, eta: float) -> torch.Tensor:
    """GroupDRO weights after one exponentiated-gradient step: ``q exp(eta L) / sum(q exp(eta L))``.

    Computed in log space (a softmax), which gives the same numbers without overflow.
    """
    return torch.softmax(torch.log(q) + eta * losses, dim=0)


def fishr_penalty(variances: torch.Tensor) -> torch.Tensor:
    """Fishr penalty ``(1/K) sum_e |v_e - vbar|^2`` of per-domain gradient variances (K, P)."""
    return ((variances - variances.mean(dim=0)) ** 2).sum(dim=1).mean()


def gradient_variances(sample_gradients: torch.Tensor) -> torch.Tensor:
    """Per-domain, per-coordinate variance (divided by n) of per-sample gradients (K, n, P) -> (K, P)."""
    centred = sample_gradients - sample_gradients.mean(dim=1, keepdim=True)
    return (centred * centred).mean(dim=1)


def gradient_alignment_penalty(gradients: torch.Tensor) -> torch.Tensor:
    """Koyama-Yamaguchi penalty ``sum_e |g_e - gbar|^2`` of per-domain gradients (K, P)."""
    return ((gradients - gradients.mean(dim=0)) ** 2).sum()


# ----- hyperparameters shared by the annealed penalties ----------------------------------

# DomainBed anneals over 500 of 5000 steps. The synthetic runs last a few hundred steps,
# so the default and the search range are scaled down by the same factor of about ten.
ANNEAL = HParam("anneal_steps", 50, IntLogUniform(0, 2.3),
                "steps trained with penalty weight 1 (Fishr: 0) before the full weight applies")


class _PenaltyAlgorithm(Algorithm):
    """Base of the objective-based methods: the direction is the gradient of `objective`."""

    def objective(self, theta: torch.Tensor, X: torch.Tensor, y: torch.Tensor):
        """Return ``(value, aux)``: a 0-d tensor and a dict of 0-d tensors."""
        raise NotImplementedError

    def annealed_weight(self, weight: float, before: float = 1.0) -> float:
        """Penalty weight at the current step: ``before`` until ``anneal_steps``, then ``weight``."""
        return float(weight) if self.step_count >= int(self.hparams["anneal_steps"]) else before

    def direction(self, X, y) -> Direction:
        # A fresh optimizer where the penalty weight jumps: Adam's moments were
        # accumulated at the old scale of the gradients.
        anneal = int(self.hparams.get("anneal_steps", 0))
        if anneal > 0 and self.step_count == anneal:
            self.reset_optimizer()
        gradient, aux = grad(self.objective, has_aux=True)(self.theta.detach(), X, y)
        self.consume_aux(aux)
        return Direction(gradient=gradient, diagnostics={k: float(v) for k, v in aux.items()})

    def consume_aux(self, aux: dict) -> None:
        """Take the state updates out of ``aux`` (keys starting with ``_``); subclasses override."""


@register_algorithm
class ERM(_PenaltyAlgorithm):
    """Empirical risk minimisation: the gradient of the pooled mean loss ``(1/K) sum_e L_e``.

    Source: Vapnik, "Statistical Learning Theory" (1998); the pooled-SFT baseline.
    """

    name = "erm"
    source = "Vapnik (1998)"

    def objective(self, theta, X, y):
        loss = domain_losses(self.predictor, theta, X, y).mean()
        return loss, {"loss": loss.detach()}


@register_algorithm
class IRM(_PenaltyAlgorithm):
    """IRMv1: ``Lbar + lambda_t (1/K) sum_e d_{w,1} L_e^{(1)} d_{w,1} L_e^{(2)}``.

    The penalty is the squared derivative of each domain's loss with respect to a dummy
    scalar multiplier of the predictions at w = 1, estimated without bias by the product
    of the derivatives on the even and the odd samples. ``lambda_t = 1`` before
    ``anneal_steps`` and ``irm_lambda`` after, with a fresh optimizer at the switch.

    Source: Arjovsky, Bottou, Gulrajani & Lopez-Paz, "Invariant Risk Minimization"
    (arXiv:1907.02893, 2019); split estimator and defaults as in DomainBed.
    """

    name = "irm"
    source = "Arjovsky et al. (2019), arXiv:1907.02893"
    HPARAMS = (
        HParam("irm_lambda", 1e2, LogUniform(-1, 5), "weight of the IRMv1 penalty after annealing"),
        ANNEAL,
    )

    def objective(self, theta, X, y):
        weight = self.annealed_weight(self.hparams["irm_lambda"])
        loss = domain_losses(self.predictor, theta, X, y).mean()
        penalty = irm_penalty(self.predictor, theta, X, y, split=True)
        return loss + weight * penalty, {"loss": loss.detach(), "penalty": penalty.detach(),
                                         "penalty_weight": torch.tensor(weight)}


@register_algorithm
class VREx(_PenaltyAlgorithm):
    """V-REx: ``Lbar + lambda_t (1/K) sum_e (L_e - Lbar)^2``, the variance of the domain losses.

    ``lambda_t = 1`` before ``anneal_steps`` and ``vrex_lambda`` after, with a fresh
    optimizer at the switch.

    Source: Krueger et al., "Out-of-Distribution Generalization via Risk Extrapolation
    (REx)" (ICML 2021); defaults as in DomainBed.
    """

    name = "vrex"
    source = "Krueger et al. (2021), ICML"
    HPARAMS = (
        HParam("vrex_lambda", 1e1, LogUniform(-1, 5), "weight of the risk-variance penalty after annealing"),
        ANNEAL,
    )

    def objective(self, theta, X, y):
        weight = self.annealed_weight(self.hparams["vrex_lambda"])
        losses = domain_losses(self.predictor, theta, X, y)
        penalty = vrex_penalty(losses)
        loss = losses.mean()
        return loss + weight * penalty, {"loss": loss.detach(), "penalty": penalty.detach(),
                                         "penalty_weight": torch.tensor(weight)}


@register_algorithm
class GroupDRO(Algorithm):
    """GroupDRO: descend ``sum_e q_e L_e`` after the exponentiated-gradient step on q.

    Each step first moves the domain weights towards the domains with the larger loss,
    ``q <- q exp(eta L) / sum(q exp(eta L))`` (q starts uniform), then takes the
    gradient of the q-weighted loss, ``sum_e q_e g_e``.

    Source: Sagawa, Koh, Hashimoto & Liang, "Distributionally Robust Neural Networks for
    Group Shifts" (ICLR 2020); defaults as in DomainBed.
    """

    name = "groupdro"
    source = "Sagawa et al. (2020), ICLR"
    HPARAMS = (HParam("groupdro_eta", 1e-2, LogUniform(-3, -1), "step size of the exponentiated-gradient update of q"),)

    def __init__(self, predictor, n_domains, hparams=None, **options):
        super().__init__(predictor, n_domains, hparams, **options)
        self.q = torch.full((self.n_domains,), 1.0 / self.n_domains, dtype=self.theta.dtype)

    def direction(self, X, y) -> Direction:
        g, losses = per_domain_gradients_and_losses(self.predictor, self.theta.detach(), X, y)
        self.q = groupdro_weights(self.q, losses, float(self.hparams["groupdro_eta"]))
        return Direction(gradient=self.q @ g, diagnostics={
            "loss": float(losses.mean()), "robust_loss": float(self.q @ losses), "q_max": float(self.q.max()),
        })


@register_algorithm
class Fishr(_PenaltyAlgorithm):
    """Fishr: ``Lbar + lambda_t (1/K) sum_e |v_e - vbar|^2`` on per-sample gradient variances.

    ``v_e`` is the per-coordinate variance of the per-sample gradients of domain e (all
    parameters: the predictors here are linear, the classifier is the whole model),
    smoothed across steps as in DomainBed: ``a_e <- ema a_e + (1 - ema) v_e`` (a_e = 0
    before the first step) and the penalty uses ``a_e / (1 - ema)``, so that the
    gradient reaching the current ``v_e`` does not depend on ``ema``. ``lambda_t = 0``
    before ``anneal_steps`` and ``fishr_lambda`` after, with a fresh optimizer.

    Source: Rame, Dancette & Cord, "Fishr: Invariant Gradient Variances for
    Out-of-Distribution Generalization" (ICML 2022); defaults as in DomainBed.
    """

    name = "fishr"
    source = "Rame et al. (2022), ICML"
    HPARAMS = (
        HParam("fishr_lambda", 1e3, LogUniform(1, 4), "weight of the gradient-variance penalty after annealing"),
        ANNEAL,
        HParam("ema", 0.95, Uniform(0.9, 0.99), "rate of the moving average of the per-domain variances"),
    )

    def __init__(self, predictor, n_domains, hparams=None, **options):
        super().__init__(predictor, n_domains, hparams, **options)
        self.variance_average = None

    def objective(self, theta, X, y):
        weight = self.annealed_weight(self.hparams["fishr_lambda"], before=0.0)
        ema = float(self.hparams["ema"])
        loss = domain_losses(self.predictor, theta, X, y).mean()
        variances = gradient_variances(per_sample_gradients(self.predictor, theta, X, y))
        previous = torch.zeros_like(variances) if self.variance_average is None else self.variance_average
        average = ema * previous + (1.0 - ema) * variances
        penalty = fishr_penalty(average / (1.0 - ema))
        return loss + weight * penalty, {"loss": loss.detach(), "penalty": penalty.detach(),
                                         "penalty_weight": torch.tensor(weight), "_average": average.detach()}

    def consume_aux(self, aux: dict) -> None:
        self.variance_average = aux.pop("_average")


@register_algorithm
class KoyamaYamaguchi(_PenaltyAlgorithm):
    """Inter-environment gradient alignment penalty: ``Lbar + lambda sum_e |g_e - gbar|^2``.

    The penalty is K times the trace of the cross-domain covariance of the per-domain
    gradients. Its gradient needs the per-domain Hessian-vector products, which
    torch.func gives by differentiating `per_domain_gradients`. This is the penalty
    method that its authors call IGA; the harness names it after them, because IGA here
    means the gradient conflict mask.

    Source: Koyama & Yamaguchi, "When is invariance useful in an Out-of-Distribution
    Generalization problem?" (arXiv:2008.01883, 2020); penalty (summed over domains) and
    default weight as in DomainBed's implementation.
    """

    name = "koyama_yamaguchi"
    source = "Koyama & Yamaguchi (2020), arXiv:2008.01883"
    HPARAMS = (HParam("ky_lambda", 1e3, LogUniform(1, 5), "weight of the gradient-variance penalty"),)

    def objective(self, theta, X, y):
        loss = domain_losses(self.predictor, theta, X, y).mean()
        penalty = gradient_alignment_penalty(per_domain_gradients(self.predictor, theta, X, y))
        weight = float(self.hparams["ky_lambda"])
        return loss + weight * penalty, {"loss": loss.detach(), "penalty": penalty.detach()}
