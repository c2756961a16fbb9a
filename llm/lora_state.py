"""Save and restore the state of a `LoraIGAProcessor` without pickle.

Two files in one folder, next to (or apart from) the PEFT adapter files:

* ``iga_state.safetensors``: the tensors, keyed ``ema/<layer>/<name>``: per layer the
  EMA of the per-domain mean gradients (``values`` in mode ``full``, the thin factors
  ``left`` and ``right`` of each domain's tangent vector in mode ``tangent``) and
  ``seen``, the number of steps each domain has been averaged over.
* ``iga_state.json``: format version, domain names, the operator configuration, the
  layer names and shapes, the counters (steps, skipped steps, failed SVDs, safeguard
  events per layer).

Both are written atomically (temporary file, then ``os.replace``). The adapter itself
is saved by PEFT (``model.save_pretrained``) and stays loadable by plain PEFT: IGA
never changes the adapter's files or format. The EMA of mode ``tangent`` is stored as
thin factors of weight-space matrices, so it does not depend on the tangent bases of
the step it was saved at; the bases are recomputed from the adapter after loading.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save

from iga_theory.config import from_dict, to_dict
from iga_theory.llm.lora_operator import LoraIGAConfig
from iga_theory.llm.lora_processor import DomainEMA, LoraIGAProcessor
from iga_theory.nan_policy import NanGuard
from iga_theory.runs import atomic_write_bytes, atomic_write_json, remove_stale_temporaries

STATE_TENSORS = "iga_state.safetensors"
STATE_JSON = "iga_state.json"
FORMAT_VERSION = 1


def save_iga_state(processor: LoraIGAProcessor, folder: str | Path) -> Path:
    """Write the processor's state to ``folder`` (created if needed); return the folder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    # A save of this folder that was killed midway left its temporary files behind.
    remove_stale_temporaries(folder, (STATE_TENSORS, STATE_JSON))
    tensors = {}
    for name, ema in processor.ema.items():
        tensors[f"ema/{name}/seen"] = ema.seen.contiguous()
        for key in ("values", "left", "right"):
            value = getattr(ema, key)
            if value is not None:
                tensors[f"ema/{name}/{key}"] = value.detach().to("cpu").contiguous()
    metadata = {
        "format_version": FORMAT_VERSION,
        "domains": processor.domains,
        "config": to_dict(processor.config),
        "layers": {ref.name: list(ref.shape) + [ref.rank] for ref in processor.layers},
        "step_count": processor.step_count,
        "skipped_steps": processor.skipped_steps,
        "failed_svd_steps": processor.failed_svd_steps,
        "safeguard_events": processor.safeguard_events,
    }
    atomic_write_bytes(folder / STATE_TENSORS, save(tensors))
    atomic_write_json(folder / STATE_JSON, metadata)
    return folder


def read_iga_metadata(folder: str | Path) -> dict:
    """The JSON half of a saved state, validated for its format version."""
    path = Path(folder) / STATE_JSON
    if not path.is_file():
        raise FileNotFoundError(f"no {STATE_JSON} in {str(folder)!r}; pass a folder written by save_iga_state")
    try:
        metadata = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON ({error.msg}); the state file is damaged") from error
    if metadata.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"{path} has format_version {metadata.get('format_version')!r}; this library reads version {FORMAT_VERSION}"
        )
    return metadata


def load_iga_state(processor: LoraIGAProcessor, folder: str | Path) -> LoraIGAProcessor:
    """Restore a saved state into ``processor``; return it.

    The processor must act on the same domains (same names, same order) and the same
    LoRA layers with the same shapes and ranks, in the same mode; otherwise a
    ValueError names the difference. The saved configuration replaces the
    processor's, so a resumed run continues with the settings it was saved with.
    """
    folder = Path(folder)
    metadata = read_iga_metadata(folder)
    if metadata["domains"] != processor.domains:
        raise ValueError(
            f"the saved state has domains {metadata['domains']}, the processor {processor.domains}; "
            "create the processor with the saved domain list"
        )
    layers = {ref.name: list(ref.shape) + [ref.rank] for ref in processor.layers}
    if metadata["layers"] != layers:
        missing = sorted(set(metadata["layers"]) ^ set(layers))
        raise ValueError(
            f"the saved state covers other LoRA layers or shapes than the model (differing: "
            f"{missing or 'shapes or ranks'}); load it into the model it was saved from"
        )
    config = from_dict(LoraIGAConfig, metadata["config"])
    if config.mode != processor.config.mode:
        raise ValueError(
            f"the saved state is for mode {config.mode!r}, the processor runs mode {processor.config.mode!r}"
        )

    tensors_path = folder / STATE_TENSORS
    if not tensors_path.is_file():
        raise FileNotFoundError(f"no {STATE_TENSORS} in {str(folder)!r}; the state was not saved completely")
    tensors = load_file(tensors_path)
    ema = {}
    for ref in processor.layers:
        seen = tensors.get(f"ema/{ref.name}/seen")
        if seen is None:
            continue
        average = DomainEMA(config.rho, len(processor.domains))
        average.seen = seen.to(torch.float64)
        device = ref.lora_A.device
        for key in ("values", "left", "right"):
            value = tensors.get(f"ema/{ref.name}/{key}")
            if value is not None:
                setattr(average, key, value.to(device))
        ema[ref.name] = average

    processor.config = config
    processor.guard = NanGuard(config.nan_policy, logger=processor.guard.logger)
    processor.ema = ema
    processor.step_count = int(metadata["step_count"])
    processor.skipped_steps = int(metadata["skipped_steps"])
    processor.failed_svd_steps = int(metadata["failed_svd_steps"])
    processor.safeguard_events = {name: int(count) for name, count in metadata["safeguard_events"].items()}
    return processor
