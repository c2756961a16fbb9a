"""``iga bench``: registry, record schema and the JSON file (tiny sizes, timings not checked)."""

from __future__ import annotations

import json

import pytest

from iga_theory.benchmarks import REGISTRY
from iga_theory.benchmarks.core import RECORD_KEYS, make_record, time_side_by_side
from iga_theory.cli import main
from iga_theory.commands.bench import load_benchmark, run_benchmarks

OPERATOR_BENCHMARKS = ["mask_kernel", "mask_numba_vs_numpy", "randomized_projection", "thin_retraction"]


def check_record(record):
    assert set(RECORD_KEYS) <= set(record)
    assert isinstance(record["name"], str)
    assert record["name"]
    assert isinstance(record["ratio"], float)
    assert record["ratio"] >= 0
    assert isinstance(record["target"], float)
    assert record["comparison"] in ("<=", ">=")
    assert isinstance(record["passed"], bool)
    assert isinstance(record["sizes"], dict)
    assert record["sizes"]
    assert record["dtype"] in ("float32", "float64")
    assert {"cpu", "cores", "numpy", "torch", "numba"} <= set(record["machine"])
    assert all(isinstance(t, float) and t >= 0 for t in record["times_s"].values())
    assert isinstance(record["note"], str)
    if not record["passed"]:
        assert record["note"], f"failed record {record['name']} must say why"


def test_operator_benchmarks_registered():
    for name in OPERATOR_BENCHMARKS:
        assert name in REGISTRY
        assert callable(load_benchmark(name))


def test_tiny_run_records_follow_schema():
    records = run_benchmarks(OPERATOR_BENCHMARKS, profile="tiny", repeats=1, progress=False)
    names = {record["name"] for record in records}
    assert {"mask_kernel_numba", "mask_numba_vs_numpy", "randomized_projection", "thin_retraction_memory"} <= names
    for record in records:
        check_record(record)
    json.dumps(records)  # serialisable as written


def test_cli_writes_bench_json(tmp_path, capsys):
    status = main(["bench", "--out", str(tmp_path), "--profile", "tiny", "--repeats", "1",
                   "--only", "thin_retraction", "randomized_projection"])
    assert status == 0
    records = json.loads((tmp_path / "bench.json").read_text())
    assert [r["name"] for r in records] == ["thin_retraction_memory", "thin_retraction_scaling",
                                             "randomized_projection"]
    for record in records:
        check_record(record)
    assert "wrote 3 records" in capsys.readouterr().out


def test_cli_rejects_conflicting_profile(tmp_path):
    assert main(["bench", "--out", str(tmp_path), "--quick", "--profile", "tiny"]) == 2


def test_unknown_benchmark_rejected():
    with pytest.raises(ValueError, match="unknown benchmark 'gpu_step'"):
        run_benchmarks(["gpu_step"], profile="tiny")
    with pytest.raises(ValueError, match="profile must be one of"):
        run_benchmarks(["mask_kernel"], profile="huge")


def test_time_side_by_side_interleaves():
    calls = []
    times = time_side_by_side({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, repeats=2)
    assert calls == ["a", "b", "a", "b", "a", "b"]  # one warm-up round, then interleaved
    assert set(times) == {"a", "b"}
    calls.clear()
    time_side_by_side({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, repeats=1, warmup=("b",))
    assert calls == ["b", "a", "b"]


def test_make_record_pass_rule():
    machine = {"cpu": "x", "cores": 1, "numpy": "1", "torch": "1", "numba": "1"}
    record = make_record("x", 2.0, 1.5, "<=", {"n": 1}, "float32", {}, "d", "too slow", machine=machine)
    assert record["passed"] is False
    assert record["note"] == "too slow"
    record = make_record("x", 2.0, 1.5, ">=", {"n": 1}, "float32", {}, "d", "too slow", machine=machine)
    assert record["passed"] is True
    assert record["note"] == ""
    with pytest.raises(ValueError, match="comparison must be one of"):
        make_record("x", 1.0, 1.0, "<", {}, "float32", {}, "d", machine=machine)


def test_interrupted_bench_resumes_and_completed_reruns(tmp_path, monkeypatch):
    from iga_theory.commands import bench

    calls = []

    def fake_run(name, profile, repeats):
        calls.append(name)
        return {"records": [{"name": name}]}

    monkeypatch.setattr(bench, "_run_one", fake_run)
    names = ["thin_retraction", "mask_kernel"]

    # An interrupted run: the first benchmark stored, no completion marker.
    identity = {"profile": "tiny", "repeats": None, "names": names}
    run = bench.RunFolder(tmp_path, "bench", identity, bench.config_hash(identity))
    run.append("thin_retraction", {"records": [{"name": "thin_retraction", "stored": True}]})

    records = bench.run_benchmarks(names, profile="tiny", progress=False, run_root=tmp_path)
    assert calls == ["mask_kernel"]
    assert records[0] == {"name": "thin_retraction", "stored": True}

    # The run is now complete, so the same call measures everything again.
    bench.run_benchmarks(names, profile="tiny", progress=False, run_root=tmp_path)
    assert calls == ["mask_kernel", "thin_retraction", "mask_kernel"]
