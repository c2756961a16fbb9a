"""Isomer JSONL schema: canonical answers, the answer parser, and line-numbered errors."""

from __future__ import annotations

import json
import math
import os
import stat
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from iga_theory.llm.isomers_schema import (
    ANSWER_MARKER, IsomerFormatError, IsomerItem, dumps_item, load_jsonl, load_numbered_jsonl,
    normalize_answer, parse_final_answer, validate_record, write_jsonl,
)


def record(**changes) -> dict:
    """A valid record of a two-step modus ponens chain, with ``changes`` applied."""
    base = {
        "set_id": "set-a", "skeleton_id": "modus_ponens_chain", "domain": "medicine",
        "split": "train",
        "question": "If the patient is feverish, then the patient is infected. The patient is "
                    "feverish. Is the patient infected?",
        "rationale": "The patient is feverish, so the patient is infected. Answer: yes",
        "answer": "yes",
        "variables": {"facts": [[0, True]], "rules": [[[0, True], [3, True]]], "query": 3},
    }
    base.update(changes)
    return base


def write_lines(path: Path, lines: list) -> Path:
    text = "\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines)
    path.write_text(text + "\n", encoding="utf-8")
    return path


# -- canonical answers ---------------------------------------------------------------


@pytest.mark.parametrize("text, expected", [
    ("yes", "yes"), ("Yes.", "yes"), ("  NO ", "no"), ("**yes**", "yes"), ('"no."', "no"),
    ("46", "46"), ("+46", "46"), ("046", "46"), ("1,200", "1200"), ("1,200.50", "1200.5"),
    ("0.50", "0.5"), ("-3.250", "-3.25"), ("-0", "0"), ("-0.0", "0"), ("75%", "75"),
    ("75 percent", "75"), ("12.", "12"), (".5", "0.5"),
    ("Aspirin", "aspirin"), ("The  Home   Side", "the home side"), ("3/4", "3/4"), ("", ""),
])
def test_normalize_answer_table(text, expected):
    assert normalize_answer(text) == expected


def test_normalize_answer_rejects_non_string():
    with pytest.raises(TypeError, match="text must be a string"):
        normalize_answer(46)


@given(st.integers(-10**12, 10**12))
def test_normalize_integer_roundtrip(value):
    assert normalize_answer(str(value)) == str(value)
    assert normalize_answer(f"{value:,}") == str(value)


@given(st.decimals(min_value=-10**6, max_value=10**6, places=3, allow_nan=False, allow_infinity=False))
def test_normalize_decimal_is_idempotent(value):
    canonical = normalize_answer(str(value))
    assert normalize_answer(canonical) == canonical
    # The canonical form denotes the same number, with no trailing zeros after the point.
    assert float(canonical) == pytest.approx(float(value), rel=0, abs=0)
    assert not ("." in canonical and canonical.endswith("0"))


@pytest.mark.parametrize("text, expected", [
    ("The patient is feverish, so the patient is infected. Answer: yes", "yes"),
    ("Total: 36 + 10 = 46 ml. Answer: 46", "46"),
    ("answer: 46 ml", "46"),
    ("Answer: 75 percent.", "75"),
    ("Answer: yes, because the chain holds", "yes"),
    ("Answer: 1,200\nsomething after", "1200"),
    ("Answer: 12 Answer: 13", "13"),
    ("Answer: **no**", "no"),
    ("Answer: aspirin. It is the strongest.", "aspirin"),
    ("Answer: 3/4", "3/4"),
    ("no marker here", None),
    ("Answer:", None),
    ("Answer:   \n46\nmore", "46"),
])
def test_parse_final_answer_table(text, expected):
    assert parse_final_answer(text) == expected


def test_parse_final_answer_never_evaluates():
    # A parser that evaluated the text would return 4 and 42 here.
    assert parse_final_answer("Answer: 2+2") == "2+2"
    assert parse_final_answer("Answer: 6 * 7") == "6"


# -- one record ----------------------------------------------------------------------


def test_valid_record_has_no_problems():
    assert validate_record(record()) == []
    item = IsomerItem.from_record(record())
    assert item.to_record() == record()


@pytest.mark.parametrize("changes, field, fragment", [
    ({"answer": "Yes"}, "answer", "not canonical"),
    ({"answer": ""}, "answer", "is empty"),
    ({"answer": 46}, "answer", "must be a string"),
    ({"answer": "a very long answer phrase here"}, "answer", "too long"),
    ({"answer": "no one", "rationale": "Answer: no one"}, "answer", "parse_final_answer"),
    ({"split": "test"}, "split", "must be one of"),
    ({"domain": "Medicine"}, "domain", "must match"),
    ({"set_id": ""}, "set_id", "must match"),
    ({"skeleton_id": 3}, "skeleton_id", "must be a string"),
    ({"question": "   "}, "question", "is empty"),
    ({"question": "Is it? Answer: yes"}, "question", "answer marker"),
    ({"rationale": "The patient is feverish."}, "rationale", "does not end with"),
    ({"rationale": "So it is. Answer: no"}, "rationale", "differs from answer"),
    ({"variables": [1, 2]}, "variables", "must be a JSON object"),
    ({"variables": {"x": math.nan}}, "variables", "finite"),
    ({"variables": {"x": (1, 2)}}, "variables", "JSON values only"),
    ({"variables": {"x": {1: 2}}}, "variables", "non-string key"),
    ({"meta": "teacher"}, "meta", "must be a JSON object"),
    ({"answr": "yes"}, "answr", "not a known field"),
])
def test_invalid_record_names_field(changes, field, fragment):
    problems = validate_record(record(**changes))
    assert any(name == field and fragment in message for name, message in problems), problems


