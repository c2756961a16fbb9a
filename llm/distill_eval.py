r"""Evaluation of a distilled student: greedy decoding, exact match, LCS, answer consistency.

For every test item the student decodes greedily from the training prompt; the final
answer is read by `iga_theory.llm.isomers_schema.parse_final_answer` (text after the
last ``Answer:``, normalised, never evaluated) and compared with the item's canonical
answer. A generation without an answer line counts as wrong.

Per isomer set S with K members (one per domain of its split):

* accuracy: the share of correct members; averaged over sets it equals the item accuracy;
* LCS: ``(1/K) sum_k |h_k - hbar_S|^2`` with ``h`` the unit-normalised mean final hidden
  state over the generated tokens (``pooling="answer"``) or over prompt and generation
  (``pooling="sequence"``), see `iga_theory.metrics`;
* answer consistency: 1 when all K parsed answers are equal. A missing answer never
  equals another one, so a set whose members all fail to answer is not consistent.

Confidence intervals resample isomer sets and training seeds (a crossed bootstrap):
each replicate draws the seeds and the sets with replacement and averages the per-set
values over the drawn (seed, set) cells; the interval is the percentile interval of
the replicates. A difference between two methods (the gain over ERM-SFT) resamples
both with the same draws, so the interval accounts for the pairing by set and seed.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from iga_theory.errors import check_positive_int
from iga_theory.llm.distill_data import encode_prompt
from iga_theory.llm.isomers_schema import IsomerItem, parse_final_answer
from iga_theory.metrics import per_set_lcs

logger = logging.getLogger(__name__)

POOLINGS = ("answer", "sequence")


# ----- decoding --------------------------------------------------------------------------------


@dataclass
class Prediction:
    """The student's output on one test item."""

    set_id: str
    domain: str
    split: str
    answer: str
    generated: str
    predicted: str | None
    representation: np.ndarray  # (hidden,), float64

    @property
    def correct(self) -> bool:
        return self.predicted is not None and self.predicted == self.answer

    def to_record(self) -> dict:
        """JSON-ready record without the representation."""
        return {"set_id": self.set_id, "domain": self.domain, "split": self.split, "answer": self.answer,
                "predicted": self.predicted, "correct": self.correct, "generated": self.generated}


