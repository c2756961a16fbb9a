"""Checkpoints of a training run in safetensors and JSON, written atomically, never unpickled.

A checkpoint is a folder ``step-NNNNNNNN`` with one pair of files per part.
``PART.safetensors`` contains every tensor of the part, and ``PART.json`` the rest of
its structure, with each tensor replaced by a reference to its safetensors key.
Parts are plain nested containers of tensors, integer numpy arrays, numbers, strings,
booleans and None, such as ``optimizer.state_dict()``, a scheduler's ``state_dict()``,
the random number generator states and the trainable parameters. The JSON encoding keeps what JSON
cannot hold directly: tuples, dictionaries with non-string keys (an optimizer state is
keyed by integers) and non-finite floats.

Atomicity. A checkpoint is written into a temporary folder, every file is flushed and
fsynced, and the folder is renamed into place; only then does ``latest.json`` (written
with `iga_theory.runs.atomic_write_json`) point at it. A run killed at any moment
therefore leaves the previous checkpoint intact and referenced.

Loading reads safetensors and JSON only: nothing in a checkpoint can execute code.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from iga_theory.runs import atomic_write_json, atomic_write_text

logger = logging.getLogger(__name__)

LATEST_FILE = "latest.json"
_TENSOR, _TUPLE, _DICT, _FLOAT, _ARRAY = "__tensor__", "__tuple__", "__dict__", "__float__", "__ndarray__"


# ----- nested containers <-> (tensors, JSON) -------------------------------------------------


def flatten_state(obj: Any) -> tuple[dict[str, torch.Tensor], Any]:
    """Split a nested container into its tensors and a JSON-ready skeleton.

    Returns
    -------
    tensors : dict[str, Tensor]
        Contiguous CPU copies, keyed ``t0, t1, ...`` in traversal order.
    skeleton : JSON-ready data
        ``obj`` with each tensor replaced by ``{"__tensor__": key}``.

    Raises
    ------
    TypeError
        An object of a type other than tensor, integer ndarray, dict, list, tuple, str, int,
        float, bool and None.
    """
    tensors: dict[str, torch.Tensor] = {}

    def encode(value: Any, where: str) -> Any:
        if isinstance(value, torch.Tensor):
            key = f"t{len(tensors)}"
            tensors[key] = value.detach().to("cpu").clone().contiguous()
            return {_TENSOR: key}
        if isinstance(value, dict):
            if all(isinstance(k, str) and not k.startswith("__") for k in value):
                return {k: encode(v, f"{where}.{k}") for k, v in value.items()}
            return {_DICT: [[encode(k, where), encode(v, f"{where}[{k!r}]")] for k, v in value.items()]}
        if isinstance(value, tuple):
            return {_TUPLE: [encode(v, f"{where}[{i}]") for i, v in enumerate(value)]}
        if isinstance(value, list):
            return [encode(v, f"{where}[{i}]") for i, v in enumerate(value)]
        if isinstance(value, bool) or value is None or isinstance(value, (str, int)):
            return value
        if isinstance(value, float):
            return value if math.isfinite(value) else {_FLOAT: repr(value)}
        if isinstance(value, (np.integer, np.floating, np.bool_)):
            return encode(value.item(), where)
        if isinstance(value, np.ndarray) and value.dtype.kind in "biu":
            return {_ARRAY: value.tolist(), "dtype": value.dtype.str}
        raise TypeError(f"cannot store {where or 'the state'} of type {type(value).__name__} in a checkpoint")

    return tensors, encode(obj, "")


def unflatten_state(skeleton: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """Inverse of `flatten_state`; raise ValueError on a reference to a missing tensor."""
    if isinstance(skeleton, list):
        return [unflatten_state(v, tensors) for v in skeleton]
    if not isinstance(skeleton, dict):
        return skeleton
    if _TENSOR in skeleton:
        key = skeleton[_TENSOR]
        if key not in tensors:
            raise ValueError(f"checkpoint refers to tensor {key!r}, which its safetensors file does not contain")
        return tensors[key]
    if _TUPLE in skeleton:
        return tuple(unflatten_state(v, tensors) for v in skeleton[_TUPLE])
    if _DICT in skeleton:
        return {unflatten_state(k, tensors): unflatten_state(v, tensors) for k, v in skeleton[_DICT]}
    if _FLOAT in skeleton:
        return float(skeleton[_FLOAT])
    if _ARRAY in skeleton:
        return np.asarray(skeleton[_ARRAY], dtype=np.dtype(skeleton["dtype"]))
    return {k: unflatten_state(v, tensors) for k, v in skeleton.items()}


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def save_part(folder: str | Path, name: str, obj: Any) -> None:
    """Write ``obj`` as ``folder/name.safetensors`` and ``folder/name.json`` (both fsynced)."""
    folder = Path(folder)
    tensors, skeleton = flatten_state(obj)
    save_file(tensors, str(folder / f"{name}.safetensors"))
    (folder / f"{name}.json").write_text(json.dumps(skeleton, allow_nan=False), encoding="utf-8")
    _fsync_file(folder / f"{name}.safetensors")
    _fsync_file(folder / f"{name}.json")


def load_part(folder: str | Path, name: str) -> Any:
    """Read a part written by `save_part` (safetensors and JSON only)."""
    folder = Path(folder)
    tensors = load_file(str(folder / f"{name}.safetensors"))
    skeleton = json.loads((folder / f"{name}.json").read_text(encoding="utf-8"))
    return unflatten_state(skeleton, tensors)


# ----- random number generators -------------------------------------------------------------


def capture_rng_state() -> dict:
    """States of Python's, numpy's global and torch's CPU (and CUDA) generators."""
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(legacy=False),
        "torch_cpu": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["torch_cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict) -> None:
    """Restore the generator states captured by `capture_rng_state`."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch_cpu"].to(torch.uint8))
    if "torch_cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.to(torch.uint8) for s in state["torch_cuda"]])


# ----- trainable parameters -----------------------------------------------------------------


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Return the parameters of ``model`` that require a gradient, by name."""
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def load_trainable_state(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Copy saved trainable parameters into ``model``; raise ValueError when the names differ."""
    params = trainable_state(model)
    if set(params) != set(state):
        missing = sorted(set(params) - set(state))[:5]
        extra = sorted(set(state) - set(params))[:5]
        raise ValueError(
            f"checkpoint does not match the model's trainable parameters (missing {missing}, unexpected "
            f"{extra}); resume with the configuration the run was started with")
    with torch.no_grad():
        for name, param in params.items():
            param.copy_(state[name].to(param.device, param.dtype))


# ----- checkpoint folders -------------------------------------------------------------------


class CheckpointManager:
    """Numbered checkpoint folders under ``root`` with an atomic ``latest.json`` pointer.

    Parameters
    ----------
    root : path
        Folder of the checkpoints (created when missing).
    keep : int
        Number of most recent checkpoints kept; older ones are deleted after a save.
    """

    def __init__(self, root: str | Path, keep: int = 2):
        if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
            raise ValueError(f"keep must be an integer >= 1; got {keep!r}")
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.keep = keep

    def _folder(self, step: int) -> Path:
        return self.root / f"step-{step:08d}"

    def latest_step(self) -> int | None:
        """Step of the checkpoint ``latest.json`` points at, or None when there is none."""
        pointer = self.root / LATEST_FILE
        if not pointer.exists():
            return None
        data = json.loads(pointer.read_text(encoding="utf-8"))
        step = data.get("step")
        if isinstance(step, bool) or not isinstance(step, int) or not self._folder(step).is_dir():
            raise ValueError(
                f"{pointer} points at a missing or invalid checkpoint {data!r}; delete the run folder to restart")
        return step

    def save(self, step: int, parts: dict[str, Any], write_files: Callable[[Path], None] | None = None) -> Path:
        """Write ``parts`` (name -> nested container) as the checkpoint of ``step``.

        ``write_files(folder)``, when given, adds files of its own into the checkpoint
        folder before it is moved into place (a component with its own safetensors
        format, such as the IGA processor's state).
        """
        tmp = Path(tempfile.mkdtemp(dir=self.root, prefix=f".step-{step:08d}-"))
        try:
            for name, obj in parts.items():
                save_part(tmp, name, obj)
            if write_files is not None:
                write_files(tmp)
            final = self._folder(step)
            if final.exists():  # left by a kill between the rename and the pointer update
                shutil.rmtree(final)
            os.replace(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        atomic_write_json(self.root / LATEST_FILE, {"step": step})
        self._prune(step)
        logger.debug("checkpoint of step %d written to %s", step, final)
        return final

    def load(self) -> tuple[int, dict[str, Any], Path] | None:
        """Return ``(step, parts, folder)`` of the latest checkpoint, or None when there is none."""
        step = self.latest_step()
        if step is None:
            return None
        folder = self._folder(step)
        names = sorted(path.stem for path in folder.glob("*.json"))
        return step, {name: load_part(folder, name) for name in names}, folder

    def _prune(self, latest: int) -> None:
        """Delete checkpoints beyond the ``keep`` most recent, and stale temporary folders."""
        folders = sorted(p for p in self.root.glob("step-*") if p.is_dir())
        for folder in folders[:-self.keep]:
            if folder != self._folder(latest):
                shutil.rmtree(folder, ignore_errors=True)
        for stale in self.root.glob(".step-*"):
            shutil.rmtree(stale, ignore_errors=True)


# ----- the per-step log ----------------------------------------------------------------------


class StepLog:
    """Append-only JSONL log with one record per optimizer step, consistent with the checkpoints.

    Each record is one line written with a single ``write`` and flushed; `sync` fsyncs
    the file (called at every checkpoint). On resume, `truncate_after` drops the records
    of the steps after the checkpoint (and a torn last line), so that the resumed run
    writes them again and the log has each step exactly once.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._handle = None

    def truncate_after(self, step: int) -> None:
        """Keep only the records with ``record["step"] <= step``; rewrite the file atomically."""
        if not self.path.exists():
            return
        kept = []
        for line in self.path.read_text(encoding="utf-8").split("\n"):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a torn line from a kill
            if record.get("step", -1) <= step:
                kept.append(json.dumps(record, allow_nan=False))
        atomic_write_text(self.path, "".join(line + "\n" for line in kept))

    def append(self, record: dict) -> None:
        """Append one record; non-finite floats are stored as null."""
        if self._handle is None:
            self._handle = open(self.path, "a", encoding="utf-8")
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}
        self._handle.write(json.dumps(clean, allow_nan=False) + "\n")
        self._handle.flush()

    def sync(self) -> None:
        """Flush and fsync the log."""
        if self._handle is not None:
            self._handle.flush()
            os.fsync(self._handle.fileno())

    def close(self) -> None:
        """Close the file (appending again reopens it)."""
        if self._handle is not None:
            self._handle.close()
            self._handle = None

    def records(self) -> list[dict]:
        """Return all complete records in order."""
        if not self.path.exists():
            return []
        out = []
        for line in self.path.read_text(encoding="utf-8").split("\n"):
            if line.strip():
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError:
                    continue
        return out
