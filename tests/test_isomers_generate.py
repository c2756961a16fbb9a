"""Isomer generation: determinism, verified answers, splits, balance and held-out leaks."""

from __future__ import annotations

import hashlib
import operator
import os
import re
import subprocess
import sys
from collections import Counter, defaultdict
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from iga_theory.llm.isomers_api import (
    ALL_DOMAINS, HELDOUT_DOMAINS, LEXICONS, SKELETON_IDS, SKELETONS, SPLITS, TEMPLATE_WORDS,
    TRAINING_DOMAINS, FUNCTION_WORDS, IsomerItem, find_lexicon_leaks, generate_items,
    get_lexicon, isomer_stats, parse_final_answer, shared_surface_words, verify_item,
    verify_items, write_jsonl,
)
from iga_theory.llm.isomers_generate import assign_splits, resolve_split_fractions
from iga_theory.llm.isomers_lexicons import MIN_ENTITIES, MIN_PREDICATES, words_of

# Word limits that keep items learnable by a tiny model trained on a CPU.
MAX_QUESTION_WORDS = 60
MAX_RATIONALE_WORDS = 80


@pytest.fixture(scope="module")
def items() -> list[IsomerItem]:
    return generate_items(660, seed=11)


def by_set(items) -> dict[str, list[IsomerItem]]:
    sets = defaultdict(list)
    for item in items:
        sets[item.set_id].append(item)
    return sets


# -- determinism ---------------------------------------------------------------------


def test_same_seed_same_bytes(tmp_path):
    first = write_jsonl(generate_items(120, seed=3), tmp_path / "a.jsonl").read_bytes()
    second = write_jsonl(generate_items(120, seed=3), tmp_path / "b.jsonl").read_bytes()
    other = write_jsonl(generate_items(120, seed=4), tmp_path / "c.jsonl").read_bytes()
    assert first == second
    assert first != other


def test_same_bytes_across_hash_seeds(tmp_path):
    """String hashing is randomised per process; the file must not depend on it."""
    script = ("import hashlib, sys; from iga_theory.llm.isomers_api import generate_items, write_jsonl; "
              "p = write_jsonl(generate_items(60, seed=9), sys.argv[1]); "
              "print(hashlib.sha256(p.read_bytes()).hexdigest())")
    digests = []
    for hash_seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        out = subprocess.run([sys.executable, "-c", script, str(tmp_path / f"h{hash_seed}.jsonl")],
                             env=env, capture_output=True, text=True, check=True)
        digests.append(out.stdout.strip())
    local = hashlib.sha256(write_jsonl(generate_items(60, seed=9), tmp_path / "here.jsonl").read_bytes())
    assert digests[0] == digests[1] == local.hexdigest()


# -- answers and sets ----------------------------------------------------------------


def test_every_answer_verifies(items):
    report = verify_items(items)
    assert report.problems == []
    assert report.verified == len(items)
    assert all(verify_item(item) for item in items[:50])


def test_rationale_final_answer_parses(items):
    assert all(parse_final_answer(item.rationale) == item.answer for item in items)


def test_rerender_reproduces_text(items):
    for item in items[::7]:
        question, rationale = SKELETONS[item.skeleton_id].render(item.variables, get_lexicon(item.domain))
        assert (question, rationale) == (item.question, item.rationale)


def _query_statement(item: IsomerItem) -> str:
    """The sentence that a yes/no rationale must conclude, in the answer's polarity."""
    lexicon = get_lexicon(item.domain)
    verb = "is" if item.answer == "yes" else "is not"
    if item.skeleton_id == "transitivity_chain":
        first, second = item.variables["query"]
        return f"{lexicon.entities[first]} {verb} {lexicon.comparative} {lexicon.entities[second]}."
    subject = "this" if item.skeleton_id == "syllogism_negation" else "the"
    return f"{subject} {lexicon.subject} {verb} {lexicon.predicates[item.variables['query']]}."


def test_rationale_concludes_the_query(items):
    """A yes/no rationale's last sentence states the query with the answer's polarity."""
    checked = 0
    for item in items:
        if SKELETONS[item.skeleton_id].answer_kind != "yes_no":
            continue
        reasoning = item.rationale.rsplit(" Answer:", 1)[0]
        assert reasoning.lower().endswith(_query_statement(item).lower()), item.rationale
        checked += 1
    assert checked > 100


EQUATION = re.compile(r"(\d+(?: [-+*/] \d+)+) = (\d+)")
OPERATIONS = {"+": operator.add, "-": operator.sub, "*": operator.mul, "/": operator.truediv}


