"""Helpers of the SIGKILL-and-resume and determinism tests: run ``iga`` in a subprocess.

A command is killed with SIGKILL at moments drawn from a seeded generator, either a
random time after its start or a random time after its run folder has gained a
random number of records, and then run again until it completes. The tests compare
the final output files with those of an uninterrupted run.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

# Keys that hold wall-clock times or dates; they differ between two runs of the same
# command and are left out of every comparison: "timing" (results.json of iga report),
# "runtime_s" and "experiment_seconds" (certificate.json of iga validate),
# "finished_at" (run folder records).
TIME_KEYS = frozenset({"timing", "runtime_s", "experiment_seconds", "finished_at"})
# Upper bound on one uninterrupted small run in a test, on a loaded 2-core machine.
RUN_TIMEOUT_S = 240
# Interval between two looks at a running process's files.
POLL_S = 0.02
# Temporary file of an interrupted atomic write (see iga_theory.runs.atomic_write_bytes).
TEMPORARY = re.compile(r"\..+\.[a-z0-9_]{8}\.tmp")


def iga_command(*args: str) -> list[str]:
    """Command line running ``iga ARGS`` with this interpreter."""
    return [sys.executable, "-m", "iga_theory.cli", *args]


def run_to_completion(command: list[str], log_path: Path, env: dict | None = None,
                      cwd: Path | None = None, ok_status: tuple[int, ...] = (0,)) -> float:
    """Run ``command`` to its end; return its wall time in seconds.

    Raises AssertionError when the exit status is not in ``ok_status``.
    """
    started = time.perf_counter()
    with open(log_path, "ab") as log:
        status = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=cwd,
                                timeout=RUN_TIMEOUT_S).returncode
    if status not in ok_status:
        raise AssertionError(f"{command} exited with status {status}; log:\n{log_path.read_text()[-4000:]}")
    return time.perf_counter() - started


@dataclass
class Phases:
    """Seconds from the start of a run to its first record, its last record and its end."""

    first_record: float
    last_record: float
    end: float
    n_records: int


def run_timed(command: list[str], out_dir: Path, log_path: Path, env: dict | None = None,
              ok_status: tuple[int, ...] = (0,), progress: Callable[[Path], int] | None = None) -> Phases:
    """Run ``command`` to its end, watching when records appear below ``out_dir``.

    ``progress(out_dir)`` counts finished units of work (default `count_records`).
    """
    progress = progress or count_records
    first = last = None
    seen = 0
    started = time.perf_counter()
    with open(log_path, "ab") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            while process.poll() is None:
                now = time.perf_counter() - started
                if now > RUN_TIMEOUT_S:
                    raise AssertionError(f"{command} ran past {RUN_TIMEOUT_S} s")
                count = progress(out_dir)
                if count > seen:
                    first = now if first is None else first
                    last, seen = now, count
                time.sleep(POLL_S)
        finally:
            process.kill()
            process.wait(timeout=30)
    end = time.perf_counter() - started
    if process.returncode not in ok_status:
        raise AssertionError(f"{command} exited with status {process.returncode}; log:\n"
                             f"{log_path.read_text()[-4000:]}")
    seen = progress(out_dir)
    first = end if first is None else first
    return Phases(first_record=first, last_record=end if last is None else last, end=end, n_records=seen)


def count_records(out_dir: Path) -> int:
    """Complete lines in every ``records.jsonl`` below ``out_dir``."""
    total = 0
    for path in out_dir.rglob("records.jsonl"):
        try:
            total += path.read_bytes().count(b"\n")
        except FileNotFoundError:  # replaced by a torn-tail repair at this moment
            pass
    return total


@dataclass
class Kill:
    """One kill: its moment, whether the process was still running, records stored after it."""

    moment: tuple
    running: bool
    records_after: int


def kill_at(command: list[str], out_dir: Path, log_path: Path, moment: tuple, env: dict | None = None,
            progress: Callable[[Path], int] | None = None) -> bool:
    """Start ``command`` and SIGKILL it at ``moment``; return whether it was still running.

    ``moment`` is ``("time", seconds)``: that long after the start, or
    ``("records_total", n, seconds)``: that long after ``progress(out_dir)`` (default
    `count_records`) reaches ``n`` (at once if the process ends before).
    """
    progress = progress or count_records
    with open(log_path, "ab") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            started = time.perf_counter()
            if moment[0] == "records_total":
                while process.poll() is None and progress(out_dir) < moment[1]:
                    if time.perf_counter() - started > RUN_TIMEOUT_S:
                        raise AssertionError(f"no progress within {RUN_TIMEOUT_S} s: {command}")
                    time.sleep(POLL_S / 4)
                started = time.perf_counter()
            while process.poll() is None and time.perf_counter() - started < moment[-1]:
                time.sleep(POLL_S / 4)
            running = process.poll() is None
            process.send_signal(signal.SIGKILL)
        finally:
            process.kill()
            process.wait(timeout=30)
    return running


def draw_moments(rng: np.random.Generator, n_kills: int, phases: Phases) -> list[tuple]:
    """Kill moments: one in the start-up, some among the cells, one in the final writes.

    The first kill comes at a random time before the first record of an uninterrupted
    run. The middle ones wait until a random number of the remaining records is stored,
    then a random fraction of a cell's time, so they also land inside an append. The
    last one waits for every record and then a random part of the time that the
    uninterrupted run spent after its last record (writing its result files).
    """
    cell_seconds = (phases.last_record - phases.first_record) / max(phases.n_records - 1, 1)
    moments = [("time", float(rng.uniform(0.0, phases.first_record)))]
    for _ in range(n_kills - 2):
        moments.append(("records_total", int(rng.integers(1, phases.n_records)), float(rng.uniform(0.0, cell_seconds))))
    moments.append(("records_total", phases.n_records, float(rng.uniform(0.0, phases.end - phases.last_record))))
    return moments


def strip_time_keys(value):
    """Copy of a JSON value without the keys of `TIME_KEYS`, at any depth."""
    if isinstance(value, dict):
        return {k: strip_time_keys(v) for k, v in value.items() if k not in TIME_KEYS}
    if isinstance(value, list):
        return [strip_time_keys(v) for v in value]
    return value


def canonical_result(path: Path) -> str:
    """Canonical JSON text of a result file without its time keys and git commit.

    Two runs agree bit for bit when these texts are equal: JSON writes each float with
    its shortest round-trip repr, so equal texts mean equal float64 values (-0.0 and
    NaN included). The git commit is left out because another commit may land in a
    shared checkout between the two runs being compared.
    """
    data = strip_time_keys(json.loads(path.read_text()))
    if isinstance(data.get("provenance"), dict):
        data["provenance"].pop("git_commit", None)
    return json.dumps(data, sort_keys=True)


def stored_metrics(out_dir: Path) -> dict[str, str]:
    """Key -> canonical JSON of the metrics, for every record below ``out_dir``.

    Raises AssertionError on a torn or non-JSON line or a duplicated key.
    """
    metrics = {}
    for path in sorted(out_dir.rglob("records.jsonl")):
        data = path.read_bytes()
        assert data.endswith(b"\n") or not data, f"{path} ends inside a record"
        for number, line in enumerate(data.decode().splitlines(), start=1):
            record = json.loads(line)
            key = f"{path.parent.name}/{record['key']}"
            assert key not in metrics, f"{path}:{number}: key {record['key']!r} stored twice"
            metrics[key] = json.dumps(strip_time_keys(record["metrics"]), sort_keys=True)
    return metrics


def temporaries(out_dir: Path) -> list[Path]:
    """Temporary files of interrupted atomic writes below ``out_dir``."""
    return [path for path in out_dir.rglob("*") if TEMPORARY.fullmatch(path.name)]


def quiet_env(**extra: str) -> dict:
    """Environment of a test subprocess: no progress bars, single-threaded BLAS, ``extra``."""
    env = dict(os.environ)
    env.update({"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
                "NUMBA_NUM_THREADS": "1", "TQDM_DISABLE": "1"})
    env.update(extra)
    return env
