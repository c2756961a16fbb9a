"""Model selection rules on hand-made records."""

import pytest

from iga_theory.synthetic.selection import SELECTION_METHODS, select


def _record(h, fold, **metrics):
    return {"hparam_index": h, "fold": fold, "metrics": metrics or None}


RECORDS = [
    # draw 0: best validation on the training domains, worst transfer
    _record(0, "all", val=0.10, oracle=0.50),
    _record(0, 0, left_out=0.60), _record(0, 1, left_out=0.50),
    # draw 1: best on held-out domains of the training set
    _record(1, "all", val=0.20, oracle=0.30),
    _record(1, 0, left_out=0.20), _record(1, 1, left_out=0.30),
    # draw 2: best oracle
    _record(2, "all", val=0.30, oracle=0.10),
    _record(2, 0, left_out=0.40), _record(2, 1, left_out=0.40),
]


def test_each_rule_picks_its_draw_for_risks():
    assert select(RECORDS, "train_domain", higher_is_better=False)["hparam_index"] == 0
    assert select(RECORDS, "lodo", higher_is_better=False)["hparam_index"] == 1
    assert select(RECORDS, "oracle", higher_is_better=False)["hparam_index"] == 2


def test_each_rule_returns_the_full_run():
    for method in SELECTION_METHODS:
        assert select(RECORDS, method, higher_is_better=False)["fold"] == "all"


def test_higher_is_better_flips_the_choice():
    assert select(RECORDS, "train_domain", higher_is_better=True)["hparam_index"] == 2
    assert select(RECORDS, "oracle", higher_is_better=True)["hparam_index"] == 0
    # Left-out means: 0.55, 0.25, 0.40.
    assert select(RECORDS, "lodo", higher_is_better=True)["hparam_index"] == 0


def test_default_rule_takes_draw_zero():
    assert select(RECORDS, "default", higher_is_better=False)["hparam_index"] == 0
    with pytest.raises(ValueError, match="draw 0"):
        select([_record(1, "all", val=0.1)], "default", higher_is_better=False)


def test_ties_go_to_defaults():
    records = [_record(2, "all", val=0.2), _record(0, "all", val=0.2), _record(1, "all", val=0.3)]
    assert select(records, "train_domain", higher_is_better=False)["hparam_index"] == 0


def test_diverged_runs_are_never_selected():
    records = [_record(0, "all"), _record(1, "all", val=5.0, oracle=5.0)]
    assert select(records, "train_domain", higher_is_better=False)["hparam_index"] == 1
    assert select(records, "oracle", higher_is_better=False)["hparam_index"] == 1
    folds = records + [_record(0, 0), _record(1, 0, left_out=9.0)]
    assert select(folds, "lodo", higher_is_better=False)["hparam_index"] == 1


def test_lodo_needs_folds():
    with pytest.raises(ValueError, match="left-out domain"):
        select([_record(0, "all", val=0.1)], "lodo", higher_is_better=False)


def test_unknown_rule_rejected():
    with pytest.raises(ValueError, match="selection method must be one of"):
        select(RECORDS, "test_set", higher_is_better=False)


def test_no_full_run_rejected():
    with pytest.raises(ValueError, match="fold 'all'"):
        select([_record(0, 0, left_out=0.1)], "train_domain", higher_is_better=False)
