"""Run folders: atomic files, append-only JSONL records and resumable sweeps.

A run folder is named by the hash of its configuration. Each finished cell of a sweep
appends one JSON line (its metrics, its key, the full configuration, package versions
and git commit) to ``records.jsonl``; a rerun reads the finished keys and skips them.
A ``done.json`` marker is written when the whole run is complete. Every file is written
to a temporary file in the same folder and moved into place with `os.replace`, so a
kill at any moment leaves either the old file or the new one, never half of one. A
JSONL record is appended with one ``write`` of one line followed by ``fsync``; a torn
last line (a kill inside that write) is detected and dropped on read.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import logging
import os
import platform
import re
import subprocess
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any, Iterable

logger = logging.getLogger(__name__)

# Distributions whose versions every record carries.
TRACKED_PACKAGES = ("iga-theory", "numpy", "scipy", "torch", "numba", "cvxpy", "sympy",
                    "matplotlib", "transformers", "peft")


def package_versions() -> dict[str, str | None]:
    """Installed versions of the packages that affect results (None when absent)."""
    versions = {}
    for name in TRACKED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    versions["python"] = platform.python_version()
    return versions


def git_commit() -> str | None:
    """Commit hash of the source tree the package runs from, or None outside git."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent,
            capture_output=True, text=True, timeout=10, check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def machine_description() -> dict[str, Any]:
    """Processor, core count and platform of this machine."""
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
    }


def provenance() -> dict[str, Any]:
    """Versions, git commit and machine, attached to every record and result file."""
    return {"versions": package_versions(), "git_commit": git_commit(), "machine": machine_description()}