def test_rationale_arithmetic_is_exact(items):
    """Every equation a rationale shows holds exactly (evaluated left to right)."""
    checked = 0
    for item in items:
        for expression, result in EQUATION.findall(item.rationale):
            tokens = expression.split()
            # Each expression mixes only * and /, or has one + or -, so left to right
            # agrees with the usual precedence.
            assert len({t for t in tokens[1::2]} & {"+", "-"}) == 0 or len(tokens) == 3
            value = Fraction(tokens[0])
            for op, operand in zip(tokens[1::2], tokens[2::2]):
                value = OPERATIONS[op](value, Fraction(operand))
            assert value == Fraction(result), (expression, result, item.rationale)
            checked += 1
    assert checked > 500


def test_tampered_answer_fails_verification(items):
    item = next(i for i in items if i.answer in ("yes", "no"))
    flipped = "no" if item.answer == "yes" else "yes"
    tampered = IsomerItem(**{**item.to_record(), "answer": flipped,
                             "rationale": item.rationale.rsplit("Answer:", 1)[0] + f"Answer: {flipped}"})
    assert not verify_item(tampered)
    assert verify_items([tampered]).problems[0][1] == "answer"


def test_malformed_logical_form_reported(items):
    item = next(i for i in items if i.skeleton_id == "rate_inverse")
    broken = IsomerItem(**{**item.to_record(), "variables": {**item.variables, "rate": 0}})
    with pytest.raises(ValueError, match=r"variables\['rate'\] must be >= 1"):
        verify_item(broken)
    ((index, field, message),) = verify_items([broken]).problems
    assert (index, field) == (0, "variables")


def test_no_set_straddles_splits(items):
    for members in by_set(items).values():
        assert len({m.split for m in members}) == 1


def test_set_domains_follow_split(items):
    for members in by_set(items).values():
        domains = tuple(m.domain for m in members)
        expected = HELDOUT_DOMAINS if members[0].split == "test_ood" else TRAINING_DOMAINS
        assert domains == expected


@given(seed=st.integers(0, 2**40), n_sets=st.integers(1, 30))
def test_set_members_share_logic(seed, n_sets):
    items = generate_items(n_sets, seed=seed)
    sets = by_set(items)
    assert len(sets) == n_sets
    for members in sets.values():
        first = members[0]
        for member in members[1:]:
            assert member.answer == first.answer
            assert member.variables == first.variables
            assert member.skeleton_id == first.skeleton_id
            assert member.split == first.split
        assert len({m.domain for m in members}) == len(members)
        assert len({m.question for m in members}) == len(members)  # surfaces differ
    assert verify_items(items).problems == []


# -- splits and balance --------------------------------------------------------------


def test_split_fractions_met(items):
    sets_per_split = isomer_stats(items)["sets_per_split"]
    n_sets = 660
    # Pairs of sets are assigned as units, and the largest-deficit walk keeps each
    # split within one pair (2 sets) of its target.
    for split, fraction in zip(SPLITS, (0.7, 0.1, 0.1, 0.1)):
        assert abs(sets_per_split[split] - fraction * n_sets) <= 2, (split, sets_per_split)


def test_yes_no_balanced_per_split_and_skeleton(items):
    counts = Counter((m[0].split, m[0].skeleton_id, m[0].answer) for m in by_set(items).values())
    for skeleton_id, skeleton in SKELETONS.items():
        if skeleton.answer_kind != "yes_no":
            continue
        for split in SPLITS:
            # At most one unpaired set per skeleton.
            assert abs(counts[(split, skeleton_id, "yes")] - counts[(split, skeleton_id, "no")]) <= 1


def test_every_skeleton_in_every_split(items):
    present = {(m[0].split, m[0].skeleton_id) for m in by_set(items).values()}
    assert present == {(split, s) for split in SPLITS for s in SKELETON_IDS}


def test_skeleton_counts_differ_by_at_most_one():
    counts = Counter(m[0].skeleton_id for m in by_set(generate_items(50, seed=2)).values())
    assert len(counts) == len(SKELETON_IDS)
    assert max(counts.values()) - min(counts.values()) <= 1


def test_numeric_answers_spread(items):
    """No numeric skeleton puts more than a third of its sets on one answer."""
    answers = defaultdict(Counter)
    for members in by_set(items).values():
        answers[members[0].skeleton_id][members[0].answer] += 1
    for skeleton_id, counter in answers.items():
        if SKELETONS[skeleton_id].answer_kind == "integer":
            assert max(counter.values()) <= sum(counter.values()) / 3, (skeleton_id, counter)


