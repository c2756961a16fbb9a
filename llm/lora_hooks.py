r"""Per-domain gradient statistics of PEFT LoRA layers from one forward and one backward pass.

A batch contains sequences (or tokens) of several domains, each marked with an integer
domain id. For a LoRA layer ``y = W0 x + s B A drop(x)`` the weight-space gradient of
a domain's risk is

.. math::

    G_e = \Delta_e^T \tilde X_e ,

with :math:`\tilde X_e` the rows of ``drop(x)`` (the input that ``lora_A`` actually
sees, after LoRA dropout) and :math:`\Delta_e` the rows of ``dL/dy`` that belong to
domain ``e``. Two hooks per layer collect it without per-example gradients: a forward
hook on ``lora_A`` keeps its input, and a tensor hook on the output of ``lora_B``
receives ``s * dL/dy`` during the backward pass. Depending on the mode the hook stores,
per domain,

* ``"full"``: the dense ``G_e`` (``p x q``);
* ``"tangent"``: the thin sketches ``G_e V`` (``p x k_A``) and ``U^T G_e``
  (``k_B x q``) in the orthonormal bases of `iga_theory.llm.lora_tangent`.

Loss normalisation. `DomainGradientCapture.loss` computes the token cross-entropy of a
causal LM and weights every token of domain ``e`` by ``1 / (K_b n_e)``, where ``n_e``
is the domain's number of loss tokens in the micro-batch and ``K_b`` the number of
domains present: the returned loss is the mean over domains of each domain's mean token
loss. A tensor hook on that loss records the factor by which the caller scaled it
before ``backward`` (gradient accumulation, loss scaling), so the stored statistics
are always the *token sums* ``sum_{t in e} grad l_t`` and the token counts; an
optimizer step divides one by the other. Several micro-batches therefore accumulate
exactly, and so do several data-parallel ranks (`iga_theory.llm.lora_distributed`).

Domain ids. `DomainGradientCapture.set_domain_ids` takes an integer tensor of shape
``(batch,)`` (one domain per sequence) or ``(batch, seq_len)`` (one per position).
A position's id must be the domain whose loss its activations feed: with one id per
position, sequences packed into one row need a block-diagonal attention mask, because
the hook attributes each row of ``dL/dy`` to that row's own id. A negative id drops a
sequence or position from the statistics and from the loss.

Usage in a plain loop::

    capture = DomainGradientCapture(model, n_domains=K, mode="tangent")
    with capture.installed():
        for batch in loader:
            capture.set_domain_ids(batch["domain_ids"])
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            capture.loss(logits, batch["labels"]).backward()
            ...
            step_statistics = capture.pop_step()   # once per optimizer step

The higher-level `iga_theory.llm.lora_processor.LoraIGAProcessor` does all of this.
"""

from __future__ import annotations

import contextlib
import logging
import time
import warnings
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from iga_theory.errors import IGAWarning, check_positive_int
from iga_theory.llm.lora_tangent import TangentBasis, factor_dtype, tangent_basis

logger = logging.getLogger(__name__)

CAPTURE_MODES = ("full", "tangent")
IGNORE_INDEX = -100


@dataclass
class LoraLayerRef:
    """One PEFT LoRA linear layer and the adapter IGA acts on.

    Attributes
    ----------
    name : str
        Module path in the model (``model.get_submodule(name)`` returns the layer).
    module : peft.tuners.lora.Linear
    adapter : str
        Adapter name (``"default"`` unless the model contains several).
    """

    name: str
    module: nn.Module
    adapter: str

    @property
    def lora_A(self) -> nn.Parameter:
        """``(r, q)`` factor ``A``."""
        return self.module.lora_A[self.adapter].weight

    @property
    def lora_B(self) -> nn.Parameter:
        """``(p, r)`` factor ``B``."""
        return self.module.lora_B[self.adapter].weight

    @property
    def scaling(self) -> float:
        """LoRA scaling ``s`` of ``W0 + s B A``."""
        return float(self.module.scaling[self.adapter])

    @property
    def rank(self) -> int:
        return int(self.lora_A.shape[0])

    @property
    def shape(self) -> tuple[int, int]:
        """``(p, q)``: output and input features."""
        return int(self.lora_B.shape[0]), int(self.lora_A.shape[1])


