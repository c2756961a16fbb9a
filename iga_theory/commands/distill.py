"""``iga distill``: chain-of-thought distillation into LoRA adapters with IGA and the baselines."""

from __future__ import annotations

import argparse
import sys
import time

from iga_theory.config import ConfigError, config_hash
from iga_theory.llm.distill_config import DEVICES, METHOD_NAMES, PRESETS, config_to_dict, load_distill_config


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``distill`` command."""
    parser = subparsers.add_parser(
        "distill", help="distil isomer-set rationales into LoRA adapters with ERM-SFT, IGA and baselines",
        description="Train one LoRA adapter per method and seed on Logical Isomer Set rationales, evaluate "
                    "greedy decoding in-domain and on held-out domains, and write metrics.json, the "
                    "adapters and per-step logs. Rerunning on the same output folder resumes.",
    )
    parser.add_argument("--config", metavar="FILE", help="JSON or TOML configuration (any subset of the keys; "
                        "see docs/distill.md); applied on top of --preset")
    parser.add_argument("--preset", choices=sorted(PRESETS), help="named configuration to start from")
    parser.add_argument("--out", metavar="DIR", help="output folder (sets runtime.output_dir)")
    parser.add_argument("--methods", nargs="+", choices=METHOD_NAMES, metavar="METHOD",
                        help=f"methods to train (sets train.methods; choices: {' '.join(METHOD_NAMES)})")
    parser.add_argument("--seeds", nargs="+", type=int, metavar="SEED", help="training seeds (sets train.seeds)")
    parser.add_argument("--steps", type=int, metavar="N", help="optimizer steps per method and seed (sets train.steps)")
    parser.add_argument("--device", choices=DEVICES, help="device (sets runtime.device)")
    parser.add_argument("--threads", type=int, metavar="N", help="torch CPU threads, 0 for torch's default "
                        "(sets runtime.threads)")
    parser.add_argument("--print-config", action="store_true", help="print the resolved configuration as JSON and exit")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    parser.set_defaults(func=run)


def _overrides(args: argparse.Namespace) -> dict:
    overrides: dict = {}
    runtime = {key: value for key, value in (("output_dir", args.out), ("device", args.device),
                                             ("threads", args.threads)) if value is not None}
    train = {key: value for key, value in (("methods", args.methods), ("seeds", args.seeds),
                                           ("steps", args.steps)) if value is not None}
    if runtime:
        overrides["runtime"] = runtime
    if train:
        overrides["train"] = train
    return overrides


def run(args: argparse.Namespace) -> int:
    """Resolve the configuration, run the distillation, print the table; return the exit status."""
    import json

    if args.config is None and args.preset is None:
        print("error: pass --config FILE or --preset NAME (for example --preset tiny-cpu)", file=sys.stderr)
        return 2
    try:
        config = load_distill_config(args.config, args.preset, _overrides(args))
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    plain = config_to_dict(config)
    if args.print_config:
        print(json.dumps(plain, indent=2))
        return 0

    from iga_theory.llm.distill_pipeline import format_table, run_distill
    from iga_theory.runs import package_versions

    versions = package_versions()
    print(f"iga distill  config {config_hash(plain)}  methods {' '.join(config.train.methods)}  "
          f"seeds {' '.join(map(str, config.train.seeds))}  output {config.runtime.output_dir}")
    print("versions: " + "  ".join(f"{k} {v}" for k, v in versions.items() if v is not None))
    began = time.perf_counter()
    try:
        metrics = run_distill(config, progress=not args.no_progress)
    except (ConfigError, ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print()
    print("Accuracy (%), gain over ERM-SFT (percentage points), LCS (lower is better) and answer consistency (%);")
    print(f"mean [{100 * config.eval.confidence:.0f}% bootstrap interval over isomer sets and seeds]")
    print(format_table(metrics))
    print(f"\nmetrics: {config.runtime.output_dir}/metrics.json   wall time {time.perf_counter() - began:.1f} s")
    return 0
