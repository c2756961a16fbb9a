"""IGA in the Hugging Face ``Trainer``: a mixin, a ready subclass and a collator.

`IGATrainerMixin` adds to any ``transformers.Trainer`` subclass:

* a `LoraIGAProcessor` attached to the model, which reads ``domain_ids`` from each
  batch (the column is kept although the model's forward does not name it) and
  replaces ``outputs.loss`` by the domain-balanced loss;
* the IGA surgery at the last micro-batch of every optimizer step, right after its
  backward pass and so before the Trainer clips gradients (``max_grad_norm``);
  gradient accumulation therefore accumulates per-domain statistics over the
  micro-batches and applies the operator once per optimizer step;
* the optimizer wrapped in `LoraIGAOptimizer` (placement ``update`` and the NaN
  policy act inside ``optimizer.step()``);
* IGA diagnostics in the Trainer's logs (``iga/mask_mean``, ``iga/safeguard_events``,
  per-domain losses, ...), and per layer with ``iga_log_layers=True``;
* IGA's state saved with every checkpoint (`lora_state`) and restored on resume.

Usage::

    from iga_theory.llm.lora_trainer import IGATrainer
    trainer = IGATrainer(model=peft_model, args=TrainingArguments(...), train_dataset=dataset,
                         data_collator=DomainCollator(base_collator),
                         iga_domains=["math", "medicine", "law"],
                         iga_config=LoraIGAConfig(mode="tangent"))
    trainer.train()

Each dataset row carries an integer ``domain_ids`` (its index in ``iga_domains``), or a
list of one id per token. `DomainCollator` keeps it out of a base collator that would
not know it (padding collators) and stacks it into a tensor; ``default_data_collator``
handles an integer column by itself.

With a plain ``Trainer``, pass ``optimizers=(LoraIGAOptimizer(...), None)``, set
``TrainingArguments(max_grad_norm=0, remove_unused_columns=False)`` and give the
wrapper ``max_grad_norm``: the surgery then runs inside ``optimizer.step()``, after
the Trainer's (disabled) clipping and before the wrapper's own.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import torch
from transformers import Trainer

from iga_theory.llm.lora_operator import LoraIGAConfig
from iga_theory.llm.lora_processor import LoraIGAOptimizer, LoraIGAProcessor
from iga_theory.llm.lora_state import STATE_JSON, load_iga_state, save_iga_state

logger = logging.getLogger(__name__)

DOMAIN_COLUMN = "domain_ids"


class DomainCollator:
    """Collate ``domain_ids`` apart from the other columns.

    Parameters
    ----------
    base_collator : callable
        Collator for the remaining columns (for example
        ``DataCollatorForLanguageModeling(tokenizer, mlm=False)``).
    pad_id : int
        Fill value for per-token ids of sequences shorter than the longest (-1 excludes
        the padding from the statistics).
    """

    def __init__(self, base_collator, pad_id: int = -1):
        self.base_collator = base_collator
        self.pad_id = pad_id

    def __call__(self, features):
        ids = [feature[DOMAIN_COLUMN] for feature in features]
        rest = [{key: value for key, value in feature.items() if key != DOMAIN_COLUMN} for feature in features]
        batch = self.base_collator(rest)
        if all(isinstance(value, int) or (torch.is_tensor(value) and value.ndim == 0) for value in ids):
            batch[DOMAIN_COLUMN] = torch.as_tensor([int(value) for value in ids], dtype=torch.long)
            return batch
        rows = [torch.as_tensor(value, dtype=torch.long).reshape(-1) for value in ids]
        length = max(row.numel() for row in rows)
        padded = torch.full((len(rows), length), self.pad_id, dtype=torch.long)
        for i, row in enumerate(rows):
            padded[i, :row.numel()] = row
        batch[DOMAIN_COLUMN] = padded
        return batch


class IGATrainerMixin:
    """Mixin adding IGA to a ``transformers.Trainer`` subclass (see the module docstring).

    Extra keyword arguments
    -----------------------
    iga_domains : sequence of str or int
        Domain names (ids index into them) or their number.
    iga_config : LoraIGAConfig, optional
    iga_adapter : str, optional
        Adapter to act on when the model contains several.
    iga_log_layers : bool
        Also log every layer's diagnostics (``iga/<layer>/<key>``).
    """

    def __init__(self, *args, iga_domains: Sequence[str] | int, iga_config: LoraIGAConfig | None = None,
                 iga_adapter: str | None = None, iga_log_layers: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.iga = LoraIGAProcessor(self.model, iga_domains, iga_config, adapter=iga_adapter)
        self.iga.attach()
        self.iga_log_layers = iga_log_layers

    def _set_signature_columns_if_needed(self) -> None:
        super()._set_signature_columns_if_needed()
        if DOMAIN_COLUMN not in self._signature_columns:
            self._signature_columns.append(DOMAIN_COLUMN)

    def create_optimizer(self, model=None):
        optimizer = super().create_optimizer(model) if model is not None else super().create_optimizer()
        if not isinstance(optimizer, LoraIGAOptimizer):
            self.optimizer = LoraIGAOptimizer(optimizer, self.iga)
        return self.optimizer

    def training_step(self, model, inputs, num_items_in_batch=None):
        if DOMAIN_COLUMN not in inputs:
            raise KeyError(
                f"the batch has no {DOMAIN_COLUMN!r} column; give every dataset row its domain id and keep "
                "the column through the collator (DomainCollator)"
            )
        loss = super().training_step(model, inputs, num_items_in_batch)
        # The Trainer sets sync_gradients on the last micro-batch of an optimizer step;
        # the surgery runs now, before it clips the gradients and steps the optimizer.
        if self.accelerator.sync_gradients:
            self.iga.prepare_step()
        return loss

    def log(self, logs: dict[str, float], *args, **kwargs) -> None:
        if "loss" in logs and self.iga.step_count:
            logs.update(self.iga.summary())
            if self.iga_log_layers:
                for layer, values in self.iga.diagnostics.items():
                    logs.update({f"iga/{layer}/{key}": value for key, value in values.items()})
        super().log(logs, *args, **kwargs)

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False):
        super().save_model(output_dir, _internal_call=_internal_call)
        if self.args.should_save:
            save_iga_state(self.iga, output_dir if output_dir is not None else self.args.output_dir)

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        super()._load_from_checkpoint(resume_from_checkpoint, model)
        if (Path(resume_from_checkpoint) / STATE_JSON).is_file():
            load_iga_state(self.iga, resume_from_checkpoint)
            logger.info("restored IGA state from %s (step %d)", resume_from_checkpoint, self.iga.step_count)


class IGATrainer(IGATrainerMixin, Trainer):
    """``transformers.Trainer`` with IGA on the model's LoRA layers (see `IGATrainerMixin`)."""