def test_assign_splits_tracks_fractions():
    fractions = {"train": 0.5, "validation": 0.2, "test_id": 0.2, "test_ood": 0.1}
    assigned = assign_splits([[i] for i in range(100)], fractions)
    counts = Counter(assigned.values())
    assert counts == {"train": 50, "validation": 20, "test_id": 20, "test_ood": 10}


def test_split_fractions_renormalised_without_heldout():
    fractions = resolve_split_fractions(None, TRAINING_DOMAINS)
    assert fractions["test_ood"] == 0
    assert sum(fractions.values()) == pytest.approx(1.0, abs=4 * sys.float_info.epsilon)
    items = generate_items(40, seed=1, domains=["law", "science"])
    assert {item.domain for item in items} == {"law", "science"}
    assert "test_ood" not in {item.split for item in items}


def test_only_heldout_domains_give_ood_only():
    items = generate_items(10, seed=1, domains=["sports"])
    assert {(item.domain, item.split) for item in items} == {("sports", "test_ood")}


@pytest.mark.parametrize("kwargs, error, fragment", [
    ({"n_sets": 0}, ValueError, "n_sets must be >= 1"),
    ({"n_sets": 2.5}, TypeError, "n_sets must be an integer"),
    ({"seed": -1}, ValueError, "seed must be a non-negative integer"),
    ({"domains": ["cooking"]}, ValueError, "no lexicon for domain 'cooking'"),
    ({"domains": "law"}, TypeError, "not the string"),
    ({"domains": ["law", "law"]}, ValueError, "more than once"),
    ({"domains": []}, ValueError, "domains is empty"),
    ({"skeletons": ["nope"]}, ValueError, "unknown skeleton_id 'nope'"),
    ({"split_fractions": {"dev": 1.0}}, ValueError, "unknown split"),
    ({"split_fractions": {"train": -1.0}}, ValueError, "must be a finite number >= 0"),
    ({"split_fractions": {"test_ood": 1.0}, "domains": ["law"]}, ValueError, "no split can receive"),
])
def test_generate_rejects_bad_input(kwargs, error, fragment):
    arguments = {"n_sets": 4, **kwargs}
    with pytest.raises(error, match=fragment):
        generate_items(**arguments)


# -- text size and vocabulary --------------------------------------------------------


def test_text_within_word_limits(items):
    assert max(len(item.question.split()) for item in items) <= MAX_QUESTION_WORDS
    assert max(len(item.rationale.split()) for item in items) <= MAX_RATIONALE_WORDS


def test_text_uses_only_known_words(items):
    """Every word is a template word, a function word, or a word of the item's lexicon."""
    allowed = {domain: FUNCTION_WORDS | TEMPLATE_WORDS | LEXICONS[domain].content_words()
               for domain in ALL_DOMAINS}
    for item in items:
        stray = set(words_of(item.question + " " + item.rationale)) - allowed[item.domain]
        assert not stray, (item.skeleton_id, item.domain, stray)


def test_vocabulary_is_modest(items):
    # Six lexicons of about 30 words, the template words, and numerals below 1000.
    assert isomer_stats(items)["vocabulary_size"] < 700


# -- lexicons and leaks --------------------------------------------------------------


def test_lexicons_large_enough():
    for lexicon in LEXICONS.values():
        assert len(lexicon.predicates) >= MIN_PREDICATES
        assert len(set(lexicon.predicates)) == len(lexicon.predicates)
        assert len(lexicon.entities) >= MIN_ENTITIES
        assert len(set(lexicon.entities)) == len(lexicon.entities)


def test_heldout_lexicons_disjoint_from_training():
    training = set().union(*(LEXICONS[d].content_words() for d in TRAINING_DOMAINS))
    for domain in HELDOUT_DOMAINS:
        assert not LEXICONS[domain].content_words() & training, domain


def test_lexicons_disjoint_from_templates():
    for domain, lexicon in LEXICONS.items():
        assert not lexicon.content_words() & TEMPLATE_WORDS, domain


def test_no_heldout_leak(items):
    assert find_lexicon_leaks(items) == []
    assert shared_surface_words(items) == set()


def test_leak_checker_catches_planted_word(items):
    item = next(i for i in items if i.split == "train")
    planted = IsomerItem(**{**item.to_record(), "question": item.question + " The bond is new."})
    leaks = find_lexicon_leaks([planted])
    assert {(leak.word, leak.heldout_domain, leak.field) for leak in leaks} == {("bond", "finance", "question")}
    assert "bond" in shared_surface_words([planted] + [i for i in items if i.split == "test_ood"])
