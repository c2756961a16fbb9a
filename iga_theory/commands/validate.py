"""``iga validate``: run the verification experiments of Theorems 1 to 3 and write a certificate.

Writes, under ``--out``:

* ``certificate.json``: every check (``name``, ``theorem``, ``criterion``, ``value``,
  ``interval``, ``passed``), the reported measurements, the configuration, the package
  versions, the git commit and the runtime;
* ``figures_data.json``: the arrays behind the figures;
* ``figures/*.png`` and ``theory.pdf``: the figures and the theory pages of the report;
* ``validate-<config hash>/``: the run folder, with one JSONL record per finished
  experiment, so an interrupted run resumes where it stopped and gives the same numbers.

Exit status 0 only when every check passes, 1 when one fails, 2 on invalid input.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from tqdm.auto import tqdm

from iga_theory.config import ConfigError, config_hash, load_config, to_dict
from iga_theory.runs import RunFolder, atomic_write_json, ensure_writable_dir, provenance

logger = logging.getLogger(__name__)

# Experiment key -> "module:function"; each function takes the ValidateConfig.
# Version of the stored experiment results; part of the run folder's hash. Raise it when
# an experiment's code changes what it stores, so that older stored results are not reused.
RESULT_VERSION = 1

EXPERIMENTS: dict[str, str] = {
    "proofs_sympy": "iga_theory.proofs.checks:sympy_experiment",
    "t1_rate": "iga_theory.synthetic.validate_t1:rate_experiment",
    "t2_coverage": "iga_theory.synthetic.validate_t2:coverage_experiment",
    "t2_naive_reuse": "iga_theory.synthetic.validate_t2:naive_reuse_experiment",
    "t2_slopes": "iga_theory.synthetic.validate_t2:slope_experiment",
    "t2_quantile": "iga_theory.synthetic.validate_t2:quantile_experiment",
    "t3_fixed_points": "iga_theory.synthetic.validate_t3:fixed_point_experiment",
    "t3_budget": "iga_theory.synthetic.validate_t3:budget_experiment",
    "t3_hard_limit": "iga_theory.synthetic.validate_t3:hard_limit_experiment",
    "t3_phase": "iga_theory.synthetic.validate_t3:phase_experiment",
    "maps_tau_kappa": "iga_theory.synthetic.validate_maps:tau_kappa_map",
    "maps_statistics": "iga_theory.synthetic.validate_maps:statistics_map",
}


def _resolve(target: str):
    import importlib

    module_name, function_name = target.split(":")
    return getattr(importlib.import_module(module_name), function_name)


def build_config(quick: bool, seeds: int | None, seed: int, config_path: str | None):
    """Build the ValidateConfig of one invocation: from a file, the quick preset or the defaults."""
    from iga_theory.synthetic.validate_common import ValidateConfig, quick_config, with_seeds

    if config_path is not None:
        config = load_config(ValidateConfig, config_path)
    elif quick:
        config = quick_config(seed)
    else:
        config = ValidateConfig(seed=seed)
    return with_seeds(config, seeds)


def run_validation(out: str | Path, quick: bool = False, seeds: int | None = None, seed: int = 0,
                   config_path: str | None = None, only: list[str] | None = None,
                   figures: bool = True, progress: bool = True) -> dict:
    """Run (or resume) the experiments and write the certificate; return it.

    Parameters
    ----------
    out : path
        Output folder (created if needed).
    quick : bool
        Use the reduced settings of `quick_config`.
    seeds : int, optional
        Independent runs of the seed-averaged experiments (Theorem 1's rate fit).
    seed : int
        Master seed.
    config_path : path, optional
        JSON or TOML file with a full `ValidateConfig` (overrides ``quick``).
    only : list of str, optional
        Run only these experiment keys (default: all of `EXPERIMENTS`).
    figures : bool
        Write the figures and ``theory.pdf``.
    """
    start = time.perf_counter()
    config = build_config(quick, seeds, seed, config_path)
    keys = list(EXPERIMENTS) if only is None else list(only)
    unknown = sorted(set(keys) - set(EXPERIMENTS))
    if unknown:
        raise ValueError(f"unknown experiment(s) {unknown}; choose from {sorted(EXPERIMENTS)}")
    out = ensure_writable_dir(out)  # only after the input is valid, so a rejected call creates nothing

    identity = {"config": to_dict(config), "result_version": RESULT_VERSION}
    run = RunFolder(out, "validate", identity, config_hash(identity))
    results = {}
    timings = {}
    for key in tqdm(keys, desc="iga validate", disable=not progress):
        t0 = time.perf_counter()
        if run.finished(key):
            logger.info("experiment %s: stored result reused from %s", key, run.path)
        results[key] = run.cached(key, _resolve(EXPERIMENTS[key]), config)
        timings[key] = round(time.perf_counter() - t0, 3)
    if only is None:
        run.mark_done()

    checks = [check for key in keys for check in results[key]["checks"]]
    measurements = [m for key in keys for m in results[key]["measurements"]]
    figures_data = {name: data for key in keys for name, data in results[key]["figures"].items()}
    if config_path:
        mode = "config-file"
    else:
        mode = "quick" if quick else "default"
    certificate = {
        "passed": all(check["passed"] for check in checks),
        "n_checks": len(checks),
        "n_failed": sum(not check["passed"] for check in checks),
        "checks": checks,
        "measurements": measurements,
        "mode": mode,
        "config": to_dict(config),
        "run_folder": run.path.name,  # relative to the output folder, so that a moved folder still matches
        "provenance": provenance(),
        # Wall times: the only values that differ between two runs with the same seed.
        "timing": {"experiment_seconds": timings},
    }
    atomic_write_json(out / "figures_data.json", figures_data)
    if figures:
        from iga_theory.report_theory import save_figures, write_theory_pdf

        certificate["figures"] = [str(path.relative_to(out)) for path in save_figures(figures_data, out / "figures")]
        write_theory_pdf(out / "theory.pdf", certificate, figures_data)
        certificate["figures"].append("theory.pdf")
    certificate["timing"]["runtime_s"] = round(time.perf_counter() - start, 3)
    atomic_write_json(out / "certificate.json", certificate)
    return certificate


def _print_table(certificate: dict) -> None:
    width = max(len(check["name"]) for check in certificate["checks"]) if certificate["checks"] else 10
    for check in certificate["checks"]:
        verdict = "PASS" if check["passed"] else "FAIL"
        value = check["value"]
        shown = f"{value:.4g}" if isinstance(value, float) else str(value)[:60]
        print(f"{verdict}  {check['theorem']:<3} {check['name']:<{width}}  {shown}")
    print(f"{certificate['n_checks'] - certificate['n_failed']}/{certificate['n_checks']} checks passed "
          f"in {certificate['timing']['runtime_s']:.1f} s")


def _command(args: argparse.Namespace) -> int:
    try:
        certificate = run_validation(args.out, quick=args.quick, seeds=args.seeds, seed=args.seed,
                                     config_path=args.config, only=args.only, figures=not args.no_figures)
    except (ConfigError, ValueError, TypeError) as error:
        print(f"iga validate: {error}", file=sys.stderr)
        return 2
    except OSError as error:  # an output folder that cannot be created or written
        print(f"iga validate: error: {error}", file=sys.stderr)
        return 2
    _print_table(certificate)
    print(f"certificate: {Path(args.out) / 'certificate.json'}")
    return 0 if certificate["passed"] else 1


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0; got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0; got {value}")
    return value


def _int_at_least_two(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 2; got {text!r}") from None
    if value < 2:
        raise argparse.ArgumentTypeError(f"expected an integer >= 2; got {value}")
    return value


def register(subparsers) -> None:
    """Add the ``validate`` subcommand."""
    parser = subparsers.add_parser(
        "validate", help="run the verification experiments of Theorems 1-3 and write DIR/certificate.json",
        description=__doc__.split("\n\n")[0],
    )
    parser.add_argument("--out", default="reports/validate", metavar="DIR",
                        help="output folder for certificate.json, figures and the run folder "
                             "(default: reports/validate, where `iga report` also runs the checks)")
    parser.add_argument("--quick", action="store_true",
                        help="reduced replications and steps: the same checks at about a quarter of the default CPU time")
    parser.add_argument("--seeds", type=_int_at_least_two, default=None, metavar="N",
                        help="independent runs per step count of the Theorem 1 rate fit (integer >= 2; "
                             "default: 16, or 8 with --quick)")
    parser.add_argument("--seed", type=_non_negative_int, default=0,
                        help="master seed of every experiment, an integer >= 0 (default: 0)")
    parser.add_argument("--config", default=None, metavar="FILE",
                        help="JSON or TOML file with every validate setting (overrides --quick)")
    parser.add_argument("--only", nargs="+", default=None, metavar="KEY", choices=sorted(EXPERIMENTS),
                        help="run only these experiments (keys: " + ", ".join(EXPERIMENTS) + ")")
    parser.add_argument("--no-figures", action="store_true", help="skip the figures and theory.pdf")
    parser.set_defaults(func=_command)