def test_missing_fields_are_each_listed():
    broken = record()
    del broken["answer"], broken["variables"]
    fields = sorted(name for name, _ in validate_record(broken))
    assert fields == ["answer", "variables"]


def test_item_constructor_validates():
    with pytest.raises(IsomerFormatError, match="field 'split'"):
        IsomerItem(**{**record(), "split": "dev"})
    with pytest.raises(IsomerFormatError, match="field 'meta'"):
        IsomerItem(**record(), meta=None)


# -- files ---------------------------------------------------------------------------


def test_write_then_load_roundtrip(tmp_path):
    items = [IsomerItem.from_record(record(domain=d)) for d in ("law", "medicine")]
    items.append(IsomerItem.from_record(record(set_id="set-b", meta={"teacher": "model-x"})))
    path = write_jsonl(items, tmp_path / "sets.jsonl")
    assert load_jsonl(path) == items
    lines = path.read_text(encoding="utf-8").splitlines()
    assert lines == [dumps_item(item) for item in items]
    assert [p.name for p in tmp_path.iterdir()] == ["sets.jsonl"]  # no temporary file left


def test_written_file_follows_umask(tmp_path):
    umask = os.umask(0o027)
    try:
        path = write_jsonl([IsomerItem.from_record(record())], tmp_path / "sets.jsonl")
    finally:
        os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o640


def test_write_rejects_inconsistent_set_and_keeps_file(tmp_path):
    path = tmp_path / "sets.jsonl"
    path.write_text("old content\n", encoding="utf-8")
    items = [IsomerItem.from_record(record(domain="law")),
             IsomerItem.from_record(record(domain="medicine", answer="no",
                                           rationale="Answer: no"))]
    with pytest.raises(IsomerFormatError, match="field 'answer': differs within set 'set-a'"):
        write_jsonl(items, path)
    assert path.read_text(encoding="utf-8") == "old content\n"
    assert [p.name for p in tmp_path.iterdir()] == ["sets.jsonl"]


def test_write_rejects_non_items(tmp_path):
    with pytest.raises(TypeError, match=r"items\[0\] must be an IsomerItem"):
        write_jsonl([record()], tmp_path / "x.jsonl")


def test_malformed_lines_reported_with_numbers(tmp_path):
    path = write_lines(tmp_path / "bad.jsonl", [
        record(domain="law"),                                   # 1 valid
        '{"set_id": "set-a", "domain": ',                       # 2 invalid JSON
        {k: v for k, v in record(set_id="b").items() if k != "question"},  # 3 missing question
        record(set_id="c", answer="Yes", rationale="Answer: yes"),  # 4 non-canonical answer
        "",                                                     # 5 blank, skipped
        record(set_id="d", split="dev"),                        # 6 unknown split
        record(set_id="e", rationale="Answer: no"),             # 7 rationale disagrees
        '{"set_id": "f", "variables": {"x": NaN}}',             # 8 NaN constant
        record(domain="medicine", answer="no", rationale="Answer: no"),  # 9 set answer differs
        record(domain="law"),                                   # 10 duplicate domain in set
        "[1, 2]",                                               # 11 not an object
    ])
    with pytest.raises(IsomerFormatError) as caught:
        load_jsonl(path)
    located = {(line, name) for line, name, _ in caught.value.errors}
    expected = {(2, None), (3, "question"), (4, "answer"), (6, "split"), (7, "rationale"),
                (8, None), (9, "answer"), (10, "domain"), (11, None)}
    assert expected <= located
    assert all(line != 1 and line != 5 for line, _ in located)
    message = str(caught.value)
    assert "line 2: is not valid JSON" in message
    assert "line 3, field 'question': is missing" in message
    assert "line 9, field 'answer': differs within set 'set-a' from its first item on line 1" in message
    assert "line 10, field 'domain': set 'set-a' already has an item in domain 'law' (line 1)" in message


def test_invalid_utf8_line_reported(tmp_path):
    path = tmp_path / "bytes.jsonl"
    path.write_bytes(json.dumps(record()).encode() + b"\n\xff\xfe\n")
    with pytest.raises(IsomerFormatError, match="line 2: is not valid UTF-8"):
        load_jsonl(path)


def test_empty_file_rejected(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text("\n\n", encoding="utf-8")
    with pytest.raises(ValueError, match="contains no isomer items"):
        load_jsonl(path)


def test_error_message_is_capped_but_errors_complete(tmp_path):
    path = write_lines(tmp_path / "many.jsonl", ["{"] * 250)
    with pytest.raises(IsomerFormatError) as caught:
        load_numbered_jsonl(path)
    assert len(caught.value.errors) == 250
    assert "and 50 more" in str(caught.value)


def test_user_items_with_own_skeleton_load(tmp_path):
    """A teacher's set with its own skeleton and domain loads through the same path."""
    own = record(skeleton_id="teacher_analogy", domain="cooking", answer="basil",
                 question="Which herb completes the pesto?",
                 rationale=f"Pesto needs a fresh herb. {ANSWER_MARKER} Basil.",
                 variables={"source": "teacher"}, meta={"model": "teacher-1"})
    path = write_lines(tmp_path / "own.jsonl", [own])
    (item,) = load_jsonl(path)
    assert item.answer == "basil"
    assert item.meta == {"model": "teacher-1"}
