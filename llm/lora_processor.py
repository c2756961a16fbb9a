"""IGA as a gradient processor for PEFT LoRA models, usable in any PyTorch training loop.

`LoraIGAProcessor` ties together the hooks (`lora_hooks`), the operator
(`lora_operator`), the minibatch-noise remedy, the NaN policy, data-parallel
statistics (`lora_distributed`) and per-layer diagnostics. `LoraIGAOptimizer` wraps
any ``torch.optim.Optimizer`` so that one ``optimizer.step()`` runs the whole IGA step
in either placement.

Giving each sequence its domain
-------------------------------
Domains are named once (``domains=["math", "medicine", "law"]``); ids are indices
into that list. Each batch carries ``domain_ids``: shape ``(batch,)`` for one domain
per sequence, or ``(batch, seq_len)`` for one per position (packed sequences with a
block-diagonal attention mask). Id ``-1`` excludes a sequence or position. A batch
should contain all domains of each isomer set. A domain without loss tokens in a
whole optimizer step drops out of that step's mean gradient, although with the EMA
remedy its previous average still enters the mask. The mask comes from the averages
(remedy ``ema``) or from the step's means (``none``); the masked direction is always
the mean of the step's per-domain gradients. Fewer than 2 domains is an error.

Plain loop, placement ``update`` (the default) or ``gradient``::

    from iga_theory.llm.lora_processor import LoraIGAProcessor, LoraIGAOptimizer
    from iga_theory.llm.lora_operator import LoraIGAConfig

    processor = LoraIGAProcessor(peft_model, domains=["math", "medicine", "law"],
                                 config=LoraIGAConfig(mode="tangent"))
    optimizer = LoraIGAOptimizer(torch.optim.AdamW(trainable_params, lr=1e-4), processor,
                                 max_grad_norm=1.0)
    with processor.attached():
        for step, batch in enumerate(loader):
            # the model hook takes domain_ids out of the batch and, when labels are
            # given, returns the domain-balanced loss in outputs.loss
            outputs = peft_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                 labels=batch["labels"], domain_ids=batch["domain_ids"])
            (outputs.loss / accumulation_steps).backward()
            if (step + 1) % accumulation_steps == 0:
                optimizer.step()          # statistics -> operator -> clip -> step (-> mask)
                optimizer.zero_grad()
    print(processor.diagnostics)          # per-layer mask mean, safeguard events, time

Without the wrapper (placement ``gradient`` only): ``if processor.prepare_step():``
clip and call ``optimizer.step()``; ``prepare_step`` returns False when the NaN
policy ``skip`` skipped the step. ``processor.retraction_step(lr)`` replaces the
optimizer by the retraction of plain SGD.

The statistics of every micro-batch between two optimizer steps accumulate, and the
operator runs once per optimizer step.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Sequence

import torch
from torch import nn

from iga_theory.errors import NonFiniteError
from iga_theory.llm.lora_distributed import all_reduce_statistics, distributed_world_size
from iga_theory.llm.lora_hooks import DomainGradientCapture, LoraLayerRef, StepStatistics
from iga_theory.llm.lora_operator import (
    LayerOutcome,
    LoraIGAConfig,
    domain_vectors,
    layer_gradients,
    masked_moments,
    masked_update,
    plain_gradients,
    retract,
    tangent_direction,
    working_dtype,
)
from iga_theory.llm.lora_tangent import TangentBasis, coordinates, tangent_basis
from iga_theory.nan_policy import NanGuard

logger = logging.getLogger(__name__)

# Diagnostics kept per layer; `LoraIGAProcessor.diagnostics` maps layer names to these keys.
DIAGNOSTIC_KEYS = ("mask_mean", "mask_below_half", "projection_residual", "safeguard_events",
                   "operator_time_s", "hook_time_s")


class DomainEMA:
    r"""Bias-corrected exponential moving average of one layer's per-domain mean gradients.

    ``ema_e <- rho ema_e + (1 - rho) g_e`` for every domain present in the step, and the
    average used is ``ema_e / (1 - rho^{t_e})`` with ``t_e`` the steps domain ``e``
    has been seen (the correction of Adam). Mode ``full`` keeps ``(K, p q)`` values.
    Mode ``tangent`` keeps each domain's average as the thin factors of its tangent
    vector and moves it to the next step's tangent space by orthogonal projection
    (the averages of components that leave the tangent space are dropped).
    """

    def __init__(self, rho: float, n_domains: int):
        self.rho = rho
        self.seen = torch.zeros(n_domains, dtype=torch.float64)     # t_e
        self.values: torch.Tensor | None = None                      # full: (K, P)
        self.left: torch.Tensor | None = None                        # tangent: (K, p, k)
        self.right: torch.Tensor | None = None                       # tangent: (K, k, q)

    def previous(self, mode: str, basis: TangentBasis | None, like: torch.Tensor) -> torch.Tensor:
        """Return the stored averages (not bias-corrected) as ``(K, P)`` vectors in this step's layout."""
        if self.seen.max() == 0:
            return torch.zeros_like(like)
        if mode == "full":
            return self.values.to(like)
        left, right = self.left.to(like), self.right.to(like)
        GV = left @ (right @ basis.V.Y)                  # (K, p, k_A)
        UG = (basis.U.Y.T @ left) @ right                # (K, k_B, q)
        return domain_vectors("tangent", {"GV": GV, "UG": UG}, basis)

    def blend(self, mode: str, basis: TangentBasis | None, vectors: torch.Tensor,
              present: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, "DomainEMA"]:
        """Return (bias-corrected averages, domains with an average, updated copy of self)."""
        previous = self.previous(mode, basis, vectors)
        rows = present.to(vectors.device)[:, None]
        blended = torch.where(rows, self.rho * previous + (1.0 - self.rho) * vectors, previous)
        seen = self.seen + present.to(torch.float64)
        weight = 1.0 - self.rho ** seen
        corrected = blended / weight.clamp(min=1e-300).to(blended)[:, None]

        new = DomainEMA(self.rho, len(seen))
        new.seen = seen
        if mode == "full":
            new.values = blended
        else:
            thin = tangent_direction(basis, blended)
            new.left, new.right = thin.L.contiguous(), thin.R.contiguous()
        return corrected, seen > 0, new


