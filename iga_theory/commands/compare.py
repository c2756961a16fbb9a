"""``iga compare``: run every baseline and IGA on the synthetic benchmarks and write compare.json."""

from __future__ import annotations

import logging
import os
import sys
import time

logger = logging.getLogger(__name__)


def register(subparsers) -> None:
    from iga_theory.synthetic.algorithms import ALGORITHMS, METHOD_VARIANTS
    from iga_theory.synthetic.benchmarks import FAMILIES, VARIANTS
    from iga_theory.synthetic.compare import QUICK, SweepConfig

    defaults = SweepConfig()
    parser = subparsers.add_parser(
        "compare", help="compare IGA with the invariance baselines on the synthetic benchmarks",
        description="Train ERM, IRM, V-REx, GroupDRO, Fishr, the Koyama-Yamaguchi gradient alignment "
                    "penalty, PCGrad, AND-mask, SAND-mask and IGA on the benchmarks S1-S4 (plain, rotated "
                    "and heteroskedastic variants), select hyperparameters by training-domain validation, "
                    "leave-one-domain-out and the test-domain oracle, and write DIR/compare.json. Every "
                    "finished run is appended to DIR/compare-<hash>/records.jsonl, so an interrupted "
                    "sweep resumes where it stopped.",
    )
    parser.add_argument("--benchmarks", nargs="+", metavar="NAME", choices=sorted(FAMILIES),
                        default=list(FAMILIES), help=f"model families to run (default: all of {', '.join(FAMILIES)})")
    parser.add_argument("--variants", nargs="+", metavar="NAME", choices=VARIANTS, default=list(VARIANTS),
                        help=f"benchmark variants to run (default: all of {', '.join(VARIANTS)})")
    parser.add_argument("--methods", nargs="+", metavar="NAME", default=None,
                        help="algorithms (" + ", ".join(ALGORITHMS) + ") or method variants (for example "
                             "iga-adam-update); an algorithm selects all its variants (default: all; "
                             f"{len(METHOD_VARIANTS)} variants)")
    parser.add_argument("--seeds", type=int, default=None,
                        help=f"trial seeds per benchmark (default: {defaults.seeds}, or {QUICK['seeds']} "
                             "with --quick)")
    parser.add_argument("--hparams", type=int, default=None, dest="n_hparams",
                        help=f"hyperparameter draws per method, draw 0 being the defaults (default: "
                             f"{defaults.n_hparams}, or {QUICK['n_hparams']} with --quick)")
    parser.add_argument("--lodo-folds", type=int, default=None,
                        help="training domains held out in turn for leave-one-domain-out selection, 0 to "
                             f"skip it (default: {defaults.lodo_folds}, or {QUICK['lodo_folds']} with --quick)")
    parser.add_argument("--steps", type=int, default=None,
                        help=f"training steps per run (default: {defaults.steps}, or {QUICK['steps']} with --quick)")
    parser.add_argument("--out", metavar="DIR", default="reports/compare",
                        help="output folder for compare.json and the run records (default: reports/compare)")
    parser.add_argument("--quick", action="store_true",
                        help="fewer seeds, draws, folds and steps (a few minutes on 2 cores)")
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1),
                        help="worker processes that train runs in parallel; 1 trains in this process "
                             "(default: 2, or 1 on a single-core machine)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.set_defaults(func=run)


def run(args) -> int:
    from iga_theory.config import ConfigError
    from iga_theory.synthetic.algorithms import resolve_methods
    from iga_theory.synthetic.compare import QUICK, run_sweep, sweep_config

    values = {"benchmarks": list(dict.fromkeys(args.benchmarks)), "variants": list(dict.fromkeys(args.variants))}
    try:
        if args.methods is not None:
            values["methods"] = [m.name for m in resolve_methods(args.methods)]
        for key in ("seeds", "n_hparams", "lodo_folds", "steps"):
            value = getattr(args, key)
            if value is not None:
                values[key] = value
            elif args.quick:
                values[key] = QUICK[key]
        config = sweep_config(**values)
    except (ConfigError, ValueError) as error:
        print(f"iga compare: invalid configuration: {error}", file=sys.stderr)
        return 2
    if args.workers < 1:
        print(f"iga compare: error: --workers must be an integer >= 1; got {args.workers}", file=sys.stderr)
        return 2

    started = time.perf_counter()
    try:
        summary = run_sweep(config, args.out, workers=args.workers, progress=not args.no_progress)
    except OSError as error:
        print(f"iga compare: error: {error}", file=sys.stderr)
        return 1
    print(f"wrote {args.out}/compare.json in {time.perf_counter() - started:.1f} s "
          f"({summary['timing']['runs_this_call']} of {summary['timing']['runs']} runs trained now)")
    _print_headline(summary)
    return 0


def _print_headline(summary: dict) -> None:
    """Print one line per plain benchmark: the OOD metric of ERM and of each IGA variant."""
    selection = summary["primary_selection"]
    for name, info in summary["benchmarks"].items():
        if info["variant"] != "plain":
            continue
        cells = []
        for method, result in summary["results"][name].items():
            if method != "erm" and summary["methods"][method]["algorithm"] != "iga":
                continue
            ood = result[selection]["ood"]
            if ood is not None:
                cells.append(f"{summary['methods'][method]['label']} {ood['mean']:.3f}")
        print(f"  {name} OOD {info['metric']}: " + ", ".join(cells))
