"""The resumable comparison sweep: every method on every benchmark, selected three ways.

A sweep trains each method variant (`iga_theory.synthetic.algorithms.METHOD_VARIANTS`)
on each benchmark (`iga_theory.synthetic.benchmarks`) for ``seeds`` trial seeds and
``n_hparams`` hyperparameter draws (draw 0 = the defaults), once on all training
domains and once per leave-one-domain-out fold (the first ``lodo_folds`` training
domains, each held out in turn). Each finished run appends one JSONL record to a run
folder, so an interrupted sweep resumes where it stopped and ends with the same
numbers. `summarize_sweep` then selects one draw per trial with each selection
method (`iga_theory.synthetic.selection`) and reports, per benchmark and method, the
mean, standard error and t-interval over trial seeds of every metric.

Seeds. The trial seed draws the domains and samples of a benchmark. The training seed
(initial parameters and minibatch order) depends on the trial seed, the draw and the
fold but not on the method, so all methods of a trial see the same minibatches.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import logging
import math
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from iga_theory import config as cfg
from iga_theory.errors import NonFiniteError
from iga_theory.runs import RunFolder, atomic_write_json, provenance
from iga_theory.synthetic.algorithms import (ALGORITHM_LABELS, METHOD_VARIANTS, MethodVariant,
                                             algorithm_class, resolve_methods)
from iga_theory.synthetic.benchmarks import (FAMILIES, VARIANTS, BenchmarkSpec, build_environment,
                                             evaluate, train_method)
from iga_theory.synthetic.selection import FULL_FOLD, SELECTION_METHODS, select
from iga_theory.tables import Summary, summarize

logger = logging.getLogger(__name__)

# Metrics summarised for every benchmark and method (see `benchmarks.evaluate`).
REPORTED_METRICS = ("in_domain", "ood", "ood_worst", "shifted", "ood_expected", "spurious_weight",
                    "lcs", "answer_consistency", "val", "oracle")
# Metrics whose selected value per trial seed is stored, for paired differences.
PAIRED_METRICS = ("in_domain", "ood", "shifted")
PRIMARY_SELECTION = "train_domain"
SCHEMA_VERSION = 1


@dataclass(frozen=True)
class SweepConfig:
    """Configuration of one comparison sweep (defaults: the full sweep).

    Build it with `sweep_config` (or `iga_theory.config.from_dict`), which checks every
    value against the field's declared range or choices.
    """

    benchmarks: list[str] = cfg.field(None, "model families to run", choices=tuple(FAMILIES),
                                      default_factory=lambda: list(FAMILIES))
    variants: list[str] = cfg.field(None, "benchmark variants to run", choices=VARIANTS,
                                    default_factory=lambda: list(VARIANTS))
    methods: list[str] = cfg.field(None, "method variants to run (all by default)",
                                   choices=tuple(METHOD_VARIANTS), default_factory=lambda: list(METHOD_VARIANTS))
    seeds: int = cfg.field(5, "trial seeds (domain and data draws) per benchmark", low=1, high=1000)
    n_hparams: int = cfg.field(5, "hyperparameter draws per method, draw 0 being the defaults", low=1, high=1000)
    lodo_folds: int = cfg.field(2, "training domains held out in turn for leave-one-domain-out (0: none)",
                                low=0, high=64)
    steps: int = cfg.field(200, "training steps of every run", low=1, high=1_000_000)
    batch_size: int = cfg.field(32, "examples per training domain per step", low=2, high=100_000)
    n_train_domains: int = cfg.field(8, "training domains K drawn from Q", low=2, high=64)
    n_heldout_domains: int = cfg.field(8, "held-out test domains drawn from Q", low=2, high=256)

    def __post_init__(self):
        if self.lodo_folds > self.n_train_domains:
            raise cfg.ConfigError(
                f"lodo_folds: at most n_train_domains = {self.n_train_domains} folds exist; got {self.lodo_folds}"
            )

    def specs(self) -> list[BenchmarkSpec]:
        """Return the benchmark specifications of the sweep, family by family."""
        return [BenchmarkSpec(family=family, variant=variant, n_train_domains=self.n_train_domains,
                              n_heldout_domains=self.n_heldout_domains, batch_size=self.batch_size,
                              steps=self.steps)
                for family in self.benchmarks for variant in self.variants]

    def method_variants(self) -> list[MethodVariant]:
        return resolve_methods(list(self.methods))

    def folds(self) -> list:
        return [FULL_FOLD] + list(range(self.lodo_folds))


def sweep_config(**values) -> SweepConfig:
    """Build a validated `SweepConfig`: unknown keys, wrong types and out-of-range values raise ConfigError.

    ``methods`` may name algorithms (``"iga"``), which select all their variants.
    """
    if isinstance(values.get("methods"), (list, tuple)) and all(isinstance(m, str) for m in values["methods"]):
        try:
            values["methods"] = [m.name for m in resolve_methods(list(values["methods"]))]
        except ValueError as error:
            raise cfg.ConfigError(f"methods: {error}") from error
    return cfg.from_dict(SweepConfig, values)


# The quick sweep: every benchmark and method, with fewer seeds, draws, folds and steps.
# Leave-one-domain-out then scores each draw on a single held-out training domain.
QUICK = dict(seeds=2, n_hparams=2, lodo_folds=1, steps=100)


def quick_config(**overrides) -> SweepConfig:
    """`SweepConfig` of ``iga compare --quick`` (overrides applied on top), validated."""
    return sweep_config(**{**QUICK, **overrides})


# ----- one run --------------------------------------------------------------------------------


def cell_key(spec: BenchmarkSpec, method: MethodVariant, seed: int, hparam_index: int, fold) -> str:
    """Key of one run in the sweep's JSONL records."""
    return f"{spec.name}|{method.name}|s{seed}|h{hparam_index}|f{fold}"


