"""Same command, same seed: ``iga validate --quick`` writes the same certificate.json.

One run is a subprocess with a fixed ``PYTHONHASHSEED`` and one BLAS thread, the other
calls `run_validation` in this test process. The default run covers cheap experiments
of the quick preset without figures; the slow test compares two complete quick runs.
Only the ``timing`` key and the git commit are left out.
"""

import json

import pytest

validate = pytest.importorskip("iga_theory.commands.validate", reason="the iga validate command is not installed")

from resume_support import canonical_result, iga_command, quiet_env, run_to_completion, stored_metrics  # noqa: E402

CHEAP = ("t2_naive_reuse", "t3_budget", "maps_tau_kappa")
SEED = 0
# Exit status 1 means that a check failed, which still writes a complete certificate.
COMPLETE = (0, 1)


def compare_runs(tmp_path, only, figures):
    first = tmp_path / "first"
    args = ["validate", "--quick", "--seed", str(SEED), "--out", str(first)]
    args += ["--only", *only] if only else []
    args += [] if figures else ["--no-figures"]
    run_to_completion(iga_command(*args), tmp_path / "log.txt", env=quiet_env(PYTHONHASHSEED="0"),
                      cwd=tmp_path, ok_status=COMPLETE)

    second = tmp_path / "second"
    validate.run_validation(second, quick=True, seed=SEED, only=list(only) if only else None,
                            figures=figures, progress=False)

    for name in ("certificate.json", "figures_data.json"):
        assert canonical_result(first / name) == canonical_result(second / name), name
    assert stored_metrics(first) == stored_metrics(second)
    certificate = json.loads((first / "certificate.json").read_text())
    assert certificate["n_checks"] > 0


def test_validate_same_seed_identical_certificate(tmp_path):
    compare_runs(tmp_path, CHEAP, figures=False)


def test_validate_other_seed_differs(tmp_path):
    # Control: the comparison can fail, because another seed changes the measurements.
    a = validate.run_validation(tmp_path / "a", quick=True, seed=SEED, only=["t3_budget"], figures=False,
                                progress=False)
    b = validate.run_validation(tmp_path / "b", quick=True, seed=SEED + 1, only=["t3_budget"], figures=False,
                                progress=False)
    assert a["measurements"] != b["measurements"]


@pytest.mark.slow
def test_validate_quick_full_identical_certificate(tmp_path):
    compare_runs(tmp_path, None, figures=True)
