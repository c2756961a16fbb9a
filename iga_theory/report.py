"""``iga report``: run the synthetic experiments, write ``results.json`` and the PDF.

The PDF is drawn from the results dictionary alone (the same one written to
``results.json``), so a report can be redrawn from a stored result file with
`render_pdf`. Intermediate cells are stored in a resumable run folder under
``OUT/runs/``; a killed run picks up where it stopped and gives the same numbers.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import time
from pathlib import Path

from iga_theory import runs
from iga_theory.config import config_hash, to_dict
from iga_theory.report_config import ReportConfig
from iga_theory.synthetic import experiments

logger = logging.getLogger(__name__)

RESULTS_NAME = "results.json"
PDF_NAME = "iga-report.pdf"
SCHEMA_VERSION = 1


def run_experiments(config: ReportConfig, seed: int, out_dir: Path, progress: bool = True) -> dict:
    """Run the three S1 experiments (resuming stored cells) and return the results dictionary."""
    started = time.perf_counter()
    started_at = _dt.datetime.now(_dt.timezone.utc).isoformat()
    config_data = to_dict(config)
    identity = {"config": config_data, "seed": seed, "cell_version": experiments.CELL_VERSION}
    run = runs.RunFolder(out_dir / "runs", "report", identity, config_hash(identity))
    logger.info("report run folder: %s", run.path)

    model = experiments.build_model(config.model)
    section_seconds = {}

    tick = time.perf_counter()
    training = experiments.training_curves(model, config, seed)
    section_seconds["training"] = time.perf_counter() - tick

    tick = time.perf_counter()
    bound = experiments.bound_vs_domains(model, config, seed, run=run, progress=progress)
    section_seconds["bound_vs_K"] = time.perf_counter() - tick

    tick = time.perf_counter()
    rate = experiments.rate_vs_steps(model, config, seed, run=run, progress=progress)
    section_seconds["rate_vs_T"] = time.perf_counter() - tick

    results = {
        "schema_version": SCHEMA_VERSION,
        "seed": seed,
        "config": config_data,
        "provenance": runs.provenance(),
        "headline": headline(training, bound, rate),
        "training": training,
        "bound_vs_K": bound,
        "rate_vs_T": rate,
        "timing": {"started_at": started_at, "elapsed_s": time.perf_counter() - started,
                   "sections_s": section_seconds},
    }
    run.mark_done({"results": RESULTS_NAME})
    return results


def headline(training: dict, bound: dict, rate: dict) -> dict:
    """The numbers a reader looks for first, gathered under stable keys."""
    last = -1
    out = {}
    for method in ("erm", "iga"):
        final = training[method]["final"]
        out[f"{method}_final_spurious_weight"] = final["spurious_weight"]
        out[f"{method}_final_expected_ood_risk"] = final["expected_ood_risk"]
        out[f"{method}_final_shifted_risk"] = final["shifted_risk"]
        out[f"{method}_bound_at_max_K"] = bound[method]["bound"][last]
        out[f"{method}_expected_risk_at_max_K"] = bound[method]["expected_risk"][last]
        out[f"{method}_coverage_min"] = min(bound[method]["coverage"])
        for name in ("slope_excess", "slope_variance_term"):
            fit = bound[method][name]
            out[f"{method}_{name}"] = None if fit is None else fit["slope"]
        out[f"{method}_K_star"] = bound[method]["K_star"]
    out["invariant_oracle_expected_ood_risk"] = training["invariant_oracle"]["expected_ood_risk"]
    out["theorem1_slope"] = None if rate["slope"] is None else rate["slope"]["slope"]
    out["theorem1_all_runs_below_rhs"] = rate["all_runs_below_rhs"]
    return out


def write_results(results: dict, out_dir: Path) -> Path:
    """Write ``results.json`` atomically; return its path."""
    path = out_dir / RESULTS_NAME
    runs.atomic_write_json(path, results)
    return path


THEORY_MODES = ("quick", "full", "skip")


def run_theory(out_dir: Path, mode: str, seed: int, progress: bool,
               only: list[str] | None = None) -> tuple[dict | None, dict]:
    """Run (or resume) the ``iga validate`` checks into ``out_dir / "validate"``.

    ``only`` restricts the run to some of the validation experiments (all by default).
    Returns the certificate (None for ``mode="skip"``) and the data of its figures.
    """
    if mode not in THEORY_MODES:
        raise ValueError(f"theory mode must be one of {THEORY_MODES}; got {mode!r}")
    if mode == "skip":
        return None, {}
    from iga_theory.commands.validate import run_validation

    folder = out_dir / "validate"
    certificate = run_validation(folder, quick=(mode == "quick"), seed=seed, only=only,
                                 figures=False, progress=progress)
    figures_data = load_results(folder / "figures_data.json")
    return certificate, figures_data


def theory_summary(certificate: dict) -> dict:
    """The certificate's verdicts for results.json: counts and each check's name, theorem and outcome."""
    return {
        "mode": certificate["mode"],
        "passed": certificate["passed"],
        "n_checks": certificate["n_checks"],
        "n_failed": certificate["n_failed"],
        "checks": {check["name"]: {"theorem": check["theorem"], "passed": check["passed"]}
                   for check in certificate["checks"]},
    }


def build_report(config: ReportConfig, out_dir: str | Path, seed: int = 0, progress: bool = True,
                 theory: str = "quick", compare_path: str | Path | None = None,
                 distill_path: str | Path | None = None, theory_only: list[str] | None = None) -> dict:
    """Run everything and write ``results.json`` and ``iga-report.pdf`` into ``out_dir``.

    Parameters
    ----------
    config : ReportConfig
    out_dir : path
    seed : int
    progress : bool
        Show progress bars.
    theory : {"quick", "full", "skip"}
        Run the ``iga validate`` checks (quick or full settings) and add the theory pages.
    compare_path, distill_path : path, optional
        ``compare.json`` of ``iga compare`` and ``metrics.json`` of ``iga distill``; their
        sections are added when given.
    theory_only : list of str, optional
        Validation experiments to run (all by default); see ``iga validate --help``.

    Returns the results dictionary.
    """
    if theory not in THEORY_MODES:
        raise ValueError(f"theory mode must be one of {THEORY_MODES}; got {theory!r}")
    extra_inputs = {name: _read_optional(name, path) for name, path in
                    (("compare", compare_path), ("distill", distill_path))}
    out_dir = runs.ensure_writable_dir(out_dir)
    runs.remove_stale_temporaries(out_dir, (RESULTS_NAME, PDF_NAME))  # left by a killed run
    results = run_experiments(config, seed, out_dir, progress=progress)

    tick = time.perf_counter()
    certificate, figures_data = run_theory(out_dir, theory, seed, progress, only=theory_only)
    if certificate is not None:
        results["theory"] = theory_summary(certificate)
        results["timing"]["sections_s"]["theory"] = time.perf_counter() - tick
        results["timing"]["elapsed_s"] += results["timing"]["sections_s"]["theory"]

    from iga_theory.report_pages import render_pdf  # matplotlib only when drawing

    sections = []
    if certificate is not None:
        from iga_theory.report_theory import add_theory_section

        sections.append(lambda pdf: add_theory_section(pdf, certificate, figures_data))
    if extra_inputs["compare"] is not None:
        from iga_theory.report_compare import add_compare_section

        sections.append(lambda pdf: add_compare_section(pdf, extra_inputs["compare"]))
    if extra_inputs["distill"] is not None:
        from iga_theory.report_distill import add_distill_section

        sections.append(lambda pdf: add_distill_section(pdf, extra_inputs["distill"]))

    results_path = write_results(results, out_dir)
    render_pdf(results, out_dir / PDF_NAME, extra_sections=sections)
    logger.info("wrote %s and %s", results_path, out_dir / PDF_NAME)
    return results


# Keys that the comparison and distillation sections need in their input files.
REQUIRED_KEYS = {
    "compare": ("results", "benchmarks", "methods", "primary_selection", "config"),
    "distill": ("methods", "train_domains", "heldout_domains", "config"),
}


def _read_optional(name: str, path) -> dict | None:
    """Read an optional input JSON file, with an error naming the option when it is unusable."""
    if path is None:
        return None
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--{name} file not found: {str(path)!r}; run `iga {name}` first or drop the option")
    try:
        data = load_results(path)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"--{name} file {str(path)!r} is not a readable JSON file: {error}") from error
    missing = [key for key in REQUIRED_KEYS[name] if not isinstance(data, dict) or key not in data]
    if missing:
        raise ValueError(f"--{name} file {str(path)!r} lacks the keys {missing}; pass the file that "
                         f"`iga {name}` writes")
    return data


def load_results(path: str | Path) -> dict:
    """Read a ``results.json`` written by `build_report` (plain JSON, nothing executed)."""
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)
