"""One distillation run (one method, one seed): LoRA student, training loop, checkpoints, evaluation.

Run folder layout::

    RUN/log.jsonl            one JSON record per optimizer step
    RUN/checkpoints/         step-NNNNNNNN/ folders and latest.json (safetensors + JSON)
    RUN/adapter/             the trained adapter, PEFT's save_pretrained format
    RUN/predictions.jsonl    generated rationales, parsed and true answers per test item
    RUN/done.json            per-set scores of the test splits and timings (the run is finished)

A checkpoint holds the trainable (LoRA) parameters, the AdamW state, the scheduler,
the random number generator states and the method's own state (IGA's moving averages
and counters, GroupDRO's domain weights). The data position needs no state of its
own: the batch of step t is a pure function of (seed, t) (`distill_pretrain.epoch_positions`),
and each log record shows it as ``epoch`` and ``offset`` in the sequence of training sets. A killed run
restarted on the same folder continues from its last checkpoint and reproduces the
uninterrupted run exactly on the same machine and thread count.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from iga_theory.llm.distill_checkpoint import (
    CheckpointManager, StepLog, capture_rng_state, load_trainable_state, restore_rng_state, trainable_state,
)
from iga_theory.llm.distill_config import DistillConfig
from iga_theory.llm.distill_data import DistillData, collate
from iga_theory.llm.distill_eval import predict, score_split
from iga_theory.llm.distill_methods import StepBatch, make_method
from iga_theory.llm.distill_pretrain import epoch_positions
from iga_theory.runs import atomic_write_json, atomic_write_text

logger = logging.getLogger(__name__)

TORCH_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# Stream of the batch order of the training sets (pre-training uses stream 1).
DATA_STREAM = 100


def resolve_device(name: str) -> torch.device:
    """``"auto"`` -> cuda when available, else cpu; ``"cuda"`` without a GPU is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("runtime.device is 'cuda' but torch sees no CUDA device; use 'cpu' or 'auto'")
    return torch.device(name)


def load_base_model(name_or_path: str | Path, dtype: str, device: torch.device):
    """Load a causal LM with ``from_pretrained`` (local folder or hub name), safetensors weights only.

    Pickle-based ``.bin`` checkpoints are refused (``use_safetensors=True``) so that no
    user file is ever unpickled.
    """
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(name_or_path), dtype=TORCH_DTYPES[dtype], use_safetensors=True)
    return model.to(device)


def build_student(config: DistillConfig, base_path: str | Path, seed: int, device: torch.device):
    """Load the base model and attach a fresh LoRA adapter initialised from ``seed``."""
    from peft import LoraConfig, get_peft_model

    base = load_base_model(base_path, config.model.dtype, device)
    targets = config.lora.target_modules
    lora_config = LoraConfig(
        r=config.lora.r, lora_alpha=config.lora.alpha, lora_dropout=config.lora.dropout,
        target_modules=targets[0] if targets == ["all-linear"] else list(targets), task_type="CAUSAL_LM",
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = get_peft_model(base, lora_config)
    return model


def make_step_batch(data: DistillData, sets_per_step: int, step: int, seed: int, pad_id: int,
                    device: torch.device) -> tuple[StepBatch, dict]:
    """Assemble the minibatches of step ``step``: ``sets_per_step`` isomer sets in every training domain.

    Returns the batch (rows grouped by domain, the sets in the same order in every
    domain) and its position in the epoch sequence of the sets (for the log).
    """
    indices, position = epoch_positions(len(data.train_sets), sets_per_step, step, seed, DATA_STREAM)
    chosen = [data.train_sets[i] for i in indices]
    per_domain_examples = [[renderings[e] for renderings in chosen] for e in range(len(data.train_domains))]
    per_domain = [{k: v.to(device) for k, v in collate(examples, pad_id).items()} for examples in per_domain_examples]
    combined = collate([x for examples in per_domain_examples for x in examples], pad_id)
    return StepBatch({k: v.to(device) for k, v in combined.items()}, per_domain), position


def save_adapter(model, folder: Path) -> None:
    """Write the adapter with PEFT's ``save_pretrained`` (safetensors) into ``folder`` atomically."""
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}-"))
    try:
        model.save_pretrained(str(tmp), safe_serialization=True)
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _log_record(step: int, method: str, seed: int, diagnostics: dict, lr: float, position: dict,
                seconds: float) -> dict:
    record = {"step": step, "method": method, "seed": seed, "lr": lr, "seconds": seconds}
    record.update(diagnostics)
    record.update(position)
    return record