def training_seed(seed: int, hparam_index: int, fold) -> int:
    """Seed of the initial parameters and minibatch order (shared by all methods)."""
    return zlib.crc32(f"train|{seed}|{hparam_index}|{fold}".encode())


def run_cell(spec: BenchmarkSpec, method: MethodVariant, seed: int, hparam_index: int, fold) -> dict:
    """Train and evaluate one run; returns the record fields (metrics None if it diverged)."""
    start = time.perf_counter()
    env = build_environment(spec, seed)
    hparams = algorithm_class(method.algorithm).random_hparams(hparam_index)
    domains = [d for d in range(env.n_train_domains) if d != fold]
    left_out = None if fold == FULL_FOLD else int(fold)
    record = {"benchmark": spec.name, "method": method.name, "seed": seed, "hparam_index": hparam_index,
              "fold": fold, "hparams": hparams, "diverged": False}
    try:
        algorithm, history = train_method(env, method.algorithm, hparams, optimizer=method.optimizer,
                                          placement=method.placement,
                                          seed=training_seed(seed, hparam_index, fold), domains=domains)
        metrics = evaluate(env, algorithm.parameters(), domains=domains, left_out=left_out)
        metrics.update(loss_first=history["loss_first"], loss_last=history["loss_last"])
        if not all(v is None or math.isfinite(v) for v in metrics.values()):
            raise NonFiniteError("a metric is not finite")
    except NonFiniteError as error:
        logger.info("run %s diverged: %s", cell_key(spec, method, seed, hparam_index, fold), error)
        metrics = None
        record["diverged"] = True
    record["metrics"] = metrics
    record["wall_s"] = time.perf_counter() - start
    return record


def _init_worker() -> None:
    # One thread per process: the tensors are tiny and thread start-up costs more than it saves.
    torch.set_num_threads(1)


def _run_cell_task(task: tuple) -> tuple[str, dict]:
    spec, method, seed, hparam_index, fold = task
    return cell_key(spec, method, seed, hparam_index, fold), run_cell(spec, method, seed, hparam_index, fold)


@contextlib.contextmanager
def _single_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


# ----- the sweep ------------------------------------------------------------------------------


def sweep_tasks(config: SweepConfig) -> list[tuple]:
    """List every run of the sweep as (spec, method, seed, draw, fold), grouped by benchmark and trial seed.

    Methods that cannot run on a benchmark (`applicable`) are left out; their table
    cells stay empty.
    """
    return [(spec, method, seed, h, fold)
            for spec in config.specs() for seed in range(config.seeds)
            for method in config.method_variants() if applicable(spec, method)
            for h in range(config.n_hparams) for fold in config.folds()]


