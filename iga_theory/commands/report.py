"""``iga report``: run the synthetic experiments and write results.json and the PDF."""

from __future__ import annotations

import logging
import sys
import time

from iga_theory.config import ConfigError

logger = logging.getLogger(__name__)


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "report", help="run the synthetic experiments and write the PDF report",
        description="Run the S1 experiments (ERM vs IGA training, Theorem 2 bound against K, "
                    "Theorem 1 rate against T) and write OUT/results.json and OUT/iga-report.pdf. "
                    "Finished cells are stored under OUT/runs/, so an interrupted run resumes.",
    )
    parser.add_argument("--config", metavar="FILE", default=None,
                        help="JSON or TOML file overriding the embedded default configuration "
                             "(keys as in `iga report --show-config`)")
    parser.add_argument("--out", metavar="DIR", default="reports",
                        help="output folder for results.json, iga-report.pdf and runs/ (default: reports)")
    parser.add_argument("--seed", type=int, default=0, help="master random seed, an integer >= 0 (default: 0)")
    parser.add_argument("--quick", action="store_true",
                        help="smaller sweeps (about a minute on 2 cores); a --config file still applies")
    parser.add_argument("--theory", choices=("quick", "full", "skip"), default="quick",
                        help="run the Theorem 1-3 checks of `iga validate` with its quick or full settings "
                             "into OUT/validate/ and add the theory pages, or skip them (default: quick)")
    parser.add_argument("--compare", metavar="FILE", default=None,
                        help="compare.json written by `iga compare`; adds the baseline comparison pages")
    parser.add_argument("--distill", metavar="FILE", default=None,
                        help="metrics.json written by `iga distill`; adds the distillation pages")
    parser.add_argument("--show-config", action="store_true",
                        help="print every configuration key with its default, allowed range and meaning, then exit")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    parser.set_defaults(func=run)


def run(args) -> int:
    from iga_theory.config import describe
    from iga_theory.report_config import ReportConfig, load_report_config

    if args.show_config:
        for key, default, allowed, text in describe(ReportConfig):
            print(f"{key:28s} default {default:36s} {allowed}\n{'':28s} {text}")
        return 0
    if args.seed < 0:
        print(f"iga report: error: --seed must be an integer >= 0; got {args.seed}", file=sys.stderr)
        return 2
    try:
        config = load_report_config(args.config, quick=args.quick)
    except ConfigError as error:
        print(f"iga report: invalid configuration: {error}", file=sys.stderr)
        return 2

    from iga_theory.report import build_report

    started = time.perf_counter()
    try:
        results = build_report(config, args.out, seed=args.seed, progress=not args.no_progress,
                               theory=args.theory, compare_path=args.compare, distill_path=args.distill)
    except (OSError, ValueError) as error:
        print(f"iga report: error: {error}", file=sys.stderr)
        return 1
    head = results["headline"]
    print(f"wrote {args.out}/results.json and {args.out}/iga-report.pdf in {time.perf_counter() - started:.1f} s")
    print(f"  final expected OOD risk: ERM {head['erm_final_expected_ood_risk']:.4f}, "
          f"IGA {head['iga_final_expected_ood_risk']:.4f}; shifted-domain risk: "
          f"ERM {head['erm_final_shifted_risk']:.4f}, IGA {head['iga_final_shifted_risk']:.4f}")
    print(f"  Theorem 1 fitted slope {head['theorem1_slope']}, left side below right side in every run: "
          f"{head['theorem1_all_runs_below_rhs']}")
    if "theory" in results:
        theory = results["theory"]
        print(f"  theory checks ({theory['mode']}): {theory['n_checks'] - theory['n_failed']}/{theory['n_checks']} "
              f"passed; details in {args.out}/validate/certificate.json")
    return 0
