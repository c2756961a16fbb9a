r"""Distillation methods in one training loop: ERM-SFT, IGA, AND-mask, SAND-mask, V-REx, GroupDRO.

Each step gets ``sets_per_step`` isomer sets rendered in each of the K training domains
(one minibatch per domain, the same problems in every domain) and the token
cross-entropy of the rationale and answer tokens. With ``L_e`` the mean
token loss of domain ``e`` and ``g_e`` its gradient with respect to the trainable
(LoRA) parameters:

==========  =====================================================================================
erm         plain pooled SFT: the mean token loss over the whole batch (all domains together)
iga         the IGA operator on the LoRA layers (`iga_theory.llm.lora_processor`): the conflict
            mask of the per-domain statistics, captured by hooks in one forward and one backward
            pass over the domain-balanced loss ``(1/K) sum_e L_e``
and_mask    ``d = M * mu``, ``mu = (1/K) sum_e g_e``, ``M = a / mean(a)`` per parameter tensor,
            ``a_j = 1[|mean_e sign(g_ej)| >= tau]`` (Parascandolo et al., ICLR 2021)
sand_mask   as and_mask with ``a_j = max(0, tanh(k (|mean_e sign(g_ej)| - tau) / s2_j))``
            (Shahtalebi et al., arXiv:2106.02266)
vrex        ``(1/K) sum_e L_e + lambda_t Var_e(L_e)`` with ``lambda_t = 1`` for the first
            ``vrex_anneal_steps`` steps, then ``vrex_lambda`` and fresh AdamW moments
            (Krueger et al., ICML 2021, as run in DomainBed)
groupdro    ``sum_e q_e L_e`` after ``q <- q exp(eta L) / sum(q exp(eta L))``
            (Sagawa et al., ICLR 2020)
==========  =====================================================================================

Every method steps AdamW with the same learning-rate schedule and gradient clipping.
AND-mask and SAND-mask need the K per-domain gradients of all trainable parameters:
they run one forward and one backward pass per domain on that domain's minibatch, the
straightforward path (the same tokens as one pass over the whole batch, in K smaller
passes). Their mask acts on the gradient, as in the original methods, or on AdamW's
update (``baselines.mask_placement``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from iga_theory.llm.distill_config import DistillConfig
from iga_theory.llm.distill_data import IGNORE_INDEX
from iga_theory.llm.distill_pretrain import warmup_schedule
from iga_theory.synthetic.algorithms_gradient import and_mask, rescale_mask, sand_mask
from iga_theory.synthetic.algorithms_penalty import groupdro_weights, vrex_penalty

logger = logging.getLogger(__name__)

# Sub-folder of a checkpoint with the IGA processor's state (`iga_theory.llm.lora_state`).
IGA_STATE_FOLDER = "iga"


@dataclass
class StepBatch:
    """The minibatches of one step.

    Attributes
    ----------
    combined : dict of Tensor
        All domains in one batch, rows grouped by domain (see `distill_data.collate`).
    per_domain : list of dict of Tensor
        One batch per training domain, in domain order.
    """

    combined: dict[str, torch.Tensor]
    per_domain: list[dict[str, torch.Tensor]]


def token_losses(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Compute the next-token cross-entropy (float32) at every position and the mask of labelled positions.

    Position t of ``logits`` (batch, n, vocab) predicts ``labels[:, t + 1]``. Both outputs
    have shape (batch, n - 1), and the loss is 0 where the label is ignored.
    """
    logits, labels = logits[:, :-1], labels[:, 1:]
    valid = labels != IGNORE_INDEX
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1),
                           ignore_index=IGNORE_INDEX, reduction="none").reshape(labels.shape)
    return loss, valid