def _pool(hidden: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Weighted mean over positions: hidden (batch, n, d), weights (batch, n) -> (batch, d)."""
    weights = weights.to(hidden.dtype)
    return (hidden * weights[..., None]).sum(dim=1) / weights.sum(dim=1, keepdim=True).clamp(min=1)


def left_pad(sequences: list[list[int]], pad_id: int, device) -> dict[str, torch.Tensor]:
    """Left-pad token id lists into ``input_ids`` and ``attention_mask`` of shape (batch, max_len)."""
    width = max(len(ids) for ids in sequences)
    input_ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, ids in enumerate(sequences):
        input_ids[row, width - len(ids):] = torch.tensor(ids, dtype=torch.long)
        attention_mask[row, width - len(ids):] = 1
    return {"input_ids": input_ids.to(device), "attention_mask": attention_mask.to(device)}


@torch.no_grad()
def predict(model, tokenizer, items: list[IsomerItem], max_new_tokens: int, batch_size: int = 64,
            pooling: str = "answer", progress: bool = False) -> list[Prediction]:
    """Decode every item greedily and pool the final hidden states for LCS.

    Parameters
    ----------
    model : causal LM (PEFT or plain), on its device
    tokenizer : tokenizer with a padding token
    items : list of IsomerItem
    max_new_tokens : int
        Longest generation; a rationale cut there usually lacks its answer line.
    batch_size : int
        Prompts decoded together (left-padded).
    pooling : {"answer", "sequence"}

    Returns
    -------
    list of Prediction, in the order of ``items``.
    """
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {POOLINGS}; got {pooling!r}")
    max_new_tokens = check_positive_int("max_new_tokens", max_new_tokens)
    batch_size = check_positive_int("batch_size", batch_size)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    eos_id, pad_id = tokenizer.eos_token_id, tokenizer.pad_token_id
    predictions: list[Prediction] = []
    try:
        for start in tqdm(range(0, len(items), batch_size), desc="decoding", unit="batch", disable=not progress):
            chunk = items[start:start + batch_size]
            prompts = left_pad([encode_prompt(tokenizer, item.question) for item in chunk], pad_id, device)
            output = model.generate(**prompts, max_new_tokens=max_new_tokens, do_sample=False,
                                    pad_token_id=pad_id, eos_token_id=eos_id)
            n_prompt = prompts["input_ids"].shape[1]
            new = output[:, n_prompt:]                                    # (batch, n_new)

            # Generated tokens up to and including the first end-of-sequence token.
            is_eos = new == eos_id
            after_eos = (torch.cumsum(is_eos.long(), dim=1) - is_eos.long()) > 0
            generated_mask = ~after_eos
            attention = torch.cat([prompts["attention_mask"], generated_mask.long()], dim=1)
            positions = (torch.cumsum(attention, dim=1) - 1).clamp(min=0)
            hidden = model(input_ids=output, attention_mask=attention, position_ids=positions,
                           output_hidden_states=True).hidden_states[-1].float()
            weights = attention.clone()
            if pooling == "answer":
                weights[:, :n_prompt] = 0
            pooled = _pool(hidden, weights).double().cpu().numpy()

            for row, item in enumerate(chunk):
                tokens = new[row][generated_mask[row] & ~is_eos[row]]
                text = tokenizer.decode(tokens.tolist(), skip_special_tokens=True)
                predictions.append(Prediction(item.set_id, item.domain, item.split, item.answer, text,
                                              parse_final_answer(text), pooled[row]))
    finally:
        model.train(was_training)
    return predictions


# ----- per-set scores of one run ---------------------------------------------------------------


def score_split(predictions: list[Prediction], domains: list[str]) -> dict:
    """Per-set accuracy, LCS and answer consistency of one split of one run.

    Only sets with a member in every one of ``domains`` are scored (sets of a teacher
    file can miss members whose rationale failed verification).

    Returns
    -------
    dict with ``set_ids`` (list), ``accuracy``, ``lcs``, ``consistent`` (lists of float,
    one per set), ``domain_correct`` (domain -> list of 0/1 per set) and ``n_incomplete``.
    """
    by_set: dict[str, dict[str, Prediction]] = {}
    for prediction in predictions:
        by_set.setdefault(prediction.set_id, {})[prediction.domain] = prediction
    complete = [set_id for set_id, members in by_set.items() if all(d in members for d in domains)]
    n_incomplete = len(by_set) - len(complete)
    if n_incomplete:
        logger.warning("%d isomer set(s) lack a member in one of %s and are not scored", n_incomplete, domains)
    out = {"set_ids": complete, "accuracy": [], "lcs": [], "consistent": [],
           "domain_correct": {d: [] for d in domains}, "n_incomplete": n_incomplete}
    if not complete:
        return out

    representations = np.stack([[by_set[s][d].representation for d in domains] for s in complete])
    if len(domains) >= 2:
        out["lcs"] = [float(v) for v in per_set_lcs(representations)]
    for set_id in complete:
        members = [by_set[set_id][d] for d in domains]
        out["accuracy"].append(float(np.mean([m.correct for m in members])))
        answers = [m.predicted for m in members]
        out["consistent"].append(float(answers[0] is not None and all(a == answers[0] for a in answers)))
        for domain, member in zip(domains, members):
            out["domain_correct"][domain].append(float(member.correct))
    return out


# ----- intervals over sets and seeds ----------------------------------------------------------


def _check_grid(name: str, values) -> np.ndarray:
    grid = np.asarray(values, dtype=np.float64)
    if grid.ndim != 2 or grid.shape[0] < 1 or grid.shape[1] < 1:
        raise ValueError(f"{name} must have shape (n_seeds, n_sets) with both >= 1; got shape {grid.shape}")
    if not np.all(np.isfinite(grid)):
        raise ValueError(f"{name} contains NaN or Inf")
    return grid


def _bootstrap_indices(n_seeds: int, n_sets: int, n_boot: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng([seed, n_seeds, n_sets, n_boot])
    return rng.integers(0, n_seeds, size=(n_boot, n_seeds)), rng.integers(0, n_sets, size=(n_boot, n_sets))


def _replicate_means(grid: np.ndarray, seed_draws: np.ndarray, set_draws: np.ndarray) -> np.ndarray:
    # Mean over the drawn cells: mean_i mean_j grid[s_i, t_j] = mean_i (grid[s_i] @ count_t) / n_sets.
    n_boot, n_sets = set_draws.shape
    counts = np.zeros((n_boot, n_sets))
    np.add.at(counts, (np.repeat(np.arange(n_boot), n_sets), set_draws.ravel()), 1.0)
    per_seed = grid @ counts.T / n_sets            # (n_seeds, n_boot)
    return per_seed[seed_draws.T, np.arange(n_boot)].mean(axis=0)


def bootstrap_summary(values, confidence: float = 0.95, n_boot: int = 2000, seed: int = 0) -> dict:
    """Mean of a (n_seeds, n_sets) grid with a crossed-bootstrap percentile interval.

    Parameters
    ----------
    values : array_like, shape (n_seeds, n_sets)
        One value per training seed and isomer set (accuracy, LCS or consistency of the set).
    confidence : float in (0, 1)
    n_boot : int
        Bootstrap replicates.
    seed : int
        Seed of the resampling (same seed, same interval).

    Returns
    -------
    dict with ``mean``, ``se`` (standard deviation of the replicates), ``n`` (cells),
    ``ci`` ([low, high]), ``confidence``, ``n_seeds``, ``n_sets``; the keys of
    `iga_theory.tables.Summary.as_dict`.
    """
    grid = _check_grid("values", values)
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie in (0, 1); got {confidence!r}")
    n_boot = check_positive_int("n_boot", n_boot)
    seed_draws, set_draws = _bootstrap_indices(*grid.shape, n_boot, seed)
    replicates = _replicate_means(grid, seed_draws, set_draws)
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(replicates, [tail, 1.0 - tail])
    return {"mean": float(grid.mean()), "se": float(replicates.std(ddof=1)) if n_boot > 1 else 0.0,
            "n": int(grid.size), "ci": [float(low), float(high)], "confidence": confidence,
            "n_seeds": int(grid.shape[0]), "n_sets": int(grid.shape[1])}


def paired_difference_summary(a, b, confidence: float = 0.95, n_boot: int = 2000, seed: int = 0) -> dict:
    """``mean(a) - mean(b)`` of two aligned (n_seeds, n_sets) grids, with a paired crossed bootstrap.

    Both grids are resampled with the same draws of seeds and sets, so the interval is
    that of the difference itself (narrower than two separate intervals when the
    methods succeed and fail on the same sets).
    """
    a, b = _check_grid("a", a), _check_grid("b", b)
    if a.shape != b.shape:
        raise ValueError(f"a and b must be aligned grids of one shape; got {a.shape} and {b.shape}")
    return bootstrap_summary(a - b, confidence, n_boot, seed)


def align_runs(runs: list[dict], key: str) -> tuple[list[str], np.ndarray]:
    """Stack one per-set score of several runs (seeds) on the sets all of them scored.

    Parameters
    ----------
    runs : list of `score_split` outputs
    key : "accuracy", "lcs", "consistent" or "domain_correct:<domain>"

    Returns
    -------
    set_ids : list of str (sorted)
    grid : ndarray (n_runs, n_sets)
    """
    def values_of(run):
        if key.startswith("domain_correct:"):
            return run["domain_correct"][key.split(":", 1)[1]]
        return run[key]

    common = set(runs[0]["set_ids"])
    for run in runs[1:]:
        common &= set(run["set_ids"])
    set_ids = sorted(common)
    grid = np.empty((len(runs), len(set_ids)))
    for row, run in enumerate(runs):
        value_of = dict(zip(run["set_ids"], values_of(run)))
        grid[row] = [value_of[s] for s in set_ids]
    return set_ids, grid


def summarize_method(runs_by_split: dict[str, list[dict]], domains_by_split: dict[str, list[str]],
                     confidence: float, n_boot: int) -> dict:
    """Metrics of one method over its seeds: accuracy, LCS, consistency and per-domain accuracy per split.

    ``runs_by_split[split]`` lists one `score_split` output per seed.
    """
    out = {}
    for split, runs in runs_by_split.items():
        set_ids, _ = align_runs(runs, "accuracy")
        if not set_ids:
            out[split] = None
            continue
        summary = {"n_sets": len(set_ids), "n_seeds": len(runs)}
        for key in ("accuracy", "consistent", "lcs"):
            if key == "lcs" and not runs[0]["lcs"]:
                summary[key] = None
                continue
            summary["answer_consistency" if key == "consistent" else key] = bootstrap_summary(
                align_runs(runs, key)[1], confidence, n_boot)
        summary["per_domain_accuracy"] = {
            domain: bootstrap_summary(align_runs(runs, f"domain_correct:{domain}")[1], confidence, n_boot)
            for domain in domains_by_split[split]
        }
        out[split] = summary
    return out


def gain_over_baseline(method_runs: list[dict], baseline_runs: list[dict], confidence: float,
                       n_boot: int) -> dict | None:
    """Accuracy gain of a method over the baseline in percentage points, paired by seed and set.

    Runs are paired in order (same training seeds); sets are those both scored.
    Returns None when they share no set.
    """
    if len(method_runs) != len(baseline_runs):
        raise ValueError(
            f"the method has {len(method_runs)} seed runs and the baseline {len(baseline_runs)}; "
            "pair the same training seeds")
    common = set.intersection(*(set(run["set_ids"]) for run in method_runs + baseline_runs))
    if not common:
        return None
    restricted = lambda runs: [  # noqa: E731
        {"set_ids": [s for s in run["set_ids"] if s in common],
         "accuracy": [v for s, v in zip(run["set_ids"], run["accuracy"]) if s in common]} for run in runs]
    _, a = align_runs(restricted(method_runs), "accuracy")
    _, b = align_runs(restricted(baseline_runs), "accuracy")
    summary = paired_difference_summary(100.0 * a, 100.0 * b, confidence, n_boot)
    return summary


def format_interval(summary: dict | None, scale: float = 1.0, digits: int = 1) -> str:
    """``"mean [low, high]"`` of a summary times ``scale``; ``"--"`` when missing."""
    if summary is None:
        return "--"
    low, high = summary["ci"]
    return f"{scale * summary['mean']:.{digits}f} [{scale * low:.{digits}f}, {scale * high:.{digits}f}]"


def is_finite_summary(summary: dict | None) -> bool:
    """True for a summary whose mean and interval are finite numbers."""
    return summary is not None and all(math.isfinite(v) for v in (summary["mean"], *summary["ci"]))
