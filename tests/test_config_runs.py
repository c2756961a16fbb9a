"""Typed configuration loading and resumable run folders."""

import json
import os

import pytest

from iga_theory import runs
from iga_theory.config import ConfigError, config_hash, load_config
from iga_theory.report_config import ReportConfig, load_report_config


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_defaults_and_partial_override(tmp_path):
    path = write(tmp_path, "c.toml", "[bound]\nn_seeds = 7\n")
    config = load_report_config(path)
    assert config.bound.n_seeds == 7
    assert config.bound.delta == ReportConfig().bound.delta


def test_quick_then_file(tmp_path):
    path = write(tmp_path, "c.json", json.dumps({"rate": {"n_seeds": 3}}))
    config = load_report_config(path, quick=True)
    assert config.rate.n_seeds == 3
    assert config.training.steps == 1000  # from the quick sizes


@pytest.mark.parametrize("text, fragments", [
    ('{"bound": {"delta": 2}}', ["bound.delta", "2", "[1e-09, 0.5]"]),
    ('{"bound": {"deltaa": 0.1}}', ["bound.deltaa", "unknown"]),
    ('{"training": {"steps": "many"}}', ["training.steps", "'many'", "integer"]),
    ('{"training": {"steps": 1.5}}', ["training.steps", "1.5", "integer"]),
    ('{"model": {"rotate": 1}}', ["model.rotate", "true or false"]),
    ('{"bound": {"range_mode": "max"}}', ["bound.range_mode", "'max'", "common"]),
    ('{"bound": {"K_grid": [2, 1]}}', ["bound.K_grid[1]", "1", "[2, 4096]"]),
    ('{"model": 3}', ["model", "table"]),
    ('{"bound": {"K_grid": [4, 4, 4]}}', ["bound.K_grid", "strictly increasing", "[4, 4, 4]"]),
    ('{"rate": {"T_grid": []}}', ["rate.T_grid", "at least 2", "[]"]),
])
def test_bad_values_named(tmp_path, text, fragments):
    path = write(tmp_path, "c.json", text)
    with pytest.raises(ConfigError) as error:
        load_report_config(path)
    for fragment in fragments:
        assert fragment in str(error.value)


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(ReportConfig, tmp_path / "absent.toml")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_config(ReportConfig, write(tmp_path, "c.json", "{nope"))
    with pytest.raises(ConfigError, match=r"\.json or \.toml"):
        load_config(ReportConfig, write(tmp_path, "c.yaml", "a: 1"))


def test_config_hash_stable_and_sensitive():
    a = ReportConfig()
    b = ReportConfig()
    assert config_hash(a) == config_hash(b)
    b.bound.n_seeds += 1
    assert config_hash(a) != config_hash(b)


def test_run_folder_resumes_and_skips(tmp_path):
    run = runs.RunFolder(tmp_path, "t", {"x": 1}, "abc")
    calls = []

    def compute(value):
        calls.append(value)
        return {"value": value}

    assert run.cached("a", compute, 1) == {"value": 1}
    again = runs.RunFolder(tmp_path, "t", {"x": 1}, "abc")
    assert again.cached("a", compute, 99) == {"value": 1}
    assert calls == [1]
    record = again.records()[0]
    assert record["config"] == {"x": 1}
    assert "versions" in record["provenance"]


def test_torn_last_line_is_dropped_and_repaired(tmp_path):
    run = runs.RunFolder(tmp_path, "t", {}, "h")
    run.append("a", {"v": 1})
    with open(run.records_path, "a") as handle:
        handle.write('{"key": "b", "metr')  # a kill inside the write
    resumed = runs.RunFolder(tmp_path, "t", {}, "h")
    assert [r["key"] for r in resumed.records()] == ["a"]
    resumed.append("b", {"v": 2})
    assert [r["key"] for r in runs.read_jsonl(resumed.records_path)] == ["a", "b"]


def test_atomic_write_leaves_no_temporary_files(tmp_path):
    runs.atomic_write_json(tmp_path / "r.json", {"a": 1})
    assert json.loads((tmp_path / "r.json").read_text()) == {"a": 1}
    assert os.listdir(tmp_path) == ["r.json"]
    with pytest.raises(ValueError):
        runs.atomic_write_json(tmp_path / "bad.json", {"a": float("nan")})
    assert os.listdir(tmp_path) == ["r.json"]


def test_unwritable_output_folder(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(OSError, match="not writable"):
        runs.ensure_writable_dir(blocker / "sub")
