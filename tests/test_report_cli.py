"""The ``iga report`` command end to end on a small configuration."""

import json
import shutil

import pytest

from iga_theory.cli import main

SMALL = {
    "training": {"steps": 200},
    "bound": {"K_grid": [2, 4, 8, 32], "n_seeds": 3, "iga_steps": 100, "n_boot": 50},
    "rate": {"T_grid": [64, 128, 256], "n_seeds": 2},
}


@pytest.fixture
def small_config(tmp_path):
    path = tmp_path / "small.json"
    path.write_text(json.dumps(SMALL))
    return path


def run_report(config, out, seed=0):
    return main(["report", "--config", str(config), "--out", str(out), "--seed", str(seed), "--no-progress",
                 "--theory", "skip"])


def strip_timing(results):
    """Drop timing and provenance: the git commit moves when the tree is committed between runs."""
    return {k: v for k, v in results.items() if k not in ("timing", "provenance")}


def test_report_writes_pdf_and_documented_keys(tmp_path, small_config):
    assert run_report(small_config, tmp_path / "out") == 0
    pdf = (tmp_path / "out" / "iga-report.pdf").read_bytes()
    assert pdf.startswith(b"%PDF")
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    for key in ("headline", "training", "bound_vs_K", "rate_vs_T", "config", "provenance", "timing"):
        assert key in results
    head = results["headline"]
    for key in ("erm_final_expected_ood_risk", "iga_final_shifted_risk", "erm_slope_excess",
                "theorem1_slope", "iga_bound_at_max_K"):
        assert key in head
    assert results["bound_vs_K"]["K"] == SMALL["bound"]["K_grid"]
    # IGA recovers the invariant predictor on the default S1 configuration.
    assert head["iga_final_shifted_risk"] == pytest.approx(head["invariant_oracle_expected_ood_risk"], rel=1e-6)
    assert head["erm_final_shifted_risk"] > head["iga_final_shifted_risk"]


def test_same_seed_same_results_and_resume(tmp_path, small_config):
    assert run_report(small_config, tmp_path / "a", seed=3) == 0
    assert run_report(small_config, tmp_path / "b", seed=3) == 0
    a = json.loads((tmp_path / "a" / "results.json").read_text())
    b = json.loads((tmp_path / "b" / "results.json").read_text())
    assert strip_timing(a) == strip_timing(b)

    # Resume: keep half of the stored cells, drop the rest and the outputs, rerun.
    run_dir = next((tmp_path / "a" / "runs").iterdir())
    lines = (run_dir / "records.jsonl").read_text().splitlines(keepends=True)
    (run_dir / "records.jsonl").write_text("".join(lines[: len(lines) // 2]))
    (run_dir / "done.json").unlink()
    (tmp_path / "a" / "results.json").unlink()
    assert run_report(small_config, tmp_path / "a", seed=3) == 0
    resumed = json.loads((tmp_path / "a" / "results.json").read_text())
    assert strip_timing(resumed) == strip_timing(a)


def test_different_seed_changes_results(tmp_path, small_config):
    assert run_report(small_config, tmp_path / "a", seed=1) == 0
    assert run_report(small_config, tmp_path / "b", seed=2) == 0
    a = json.loads((tmp_path / "a" / "results.json").read_text())
    b = json.loads((tmp_path / "b" / "results.json").read_text())
    assert a["bound_vs_K"] != b["bound_vs_K"]


@pytest.mark.parametrize("text, fragments", [
    ('{"bound": {"delta": 0.9}}', ["bound.delta", "0.9", "[1e-09, 0.5]"]),
    ('{"training": {"stepz": 3}}', ["training.stepz", "unknown"]),
    ('{"rate": {"n_seeds": "4"}}', ["rate.n_seeds", "'4'"]),
])
def test_bad_config_exits_nonzero_with_message(tmp_path, capsys, text, fragments):
    path = tmp_path / "bad.json"
    path.write_text(text)
    assert main(["report", "--config", str(path), "--out", str(tmp_path / "o")]) != 0
    message = capsys.readouterr().err
    for fragment in fragments:
        assert fragment in message
    assert not (tmp_path / "o").exists()  # nothing written


def test_unwritable_out_exits_nonzero(tmp_path, small_config, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert run_report(small_config, blocker / "out") != 0
    assert "not writable" in capsys.readouterr().err


def test_show_config_lists_keys(capsys):
    assert main(["report", "--show-config"]) == 0
    text = capsys.readouterr().out
    assert "bound.delta" in text and "rate.T_grid" in text


def test_help_mentions_units(capsys):
    with pytest.raises(SystemExit):
        main(["report", "--help"])
    text = capsys.readouterr().out
    assert "--seed" in text and "--quick" in text


def test_redraw_from_results(tmp_path, small_config):
    from iga_theory.report import load_results
    from iga_theory.report_pages import render_pdf

    assert run_report(small_config, tmp_path / "out") == 0
    results = load_results(tmp_path / "out" / "results.json")
    shutil.rmtree(tmp_path / "out" / "runs")
    render_pdf(results, tmp_path / "again.pdf")
    assert (tmp_path / "again.pdf").read_bytes().startswith(b"%PDF")


def test_theory_section_from_validation(tmp_path):
    """The report runs the validation checks and records their verdicts (two fast experiments here)."""
    from iga_theory.report import build_report
    from iga_theory.config import from_dict, to_dict
    from iga_theory.report_config import ReportConfig, merge

    config = from_dict(ReportConfig, merge(to_dict(ReportConfig()), SMALL))
    results = build_report(config, tmp_path / "out", progress=False, theory="quick",
                           theory_only=["t2_naive_reuse", "t3_budget"])
    theory = results["theory"]
    assert theory["mode"] == "quick"
    assert theory["n_checks"] == len(theory["checks"]) >= 2
    assert (tmp_path / "out" / "validate" / "certificate.json").is_file()
    stored = json.loads((tmp_path / "out" / "results.json").read_text())
    assert stored["theory"] == theory


def test_missing_compare_file_rejected_before_output(tmp_path, small_config, capsys):
    code = main(["report", "--config", str(small_config), "--out", str(tmp_path / "o"), "--theory", "skip",
                 "--compare", str(tmp_path / "absent.json")])
    assert code != 0
    assert "absent.json" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
