"""``iga isomers generate|validate|stats`` run through the real entry point."""

from __future__ import annotations

import json

import pytest

from iga_theory.cli import main
from iga_theory.llm.isomers_schema import load_jsonl


@pytest.fixture()
def generated(tmp_path):
    path = tmp_path / "sets.jsonl"
    assert main(["isomers", "generate", "--out", str(path), "--sets", "44", "--seed", "5"]) == 0
    return path


def test_generate_writes_valid_file(tmp_path, capsys):
    path = tmp_path / "sets.jsonl"
    assert main(["isomers", "generate", "--out", str(path), "--sets", "44", "--seed", "5"]) == 0
    assert "in 44 sets" in capsys.readouterr().out
    items = load_jsonl(path)
    assert len({item.set_id for item in items}) == 44


def test_generate_refuses_to_overwrite(generated, capsys):
    before = generated.read_bytes()
    assert main(["isomers", "generate", "--out", str(generated), "--sets", "3"]) == 1
    assert "pass --overwrite" in capsys.readouterr().err
    assert generated.read_bytes() == before
    assert main(["isomers", "generate", "--out", str(generated), "--sets", "3", "--overwrite"]) == 0
    assert generated.read_bytes() != before


def test_generate_options(tmp_path):
    path = tmp_path / "law.jsonl"
    argv = ["isomers", "generate", "--out", str(path), "--sets", "20", "--domains", "law", "finance",
            "--skeletons", "rate_total", "modus_tollens", "--fractions", "1", "0", "0", "1"]
    assert main(argv) == 0
    items = load_jsonl(path)
    assert {item.skeleton_id for item in items} == {"rate_total", "modus_tollens"}
    assert {(item.domain, item.split) for item in items} == {("law", "train"), ("finance", "test_ood")}


def test_generate_bad_domain_fails(tmp_path, capsys):
    assert main(["isomers", "generate", "--out", str(tmp_path / "x.jsonl"), "--domains", "cooking"]) == 1
    assert "no lexicon for domain 'cooking'" in capsys.readouterr().err
    assert not (tmp_path / "x.jsonl").exists()


def test_validate_accepts_generated(generated, capsys):
    assert main(["isomers", "validate", str(generated)]) == 0
    assert ": valid;" in capsys.readouterr().out


def test_validate_reports_line_numbers(generated, capsys):
    lines = generated.read_text(encoding="utf-8").splitlines()
    record = json.loads(lines[2])
    record["question"] += " The bond is new."  # a held-out word outside test_ood
    lines[2] = json.dumps(record)
    lines[4] = lines[4].replace('"split": "', '"split": "x')
    generated.write_text("\n".join(lines) + "\n", encoding="utf-8")
    assert main(["isomers", "validate", str(generated)]) == 1
    err = capsys.readouterr().err
    assert "line 5, field 'split'" in err

    # With the schema problem fixed, the leak is reported on its own line.
    lines[4] = lines[4].replace('"split": "x', '"split": "')
    generated.write_text("\n".join(lines) + "\n", encoding="utf-8")
    assert main(["isomers", "validate", str(generated)]) == 1
    err = capsys.readouterr().err
    assert "line 3, field 'question': word 'bond' of held-out domain finance" in err


def test_validate_reports_wrong_answer(tmp_path, generated, capsys):
    lines = generated.read_text(encoding="utf-8").splitlines()
    records = [json.loads(line) for line in lines]
    target = next(r["set_id"] for r in records if r["skeleton_id"] == "rate_total")
    set_lines = [i for i, r in enumerate(records) if r["set_id"] == target]
    for index in set_lines:  # change the whole set, so it stays consistent
        records[index]["variables"]["rate_1"] += 1
        lines[index] = json.dumps(records[index])
    generated.write_text("\n".join(lines) + "\n", encoding="utf-8")
    assert main(["isomers", "validate", str(generated)]) == 1
    err = capsys.readouterr().err
    for index in set_lines:
        assert f"line {index + 1}, field 'answer': stored answer" in err


def test_validate_missing_file(tmp_path, capsys):
    assert main(["isomers", "validate", str(tmp_path / "none.jsonl")]) == 1
    assert "error:" in capsys.readouterr().err


def test_stats_counts(generated, capsys):
    assert main(["isomers", "stats", str(generated), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["n_sets"] == 44
    assert sum(summary["sets_per_split"].values()) == 44
    assert sum(summary["items_per_domain"].values()) == summary["n_items"]
    assert main(["isomers", "stats", str(generated)]) == 0
    out = capsys.readouterr().out
    for heading in ("items per skeleton", "items per domain", "items per split", "items per answer"):
        assert heading in out


def test_group_without_action_prints_help(capsys):
    assert main(["isomers"]) == 2
    assert "generate" in capsys.readouterr().out
