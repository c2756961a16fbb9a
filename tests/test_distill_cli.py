"""``iga distill`` and ``iga teacher`` command lines, the metrics table and the report page."""

from __future__ import annotations

import json

import numpy as np
import pytest
from matplotlib.backends.backend_pdf import PdfPages

from iga_theory.cli import main
from iga_theory.llm.distill_config import load_distill_config
from iga_theory.llm.distill_pipeline import aggregate, format_table
from iga_theory.report_distill import add_distill_section


def fake_scores(rng, domains, n_sets, accuracy):
    correct = {d: (rng.random(n_sets) < accuracy).astype(float).tolist() for d in domains}
    return {"set_ids": [f"s{i}" for i in range(n_sets)],
            "accuracy": np.mean([correct[d] for d in domains], axis=0).tolist(),
            "lcs": rng.uniform(0, 0.2, n_sets).tolist(), "consistent": (rng.random(n_sets) < 0.5).astype(float).tolist(),
            "domain_correct": correct, "n_incomplete": 0}


@pytest.fixture
def metrics():
    rng = np.random.default_rng(0)
    config = load_distill_config(preset="tiny-cpu", overrides={"train": {"seeds": [0, 1]}, "eval": {"n_bootstrap": 200}})
    train_domains, heldout = ["mathematics", "law"], ["finance", "sports"]
    results = {
        method: [{"seed": seed, "final_loss": 1.0, "scores": {
            "in_domain": fake_scores(rng, train_domains, 30, accuracy),
            "ood": fake_scores(rng, heldout, 20, accuracy - 0.1)}} for seed in (0, 1)]
        for method, accuracy in (("erm", 0.5), ("iga", 0.6))
    }
    return {"methods": aggregate(config, results, train_domains, heldout), "train_domains": train_domains,
            "heldout_domains": heldout, "config": json.loads(json.dumps({"train": {"steps": 3, "seeds": [0, 1]}}))}


def test_aggregate_structure_and_gain(metrics):
    erm, iga = metrics["methods"]["erm"], metrics["methods"]["iga"]
    assert "gain_over_erm_pp" not in erm
    for split in ("in_domain", "ood"):
        assert iga[split]["n_seeds"] == 2
        gain = iga["gain_over_erm_pp"][split]
        difference = 100 * (iga[split]["accuracy"]["mean"] - erm[split]["accuracy"]["mean"])
        assert gain["mean"] == pytest.approx(difference)
        assert gain["ci"][0] <= gain["mean"] <= gain["ci"][1]
    assert set(iga["in_domain"]["per_domain_accuracy"]) == {"mathematics", "law"}


def test_format_table_lists_methods(metrics):
    table = format_table(metrics)
    lines = table.splitlines()
    assert lines[0].split()[:3] == ["method", "ID", "acc"]
    assert lines[2].startswith("erm")
    assert "(ref)" in lines[2]
    assert lines[3].startswith("iga")


def test_report_page_renders(metrics, tmp_path):
    with PdfPages(tmp_path / "report.pdf") as pdf:
        add_distill_section(pdf, metrics)
        assert pdf.get_pagecount() == 1
    assert (tmp_path / "report.pdf").stat().st_size > 1000
    with PdfPages(tmp_path / "bad.pdf") as pdf, pytest.raises(ValueError, match="metrics.json"):
        add_distill_section(pdf, {"methods": {}})


def test_cli_requires_config_or_preset(capsys):
    assert main(["distill"]) == 2
    assert "--preset" in capsys.readouterr().err


def test_cli_print_config_applies_overrides(capsys):
    assert main(["distill", "--preset", "tiny-cpu", "--steps", "7", "--methods", "erm", "vrex",
                 "--out", "somewhere", "--print-config"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["train"]["steps"] == 7
    assert printed["train"]["methods"] == ["erm", "vrex"]
    assert printed["runtime"]["output_dir"] == "somewhere"


def test_cli_rejects_bad_config_file(tmp_path, capsys):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"train": {"lr": -1.0}}))
    assert main(["distill", "--config", str(path)]) == 2
    assert "train.lr" in capsys.readouterr().err
    path.write_text("{not json")
    assert main(["distill", "--config", str(path)]) == 2


def test_teacher_cli_rejects_same_input_and_output(tmp_path, capsys):
    path = tmp_path / "items.jsonl"
    path.write_text("")
    assert main(["teacher", "--model", "x", "--items", str(path), "--out", str(path)]) == 2
    assert "--out must differ" in capsys.readouterr().err


def test_rerun_with_other_configuration_is_refused(tmp_path):
    from iga_theory.config import ConfigError
    from iga_theory.llm.distill_pipeline import check_output_dir

    first = load_distill_config(preset="tiny-cpu", overrides={"runtime": {"output_dir": str(tmp_path)}})
    check_output_dir(first)
    same_but_more_seeds = load_distill_config(preset="tiny-cpu", overrides={
        "runtime": {"output_dir": str(tmp_path), "threads": 2}, "train": {"seeds": [0, 1]}})
    check_output_dir(same_but_more_seeds)
    other = load_distill_config(preset="tiny-cpu", overrides={"runtime": {"output_dir": str(tmp_path)},
                                                              "train": {"lr": 0.1}})
    with pytest.raises(ConfigError, match="different configuration"):
        check_output_dir(other)


@pytest.mark.slow
def test_tiny_cpu_preset_end_to_end(tmp_path):
    """The full ``--preset tiny-cpu`` run (minutes): every output exists and the table prints."""
    import subprocess
    import sys
    import time

    began = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "iga_theory.cli", "distill", "--preset", "tiny-cpu",
                             "--out", str(tmp_path / "run"), "--no-progress"],
                            capture_output=True, text=True, timeout=1800)
    elapsed = time.monotonic() - began
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ID acc %" in result.stdout
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert set(metrics["methods"]) == {"erm", "iga"}
    for method in ("erm", "iga"):
        entry = metrics["methods"][method]
        for split in ("in_domain", "ood"):
            for key in ("accuracy", "lcs", "answer_consistency"):
                assert entry[split][key]["ci"][0] <= entry[split][key]["mean"] <= entry[split][key]["ci"][1]
        run = tmp_path / "run" / "runs" / f"{method}-seed0"
        assert (run / "adapter" / "adapter_model.safetensors").exists()
        assert len((run / "log.jsonl").read_text().splitlines()) == metrics["config"]["train"]["steps"]
    # The run must fit in 10 minutes on 2 cores; a loaded machine gets no extra allowance.
    assert elapsed < 600, f"tiny-cpu took {elapsed:.0f} s"