class LoraIGAProcessor:
    """The IGA gradient operator on a PEFT LoRA model (see the module docstring).

    Parameters
    ----------
    model : nn.Module
        PEFT model (``get_peft_model(...)`` or ``PeftModel.from_pretrained(...)``).
    domains : sequence of str or int
        Domain names (ids index into it) or their number K >= 2.
    config : LoraIGAConfig, optional
    adapter : str, optional
        Adapter to act on when the model contains several.
    process_group : optional
        ``torch.distributed`` group whose ranks share statistics; default the world
        when initialised.

    Attributes
    ----------
    diagnostics : dict[str, dict[str, float]]
        Per layer, after each step: mask mean, share of mask values below 0.5, relative
        projection residual ``||D - Pi_r(D)|| / ||D||`` (mode ``full``), cumulative
        safeguard events, host time of the operator and of the backward hooks in seconds.
    step_count, skipped_steps, failed_svd_steps : int
    last_grad_norm : float
        Norm of the adapter gradients the last `prepare_step` wrote (IGA's in placement
        ``gradient``, the unmasked mean's in placement ``update``).
    last_micro_batches : int
        Backward passes accumulated into the last step's statistics.
    """

    def __init__(self, model: nn.Module, domains: Sequence[str] | int, config: LoraIGAConfig | None = None,
                 adapter: str | None = None, process_group=None):
        if isinstance(domains, int) and not isinstance(domains, bool):
            domains = [str(e) for e in range(domains)]
        domains = [str(name) for name in domains]
        if len(domains) < 2 or len(set(domains)) != len(domains):
            raise ValueError(
                f"domains must name at least 2 distinct domains (a cross-domain variance needs K >= 2); got {domains}"
            )
        self.model = model
        self.domains = domains
        self.config = config if config is not None else LoraIGAConfig()
        self.process_group = process_group
        self.capture = DomainGradientCapture(model, len(domains), mode=self.config.mode, adapter=adapter)
        self.layers: list[LoraLayerRef] = self.capture.layers
        self.guard = NanGuard(self.config.nan_policy, logger=logger)
        self.ema: dict[str, DomainEMA] = {}
        self.safeguard_events = {ref.name: 0 for ref in self.layers}
        self.diagnostics: dict[str, dict[str, float]] = {}
        self.step_count = 0
        self.skipped_steps = 0
        self.failed_svd_steps = 0
        self.last_domain_losses: dict[str, float] = {}
        self.last_micro_batches = 0
        self.last_grad_norm = float("nan")
        self._prepared: dict | None = None
        self._skipped = False
        self._model_hooks: list = []
        self._pending_labels = None

    @property
    def n_domains(self) -> int:
        return len(self.domains)

    # ------------------------------------------------------------ attachment
    def attach(self) -> None:
        """Install the LoRA hooks and the model hooks that read ``domain_ids`` from the forward call."""
        self.capture.install()
        if not self._model_hooks:
            self._model_hooks = [
                self.model.register_forward_pre_hook(self._pre_forward, with_kwargs=True),
                self.model.register_forward_hook(self._post_forward, with_kwargs=True),
            ]

    def detach(self) -> None:
        """Remove every hook; the model behaves as plain PEFT again."""
        self.capture.remove()
        for handle in self._model_hooks:
            handle.remove()
        self._model_hooks = []

    @contextlib.contextmanager
    def attached(self):
        """Context manager around `attach` and `detach`."""
        self.attach()
        try:
            yield self
        finally:
            self.detach()

    def _pre_forward(self, module, args, kwargs):
        domain_ids = kwargs.pop("domain_ids", None)
        self._pending_labels = None
        if domain_ids is None:
            self.capture.clear_domain_ids()   # no ids: this forward pass is not captured
            return args, kwargs
        self.capture.set_domain_ids(domain_ids)
        self._pending_labels = kwargs.pop("labels", None)
        kwargs.pop("num_items_in_batch", None)
        return args, kwargs

    def _post_forward(self, module, args, kwargs, output):
        labels, self._pending_labels = self._pending_labels, None
        if labels is None:
            return None
        logits = output["logits"] if isinstance(output, dict) else output[0]
        loss = self.capture.loss(logits, labels)
        if isinstance(output, dict):
            # Rebuild the output so that "loss" comes first, as in Hugging Face outputs.
            fields = {key: value for key, value in output.items() if key != "loss"}
            return type(output)(loss=loss, **fields)
        return (loss, *output)

    def set_domain_ids(self, domain_ids) -> None:
        """Set the domain ids of the next forward pass (alternative to passing ``domain_ids=``)."""
        self.capture.set_domain_ids(domain_ids)

    def loss(self, logits: torch.Tensor, labels: torch.Tensor, shift: bool = True) -> torch.Tensor:
        """Domain-balanced loss; see `DomainGradientCapture.loss`."""
        return self.capture.loss(logits, labels, shift=shift)

    # ------------------------------------------------------------------ step
    def prepare_step(self) -> bool:
        """Run the operator on the statistics of this step and write the adapter gradients.

        Placement ``gradient``: the gradients become IGA's. Placement ``update``: they
        become the unmasked chain-rule gradients of the cross-domain mean, and
        `apply_update` masks the optimizer's step afterwards.

        Returns
        -------
        bool
            False when the NaN policy ``skip`` skipped the step (a non-finite statistic
            or a failed SVD): the caller must not step the optimizer.
        """
        start = time.perf_counter()
        statistics = self.capture.pop_step()
        if distributed_world_size(self.process_group) > 1:
            all_reduce_statistics(statistics, self.process_group)
        self._record_losses(statistics)

        checked = {f"{layer}.{key}": value for layer, sums in statistics.sums.items() for key, value in sums.items()}
        if not self.guard.check(checked, step=self.step_count, domains=self.domains):
            return self._skip()
        try:
            outcomes, bases, new_ema, times = self._run_operator(statistics)
        except torch.linalg.LinAlgError as error:
            self.failed_svd_steps += 1
            if self.config.nan_policy == "raise":
                raise NonFiniteError(
                    f"an SVD failed at step {self.step_count} ({error}); the statistics are probably "
                    "ill-conditioned. Lower the learning rate, or pass nan_policy='skip' to skip such steps"
                ) from error
            logger.warning("skipping step %d: SVD failed (%s)", self.step_count, error)
            return self._skip()

        self.ema.update(new_ema)
        self.last_micro_batches = statistics.n_micro_batches
        squared_norm = 0.0
        for ref in self.layers:
            outcome = outcomes[ref.name]
            ref.lora_B.grad = outcome.grad_B.to(ref.lora_B.dtype)
            ref.lora_A.grad = outcome.grad_A.to(ref.lora_A.dtype)
            squared_norm += float(outcome.grad_B.square().sum() + outcome.grad_A.square().sum())
            self._record_diagnostics(ref, outcome, times[ref.name], statistics.hook_seconds.get(ref.name, 0.0))
        self.last_grad_norm = squared_norm ** 0.5
        self._prepared = {"outcomes": outcomes, "bases": bases}
        logger.debug("IGA step %d prepared in %.4f s", self.step_count, time.perf_counter() - start)
        return True

    def _skip(self) -> bool:
        self.skipped_steps += 1
        self._skipped = True
        self._prepared = None
        for ref in self.layers:
            ref.lora_A.grad = None
            ref.lora_B.grad = None
        return False

    def _run_operator(self, statistics: StepStatistics):
        """Operator on every layer; nothing is committed until all layers succeed."""
        config = self.config
        present = statistics.counts > 0
        outcomes, bases, new_ema, times = {}, {}, {}, {}
        for ref in self.layers:
            layer_start = time.perf_counter()
            dtype = working_dtype(ref)
            basis = statistics.bases.get(ref.name)
            if basis is None and (config.mode == "tangent" or config.placement == "update"):
                basis = tangent_basis(ref.lora_B, ref.lora_A, ref.scaling)
            means = {key: value.to(dtype) for key, value in statistics.means(ref.name).items()}
            vectors = domain_vectors(config.mode, means, basis)

            # The mask comes from the moving averages (remedy "ema") or from this step's
            # vectors; the masked direction mu is always the mean of this step's vectors.
            mask_vectors, active = None, present
            if config.remedy == "ema":
                ema = self.ema.get(ref.name) or DomainEMA(config.rho, self.n_domains)
                mask_vectors, active, new_ema[ref.name] = ema.blend(config.mode, basis, vectors, present)
            n_present = int(present.sum())
            if n_present < 2:
                raise ValueError(
                    f"only {n_present} domain(s) had loss tokens in this optimizer step ({self._counts_text(statistics)}); "
                    "IGA needs at least 2: put all domains of each isomer set into every step's batches"
                )
            vectors = vectors[present.to(vectors.device)]
            if mask_vectors is not None:
                mask_vectors = mask_vectors[active.to(mask_vectors.device)]

            if config.placement == "gradient":
                outcome = layer_gradients(ref, vectors, basis, config, mask_vectors)
            else:
                mu, _, mask = masked_moments(vectors, config, mask_vectors)
                grad_B, grad_A = plain_gradients(ref, mu, basis, config.mode)
                outcome = LayerOutcome(grad_B=grad_B, grad_A=grad_A, mask=mask, mu=mu)
            outcomes[ref.name] = outcome
            bases[ref.name] = basis
            times[ref.name] = time.perf_counter() - layer_start
        return outcomes, bases, new_ema, times

    def _counts_text(self, statistics: StepStatistics) -> str:
        return ", ".join(f"{name}: {int(n)} tokens" for name, n in zip(self.domains, statistics.counts.tolist()))

    def _record_losses(self, statistics: StepStatistics) -> None:
        self.last_domain_losses = {
            name: (float(total / n) if n > 0 else float("nan"))
            for name, total, n in zip(self.domains, statistics.domain_loss_sums.tolist(), statistics.counts.tolist())
        }

    def _record_diagnostics(self, ref: LoraLayerRef, outcome: LayerOutcome, seconds: float,
                            hook_seconds: float) -> None:
        if outcome.safeguard_fired:
            self.safeguard_events[ref.name] += 1
        mask = outcome.mask
        self.diagnostics[ref.name] = {
            "mask_mean": float(mask.mean()),
            "mask_below_half": float((mask < 0.5).to(torch.float32).mean()),
            "projection_residual": outcome.projection_residual,
            "safeguard_events": self.safeguard_events[ref.name],
            "operator_time_s": seconds,
            "hook_time_s": hook_seconds,
        }
        logger.debug("IGA step %d layer %s: %s", self.step_count, ref.name, self.diagnostics[ref.name])

    def apply_update(self, before: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Placement ``update``: mask the step the optimizer just took.

        Parameters
        ----------
        before : dict[layer name, (B, A)]
            Copies of the factors taken right before ``optimizer.step()``
            (`snapshot_factors`).
        """
        if self._prepared is None:
            raise RuntimeError("apply_update needs a prepared step: call prepare_step before the optimizer step")
        for ref in self.layers:
            outcome = self._prepared["outcomes"][ref.name]
            basis = self._prepared["bases"][ref.name]
            B_old, A_old = before[ref.name]
            dB = ref.lora_B.detach() - B_old
            dA = ref.lora_A.detach() - A_old
            dB_new, dA_new, fired = masked_update(ref, basis, outcome, dB, dA, self.config)
            if fired:
                self.safeguard_events[ref.name] += 1
                self.diagnostics[ref.name]["safeguard_events"] = self.safeguard_events[ref.name]
            with torch.no_grad():
                ref.lora_B.copy_(B_old + dB_new.to(B_old.dtype))
                ref.lora_A.copy_(A_old + dA_new.to(A_old.dtype))

    def snapshot_factors(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Copies of every layer's ``(B, A)``, for `apply_update`."""
        return {ref.name: (ref.lora_B.detach().clone(), ref.lora_A.detach().clone()) for ref in self.layers}

    def finish_step(self) -> None:
        """Close the optimizer step (counters); called by `LoraIGAOptimizer.step`."""
        self._prepared = None
        self._skipped = False
        self.step_count += 1

    def retraction_step(self, lr: float) -> bool:
        """Opt-in plain-SGD step: every adapter becomes the rank-r retraction of ``s B A - lr P``.

        Uses the directions of placement ``gradient`` whatever ``config.placement`` is;
        replaces the optimizer for the LoRA factors. Returns False when the step was skipped.
        """
        placement = self.config.placement
        self.config.placement = "gradient"
        try:
            if not self.prepare_step():
                self.finish_step()
                return False
        finally:
            self.config.placement = placement
        for ref in self.layers:
            direction = self._prepared["outcomes"][ref.name].direction
            B_new, A_new = retract(ref, direction, float(lr))
            with torch.no_grad():
                ref.lora_B.copy_(B_new.to(ref.lora_B.dtype))
                ref.lora_A.copy_(A_new.to(ref.lora_A.dtype))
            ref.lora_B.grad = None
            ref.lora_A.grad = None
        self.finish_step()
        return True

    @property
    def step_prepared(self) -> bool:
        """True between `prepare_step` and the end of the optimizer step."""
        return self._prepared is not None

    @property
    def prepared_outcomes(self) -> dict[str, tuple[TangentBasis | None, LayerOutcome]]:
        """Per layer, the tangent basis and operator outcome of the prepared step (empty otherwise).

        The outcome contains the flat mask and mean ``mu`` (coordinates of the mode); read it
        between `prepare_step` and the optimizer step, for diagnostics and studies.
        """
        if self._prepared is None:
            return {}
        return {name: (self._prepared["bases"][name], outcome)
                for name, outcome in self._prepared["outcomes"].items()}

    @property
    def step_skipped(self) -> bool:
        """True when `prepare_step` skipped the current step (NaN policy ``skip``)."""
        return self._skipped

    def summary(self) -> dict[str, float]:
        """Return the diagnostics averaged over layers (events summed), plus the counters.

        A diagnostic that is NaN in every layer (the projection residual where no
        projection ran) is left out.
        """
        out = {"iga/steps": self.step_count, "iga/skipped_steps": self.skipped_steps,
               "iga/failed_svd_steps": self.failed_svd_steps, "iga/grad_norm": self.last_grad_norm}
        for key in DIAGNOSTIC_KEYS:
            values = [d[key] for d in self.diagnostics.values() if not math.isnan(d[key])]
            if not values:
                continue
            out[f"iga/{key}"] = float(sum(values)) if key == "safeguard_events" else float(sum(values) / len(values))
        for name, value in self.last_domain_losses.items():
            out[f"iga/loss_{name}"] = value
        return out


class LoraIGAOptimizer(torch.optim.Optimizer):
    """Optimizer wrapper that runs the IGA step around any torch optimizer.

    ``step()`` does, in order: `LoraIGAProcessor.prepare_step` (unless a training loop
    already called it before its own gradient clipping, as `IGATrainerMixin` does),
    optional clipping of all gradients to ``max_grad_norm``, the wrapped optimizer's
    step, and for placement ``update`` the masking of that step. A step that the NaN
    policy skips leaves parameters and optimizer state unchanged.

    Parameters
    ----------
    optimizer : torch.optim.Optimizer
        Optimizer over the trainable parameters (LoRA factors and any others).
    processor : LoraIGAProcessor
    max_grad_norm : float or None
        Clip the global gradient norm after IGA's surgery; None: no clipping here.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, processor: LoraIGAProcessor,
                 max_grad_norm: float | None = None):
        # The wrapper shares the wrapped optimizer's state instead of calling
        # Optimizer.__init__, so that LR schedulers and checkpoints see one optimizer.
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"optimizer must be a torch.optim.Optimizer; got {type(optimizer).__name__}")
        if max_grad_norm is not None and not max_grad_norm > 0:
            raise ValueError(f"max_grad_norm must be > 0 or None; got {max_grad_norm!r}")
        self.optimizer = optimizer
        self.processor = processor
        self.max_grad_norm = max_grad_norm
        self.last_grad_norm: float | None = None

    # Delegation so that schedulers, accelerate and checkpointing see the wrapped optimizer.
    @property
    def param_groups(self):
        return self.optimizer.param_groups

    @param_groups.setter
    def param_groups(self, value):
        self.optimizer.param_groups = value

    @property
    def state(self):
        return self.optimizer.state

    @property
    def defaults(self):
        return self.optimizer.defaults

    def state_dict(self):
        return self.optimizer.state_dict()

    def load_state_dict(self, state_dict):
        self.optimizer.load_state_dict(state_dict)

    def zero_grad(self, set_to_none: bool = True):
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def add_param_group(self, param_group):
        self.optimizer.add_param_group(param_group)

    def __repr__(self) -> str:
        return f"LoraIGAOptimizer({self.optimizer!r}, placement={self.processor.config.placement!r})"

    def step(self, closure=None):
        """Run one IGA step (see the class docstring); ``closure`` goes to the wrapped optimizer."""
        processor = self.processor
        if not processor.step_prepared and (processor.step_skipped or not processor.prepare_step()):
            processor.finish_step()
            return None
        if self.max_grad_norm is not None:
            params = [p for group in self.param_groups for p in group["params"] if p.grad is not None]
            self.last_grad_norm = float(torch.nn.utils.clip_grad_norm_(params, self.max_grad_norm))

        if processor.config.placement == "update":
            before = processor.snapshot_factors()
            loss = self.optimizer.step(closure)
            processor.apply_update(before)
        else:
            loss = self.optimizer.step(closure)
        processor.finish_step()
        return loss
