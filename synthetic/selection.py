"""Model selection: which hyperparameter draw of a method a comparison reports.

A sweep trains each method with several hyperparameter draws (draw 0 is the
defaults) for each trial seed. A selection method picks one draw per trial from
numbers that it is allowed to see, and the comparison reports the test metrics of
the model trained on all training domains with that draw:

* ``train_domain`` (training-domain validation): the best mean metric on validation
  samples held out from the training domains. Cheap, needs nothing outside the
  training domains, and rewards whatever helps on those domains, shortcuts included:
  a mask that lets the shortcut through lowers in-domain error, so this rule tends
  to pick the loosest mask.
* ``lodo`` (leave-one-domain-out cross-validation): for each draw, one model per fold is
  trained with one training domain held out and scored on that domain. The draw with
  the best mean over folds wins, and the comparison reports its model retrained on all
  domains. It measures transfer to an unseen domain of Q, at ``1 + folds`` trainings
  per draw.
* ``oracle`` (test-domain validation): the best mean metric on samples of the
  held-out test domains (disjoint from the test samples). Not available in practice;
  an upper reference for what selection can reach on the mean over domains.
* ``default`` (no selection): draw 0, the declared defaults. It shows what a method
  does before any rule trades its invariance for in-domain or mean-domain fit.

Each record is a dict with ``hparam_index`` (int), ``fold`` (``"all"`` or the index
of the left-out training domain) and ``metrics`` (a dict, or None for a run that
diverged). Ties go to the lowest ``hparam_index``, so the defaults win a tie.
"""

from __future__ import annotations

import math
from typing import Callable

FULL_FOLD = "all"


def _score(record: dict, key: str, higher_is_better: bool) -> float:
    """Selection score of one record, higher is better; -inf for a diverged run."""
    metrics = record.get("metrics")
    if not metrics or metrics.get(key) is None or not math.isfinite(metrics[key]):
        return -math.inf
    return metrics[key] if higher_is_better else -metrics[key]


def _full_runs(records: list[dict]) -> dict[int, dict]:
    """Records trained on all training domains, by hyperparameter index."""
    return {r["hparam_index"]: r for r in records if r["fold"] == FULL_FOLD}


def _best(scores: dict[int, float]) -> int:
    """Index with the highest score (the lowest index among ties)."""
    return max(sorted(scores), key=lambda index: (scores[index], -index))


def select_training_domain(records: list[dict], higher_is_better: bool) -> dict:
    """Training-domain validation: the full run with the best ``val`` metric."""
    full = _full_runs(records)
    if not full:
        raise ValueError("no run trained on all training domains (fold 'all') to select from")
    return full[_best({i: _score(r, "val", higher_is_better) for i, r in full.items()})]


def select_leave_one_domain_out(records: list[dict], higher_is_better: bool) -> dict:
    """Leave-one-domain-out: the draw whose left-out-domain metric, averaged over folds, is best."""
    full = _full_runs(records)
    folds: dict[int, list[float]] = {}
    for record in records:
        if record["fold"] != FULL_FOLD and record["hparam_index"] in full:
            folds.setdefault(record["hparam_index"], []).append(_score(record, "left_out", higher_is_better))
    if not folds:
        raise ValueError(
            "leave-one-domain-out selection needs runs with a left-out domain (fold != 'all'); "
            "run the sweep with at least one fold"
        )
    means = {index: sum(scores) / len(scores) for index, scores in folds.items()}
    return full[_best(means)]


def select_oracle(records: list[dict], higher_is_better: bool) -> dict:
    """Test-domain oracle: the full run with the best metric on held-out-domain validation samples."""
    full = _full_runs(records)
    if not full:
        raise ValueError("no run trained on all training domains (fold 'all') to select from")
    return full[_best({i: _score(r, "oracle", higher_is_better) for i, r in full.items()})]


def select_default(records: list[dict], higher_is_better: bool) -> dict:
    """No selection: the full run of draw 0 (the default hyperparameters)."""
    full = _full_runs(records)
    if 0 not in full:
        raise ValueError("no full run (fold 'all') of draw 0, the defaults")
    return full[0]


SELECTION_METHODS: dict[str, Callable[[list[dict], bool], dict]] = {
    "train_domain": select_training_domain,
    "lodo": select_leave_one_domain_out,
    "oracle": select_oracle,
    "default": select_default,
}

SELECTION_LABELS = {
    "train_domain": "training-domain validation",
    "lodo": "leave-one-domain-out",
    "oracle": "test-domain oracle",
    "default": "defaults (no selection)",
}


def select(records: list[dict], method: str, higher_is_better: bool) -> dict:
    """Apply the selection method ``method`` (a key of `SELECTION_METHODS`) to one trial's records."""
    if method not in SELECTION_METHODS:
        raise ValueError(f"selection method must be one of {sorted(SELECTION_METHODS)}; got {method!r}")
    return SELECTION_METHODS[method](records, higher_is_better)