def ensure_writable_dir(path: str | Path) -> Path:
    """Create ``path`` if needed and check that files can be written in it."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-test-"):
            pass
    except OSError as error:
        raise OSError(
            f"output folder {str(path)!r} is not writable ({error.strerror or error}); "
            "pass a folder you can write to"
        ) from error
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_output(path: str | Path):
    """Yield a temporary path beside ``path``; move it onto ``path`` when the block succeeds.

    The temporary file is named ``.NAME.XXXXXXXX.tmp`` (see `remove_stale_temporaries`)
    and gets the permissions of a normally created file (0666 minus the umask), not the
    0600 of `tempfile.mkstemp`. On any exception it is deleted and ``path`` is untouched.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_umask())
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file, fsync and `os.replace`."""
    with atomic_output(path) as tmp:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())


# Name of the temporary file of an atomic write of NAME: `tempfile.mkstemp` with prefix
# ".NAME." and suffix ".tmp" inserts 8 characters from [a-z0-9_] (tempfile's
# _RandomNameSequence, read in CPython 3.11).
_TEMPORARY_NAME = r"\.{name}\.[a-z0-9_]{{8}}\.tmp"


def remove_stale_temporaries(folder: str | Path, names: Iterable[str]) -> list[Path]:
    """Delete the temporary files that killed atomic writes of ``names`` left in ``folder``.

    A kill between `tempfile.mkstemp` and `os.replace` in `atomic_write_bytes`, or in
    any writer using the same naming, leaves ``.NAME.XXXXXXXX.tmp`` behind. The target
    file itself is never partial. Only files of that exact pattern are removed. Call
    this only while no other process writes the same names into ``folder``, because a
    live writer's temporary file would be removed too.

    Returns the removed paths.
    """
    patterns = [re.compile(_TEMPORARY_NAME.format(name=re.escape(name))) for name in names]
    removed = []
    for path in Path(folder).iterdir():
        if not any(pattern.fullmatch(path.name) for pattern in patterns):
            continue
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
            removed.append(path)
            logger.info("removed %s, left by an interrupted write", path)
    return removed


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON atomically (NaN and Inf are rejected)."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, allow_nan=False) + "\n")


def read_jsonl(path: str | Path) -> list[dict]:
    """Read a JSONL file of records; a torn final line (from a kill) is dropped with a warning."""
    path = Path(path)
    if not path.exists():
        return []
    records = []
    lines = path.read_text(encoding="utf-8").split("\n")
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as error:
            if number >= len(lines) - 1:
                logger.warning("dropping torn last line %d of %s (interrupted write)", number, path)
                continue
            raise ValueError(f"{path}:{number}: not valid JSON ({error.msg})") from error
    return records


class RunFolder:
    """A folder of one run: ``config.json``, ``records.jsonl``, ``done.json``.

    Parameters
    ----------
    root : path
        Parent folder; the run lives in ``root / f"{name}-{config_hash}"``.
    name : str
        Kind of run (``"report"``, ``"compare"``, ...).
    config : dict
        Plain-data configuration; its hash names the folder.
    """

    def __init__(self, root: str | Path, name: str, config: dict, config_hash: str):
        self.path = ensure_writable_dir(Path(root) / f"{name}-{config_hash}")
        self.config = config
        # Computed once: versions and commit do not change while a run appends its cells,
        # and the git call costs tens of milliseconds per record.
        self.provenance = provenance()
        self.records_path = self.path / "records.jsonl"
        self.done_path = self.path / "done.json"
        remove_stale_temporaries(self.path, ("config.json", self.records_path.name, self.done_path.name))
        self._repair_torn_tail()
        config_path = self.path / "config.json"
        if not config_path.exists():
            atomic_write_json(config_path, config)
        self._records = {record["key"]: record for record in read_jsonl(self.records_path)}

    def _repair_torn_tail(self) -> None:
        """Cut a partial last line left by a kill, so that later appends start on a new line."""
        if not self.records_path.exists():
            return
        data = self.records_path.read_bytes()
        if data and not data.endswith(b"\n"):
            cut = data.rfind(b"\n") + 1
            logger.warning("removing a torn last record of %s", self.records_path)
            atomic_write_bytes(self.records_path, data[:cut])

    @property
    def complete(self) -> bool:
        """True once `mark_done` has run."""
        return self.done_path.exists()

    def finished(self, key: str) -> bool:
        """True when a record with this key exists."""
        return key in self._records

    def get(self, key: str) -> dict:
        """The stored metrics of a finished cell."""
        return self._records[key]["metrics"]

    def records(self) -> list[dict]:
        """All records, in the order they were written."""
        return list(self._records.values())

    def append(self, key: str, metrics: dict, extra: dict | None = None) -> None:
        """Append one finished cell's record (one line, fsync'ed)."""
        record = {
            "key": key,
            "metrics": metrics,
            "config": self.config,
            "provenance": self.provenance,
            "finished_at": _dt.datetime.now(_dt.timezone.utc).isoformat(),
        }
        if extra:
            record.update(extra)
        line = json.dumps(record, allow_nan=False, sort_keys=True) + "\n"
        with open(self.records_path, "a", encoding="utf-8") as handle:
            handle.write(line)
            handle.flush()
            os.fsync(handle.fileno())
        self._records[key] = record

    def mark_done(self, summary: dict | None = None) -> None:
        """Write the completion marker."""
        atomic_write_json(self.done_path, {"n_records": len(self._records), **(summary or {})})

    def cached(self, key: str, compute, *args, **kwargs) -> dict:
        """Return the stored metrics for ``key`` or compute, append and return them."""
        if self.finished(key):
            return self.get(key)
        metrics = compute(*args, **kwargs)
        self.append(key, metrics)
        return metrics


def iter_pending(run: RunFolder, keys: Iterable[str]) -> list[str]:
    """Keys of ``keys`` that have no record yet, in order."""
    return [key for key in keys if not run.finished(key)]


# Checkpoint folders of the Hugging Face Trainer: "checkpoint-<global step>".
CHECKPOINT_PATTERN = re.compile(r"checkpoint-(\d+)")
# File the Hugging Face Trainer writes last into a checkpoint folder (transformers 4.x
# and 5.x, `Trainer._save_checkpoint`): its presence means the files before it are complete.
CHECKPOINT_MARKER = "trainer_state.json"


def last_complete_checkpoint(folder: str | Path, marker: str = CHECKPOINT_MARKER,
                             required: Iterable[str] = ()) -> Path | None:
    """Newest ``checkpoint-<step>`` folder of ``folder`` that a kill did not cut short.

    A checkpoint counts as complete when its ``marker`` file (written last) parses as a
    JSON object and every name of ``required`` exists beside it. A kill while a
    trainer writes a checkpoint leaves a folder without the marker, which
    `transformers.trainer_utils.get_last_checkpoint` still returns (checked with
    transformers 5.x), so that ``resume_from_checkpoint=True`` then fails. Pass the
    result of this function as ``resume_from_checkpoint`` instead.

    Returns None when there is no complete checkpoint (or no folder).
    """
    folder = Path(folder)
    if not folder.is_dir():
        return None
    steps = []
    for path in folder.iterdir():
        match = CHECKPOINT_PATTERN.fullmatch(path.name)
        if match and path.is_dir():
            steps.append((int(match.group(1)), path))
    for step, path in sorted(steps, reverse=True):
        try:
            state = json.loads((path / marker).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            logger.warning("skipping incomplete checkpoint %s (no valid %s)", path, marker)
            continue
        missing = [name for name in required if not (path / name).exists()]
        if not isinstance(state, dict) or missing:
            logger.warning("skipping incomplete checkpoint %s (missing %s)", path, missing or marker)
            continue
        return path
    return None