def find_lora_layers(model: nn.Module, adapter: str | None = None) -> list[LoraLayerRef]:
    """List the PEFT LoRA linear layers of ``model`` for one adapter.

    Parameters
    ----------
    model : nn.Module
        A PEFT model (``get_peft_model``/``PeftModel.from_pretrained``) or any module
        containing ``peft.tuners.lora.Linear`` layers.
    adapter : str or None
        Adapter to act on; None takes the single active adapter.

    Raises
    ------
    ValueError
        No LoRA linear layer, or several active adapters and ``adapter`` is None.
    NotImplementedError
        A LoRA variant (DoRA and the like) or ``lora_bias`` on the chosen adapter: their
        weight gradient is not ``Delta^T X``.
    """
    from peft.tuners.lora import LoraLayer
    from peft.tuners.lora import Linear as LoraLinear

    layers = []
    skipped = []
    for name, module in model.named_modules():
        if not isinstance(module, LoraLayer):
            continue
        if not isinstance(module, LoraLinear):
            skipped.append(f"{name} ({type(module).__name__})")
            continue
        if adapter is None:
            active = [a for a in module.active_adapters if a in module.lora_A]
            if len(active) != 1:
                raise ValueError(
                    f"layer {name!r} has {len(active)} active LoRA adapters {active}; pass adapter=NAME "
                    "to choose the one IGA acts on"
                )
            chosen = active[0]
        else:
            chosen = adapter
        if chosen not in module.lora_A:
            continue
        if chosen in getattr(module, "lora_variant", {}):
            raise NotImplementedError(
                f"layer {name!r} uses the LoRA variant {type(module.lora_variant[chosen]).__name__} "
                f"for adapter {chosen!r}; IGA supports plain LoRA only (use_dora=False and no other variant)"
            )
        if module.lora_B[chosen].bias is not None:
            raise NotImplementedError(
                f"layer {name!r} has a bias on lora_B (lora_bias=True); IGA supports LoRA without that bias"
            )
        layers.append(LoraLayerRef(name, module, chosen))

    if skipped:
        warnings.warn(
            f"IGA acts on LoRA linear layers only; these LoRA layers keep their plain gradient: {skipped}",
            IGAWarning, stacklevel=2,
        )
    if not layers:
        raise ValueError(
            "no PEFT LoRA linear layer found in the model; wrap it with peft.get_peft_model and a LoraConfig "
            "whose target_modules name linear layers"
        )
    return layers