def applicable(spec: BenchmarkSpec, method: MethodVariant) -> bool:
    """False where the method cannot run on the benchmark (the IGA LoRA step off the LoRA model)."""
    return FAMILIES[spec.family].lora or not algorithm_class(method.algorithm).requires_lora


def _run_pending(run: RunFolder, pending: list[tuple], total: int, workers: int, progress: bool) -> None:
    """Train the pending runs (in this process or in a pool) and append each record as it arrives."""
    bar = tqdm(total=total, initial=total - len(pending), desc="compare", unit="run", disable=not progress)
    if workers == 1:
        with _single_thread():
            for task in pending:
                key, record = _run_cell_task(task)
                run.append(key, record.pop("metrics"), extra=record)
                bar.update()
    else:
        with concurrent.futures.ProcessPoolExecutor(max_workers=workers, initializer=_init_worker) as pool:
            for key, record in pool.map(_run_cell_task, pending, chunksize=8):
                run.append(key, record.pop("metrics"), extra=record)
                bar.update()
    bar.close()


def run_sweep(config: SweepConfig, out: str | Path, workers: int = 1, progress: bool = True) -> dict:
    """Run (or resume) the sweep in ``out`` and return its summary (also written to compare.json).

    Parameters
    ----------
    config : SweepConfig
    out : path
        Output folder; the records live in ``out/compare-<config hash>/records.jsonl``
        and the summary in ``out/compare.json``.
    workers : int, >= 1
        Processes that run cells in parallel (1: in this process).
    progress : bool
        Show a tqdm progress bar.
    """
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be an integer >= 1; got {workers!r}")
    start = time.perf_counter()
    config_dict = cfg.to_dict(config)
    run = RunFolder(out, "compare", config_dict, cfg.config_hash(config))
    tasks = sweep_tasks(config)
    pending = [t for t in tasks if not run.finished(cell_key(*t))]

    # Header, mirrored to compare.log in the run folder.
    log_file = logging.FileHandler(run.path / "compare.log", encoding="utf-8")
    log_file.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    package_logger = logging.getLogger("iga_theory")
    package_logger.addHandler(log_file)
    try:
        logger.info("compare sweep in %s: %d runs, %d already finished, %d workers", run.path, len(tasks),
                    len(tasks) - len(pending), workers)
        logger.info("configuration %s", json.dumps(config_dict, sort_keys=True))
        logger.info("provenance %s", json.dumps(run.provenance, sort_keys=True))
        _run_pending(run, pending, len(tasks), workers, progress)
        logger.info("finished %d runs in %.1f s", len(pending), time.perf_counter() - start)
    finally:
        package_logger.removeHandler(log_file)
        log_file.close()

    summary = summarize_sweep(run.records(), config)
    summary["provenance"] = provenance()
    summary["timing"] = {"wall_s": time.perf_counter() - start, "runs": len(tasks), "runs_this_call": len(pending),
                         "run_seconds_total": float(sum(r.get("wall_s", 0.0) for r in run.records())),
                         "workers": workers}
    summary["records"] = str(run.records_path)
    run.mark_done({"runs": len(tasks)})
    atomic_write_json(Path(out) / "compare.json", summary)
    return summary


# ----- summary ----------------------------------------------------------------------------------


def _summary_or_none(values: list) -> dict | None:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return summarize(finite).as_dict() if finite else None


