"""``iga bench``: run the performance benchmarks and write ``DIR/bench.json``.

Each finished benchmark's records are stored in a run folder under ``DIR/runs/``
(named by the profile, the repeats and the benchmark list), so an interrupted run
skips the benchmarks it already finished when it is started again. A run that
completed is measured anew.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import shutil
import sys
from pathlib import Path

from tqdm import tqdm

from iga_theory.benchmarks import REGISTRY
from iga_theory.benchmarks.core import PROFILES, RECORD_KEYS, check_profile
from iga_theory.config import config_hash
from iga_theory.runs import RunFolder, atomic_write_json, ensure_writable_dir

logger = logging.getLogger(__name__)


def load_benchmark(name: str):
    """Import the function registered under ``name`` (``"module:function"``)."""
    if name not in REGISTRY:
        raise ValueError(f"unknown benchmark {name!r}; known: {sorted(REGISTRY)}")
    module_name, function_name = REGISTRY[name].split(":")
    return getattr(importlib.import_module(module_name), function_name)


def _run_one(name: str, profile: str, repeats: int | None) -> dict:
    """Records of one benchmark, checked for the keys every record must have."""
    function = load_benchmark(name)
    logger.info("running benchmark %s (profile %s)", name, profile)
    options = {"profile": profile} if repeats is None else {"profile": profile, "repeats": repeats}
    records = list(function(**options))
    for record in records:
        missing = [key for key in RECORD_KEYS if key not in record]
        if missing:
            raise ValueError(f"benchmark {name!r} returned a record without the keys {missing}")
    return {"records": records}


def run_benchmarks(names: list[str] | None = None, profile: str = "full", repeats: int | None = None,
                   progress: bool = True, run_root: str | Path | None = None) -> list[dict]:
    """Run the named benchmarks (all when None) at ``profile`` sizes; return their records.

    With ``run_root``, each finished benchmark is stored in a run folder there; when
    the same call is repeated after an interruption, the finished benchmarks are not run
    again. A run that completed is measured anew.
    """
    check_profile(profile)
    names = list(REGISTRY) if names is None else names
    for name in names:
        if name not in REGISTRY:
            raise ValueError(f"unknown benchmark {name!r}; known: {sorted(REGISTRY)}")
    run = None
    if run_root is not None:
        identity = {"profile": profile, "repeats": repeats, "names": names}
        run = RunFolder(run_root, "bench", identity, config_hash(identity))
        if run.complete:
            # A finished run is measured again: only an interrupted one is resumed.
            shutil.rmtree(run.path)
            run = RunFolder(run_root, "bench", identity, config_hash(identity))

    records = []
    for name in tqdm(names, desc="benchmarks", unit="benchmark", disable=not progress):
        if run is None:
            records += _run_one(name, profile, repeats)["records"]
        else:
            records += run.cached(name, _run_one, name, profile, repeats)["records"]
    if run is not None:
        run.mark_done()
    return records


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1; got {value}")
    return value


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "bench", help="run the performance benchmarks and write DIR/bench.json",
        description="Time the operators against their performance targets (ratios measured side by "
                    "side in one run) and write the records to DIR/bench.json.",
    )
    parser.add_argument("--out", type=Path, default=Path("reports"),
                        help="folder for bench.json (default: reports)")
    parser.add_argument("--quick", action="store_true",
                        help="smaller sizes, about one minute in all (same as --profile quick)")
    parser.add_argument("--profile", choices=PROFILES, default=None,
                        help="problem sizes: tiny (seconds, for tests), quick (about 1 minute), "
                             "full (default, about 10 minutes on 2 cores)")
    parser.add_argument("--only", nargs="+", choices=sorted(REGISTRY), metavar="NAME",
                        help=f"run only these benchmarks (choices: {', '.join(sorted(REGISTRY))})")
    parser.add_argument("--repeats", type=_positive_int, default=None,
                        help="timed repetitions per measurement, the best one kept (default: per benchmark)")
    parser.set_defaults(func=main)


def main(args) -> int:
    if args.quick and args.profile not in (None, "quick"):
        print(f"iga bench: error: --quick conflicts with --profile {args.profile}", file=sys.stderr)
        return 2
    profile = "quick" if args.quick else (args.profile or "full")
    try:
        out = ensure_writable_dir(args.out)
    except OSError as error:
        print(f"iga bench: error: {error}", file=sys.stderr)
        return 2
    records = run_benchmarks(args.only, profile=profile, repeats=args.repeats, run_root=out / "runs")
    path = out / "bench.json"
    atomic_write_json(path, records)

    width = max(len(record["name"]) for record in records)
    for record in records:
        status = "pass" if record["passed"] else "FAIL"
        print(f"{record['name']:<{width}}  ratio {record['ratio']:10.3f} {record['comparison']} "
              f"{record['target']:<6g} {status}")
    print(f"wrote {len(records)} records to {path}")
    return 0
