"""``iga bench``: run the performance benchmarks and write ``DIR/bench.json``."""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import tempfile
from pathlib import Path

from tqdm import tqdm

from iga_theory.benchmarks import REGISTRY
from iga_theory.benchmarks.core import PROFILES, RECORD_KEYS, check_profile

logger = logging.getLogger(__name__)


def load_benchmark(name: str):
    """Import the function registered under ``name`` (``"module:function"``)."""
    if name not in REGISTRY:
        raise ValueError(f"unknown benchmark {name!r}; known: {sorted(REGISTRY)}")
    module_name, function_name = REGISTRY[name].split(":")
    return getattr(importlib.import_module(module_name), function_name)


def run_benchmarks(names: list[str] | None = None, profile: str = "full", repeats: int | None = None,
                   progress: bool = True) -> list[dict]:
    """Run the named benchmarks (all when None) at ``profile`` sizes; return their records."""
    check_profile(profile)
    names = list(REGISTRY) if names is None else names
    for name in names:
        if name not in REGISTRY:
            raise ValueError(f"unknown benchmark {name!r}; known: {sorted(REGISTRY)}")
    records = []
    for name in tqdm(names, desc="benchmarks", unit="benchmark", disable=not progress):
        function = load_benchmark(name)
        logger.info("running benchmark %s (profile %s)", name, profile)
        options = {"profile": profile} if repeats is None else {"profile": profile, "repeats": repeats}
        for record in function(**options):
            missing = [key for key in RECORD_KEYS if key not in record]
            if missing:
                raise ValueError(f"benchmark {name!r} returned a record without the keys {missing}")
            records.append(record)
    return records


def write_json_atomic(path: Path, payload) -> None:
    """Write JSON to a temporary file in the same folder, then rename it over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            json.dump(payload, handle, indent=2)
            handle.write("\n")
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise


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
        print(f"error: --quick conflicts with --profile {args.profile}")
        return 2
    profile = "quick" if args.quick else (args.profile or "full")
    records = run_benchmarks(args.only, profile=profile, repeats=args.repeats)
    path = args.out / "bench.json"
    write_json_atomic(path, records)

    width = max(len(record["name"]) for record in records)
    for record in records:
        status = "pass" if record["passed"] else "FAIL"
        print(f"{record['name']:<{width}}  ratio {record['ratio']:10.3f} {record['comparison']} "
              f"{record['target']:<6g} {status}")
    print(f"wrote {len(records)} records to {path}")
    return 0
