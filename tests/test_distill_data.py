"""Tokenizer, pre-training corpus, batch order and the tokenised distillation data."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from iga_theory.config import ConfigError
from iga_theory.llm.distill_config import PRESETS, DistillConfig, load_distill_config
from iga_theory.llm.distill_data import (
    IGNORE_INDEX, PAD_DOMAIN, collate, encode_item, format_prompt, prepare_data,
)
from iga_theory.llm.distill_pretrain import epoch_positions, generic_corpus, pack_blocks, warmup_schedule
from iga_theory.llm.distill_tokenizer import MIN_VOCAB_SIZE, train_tokenizer
from iga_theory.llm.isomers_api import HELDOUT_DOMAINS, TRAINING_DOMAINS, generate_items


@pytest.fixture(scope="module")
def items():
    return generate_items(24, seed=3)


@pytest.fixture(scope="module")
def tokenizer(items):
    texts = generic_corpus(400, seed=0) + [item.question + " " + item.rationale for item in items]
    return train_tokenizer(texts, 400)


# ----- tokenizer and corpus -------------------------------------------------------------------


def test_tokenizer_roundtrip_and_digits(tokenizer, items):
    for item in items[:20]:
        text = format_prompt(item.question) + " " + item.rationale
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert tokenizer.decode(ids) == text
    pieces = tokenizer.tokenize("total 1234")
    assert [p for p in pieces if p.strip("Ġ").isdigit()] == ["1", "2", "3", "4"]
    assert tokenizer.pad_token_id == 0
    assert tokenizer.eos_token_id == 1


def test_tokenizer_rejects_small_vocab():
    with pytest.raises(ValueError, match=str(MIN_VOCAB_SIZE)):
        train_tokenizer(["a b c"], MIN_VOCAB_SIZE - 1)
    with pytest.raises(ValueError, match="empty"):
        train_tokenizer(["", ""], 300)


def test_corpus_deterministic_and_uses_heldout_words():
    first, second = generic_corpus(500, seed=1), generic_corpus(500, seed=1)
    assert first == second
    assert generic_corpus(500, seed=2) != first
    text = " ".join(first)
    assert "loan" in text or "player" in text  # held-out lexicons are part of pre-training
    assert "Answer:" not in text and "?" not in text  # no question-and-rationale text


def test_arithmetic_facts_are_true():
    for paragraph in generic_corpus(600, seed=4):
        for sentence in paragraph.split(". "):
            if "=" in sentence:
                left, right = sentence.rstrip(".").split(" = ")
                a, op, b, *rest = left.split()
                value = {"+": int(a) + int(b), "-": int(a) - int(b), "*": int(a) * int(b),
                         "/": int(a) // int(b)}[op]
                if rest:  # "w * p / 100"
                    value = value // int(rest[1])
                assert value == int(right), sentence


def test_pack_blocks_shapes():
    blocks = pack_blocks([[5, 6, 7], [8, 9]], eos_id=1, block_size=3)
    assert blocks.tolist() == [[5, 6, 7], [1, 8, 9]]
    with pytest.raises(ValueError, match="fewer than one block"):
        pack_blocks([[5]], eos_id=1, block_size=8)


# ----- batch order and schedule ---------------------------------------------------------------


@given(n=st.integers(1, 40), b=st.integers(1, 16), seed=st.integers(0, 5))
@settings(max_examples=40)
def test_epoch_positions_cover_each_epoch_once(n, b, seed):
    steps = (3 * n) // b + 1
    drawn = np.concatenate([epoch_positions(n, b, t, seed)[0] for t in range(steps)])
    for epoch in range(len(drawn) // n):
        assert sorted(drawn[epoch * n:(epoch + 1) * n].tolist()) == list(range(n))
    # a pure function of the step
    assert np.array_equal(epoch_positions(n, b, steps - 1, seed)[0], drawn[(steps - 1) * b:])


def test_warmup_cosine_schedule_values():
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    schedule = warmup_schedule(optimizer, warmup_steps=4, total_steps=14, kind="cosine")
    factors = []
    for _ in range(14):
        factors.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    assert factors[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert factors[4] == pytest.approx(1.0)
    assert factors[9] == pytest.approx(0.5)  # half-way through the decay: (1 + cos(pi/2)) / 2
    with pytest.raises(ValueError, match="schedule"):
        warmup_schedule(optimizer, 1, 2, kind="step")


# ----- tokenised sequences --------------------------------------------------------------------


def test_encode_item_masks_prompt_keeps_eos(tokenizer, items):
    item = items[0]
    example = encode_item(tokenizer, item, domain=2)
    prompt_ids = tokenizer(format_prompt(item.question), add_special_tokens=False)["input_ids"]
    assert list(example.input_ids[:example.prompt_length]) == prompt_ids
    assert example.input_ids[-1] == tokenizer.eos_token_id
    labels = example.labels
    assert all(label == IGNORE_INDEX for label in labels[:example.prompt_length])
    assert list(labels[example.prompt_length:]) == list(example.input_ids[example.prompt_length:])
    target = tokenizer.decode(list(example.input_ids[example.prompt_length:-1]))
    assert target == " " + item.rationale
    assert target.rstrip().endswith("Answer: " + item.answer)


def test_collate_pads_right_with_domain_ids(tokenizer, items):
    examples = [encode_item(tokenizer, item, domain=e % 4) for e, item in enumerate(items[:3])]
    batch = collate(examples, pad_id=tokenizer.pad_token_id)
    width = max(len(x.input_ids) for x in examples)
    for name in ("input_ids", "attention_mask", "labels", "domain_ids"):
        assert batch[name].shape == (3, width)
    for row, example in enumerate(examples):
        n = len(example.input_ids)
        assert batch["attention_mask"][row].sum() == n
        assert (batch["domain_ids"][row, :n] == example.domain).all()
        assert (batch["domain_ids"][row, n:] == PAD_DOMAIN).all()
        assert (batch["labels"][row, n:] == IGNORE_INDEX).all()
        assert (batch["input_ids"][row, n:] == tokenizer.pad_token_id).all()


def test_prepare_data_splits_and_caps(tokenizer, items):
    data = prepare_data(items, tokenizer, max_length=10**4, max_eval_sets=2)
    assert data.train_domains == list(TRAINING_DOMAINS)
    assert data.heldout_domains == list(HELDOUT_DOMAINS)
    assert len(data.train_sets) == len({item.set_id for item in items if item.split == "train"})
    for renderings in data.train_sets:
        assert [x.domain for x in renderings] == list(range(len(TRAINING_DOMAINS)))
        assert len({items_by_index(items, x.item_index).set_id for x in renderings}) == 1
    assert len({item.set_id for item in data.test_id}) <= 2
    assert len({item.set_id for item in data.test_ood}) <= 2
    assert {item.domain for item in data.test_ood} <= set(HELDOUT_DOMAINS)


def items_by_index(items, index):
    return [item for item in items if item.split == "train"][index]


def test_prepare_data_drops_long_sets_and_rejects_one_domain(tokenizer, items):
    lengths = sorted(len(encode_item(tokenizer, item, 0).input_ids) for item in items if item.split == "train")
    data = prepare_data(items, tokenizer, max_length=lengths[len(lengths) // 2])
    assert data.dropped > 0
    for renderings in data.train_sets:
        assert max(len(x.input_ids) for x in renderings) <= lengths[len(lengths) // 2]
    incomplete = [item for item in items if not (item.split == "train" and item.domain == "law")]
    incomplete += [item for item in items if item.split == "train" and item.domain == "law"][:4]
    assert prepare_data(incomplete, tokenizer, max_length=10**4).dropped > 0
    single = [item for item in items if item.domain in ("mathematics", "finance")]
    with pytest.raises(ValueError, match="at least 2"):
        prepare_data(single, tokenizer, max_length=10**4)


# ----- configuration --------------------------------------------------------------------------


def test_presets_load_and_validate():
    for name in PRESETS:
        config = load_distill_config(preset=name)
        assert isinstance(config, DistillConfig)
    tiny = load_distill_config(preset="tiny-cpu", overrides={"train": {"steps": 7}})
    assert tiny.train.steps == 7
    assert tiny.train.methods == ["erm", "iga"]


@pytest.mark.parametrize("overrides, match", [
    ({"train": {"methods": ["erm", "sgd"]}}, "train.methods"),
    ({"train": {"methods": ["erm", "erm"]}}, "more than once"),
    ({"train": {"steps": 0}}, "train.steps"),
    ({"model": {"hidden_size": 30, "n_heads": 4}}, "multiple"),
    ({"eval": {"pooling": "max"}}, "eval.pooling"),
    ({"lora": {"rank": 4}}, "unknown"),
])
def test_config_rejects_bad_values(overrides, match):
    with pytest.raises(ConfigError, match=match):
        load_distill_config(preset="tiny-cpu", overrides=overrides)
