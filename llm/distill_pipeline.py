"""The whole ``iga distill`` run: data, tokenizer, student, every method and seed, metrics.json.

Output folder layout (``runtime.output_dir``)::

    config.json        the configuration of the run (a rerun must match it)
    items.jsonl        the generated isomer sets (when data.items_file is null)
    tokenizer/         the locally trained tokenizer (built student only)
    pretrain/          pre-training checkpoints and log (built student only)
    base_model/        the pre-trained student, save_pretrained format (built student only)
    runs/METHOD-seedS/ one run folder per method and seed (see `distill_train`)
    metrics.json       per method: in-domain and OOD accuracy, LCS, answer consistency,
                       per-domain accuracy, gain over ERM-SFT, each with its interval
    distill.log        the library's log records of every session on this folder

Every stage is resumable: a rerun with the same configuration skips finished stages
and runs, continues an interrupted one from its last checkpoint and rewrites
metrics.json from the finished runs.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch

from iga_theory.config import ConfigError, config_hash
from iga_theory.llm.distill_config import DistillConfig, config_to_dict
from iga_theory.llm.distill_data import format_prompt, format_target, prepare_data
from iga_theory.llm.distill_eval import format_interval, gain_over_baseline, summarize_method
from iga_theory.llm.distill_pretrain import build_tiny_model, generic_corpus, pretrain
from iga_theory.llm.distill_tokenizer import load_tokenizer, train_tokenizer
from iga_theory.llm.distill_train import resolve_device, train_run
from iga_theory.llm.isomers_generate import generate_items
from iga_theory.llm.isomers_schema import load_jsonl, write_jsonl
from iga_theory.runs import atomic_write_json, ensure_writable_dir, provenance

logger = logging.getLogger(__name__)

# Configuration sections that may change between a run and its resumption: where and
# how it executes, and which methods and seeds are wanted (finished runs are reused).
RESUMABLE_CHANGES = ("runtime", "train.methods", "train.seeds")
LOG_FILE = "distill.log"


def _comparable(config: dict) -> dict:
    data = json.loads(json.dumps(config))
    data.pop("runtime", None)
    data.get("train", {}).pop("methods", None)
    data.get("train", {}).pop("seeds", None)
    return data


def check_output_dir(config: DistillConfig) -> Path:
    """Create the output folder, or check that the run already in it has the same configuration."""
    out = ensure_writable_dir(config.runtime.output_dir)
    stored_path = out / "config.json"
    current = config_to_dict(config)
    if stored_path.exists():
        stored = json.loads(stored_path.read_text(encoding="utf-8"))
        if _comparable(stored) != _comparable(current):
            raise ConfigError(
                f"{out} holds a run with a different configuration (only {', '.join(RESUMABLE_CHANGES)} may "
                "change on a rerun); pass another output folder or delete this one")
    atomic_write_json(stored_path, current)
    return out


def load_items(config: DistillConfig, out: Path) -> list:
    """The isomer items: the configured file, or sets generated once into ``out/items.jsonl``."""
    if config.data.items_file is not None:
        return load_jsonl(config.data.items_file)
    path = out / "items.jsonl"
    if path.exists():
        return load_jsonl(path)
    items = generate_items(config.data.n_sets, seed=config.data.seed, skeletons=config.data.skeletons)
    write_jsonl(items, path)
    return items


def prepare_student(config: DistillConfig, items: list, out: Path, device: torch.device,
                    progress: bool) -> tuple[object, str, dict]:
    """Tokenizer and base-model path; for a built student, train the tokenizer and pre-train the model.

    Returns ``(tokenizer, base_path, pretrain_summary)``.
    """
    if config.model.name_or_path is not None:
        tokenizer = load_tokenizer(config.model.tokenizer or config.model.name_or_path)
        return tokenizer, config.model.name_or_path, {}

    from transformers import AutoTokenizer

    # Tokenizer: the pre-training corpus and the training split's prompts and rationales.
    tokenizer_dir = out / "tokenizer"
    corpus = generic_corpus(config.pretrain.n_sentences, config.pretrain.seed)
    if (tokenizer_dir / "tokenizer.json").exists():
        tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    else:
        texts = corpus + [format_prompt(item.question) + format_target(item.rationale)
                          for item in items if item.split == "train"]
        tokenizer = train_tokenizer(texts, config.tokenizer.vocab_size)
        _save_atomically(tokenizer.save_pretrained, tokenizer_dir)
        tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))

    # Base model: built, pre-trained, saved; later runs load it with from_pretrained.
    base_dir = out / "base_model"
    summary_path = out / "pretrain" / "summary.json"
    if not (base_dir / "config.json").exists():
        model = build_tiny_model(config.model, tokenizer).to(device)
        summary = pretrain(model, tokenizer, config.pretrain, out / "pretrain", device, progress=progress)
        atomic_write_json(summary_path, summary)
        _save_atomically(lambda path: model.save_pretrained(path, safe_serialization=True), base_dir)
        del model
    summary = json.loads(summary_path.read_text(encoding="utf-8")) if summary_path.exists() else {}
    return tokenizer, str(base_dir), summary


def _save_atomically(save, folder: Path) -> None:
    """Call ``save(tmp_folder)`` and move the folder into place."""
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}-"))
    try:
        save(str(tmp))
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def aggregate(config: DistillConfig, results: dict[str, list[dict]], train_domains: list[str],
              heldout_domains: list[str]) -> dict:
    """Per-method metrics over seeds, and each method's gain over ERM-SFT (when ERM ran)."""
    evaluation = config.eval
    domains_by_split = {"in_domain": train_domains, "ood": heldout_domains}
    methods = {}
    for method, runs in results.items():
        runs_by_split = {split: [run["scores"][split] for run in runs]
                         for split in domains_by_split if runs[0]["scores"].get(split)}
        entry = summarize_method(runs_by_split, domains_by_split, evaluation.confidence, evaluation.n_bootstrap)
        entry["seeds"] = [run["seed"] for run in runs]
        entry["final_loss"] = [run["final_loss"] for run in runs]
        methods[method] = entry
    if "erm" in results:
        for method, runs in results.items():
            if method == "erm":
                continue
            methods[method]["gain_over_erm_pp"] = {
                split: gain_over_baseline([run["scores"][split] for run in runs],
                                          [run["scores"][split] for run in results["erm"]],
                                          evaluation.confidence, evaluation.n_bootstrap)
                for split in domains_by_split if runs[0]["scores"].get(split)
            }
    return methods


