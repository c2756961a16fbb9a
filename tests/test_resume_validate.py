"""``iga validate --quick`` killed with SIGKILL at random moments resumes to the same certificate."""

import numpy as np
import pytest

pytest.importorskip("iga_theory.commands.validate", reason="the iga validate command is not installed")

from resume_support import (  # noqa: E402
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

# Cheap experiments of the quick preset (a few seconds each on 2 cores) for the default
# run. The slow test kills the whole quick run, figures included.
CHEAP = ("t2_naive_reuse", "t2_slopes", "t2_quantile", "t3_budget", "maps_tau_kappa")
SEED = 0
# Exit status 1 means that a check failed, which is still a complete run with a certificate.
COMPLETE = (0, 1)
KILL_SEED = 5


def validate_command(out, only=CHEAP, figures=False):
    args = ["validate", "--quick", "--seed", str(SEED), "--out", str(out)]
    if only:
        args += ["--only", *only]
    if not figures:
        args.append("--no-figures")
    return iga_command(*args)


def kill_resume_compare(tmp_path, only, figures, n_kills, kill_seed):
    """Baseline, then a killed-and-resumed run; check that both wrote the same files."""
    baseline = tmp_path / "baseline"
    phases = run_timed(validate_command(baseline, only, figures), baseline, tmp_path / "baseline.log", env=quiet_env(),
                       ok_status=COMPLETE)
    n_cells = len(only) if only else phases.n_records
    assert phases.n_records == n_cells

    out = tmp_path / "out"
    log_path = tmp_path / "killed.log"
    command = validate_command(out, only, figures)
    kills = []
    for moment in draw_moments(np.random.default_rng(kill_seed), n_kills, phases):
        running = kill_at(command, out, log_path, moment, env=quiet_env())
        kills.append(Kill(moment, running, count_records(out)))
    run_to_completion(command, log_path, env=quiet_env(), ok_status=COMPLETE)

    context = f"kills: {kills}; log: {log_path}"
    assert sum(kill.running for kill in kills) >= 2, context
    assert any(kill.running and kill.records_after < n_cells for kill in kills), context
    for name in ("certificate.json", "figures_data.json"):
        assert canonical_result(out / name) == canonical_result(baseline / name), f"{name}; {context}"
    assert stored_metrics(out) == stored_metrics(baseline), context
    assert temporaries(out) == [], context


def test_validate_sigkill_resume_same_certificate(tmp_path):
    kill_resume_compare(tmp_path, CHEAP, figures=False, n_kills=3, kill_seed=KILL_SEED)


@pytest.mark.slow
def test_validate_quick_full_sigkill_resume(tmp_path):
    kill_resume_compare(tmp_path, None, figures=True, n_kills=5, kill_seed=KILL_SEED + 1)