def domain_ids_per_row(domain_ids: torch.Tensor, n_rows: int) -> torch.Tensor:
    """Expand ``domain_ids`` of shape ``(batch,)`` or ``(batch, seq)`` to one id per row of a layer input.

    A layer receives its input flattened to ``(n_rows, features)`` with ``n_rows = batch * seq``.
    """
    if domain_ids.ndim == 1:
        batch = domain_ids.shape[0]
        if n_rows % batch:
            raise ValueError(
                f"a LoRA layer saw {n_rows} rows, not a multiple of the {batch} sequence domain ids; "
                "pass one domain id per sequence of the batch"
            )
        return domain_ids.repeat_interleave(n_rows // batch)
    if domain_ids.numel() != n_rows:
        raise ValueError(
            f"a LoRA layer saw {n_rows} rows but domain_ids has shape {tuple(domain_ids.shape)}; "
            "per-position ids must have the shape of input_ids"
        )
    return domain_ids.reshape(-1)


@dataclass
class _RowPlan:
    """Rows of a flattened layer input sorted by domain, with each domain's slice."""

    order: torch.Tensor
    segments: list[tuple[int, int, int]]  # (domain, start, stop) over the sorted rows


def _row_plan(ids: torch.Tensor, n_domains: int) -> _RowPlan:
    keep = ids >= 0
    order = torch.nonzero(keep).squeeze(1)
    kept = ids[order]
    sort = torch.argsort(kept, stable=True)
    order = order[sort]
    counts = torch.bincount(kept, minlength=n_domains).tolist()
    segments = []
    start = 0
    for domain, count in enumerate(counts):
        if count:
            segments.append((domain, start, start + count))
        start += count
    return _RowPlan(order, segments)


@dataclass
class MicroBatch:
    """Bookkeeping of one forward/loss/backward round.

    ``inv_weight[e] = K_b * n_e`` undoes the loss weight of domain ``e``; ``scale`` is
    the gradient of the backward root with respect to the loss (``1 / accumulation_steps``
    under the HF Trainer); ``token_counts[e] = n_e``.
    """

    domain_ids: torch.Tensor
    plans: dict[int, _RowPlan] = field(default_factory=dict)
    inv_weight: torch.Tensor | None = None
    token_counts: torch.Tensor | None = None
    scale: torch.Tensor | None = None
    domain_losses: torch.Tensor | None = None

    def plan(self, n_rows: int, n_domains: int) -> _RowPlan:
        if n_rows not in self.plans:
            ids = domain_ids_per_row(self.domain_ids, n_rows)
            self.plans[n_rows] = _row_plan(ids, n_domains)
        return self.plans[n_rows]


@dataclass
class StepStatistics:
    """Per-domain token sums of one optimizer step (all micro-batches, this rank).

    Attributes
    ----------
    counts : Tensor, shape (K,), float64
        Loss tokens per domain.
    sums : dict[layer name, dict[str, Tensor]]
        ``"G"``: (K, p, q) in mode ``full``; ``"GV"``: (K, p, k_A) and ``"UG"``: (K, k_B, q)
        in mode ``tangent``. Float32 (float64 for a float64 model).
    bases : dict[layer name, TangentBasis]
        Tangent bases the sketches refer to (mode ``tangent`` only).
    domain_loss_sums : Tensor, shape (K,), float64
        Sum of token losses per domain, for logging.
    n_micro_batches : int
    hook_seconds : dict[layer name, float]
        Host time spent in the backward hooks (on a GPU, launch time only).
    """

    mode: str
    counts: torch.Tensor
    sums: dict[str, dict[str, torch.Tensor]]
    bases: dict[str, TangentBasis]
    domain_loss_sums: torch.Tensor
    n_micro_batches: int = 0
    hook_seconds: dict[str, float] = field(default_factory=dict)

    def means(self, layer: str) -> dict[str, torch.Tensor]:
        """Per-domain mean gradients (sketches) of one layer: ``sums / counts``."""
        out = {}
        for key, value in self.sums[layer].items():
            denominator = self.counts.to(device=value.device, dtype=value.dtype)
            out[key] = value / denominator.clamp(min=1).reshape(-1, *([1] * (value.ndim - 1)))
        return out


def _sketch_full(delta: torch.Tensor, x: torch.Tensor, basis: TangentBasis | None) -> dict[str, torch.Tensor]:
    return {"G": delta.T @ x}


def _sketch_tangent(delta: torch.Tensor, x: torch.Tensor, basis: TangentBasis) -> dict[str, torch.Tensor]:
    return {"GV": delta.T @ (x @ basis.V.Y), "UG": (delta @ basis.U.Y).T @ x}


# Mode -> per-domain sketch of the rows (delta, x) of one domain.
SKETCHES = {"full": _sketch_full, "tangent": _sketch_tangent}


class DomainGradientCapture:
    """Hooks that accumulate per-domain weight-space gradients of PEFT LoRA layers.

    Parameters
    ----------
    model : nn.Module
        PEFT model with LoRA linear layers.
    n_domains : int
        Number K of domains; ids run over ``0 .. K-1``.
    mode : {"full", "tangent"}
        What is stored per domain (see the module docstring).
    layers : list of LoraLayerRef, optional
        Layers to hook; default `find_lora_layers` ``(model, adapter)``.
    adapter : str, optional
        Adapter to act on when ``layers`` is not given.

    Notes
    -----
    Statistics are captured only for forward passes run with gradients enabled, so
    evaluation and generation inside a training step do not disturb them.
    """

    def __init__(self, model: nn.Module, n_domains: int, mode: str = "tangent",
                 layers: list[LoraLayerRef] | None = None, adapter: str | None = None):
        if mode not in SKETCHES:
            raise ValueError(f"mode must be one of {sorted(SKETCHES)}; got {mode!r}")
        self.model = model
        self.n_domains = check_positive_int("n_domains", n_domains)
        self.mode = mode
        self.layers = layers if layers is not None else find_lora_layers(model, adapter)
        self._handles: list = []
        self._current: MicroBatch | None = None
        self._pending_inputs: dict[str, torch.Tensor] = {}
        self._reset_step()

    # ----------------------------------------------------------------- hooks
    def install(self) -> None:
        """Register the forward hooks on every layer (idempotent)."""
        if self._handles:
            return
        for ref in self.layers:
            lora_A = ref.module.lora_A[ref.adapter]
            lora_B = ref.module.lora_B[ref.adapter]
            self._handles.append(lora_A.register_forward_hook(self._make_input_hook(ref)))
            self._handles.append(lora_B.register_forward_hook(self._make_output_hook(ref)))

    def remove(self) -> None:
        """Remove all hooks."""
        for handle in self._handles:
            handle.remove()
        self._handles = []

    @contextlib.contextmanager
    def installed(self):
        """Context manager that installs the hooks and removes them on exit."""
        self.install()
        try:
            yield self
        finally:
            self.remove()

    def _make_input_hook(self, ref: LoraLayerRef):
        def hook(module, args, output):
            if torch.is_grad_enabled() and self._current is not None:
                self._pending_inputs[ref.name] = args[0].detach()
        return hook

    def _make_output_hook(self, ref: LoraLayerRef):
        def hook(module, args, output):
            x = self._pending_inputs.pop(ref.name, None)
            if x is None or not output.requires_grad:
                return
            micro_batch = self._current
            basis = self._basis(ref) if self.mode == "tangent" else None
            output.register_hook(lambda grad: self._accumulate(ref, micro_batch, x, grad, basis))
        return hook

    def _basis(self, ref: LoraLayerRef) -> TangentBasis:
        """Tangent basis of a layer, computed once per optimizer step from its current factors."""
        if ref.name not in self._bases:
            self._bases[ref.name] = tangent_basis(ref.lora_B, ref.lora_A, ref.scaling)
        return self._bases[ref.name]

    def _accumulate(self, ref: LoraLayerRef, micro_batch: MicroBatch, x: torch.Tensor,
                    grad: torch.Tensor, basis: TangentBasis | None) -> None:
        """Backward hook body: add this call's per-domain token sums to the step's statistics."""
        if micro_batch.scale is None:
            raise RuntimeError(
                "the backward pass reached a LoRA layer without passing through the loss returned by "
                "DomainGradientCapture.loss; compute the loss with it, so that each domain's gradient is "
                "normalised by its own token count"
            )
        clock = time.perf_counter()
        dtype = factor_dtype(ref.lora_A.dtype)
        p, q = ref.shape
        delta = grad.reshape(-1, p).to(dtype) / ref.scaling   # rows of dL/dy
        x = x.reshape(-1, q).to(dtype)
        plan = micro_batch.plan(delta.shape[0], self.n_domains)
        delta = delta.index_select(0, plan.order.to(delta.device))
        x = x.index_select(0, plan.order.to(x.device))

        # Undo the loss weight 1 / (K_b n_e) and the caller's scale so that the stored
        # value is the token sum of the domain's per-token gradients.
        factors = (micro_batch.inv_weight.to(delta.device, torch.float64)
                   / micro_batch.scale.to(delta.device, torch.float64)).to(dtype)
        store = self._sums.setdefault(ref.name, {})
        sketch = SKETCHES[self.mode]
        for domain, start, stop in plan.segments:
            for key, value in sketch(delta[start:stop], x[start:stop], basis).items():
                if key not in store:
                    store[key] = value.new_zeros((self.n_domains, *value.shape))
                store[key][domain].add_(value * factors[domain])
        self._hook_seconds[ref.name] = self._hook_seconds.get(ref.name, 0.0) + time.perf_counter() - clock

    # ------------------------------------------------------------ per batch
    def set_domain_ids(self, domain_ids) -> None:
        """Set the domain ids of the next forward pass.

        Parameters
        ----------
        domain_ids : integer tensor or sequence, shape (batch,) or (batch, seq_len)
            Values in ``0 .. K-1``; a negative id excludes a sequence or position.
        """
        ids = torch.as_tensor(domain_ids)
        if ids.dtype.is_floating_point or ids.dtype == torch.bool or ids.is_complex():
            raise TypeError(f"domain_ids must be an integer tensor; got dtype {ids.dtype}")
        if ids.ndim not in (1, 2) or ids.numel() == 0:
            raise ValueError(
                f"domain_ids must have shape (batch,) or (batch, seq_len) and not be empty; got shape {tuple(ids.shape)}"
            )
        if int(ids.max()) >= self.n_domains:
            raise ValueError(
                f"domain_ids must lie in 0 .. {self.n_domains - 1} (negative ids are ignored); "
                f"got max id {int(ids.max())}"
            )
        self._current = MicroBatch(ids.long())

    def clear_domain_ids(self) -> None:
        """Stop capturing: forward passes until the next `set_domain_ids` are not recorded."""
        self._current = None

    def loss(self, logits: torch.Tensor, labels: torch.Tensor, shift: bool = True,
             ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
        r"""Domain-balanced token cross-entropy :math:`\frac{1}{K_b} \sum_e \frac{1}{n_e} \sum_{t \in e} \ell_t`.

        Parameters
        ----------
        logits : Tensor, shape (batch, seq_len, vocab)
        labels : LongTensor, shape (batch, seq_len)
            Target token ids, ``ignore_index`` where no loss is taken.
        shift : bool
            Causal-LM convention of Hugging Face: position ``t`` predicts ``labels[t + 1]``
            (and its loss belongs to the domain of position ``t``). False when the labels
            are already aligned with the logits.
        ignore_index : int

        Returns
        -------
        loss : 0-d Tensor, float32
            Call ``backward`` on it (possibly scaled); the hooks then store each domain's
            token-sum gradient.
        """
        micro_batch = self._current
        if micro_batch is None:
            raise RuntimeError("call set_domain_ids before the forward pass and the loss")
        if logits.ndim != 3 or labels.shape != logits.shape[:2]:
            raise ValueError(
                f"logits must be (batch, seq_len, vocab) and labels (batch, seq_len); got "
                f"{tuple(logits.shape)} and {tuple(labels.shape)}"
            )
        ids = micro_batch.domain_ids.to(labels.device)
        ids = ids[:, None].expand(labels.shape) if ids.ndim == 1 else ids
        if ids.shape != labels.shape:
            raise ValueError(f"domain_ids of shape {tuple(ids.shape)} do not match labels of shape {tuple(labels.shape)}")
        if shift:
            logits, labels, ids = logits[:, :-1], labels[:, 1:], ids[:, :-1]

        token_loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).to(factor_dtype(logits.dtype)), labels.reshape(-1),
                                     ignore_index=ignore_index, reduction="none")
        ids = ids.reshape(-1)
        valid = (labels.reshape(-1) != ignore_index) & (ids >= 0)
        domain_of_token = torch.where(valid, ids, torch.zeros_like(ids))
        counts = torch.bincount(domain_of_token[valid], minlength=self.n_domains).to(torch.float64)
        n_present = int((counts > 0).sum())
        if n_present == 0:
            raise ValueError("the batch has no loss token with a domain id >= 0; check labels and domain_ids")

        inv_weight = n_present * counts                        # K_b n_e
        token_weight = torch.where(valid, 1.0 / inv_weight.clamp(min=1)[domain_of_token], 0.0)
        loss = (token_loss * token_weight.to(token_loss.dtype)).sum()

        micro_batch.inv_weight = inv_weight
        micro_batch.token_counts = counts
        loss_sums = torch.zeros(self.n_domains, dtype=torch.float64, device=labels.device)
        micro_batch.domain_losses = loss_sums.index_add_(0, domain_of_token[valid],
                                                         token_loss.detach()[valid].to(torch.float64))
        if loss.requires_grad:
            loss.register_hook(lambda grad: self._on_loss_grad(micro_batch, grad))
        return loss

    def _on_loss_grad(self, micro_batch: MicroBatch, grad: torch.Tensor) -> None:
        """Record the caller's scale and count the micro-batch's tokens once its backward starts."""
        micro_batch.scale = grad.detach().reshape(())
        self._counts += micro_batch.token_counts.cpu()
        self._loss_sums += micro_batch.domain_losses.cpu()
        self._n_micro_batches += 1

    # -------------------------------------------------------------- per step
    def _reset_step(self) -> None:
        self._sums: dict[str, dict[str, torch.Tensor]] = {}
        self._bases: dict[str, TangentBasis] = {}
        self._hook_seconds: dict[str, float] = {}
        self._counts = torch.zeros(self.n_domains, dtype=torch.float64)
        self._loss_sums = torch.zeros(self.n_domains, dtype=torch.float64)
        self._n_micro_batches = 0

    @property
    def has_statistics(self) -> bool:
        """True when at least one backward pass has been captured since the last `pop_step`."""
        return self._n_micro_batches > 0

    def pop_step(self) -> StepStatistics:
        """Return the statistics accumulated since the last call and start a new step.

        Raises
        ------
        RuntimeError
            No backward pass was captured.
        """
        if not self.has_statistics:
            raise RuntimeError(
                "no gradient statistics were captured since the last optimizer step; run a forward pass "
                "after set_domain_ids and call backward on the loss from DomainGradientCapture.loss"
            )
        statistics = StepStatistics(self.mode, self._counts, self._sums, self._bases,
                                    self._loss_sums, self._n_micro_batches, self._hook_seconds)
        for ref in self.layers:
            if ref.name not in statistics.sums:
                raise RuntimeError(
                    f"LoRA layer {ref.name!r} received no gradient in this step; IGA needs every hooked "
                    "layer on the path from the inputs to the loss"
                )
        self._reset_step()
        self._pending_inputs.clear()
        return statistics

    def discard_step(self) -> None:
        """Drop the statistics of the current step (after a skipped step)."""
        self._reset_step()
        self._pending_inputs.clear()