def run_distill(config: DistillConfig, progress: bool = True) -> dict:
    """Run (or resume) the whole distillation and write ``metrics.json``; return its contents.

    The library's log records of the run are mirrored to ``distill.log`` in the output folder.
    """
    out = check_output_dir(config)
    handler = logging.FileHandler(out / LOG_FILE, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    package_logger = logging.getLogger("iga_theory")
    package_logger.addHandler(handler)
    try:
        return _run_distill(config, out, progress)
    finally:
        package_logger.removeHandler(handler)
        handler.close()


def _run_distill(config: DistillConfig, out: Path, progress: bool) -> dict:
    began = time.perf_counter()
    logger.info("iga distill in %s: configuration %s (config.json), methods %s, seeds %s", out,
                config_hash(config_to_dict(config)), config.train.methods, config.train.seeds)
    if config.runtime.threads:
        torch.set_num_threads(config.runtime.threads)
    device = resolve_device(config.runtime.device)

    items = load_items(config, out)
    tokenizer, base_path, pretrain_summary = prepare_student(config, items, out, device, progress)
    data = prepare_data(items, tokenizer, config.data.max_length, config.data.max_eval_sets)
    prepared = time.perf_counter() - began

    results: dict[str, list[dict]] = {}
    for method in config.train.methods:
        for seed in config.train.seeds:
            run_dir = out / "runs" / f"{method}-seed{seed}"
            results.setdefault(method, []).append(
                train_run(config, data, tokenizer, base_path, method, seed, run_dir, device, progress))

    metrics = {
        "methods": aggregate(config, results, data.train_domains, data.heldout_domains),
        "train_domains": data.train_domains, "heldout_domains": data.heldout_domains,
        "n_test_items": {"in_domain": len(data.test_id), "ood": len(data.test_ood)},
        "dropped_training_items": data.dropped,
        "pretrain": pretrain_summary,
        "config": config_to_dict(config), "config_hash": config_hash(config_to_dict(config)),
        "provenance": provenance(),
        "timing": {"total_seconds_this_session": time.perf_counter() - began,
                   "preparation_seconds_this_session": prepared,
                   "device": str(device), "threads": torch.get_num_threads()},
    }
    atomic_write_json(out / "metrics.json", metrics)
    logger.info("metrics written to %s", out / "metrics.json")
    return metrics


def format_table(metrics: dict) -> str:
    """Fixed-width table: accuracy (%), gain over ERM-SFT (pp), LCS and answer consistency per method.

    Each cell is ``mean [low, high]`` with the bootstrap interval over isomer sets and seeds.
    """
    columns = ["method", "ID acc %", "OOD acc %", "ID gain pp", "OOD gain pp", "ID LCS", "OOD LCS",
               "ID consist. %", "OOD consist. %"]
    rows = []
    for method, entry in metrics["methods"].items():
        gains = entry.get("gain_over_erm_pp", {})
        row = [method]
        for split in ("in_domain", "ood"):
            row.append(format_interval((entry.get(split) or {}).get("accuracy"), 100.0))
        for split in ("in_domain", "ood"):
            row.append(format_interval(gains.get(split)) if method != "erm" else "(ref)")
        for split in ("in_domain", "ood"):
            row.append(format_interval((entry.get(split) or {}).get("lcs"), 1.0, 3))
        for split in ("in_domain", "ood"):
            row.append(format_interval((entry.get(split) or {}).get("answer_consistency"), 100.0))
        rows.append(row)
    widths = [max(len(str(r[i])) for r in [columns] + rows) for i in range(len(columns))]
    lines = ["  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)) for row in [columns] + rows]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)
