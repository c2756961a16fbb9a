"""``iga teacher``: verification of teacher answers, caching and resumption, the model wrapper."""

from __future__ import annotations

import json

import pytest

from iga_theory.cli import main

from iga_theory.llm.distill_config import ModelConfig
from iga_theory.llm.distill_pretrain import build_tiny_model, generic_corpus
from iga_theory.llm.distill_teacher import HFTeacher, cut_after_answer, item_key, read_cache, run_teacher
from iga_theory.llm.distill_tokenizer import train_tokenizer
from iga_theory.llm.isomers_api import generate_items, load_jsonl, write_jsonl


@pytest.fixture(scope="module")
def items():
    return generate_items(10, seed=1, skeletons=["modus_tollens", "rate_total"])


def oracle(items, wrong_every=3):
    """A fake teacher: the item's own rationale, reworded; every third answer is wrong."""
    by_question = {item.question: item for item in items}
    calls = []

    def generate(questions):
        calls.append(list(questions))
        texts = []
        for question in questions:
            item = by_question[question]
            index = items.index(item)
            answer = item.answer if index % wrong_every else "maybe"
            body = item.rationale.rsplit("Answer:", 1)[0]
            texts.append(f"{body}Answer: {answer}\nSome chatter after the answer line.")
        return texts

    return generate, calls


def test_run_teacher_keeps_only_verified(tmp_path, items):
    generate, _ = oracle(items)
    summary = run_teacher(items, generate, tmp_path / "out.jsonl", batch_size=4, progress=False)
    train = [item for item in items if item.split == "train"]
    wrong = [item for item in train if items.index(item) % 3 == 0]
    assert summary.answered == len(train)
    assert summary.rejected == len(wrong)
    assert summary.kept == len(train) - len(wrong)
    assert summary.copied == len(items) - len(train)

    written = load_jsonl(tmp_path / "out.jsonl")  # a valid isomer file
    kept_train = [item for item in written if item.split == "train"]
    assert len(kept_train) == summary.kept
    assert {item_key(item) for item in kept_train}.isdisjoint({item_key(item) for item in wrong})
    for item in kept_train:
        assert item.meta["teacher"] == "teacher"
        assert "chatter" not in item.rationale
        assert item.rationale.endswith(f"Answer: {item.answer}")
    assert [i for i in written if i.split != "train"] == [i for i in items if i.split != "train"]


def test_run_teacher_resumes_from_cache(tmp_path, items):
    generate, calls = oracle(items)
    cache = tmp_path / "cache.jsonl"
    train = [item for item in items if item.split == "train"]
    # A first run stopped after two batches, its last line torn by a kill.
    run_teacher(train[:8], generate, tmp_path / "partial.jsonl", cache_path=cache, batch_size=4, progress=False)
    with open(cache, "a", encoding="utf-8") as handle:
        handle.write('{"key": "torn')
    calls.clear()
    summary = run_teacher(items, generate, tmp_path / "out.jsonl", cache_path=cache, batch_size=4, progress=False)
    asked = [q for batch in calls for q in batch]
    assert summary.from_cache == 8
    assert sorted(asked) == sorted(item.question for item in train[8:])
    assert len(read_cache(cache)) == len(train)

    fresh, _ = oracle(items)
    reference = run_teacher(items, fresh, tmp_path / "ref.jsonl", batch_size=4, progress=False)
    assert (tmp_path / "out.jsonl").read_bytes() == (tmp_path / "ref.jsonl").read_bytes()
    assert reference.kept == summary.kept


def test_run_teacher_rejects_bad_arguments(tmp_path, items):
    generate, _ = oracle(items)
    with pytest.raises(ValueError, match="splits"):
        run_teacher(items, generate, tmp_path / "o.jsonl", splits=["dev"], progress=False)
    with pytest.raises(ValueError, match="2 texts"):
        run_teacher(items, lambda qs: ["Answer: 1", "Answer: 2"], tmp_path / "o.jsonl", batch_size=3, progress=False)


def test_cut_after_answer():
    assert cut_after_answer("a. Answer: 12\nmore") == "a. Answer: 12"
    assert cut_after_answer("Answer: 1. Answer: yes") == "Answer: 1. Answer: yes"
    assert cut_after_answer("no marker here\n") == "no marker here"


def test_hf_teacher_end_to_end_with_local_model(tmp_path, items, capsys):
    # A tiny random model saved locally and loaded through from_pretrained, as a user's teacher would be.
    tokenizer = train_tokenizer(generic_corpus(200) + [i.question for i in items], 320)
    model = build_tiny_model(ModelConfig(hidden_size=32, n_layers=1, n_heads=2, intermediate_size=64), tokenizer)
    model.save_pretrained(tmp_path / "teacher", safe_serialization=True)
    tokenizer.save_pretrained(tmp_path / "teacher")
    teacher = HFTeacher(str(tmp_path / "teacher"), max_new_tokens=6)
    texts = teacher([items[0].question, items[1].question])
    assert len(texts) == 2
    assert all(isinstance(t, str) for t in texts)
    summary = run_teacher(items, teacher, tmp_path / "out.jsonl", batch_size=8, progress=False)
    # A random model writes no verified answer: every answered item is rejected.
    assert summary.kept == 0
    assert summary.rejected == summary.answered
    records = [json.loads(line) for line in (tmp_path / "out.cache.jsonl").read_text().splitlines()]
    assert len(records) == summary.answered
    assert not any(r["verified"] for r in records)
    with pytest.raises(ValueError, match="chat template"):
        HFTeacher(str(tmp_path / "teacher"), chat_template=True)

    # The command line runs the same path and prints the counts.
    write_jsonl(items, tmp_path / "items.jsonl")
    status = main(["teacher", "--model", str(tmp_path / "teacher"), "--items", str(tmp_path / "items.jsonl"),
                   "--out", str(tmp_path / "cli.jsonl"), "--max-new-tokens", "4", "--device", "cpu", "--no-progress"])
    assert status == 0
    assert f"rejected {summary.rejected}" in capsys.readouterr().out
    assert len(load_jsonl(tmp_path / "cli.jsonl")) == summary.copied


def test_write_then_load_roundtrip_of_teacher_output(tmp_path, items):
    generate, _ = oracle(items, wrong_every=10**6)
    run_teacher(items, generate, tmp_path / "out.jsonl", progress=False)
    again = load_jsonl(tmp_path / "out.jsonl")
    write_jsonl(again, tmp_path / "copy.jsonl")
    assert (tmp_path / "copy.jsonl").read_bytes() == (tmp_path / "out.jsonl").read_bytes()