def train_run(config: DistillConfig, data: DistillData, tokenizer, base_path: str | Path, method_name: str,
              seed: int, run_dir: str | Path, device: torch.device, progress: bool = True) -> dict:
    """Train (or resume) one method with one seed, save the adapter and score the test splits.

    Parameters
    ----------
    config : DistillConfig
    data : DistillData
    tokenizer : the student's tokenizer
    base_path : local folder or hub name of the base model
    method_name : a key of `distill_methods.METHODS`
    seed : int
        Seeds the LoRA initialisation, dropout and the batch order.
    run_dir : path
        The run folder (see the module docstring); a finished run is read back, not redone.
    device : torch.device

    Returns
    -------
    dict: the contents of ``done.json`` (``scores`` per split, timings, final loss).
    """
    run_dir = Path(run_dir)
    done_path = run_dir / "done.json"
    if done_path.exists():
        return json.loads(done_path.read_text(encoding="utf-8"))
    run_dir.mkdir(parents=True, exist_ok=True)
    train = config.train

    torch.manual_seed(seed)
    model = build_student(config, base_path, seed, device)
    model.train()
    method = make_method(method_name, model, data.train_domains, config)
    manager = CheckpointManager(run_dir / "checkpoints", keep=train.keep_checkpoints)
    log = StepLog(run_dir / "log.jsonl")

    # Resume: parameters, optimizer, scheduler, method state, then the generators last.
    start = 0
    saved = manager.load()
    if saved is not None:
        start, parts, folder = saved
        load_trainable_state(model, parts["model"])
        method.optimizer.load_state_dict(parts["optimizer"])
        method.scheduler.load_state_dict(parts["scheduler"])
        method.load_extra_state(parts["method"], folder)
        restore_rng_state(parts["rng"])
        logger.info("%s seed %d resumes at step %d", method_name, seed, start)
    log.truncate_after(start - 1)

    began = time.perf_counter()
    try:
        for step in tqdm(range(start, train.steps), desc=f"{method_name} seed {seed}", unit="step",
                         disable=not progress, initial=start, total=train.steps):
            # One minibatch per domain, then the method's step.
            step_start = time.perf_counter()
            batch, position = make_step_batch(data, train.sets_per_step, step, seed,
                                              tokenizer.pad_token_id, device)
            diagnostics = method.step(batch, step)
            log.append(_log_record(step, method_name, seed, diagnostics, method.scheduler.get_last_lr()[0],
                                   position, time.perf_counter() - step_start))

            # Checkpoint (log synced first, so the log never lags behind a checkpoint).
            if (step + 1) % train.checkpoint_every == 0 or step + 1 == train.steps:
                log.sync()
                manager.save(step + 1, {
                    "model": trainable_state(model), "optimizer": method.optimizer.state_dict(),
                    "scheduler": method.scheduler.state_dict(), "method": method.extra_state(),
                    "rng": capture_rng_state(),
                }, write_files=method.save_state_files)
    finally:
        log.close()
        method.close()
    train_seconds = time.perf_counter() - began

    # Adapter, then evaluation on the in-domain and held-out test splits.
    save_adapter(model, run_dir / "adapter")
    eval_start = time.perf_counter()
    evaluation = config.eval
    splits = {"in_domain": (data.test_id, data.train_domains), "ood": (data.test_ood, data.heldout_domains)}
    scores, records = {}, []
    for split, (items, domains) in splits.items():
        if not items:
            scores[split] = None
            continue
        predictions = predict(model, tokenizer, items, evaluation.max_new_tokens, evaluation.batch_size,
                              evaluation.pooling, progress=progress)
        scores[split] = score_split(predictions, domains)
        records.extend(prediction.to_record() for prediction in predictions)
    atomic_write_text(run_dir / "predictions.jsonl", "".join(json.dumps(r) + "\n" for r in records))

    history = [record.get("loss") for record in log.records()]
    history = [value for value in history if value is not None]
    done = {"method": method_name, "seed": seed, "steps": train.steps, "scores": scores,
            "final_loss": float(np.mean(history[-10:])) if history else None,
            "train_seconds_this_session": train_seconds, "eval_seconds": time.perf_counter() - eval_start,
            "resumed_from_step": start}
    atomic_write_json(done_path, done)
    return done
