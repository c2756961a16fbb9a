"""``iga report`` killed with SIGKILL at random moments resumes to the same results.json."""

import json

import numpy as np
import pytest

from iga_theory.report import run_experiments, write_results
from iga_theory.report_config import load_report_config

from resume_support import (
    Kill,
    canonical_result,
    count_records,
    draw_moments,
    iga_command,
    kill_at,
    quiet_env,
    run_timed,
    run_to_completion,
    stored_metrics,
    temporaries,
)

# About 30 cells of 0.1 s to 0.3 s each on a 2-core machine, so kills land among them.
SMALL = {
    "training": {"steps": 200},
    "bound": {"K_grid": [2, 4, 8, 16], "n_seeds": 4, "iga_steps": 300, "n_boot": 20},
    "rate": {"T_grid": [64, 128, 256], "n_seeds": 3},
}
N_CELLS = 4 * 4 + 3 * 3
# Seed of the kill moments (not of the experiment).
KILL_SEED = 4


@pytest.fixture(scope="module")
def baseline(tmp_path_factory):
    """An uninterrupted run: its folder, and when its records appeared."""
    root = tmp_path_factory.mktemp("baseline")
    config = root / "small.json"
    config.write_text(json.dumps(SMALL))
    out = root / "out"
    phases = run_timed(report_command(config, out), out, root / "log.txt", env=quiet_env())
    assert phases.n_records == N_CELLS
    return {"config": config, "out": out, "phases": phases}


def report_command(config, out, seed=7, theory="skip"):
    """``iga report`` on ``config``; ``theory="skip"`` leaves out the ``iga validate`` checks (minutes)."""
    return iga_command("report", "--config", str(config), "--out", str(out), "--seed", str(seed), "--no-progress",
                       "--theory", theory)


def kill_and_resume(baseline, out, log_path, n_kills, kill_seed, theory="skip"):
    """Kill a fresh run ``n_kills`` times at seeded random moments, then let it finish."""
    rng = np.random.default_rng(kill_seed)
    command = report_command(baseline["config"], out, theory=theory)
    moments = draw_moments(rng, n_kills, baseline["phases"])
    kills = []
    for moment in moments:
        running = kill_at(command, out, log_path, moment, env=quiet_env())
        kills.append(Kill(moment, running, count_records(out)))
    # A kill while the PDF is drawn (seconds) leaves its temporary file; plant one so
    # that every run checks that the rerun removes it.
    out.mkdir(parents=True, exist_ok=True)
    (out / ".iga-report.pdf.abcd1234.tmp").write_bytes(b"%PDF-1.4 torn")
    run_to_completion(command, log_path, env=quiet_env())
    return kills


def check_same_as_baseline(baseline, out, kills, log_path, n_cells=N_CELLS):
    context = f"kills: {kills}; log: {log_path}"
    # The test must have interrupted real work, among the cells too, or it proves nothing.
    assert sum(kill.running for kill in kills) >= 2, context
    assert any(kill.running and kill.records_after < n_cells for kill in kills), context

    assert canonical_result(out / "results.json") == canonical_result(baseline["out"] / "results.json"), context
    assert stored_metrics(out) == stored_metrics(baseline["out"]), context
    assert len(stored_metrics(out)) == n_cells
    assert (out / "iga-report.pdf").read_bytes().startswith(b"%PDF")
    assert (next((out / "runs").iterdir()) / "done.json").is_file(), context
    assert temporaries(out) == [], context


def test_report_sigkill_resume_same_results(baseline, tmp_path):
    out = tmp_path / "out"
    kills = kill_and_resume(baseline, out, tmp_path / "log.txt", 3, KILL_SEED)
    check_same_as_baseline(baseline, out, kills, tmp_path / "log.txt")


def test_report_resume_after_torn_record(baseline, tmp_path):
    # A kill inside the append of a record leaves part of a line, and a kill inside an
    # atomic write leaves its temporary file. Resuming (in this process, without the
    # PDF) drops both and recomputes the lost cell.
    out = tmp_path / "out"
    run_dir = next((baseline["out"] / "runs").iterdir())
    copy = out / "runs" / run_dir.name
    copy.mkdir(parents=True)
    lines = (run_dir / "records.jsonl").read_text().splitlines(keepends=True)
    half = len(lines) // 2
    (copy / "records.jsonl").write_text("".join(lines[:half]) + lines[half][: len(lines[half]) // 2])
    (copy / "config.json").write_text((run_dir / "config.json").read_text())
    (copy / ".done.json.abcd1234.tmp").write_text('{"n_rec')

    results = run_experiments(load_report_config(baseline["config"]), 7, out, progress=False)
    write_results(results, out)

    assert canonical_result(out / "results.json") == canonical_result(baseline["out"] / "results.json")
    assert stored_metrics(out) == stored_metrics(baseline["out"])
    assert temporaries(out) == []


@pytest.mark.slow
@pytest.mark.parametrize("kill_seed", range(5))
def test_report_many_kills_same_results(baseline, tmp_path, kill_seed):
    out = tmp_path / "out"
    kills = kill_and_resume(baseline, out, tmp_path / "log.txt", 8, 100 + kill_seed)
    check_same_as_baseline(baseline, out, kills, tmp_path / "log.txt")


@pytest.mark.slow
def test_report_with_theory_kills_same_results(tmp_path):
    # The default report also runs the quick iga validate checks into OUT/validate/.
    config = tmp_path / "small.json"
    config.write_text(json.dumps(SMALL))
    reference = tmp_path / "reference"
    phases = run_timed(report_command(config, reference, theory="quick"), reference, tmp_path / "reference.log",
                       env=quiet_env())
    baseline = {"config": config, "out": reference, "phases": phases}
    out = tmp_path / "out"
    kills = kill_and_resume(baseline, out, tmp_path / "log.txt", 6, 200, theory="quick")
    check_same_as_baseline(baseline, out, kills, tmp_path / "log.txt", n_cells=phases.n_records)
    assert canonical_result(out / "validate" / "certificate.json") == \
        canonical_result(reference / "validate" / "certificate.json")