def domain_losses(logits: torch.Tensor, labels: torch.Tensor, domain_ids: torch.Tensor,
                  n_domains: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean token loss ``L_e`` of every domain, and the pooled mean token loss.

    Parameters
    ----------
    logits : (batch, n, vocab)
    labels, domain_ids : (batch, n) long
    n_domains : int

    Returns
    -------
    losses : Tensor (K,), float32, differentiable
    pooled : 0-d Tensor, the mean over all label tokens

    Raises
    ------
    ValueError
        A domain without any label token in the batch.
    """
    loss, valid = token_losses(logits, labels)
    ids = domain_ids[:, :-1]
    ids = torch.where(valid, ids, torch.zeros_like(ids))
    weights = valid.to(loss.dtype)
    sums = torch.zeros(n_domains, dtype=loss.dtype, device=loss.device).index_add(0, ids.reshape(-1),
                                                                                    (loss * weights).reshape(-1))
    counts = torch.zeros(n_domains, dtype=loss.dtype, device=loss.device).index_add(0, ids.reshape(-1),
                                                                                      weights.reshape(-1))
    if bool((counts == 0).any()):
        missing = torch.nonzero(counts == 0).flatten().tolist()
        raise ValueError(f"domain(s) {missing} have no label token in this batch; every step needs all domains")
    return sums / counts, sums.sum() / counts.sum()


def _forward(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits


class DistillMethod:
    """Base class: AdamW over the trainable parameters, the schedule, clipping and the step.

    Subclasses implement `gradients`, which sets ``p.grad`` of the trainable parameters
    and returns the step's diagnostics, or override `step` entirely (IGA).

    Parameters
    ----------
    model : PEFT model
    domains : list of str
        Training domains; batch domain ids index into it.
    config : DistillConfig
    """

    name = "base"

    def __init__(self, model, domains: list[str], config: DistillConfig):
        self.model = model
        self.domains = list(domains)
        self.config = config
        self.named_params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        if not self.named_params:
            raise ValueError("the model has no trainable parameter; attach a LoRA adapter first")
        self.params = [p for _, p in self.named_params]
        self.optimizer = self._new_optimizer()
        self.scheduler = warmup_schedule(self.optimizer, config.train.warmup_steps, config.train.steps,
                                         config.train.schedule)

    def _new_optimizer(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.params, lr=self.config.train.lr, weight_decay=self.config.train.weight_decay)

    @property
    def n_domains(self) -> int:
        return len(self.domains)

    def gradients(self, batch: StepBatch, step: int) -> dict[str, float]:
        raise NotImplementedError

    def _clip(self) -> float:
        """Clip the global gradient norm (when configured); return the norm before clipping."""
        clip = self.config.train.grad_clip
        grads = [p.grad for p in self.params if p.grad is not None]
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float()) for g in grads]))
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(self.params, clip)
        return float(norm)

    def step(self, batch: StepBatch, step: int) -> dict[str, float]:
        """One optimizer step on ``batch``; returns the diagnostics for the log."""
        self.optimizer.zero_grad(set_to_none=True)
        diagnostics = self.gradients(batch, step)
        diagnostics["grad_norm"] = self._clip()
        self._optimizer_step()
        self.scheduler.step()
        return diagnostics

    def _optimizer_step(self) -> None:
        self.optimizer.step()

    def _domain_diagnostics(self, losses: torch.Tensor) -> dict[str, float]:
        out = {"loss": float(losses.mean())}
        out.update({f"loss_{name}": float(value) for name, value in zip(self.domains, losses.tolist())})
        return out

    # ---- checkpoint state
    def extra_state(self) -> dict:
        """Method state beyond the parameters and the optimizer, as plain containers (GroupDRO's q)."""
        return {}

    def save_state_files(self, folder: Path) -> None:
        """Write method state that has a file format of its own into a checkpoint folder (IGA's)."""

    def load_extra_state(self, state: dict, folder: Path | None = None) -> None:
        """Restore `extra_state` (and the files of `save_state_files` from ``folder``)."""

    def close(self) -> None:
        """Remove any hooks the method installed."""


class ERM(DistillMethod):
    """Plain pooled SFT: the mean token loss of the whole batch."""

    name = "erm"

    def gradients(self, batch, step):
        data = batch.combined
        losses, pooled = domain_losses(_forward(self.model, data), data["labels"], data["domain_ids"],
                                       self.n_domains)
        pooled.backward()
        return self._domain_diagnostics(losses.detach())


class VREx(DistillMethod):
    """V-REx: mean domain loss plus the annealed variance of the domain losses."""

    name = "vrex"

    def gradients(self, batch, step):
        settings = self.config.baselines
        if step == settings.vrex_anneal_steps and step > 0:
            # DomainBed restarts Adam when the full penalty weight starts, because the
            # moments gathered at weight 1 are mis-scaled for the new objective. Clearing
            # the state restarts it in place and keeps the learning-rate schedule.
            self.optimizer.state.clear()
        weight = 1.0 if step < settings.vrex_anneal_steps else settings.vrex_lambda
        data = batch.combined
        losses, _ = domain_losses(_forward(self.model, data), data["labels"], data["domain_ids"], self.n_domains)
        penalty = vrex_penalty(losses)
        (losses.mean() + weight * penalty).backward()
        return {**self._domain_diagnostics(losses.detach()), "penalty": penalty.item(), "penalty_weight": weight}


class GroupDRO(DistillMethod):
    """GroupDRO: the q-weighted domain loss after an exponentiated-gradient step on q."""

    name = "groupdro"

    def __init__(self, model, domains, config):
        super().__init__(model, domains, config)
        self.q = torch.full((len(domains),), 1.0 / len(domains), dtype=torch.float64)

    def gradients(self, batch, step):
        data = batch.combined
        losses, _ = domain_losses(_forward(self.model, data), data["labels"], data["domain_ids"], self.n_domains)
        self.q = groupdro_weights(self.q, losses.detach().to("cpu", torch.float64), self.config.baselines.groupdro_eta)
        (self.q.to(losses.device, losses.dtype) @ losses).backward()
        return {**self._domain_diagnostics(losses.detach()), "q_max": float(self.q.max())}

    def extra_state(self):
        return {"q": self.q.clone()}

    def load_extra_state(self, state, folder=None):
        self.q = state["q"].to(torch.float64)


class _GradientMask(DistillMethod):
    """Base of AND-mask and SAND-mask: per-domain gradients, an elementwise mask, rescaled per tensor."""

    def mask(self, g: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def gradients(self, batch, step):
        # Per-domain gradients, one forward/backward per domain: g has shape (K, P).
        rows, losses = [], []
        for data in batch.per_domain:
            loss, _ = token_losses(_forward(self.model, data), data["labels"])
            valid = (data["labels"][:, 1:] != IGNORE_INDEX).to(loss.dtype)
            mean_loss = (loss * valid).sum() / valid.sum()
            grads = torch.autograd.grad(mean_loss, self.params, allow_unused=True)
            rows.append(torch.cat([
                (torch.zeros_like(p) if g is None else g).reshape(-1).float() for p, g in zip(self.params, grads)
            ]))
            losses.append(mean_loss.detach())
        g = torch.stack(rows)
        mu = g.mean(dim=0)

        # Mask, rescaled per parameter tensor as DomainBed does.
        a = self.mask(g)
        blocks, start = {}, 0
        for name, p in self.named_params:
            blocks[name] = slice(start, start + p.numel())
            start += p.numel()
        multiplier = rescale_mask(a, blocks)
        placement = self.config.baselines.mask_placement
        direction = multiplier * mu if placement == "gradient" else mu
        self._multiplier = multiplier if placement == "update" else None
        for (name, p) in self.named_params:
            p.grad = direction[blocks[name]].reshape(p.shape).to(p.dtype)
        self._blocks = blocks
        return {**self._domain_diagnostics(torch.stack(losses)), "mask_mean": float(a.mean())}

    def _optimizer_step(self):
        if self._multiplier is None:
            self.optimizer.step()
            return
        # Placement "update": AdamW steps on mu, then each coordinate's move is scaled by the mask.
        before = [p.detach().clone() for p in self.params]
        self.optimizer.step()
        with torch.no_grad():
            for (name, p), old in zip(self.named_params, before):
                scale = self._multiplier[self._blocks[name]].reshape(p.shape).to(p.dtype)
                p.copy_(old + scale * (p - old))


class ANDMask(_GradientMask):
    """AND-mask: keep the coordinates whose gradient sign agrees across domains."""

    name = "and_mask"

    def mask(self, g):
        return and_mask(g, self.config.baselines.and_mask_tau)


class SANDMask(_GradientMask):
    """SAND-mask: the smooth AND-mask."""

    name = "sand_mask"

    def mask(self, g):
        return sand_mask(g, self.config.baselines.sand_mask_tau, self.config.baselines.sand_mask_k)


class IGA(DistillMethod):
    """IGA on the LoRA layers through `LoraIGAProcessor` and `LoraIGAOptimizer`.

    Each step is one forward pass with the domain ids and one backward pass of the
    domain-balanced loss. The processor's hooks collect the per-domain statistics, and
    its optimizer wrapper runs the operator, the clipping, AdamW and (placement
    ``update``) the masking of AdamW's step.
    """

    name = "iga"

    def __init__(self, model, domains, config):
        from iga_theory.llm.lora_operator import LoraIGAConfig
        from iga_theory.llm.lora_processor import LoraIGAOptimizer, LoraIGAProcessor

        super().__init__(model, domains, config)
        settings = config.iga
        self.processor = LoraIGAProcessor(model, domains=self.domains, config=LoraIGAConfig(
            mode=settings.capture, placement=settings.placement, tau=settings.tau, kappa0=settings.kappa0,
            m_min=settings.m_min, remedy=settings.remedy, rho=settings.rho, nan_policy=settings.nan_policy,
        ))
        self.wrapper = LoraIGAOptimizer(self.optimizer, self.processor, max_grad_norm=config.train.grad_clip)
        self.processor.attach()

    def step(self, batch, step):
        data = batch.combined
        self.optimizer.zero_grad(set_to_none=True)
        outputs = self.model(input_ids=data["input_ids"], attention_mask=data["attention_mask"],
                             labels=data["labels"], domain_ids=data["domain_ids"])
        outputs.loss.backward()
        self.wrapper.step()
        self.scheduler.step()
        summary = self.processor.summary()
        losses = torch.tensor([summary[f"iga/loss_{name}"] for name in self.domains])
        diagnostics = self._domain_diagnostics(losses)
        diagnostics["grad_norm"] = self.wrapper.last_grad_norm if self.wrapper.last_grad_norm is not None else float("nan")
        for key in ("mask_mean", "mask_below_half", "safeguard_events", "skipped_steps"):
            if f"iga/{key}" in summary:
                diagnostics[key] = float(summary[f"iga/{key}"])
        return diagnostics

    def save_state_files(self, folder):
        from iga_theory.llm.lora_state import save_iga_state

        save_iga_state(self.processor, Path(folder) / IGA_STATE_FOLDER)

    def load_extra_state(self, state, folder=None):
        from iga_theory.llm.lora_state import load_iga_state

        if folder is None:
            raise ValueError("restoring IGA needs the checkpoint folder holding its iga_state files")
        load_iga_state(self.processor, Path(folder) / IGA_STATE_FOLDER)

    def close(self):
        self.processor.detach()


# Method name -> class.
METHODS: dict[str, type[DistillMethod]] = {
    cls.name: cls for cls in (ERM, IGA, ANDMask, SANDMask, VREx, GroupDRO)
}


def make_method(name: str, model, domains: list[str], config: DistillConfig) -> DistillMethod:
    """Build the method ``name`` (a key of `METHODS`) around a PEFT model."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; choose from {sorted(METHODS)}")
    return METHODS[name](model, domains, config)
