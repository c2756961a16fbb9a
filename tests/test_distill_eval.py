"""Greedy decoding, per-set scores and the crossed bootstrap over isomer sets and seeds."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from iga_theory.llm.distill_config import ModelConfig
from iga_theory.llm.distill_eval import (
    Prediction, align_runs, bootstrap_summary, gain_over_baseline, paired_difference_summary, predict, score_split,
)
from iga_theory.llm.distill_pretrain import build_tiny_model, generic_corpus
from iga_theory.llm.distill_tokenizer import train_tokenizer
from iga_theory.llm.isomers_api import generate_items
from iga_theory.metrics import logical_consistency_score

# ----- crossed bootstrap ----------------------------------------------------------------------


def test_bootstrap_constant_grid_has_zero_width():
    summary = bootstrap_summary(np.full((3, 20), 0.25), n_boot=200)
    assert summary["mean"] == 0.25
    assert summary["ci"] == [0.25, 0.25]
    assert summary["se"] == 0.0
    assert (summary["n_seeds"], summary["n_sets"], summary["n"]) == (3, 20, 60)


def test_bootstrap_is_seeded_and_brackets_mean():
    grid = np.random.default_rng(0).random((2, 50))
    first, second = bootstrap_summary(grid, seed=4), bootstrap_summary(grid, seed=4)
    assert first == second
    assert first["ci"][0] <= first["mean"] <= first["ci"][1]


def test_bootstrap_se_matches_standard_error_for_one_seed():
    # One seed, n iid sets: the bootstrap standard deviation estimates s sqrt((n-1)/n) / sqrt(n).
    # Its relative sampling error is about 1/sqrt(2 n_boot) = 1.1 % at n_boot = 4000, so a
    # 5 % tolerance is about 4.5 standard errors.
    values = np.random.default_rng(1).normal(size=(1, 400))
    n = values.size
    expected = values.std(ddof=1) * np.sqrt((n - 1) / n) / np.sqrt(n)
    summary = bootstrap_summary(values, n_boot=4000, seed=2)
    assert summary["se"] == pytest.approx(expected, rel=0.05)
    # The 95 % percentile interval is close to mean +- 1.96 se for a near-normal mean.
    low, high = summary["ci"]
    assert (high - low) / (2 * 1.96 * expected) == pytest.approx(1.0, rel=0.1)


def test_bootstrap_seed_variation_widens_interval():
    # Control: the same sets under two seeds that differ by a constant shift. A bootstrap
    # that ignored the seeds would report the within-seed spread only.
    rng = np.random.default_rng(3)
    base = rng.normal(size=200)
    grid = np.stack([base - 1.0, base + 1.0])
    crossed = bootstrap_summary(grid, n_boot=2000)
    pooled_as_one_seed = bootstrap_summary(grid.mean(axis=0, keepdims=True), n_boot=2000)
    assert crossed["se"] > 3 * pooled_as_one_seed["se"]


def test_paired_difference_of_shifted_grids_is_exact():
    a = np.random.default_rng(5).random((2, 30))
    summary = paired_difference_summary(a + 0.5, a, n_boot=300)
    assert summary["mean"] == pytest.approx(0.5)
    assert summary["ci"] == pytest.approx([0.5, 0.5])
    with pytest.raises(ValueError, match="one shape"):
        paired_difference_summary(a, a[:, :5])


@pytest.mark.parametrize("bad, match", [(np.zeros(4), "shape"), (np.full((1, 2), np.nan), "NaN")])
def test_bootstrap_rejects_bad_grids(bad, match):
    with pytest.raises(ValueError, match=match):
        bootstrap_summary(bad)


# ----- per-set scores -------------------------------------------------------------------------


def prediction(set_id, domain, answer, predicted, vector):
    return Prediction(set_id, domain, "test_id", answer, "", predicted, np.asarray(vector, dtype=float))


def test_score_split_accuracy_consistency_lcs():
    domains = ["a", "b"]
    predictions = [
        prediction("s1", "a", "yes", "yes", [1, 0]), prediction("s1", "b", "yes", "yes", [1, 0]),
        prediction("s2", "a", "3", "3", [1, 0]), prediction("s2", "b", "3", "4", [0, 1]),
        prediction("s3", "a", "no", None, [1, 1]), prediction("s3", "b", "no", None, [1, 1]),
        prediction("s4", "a", "no", "no", [1, 0]),  # incomplete: no member in domain b
    ]
    scores = score_split(predictions, domains)
    assert scores["set_ids"] == ["s1", "s2", "s3"]
    assert scores["n_incomplete"] == 1
    assert scores["accuracy"] == [1.0, 0.5, 0.0]
    assert scores["consistent"] == [1.0, 0.0, 0.0]  # two missing answers never agree
    assert scores["domain_correct"] == {"a": [1.0, 1.0, 0.0], "b": [1.0, 0.0, 0.0]}
    # Orthogonal unit vectors: (1/2) sum |h - hbar|^2 = 1 - |hbar|^2 = 1/2.
    assert scores["lcs"] == pytest.approx([0.0, 0.5, 0.0])
    h = np.array([[[1, 0], [1, 0]], [[1, 0], [0, 1]], [[1, 1], [1, 1]]], dtype=float)
    assert np.mean(scores["lcs"]) == pytest.approx(logical_consistency_score(h))


def test_align_runs_and_gain_pairs_by_set():
    method = [{"set_ids": ["s1", "s2", "s3"], "accuracy": [1.0, 1.0, 0.0]}]
    baseline = [{"set_ids": ["s2", "s3", "s4"], "accuracy": [0.0, 0.0, 1.0]}]
    set_ids, grid = align_runs(method, "accuracy")
    assert set_ids == ["s1", "s2", "s3"]
    assert grid.tolist() == [[1.0, 1.0, 0.0]]
    gain = gain_over_baseline(method, baseline, 0.95, 200)
    assert gain["mean"] == pytest.approx(50.0)  # sets s2, s3: (100 + 0) / 2 - 0
    with pytest.raises(ValueError, match="seed runs"):
        gain_over_baseline(method, baseline * 2, 0.95, 200)


# ----- greedy decoding ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_student():
    items = generate_items(12, seed=2, skeletons=["percent_of", "modus_tollens"])
    tokenizer = train_tokenizer(generic_corpus(200, seed=0) + [i.question + " " + i.rationale for i in items], 320)
    model = build_tiny_model(ModelConfig(hidden_size=32, n_layers=2, n_heads=2, intermediate_size=64), tokenizer)
    with torch.no_grad():  # larger weights make greedy outputs depend on the prompt
        for p in model.parameters():
            p.mul_(8.0)
    return model.eval(), tokenizer, [i for i in items if i.split == "train"][:6]


def test_predict_left_padding_matches_one_by_one(tiny_student):
    model, tokenizer, items = tiny_student
    together = predict(model, tokenizer, items, max_new_tokens=8, batch_size=len(items))
    alone = [predict(model, tokenizer, [item], max_new_tokens=8, batch_size=1)[0] for item in items]
    assert len({p.generated for p in together}) > 1  # outputs depend on the prompt
    for a, b in zip(together, alone):
        assert a.generated == b.generated
        # Padding changes only the summation order inside attention: float32 rounding,
        # about 1e3 eps across the layers, far below 1e-3 of the unit-scale states.
        np.testing.assert_allclose(a.representation, b.representation, rtol=1e-3, atol=1e-4)


def test_predict_pooling_options(tiny_student):
    model, tokenizer, items = tiny_student
    answer = predict(model, tokenizer, items[:2], max_new_tokens=4, pooling="answer")
    sequence = predict(model, tokenizer, items[:2], max_new_tokens=4, pooling="sequence")
    assert [p.generated for p in answer] == [p.generated for p in sequence]
    assert not np.allclose(answer[0].representation, sequence[0].representation)
    assert answer[0].representation.shape == (32,)
    with pytest.raises(ValueError, match="pooling"):
        predict(model, tokenizer, items[:1], max_new_tokens=2, pooling="last")


def test_prediction_correct_needs_parsed_answer():
    assert prediction("s", "a", "12", "12", [1.0]).correct
    assert not prediction("s", "a", "12", None, [1.0]).correct
    assert not prediction("s", "a", "12", "13", [1.0]).correct
