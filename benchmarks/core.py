"""Timing, machine description and the record format shared by the benchmarks.

A record is a JSON object with these keys:

* ``name`` (str), ``description`` (what the ratio compares);
* ``ratio``, ``target`` (float) and ``comparison`` (``"<="`` or ``">="``);
* ``passed`` (bool): whether ``ratio comparison target`` holds;
* ``sizes`` (dict of the problem sizes), ``dtype`` (str), ``machine`` (dict);
* ``times_s``: the best wall-clock time of each timed function, in seconds;
* ``note``: why a target is missed, or "".
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable

PROFILES = ("tiny", "quick", "full")
COMPARISONS = {"<=": lambda ratio, target: ratio <= target, ">=": lambda ratio, target: ratio >= target}
RECORD_KEYS = ("name", "ratio", "target", "comparison", "passed", "sizes", "dtype", "machine",
               "times_s", "description", "note")


def check_profile(profile: str) -> str:
    if profile not in PROFILES:
        raise ValueError(f"profile must be one of {PROFILES}; got {profile!r}")
    return profile


def time_side_by_side(functions: dict[str, Callable[[], object]], repeats: int,
                      warmup: tuple[str, ...] | None = None) -> dict[str, float]:
    """Best wall-clock time of each function over ``repeats`` interleaved rounds.

    The functions named in ``warmup`` (default: all) run once untimed first, for
    compilation, caches and page faults; leave out a function that needs none and is
    expensive, such as a dense SVD. The rounds alternate between the functions, so that
    load from other processes hits all of them alike, and the minimum is the least
    disturbed run.
    """
    for name, function in functions.items():
        if warmup is None or name in warmup:
            function()
    best = {name: float("inf") for name in functions}
    for _ in range(repeats):
        for name, function in functions.items():
            start = time.perf_counter()
            function()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def machine_info() -> dict:
    """CPU, core count, platform and library versions of this machine."""
    import numba
    import numpy
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        load = os.getloadavg()[0]
    except OSError:
        load = None
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "numpy": numpy.__version__,
        "numba": numba.__version__,
        "numba_threads": numba.get_num_threads(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "load_average_1min": load,
    }


def make_record(name: str, ratio: float, target: float, comparison: str, sizes: dict, dtype: str,
                times_s: dict, description: str, note_if_failed: str = "", passed: bool | None = None,
                machine: dict | None = None) -> dict:
    """Build one benchmark record; ``passed`` defaults to ``ratio comparison target``."""
    if comparison not in COMPARISONS:
        raise ValueError(f"comparison must be one of {sorted(COMPARISONS)}; got {comparison!r}")
    if passed is None:
        passed = bool(COMPARISONS[comparison](ratio, target))
    return {
        "name": name,
        "ratio": float(ratio),
        "target": float(target),
        "comparison": comparison,
        "passed": bool(passed),
        "sizes": sizes,
        "dtype": dtype,
        "machine": machine if machine is not None else machine_info(),
        "times_s": {key: float(value) for key, value in times_s.items()},
        "description": description,
        "note": "" if passed else note_if_failed,
    }