def summarize_method(records: list[dict], higher_is_better: bool, selection_methods) -> dict:
    """Selected results of one method on one benchmark: per selection method, a summary per metric.

    Each selection entry also keeps the selected values per trial seed (``per_seed``)
    of the metrics in `PAIRED_METRICS`, which the paired variant gaps need.
    """
    by_seed: dict[int, list[dict]] = {}
    for record in records:
        by_seed.setdefault(record["seed"], []).append(record)
    result = {"diverged_runs": sum(1 for r in records if r.get("diverged")), "seeds": sorted(by_seed)}
    for method in selection_methods:
        chosen = []
        for seed in sorted(by_seed):
            try:
                chosen.append(select(by_seed[seed], method, higher_is_better))
            except ValueError:
                continue
        entry = {metric: _summary_or_none([(c["metrics"] or {}).get(metric) for c in chosen])
                 for metric in REPORTED_METRICS}
        entry["hparam_index"] = [c["hparam_index"] for c in chosen]
        entry["hparams"] = [c["hparams"] for c in chosen]
        entry["n_selected"] = len(chosen)
        entry["per_seed"] = {"seed": [c["seed"] for c in chosen],
                             **{metric: [(c["metrics"] or {}).get(metric) for c in chosen] for metric in PAIRED_METRICS}}
        result[method] = entry
    return result


def _paired_gap(plain: dict, other: dict, metric: str) -> dict | None:
    """Summary of the per-seed differences ``other - plain`` of one metric (seeds present in both)."""
    plain_values = dict(zip(plain["per_seed"]["seed"], plain["per_seed"][metric]))
    differences = [value - plain_values[seed]
                   for seed, value in zip(other["per_seed"]["seed"], other["per_seed"][metric])
                   if seed in plain_values and value is not None and plain_values[seed] is not None]
    return summarize(differences).as_dict() if differences else None


def summarize_sweep(records: list[dict], config: SweepConfig) -> dict:
    """Build the comparison summary (the content of compare.json) from the sweep's records."""
    selection_methods = [m for m in SELECTION_METHODS if m != "lodo" or config.lodo_folds > 0]
    specs = config.specs()
    methods = config.method_variants()
    grouped: dict[tuple[str, str], list[dict]] = {}
    for record in records:
        grouped.setdefault((record["benchmark"], record["method"]), []).append(record)

    benchmarks = {spec.name: {"family": spec.family, "variant": spec.variant, "task": spec.task,
                              "metric": spec.metric, "higher_is_better": spec.higher_is_better,
                              "consistency": FAMILIES[spec.family].consistency}
                  for spec in specs}
    method_info = {m.name: {"algorithm": m.algorithm, "optimizer": m.optimizer, "placement": m.placement,
                            "label": m.label, "source": algorithm_class(m.algorithm).source}
                   for m in methods}
    results = {spec.name: {m.name: summarize_method(grouped.get((spec.name, m.name), []),
                                                    spec.higher_is_better, selection_methods)
                           for m in methods}
               for spec in specs}

    # Rotated-minus-plain and hetero-minus-plain gaps of the OOD metric, paired by trial
    # seed (both variants of a trial share their domains and samples), under the primary
    # selection (`gaps`) and under the defaults (`gaps_default`).
    def variant_gaps(selection: str) -> dict:
        gaps: dict[str, dict] = {}
        for variant in ("rotated", "hetero"):
            for family in config.benchmarks:
                plain_name, other_name = family, f"{family}-{variant}"
                if plain_name not in results or other_name not in results:
                    continue
                gaps.setdefault(variant, {})[family] = {
                    m.name: _paired_gap(results[plain_name][m.name][selection],
                                        results[other_name][m.name][selection], "ood")
                    for m in methods}
        return gaps

    return {"schema": SCHEMA_VERSION, "config": cfg.to_dict(config), "primary_selection": PRIMARY_SELECTION,
            "selection_methods": selection_methods, "benchmarks": benchmarks, "methods": method_info,
            "algorithm_labels": ALGORITHM_LABELS, "results": results, "gaps": variant_gaps(PRIMARY_SELECTION),
            "gaps_default": variant_gaps("default")}


def summary_cell(compare: dict, benchmark: str, method: str, metric: str,
                 selection: str | None = None) -> Summary | None:
    """The `Summary` of one metric of one method on one benchmark, or None when absent."""
    selection = selection or compare["primary_selection"]
    entry = compare["results"].get(benchmark, {}).get(method, {}).get(selection, {}).get(metric)
    return None if entry is None else Summary.from_dict(entry)


__all__ = ["QUICK", "REPORTED_METRICS", "SweepConfig", "cell_key", "quick_config", "run_cell", "run_sweep",
           "summarize_sweep", "summary_cell", "sweep_config", "sweep_tasks"]
