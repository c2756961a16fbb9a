"""``iga validate``: certificate schema, exit status, resumption and the quick run."""

from __future__ import annotations

import json

import pytest

from iga_theory.cli import main
from iga_theory.commands import validate
from iga_theory.config import to_dict
from iga_theory.synthetic.validate_common import (MapsConfig, T1Config, T2Config, T3Config, ValidateConfig,
                                                  quick_config)

CHECK_KEYS = {"name", "theorem", "criterion", "value", "interval", "passed"}


def _tiny_config() -> ValidateConfig:
    """Settings small enough for the default test run; the verdicts are not asserted on them."""
    return ValidateConfig(
        t1=T1Config(T_grid=[32, 64, 128], seeds=3),
        t2=T2Config(replications=40, K_train=4, K_cert=16, train_steps=30, n_candidates=3, naive_candidates=1000,
                    naive_K=200, naive_replications=40, slope_K_grid=[2, 8, 32, 128, 512, 2048],
                    slope_replications=20, quantile_K_grid=[32]),
        t3=T3Config(drift_steps=200, drift_kappas=[2.0, 20.0], budget_steps=30, budget_replications=2,
                    hard_steps=300, hard_K_grid=[4], hard_replications=8, phase_ratios=[0.0, 2.0],
                    phase_K_grid=[4, 8], phase_draws=200, phase_replications=2, phase_steps=30),
        maps=MapsConfig(taus=[0.1, 1.0], kappas=[10.0], replications=2, steps=30, sgd_steps=30,
                        sgd_replications=2, batches=[4]),
    )


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("validate")
    config_path = out / "config.json"
    config_path.write_text(json.dumps(to_dict(_tiny_config())))
    status = main(["validate", "--out", str(out), "--config", str(config_path)])
    return out, config_path, status


def test_certificate_schema(tiny_run):
    out, _, status = tiny_run
    certificate = json.loads((out / "certificate.json").read_text())
    assert certificate["n_checks"] == len(certificate["checks"]) > 30
    for check in certificate["checks"]:
        assert CHECK_KEYS <= set(check)
        assert check["theorem"] in {"T1", "T2", "T3", "models"}
    assert status == (0 if certificate["passed"] else 1)
    assert certificate["n_failed"] == sum(not check["passed"] for check in certificate["checks"])


def test_every_issue_check_is_present(tiny_run):
    out, _, _ = tiny_run
    names = {check["name"] for check in json.loads((out / "certificate.json").read_text())["checks"]}
    required = {"t1_lhs_below_rhs_every_run", "t1_rate_exponent", "t2_naive_reuse_breaks",
                "t2_variance_slope_erm", "t2_crossover_K_star", "t2_bound_iga_vs_erm", "t2_quantile_iga_below_erm",
                "t3_invariance_budget", "t3_hard_limit_closed_form", "t3_fixed_points"}
    for model in ("s1", "s2"):
        for method in ("erm", "iga"):
            for route in ("fixed", "heldout", "union"):
                required.add(f"t2_coverage_{route}_{model}_{method}")
    assert required <= names


def test_figures_and_pdf_written(tiny_run):
    out, _, _ = tiny_run
    certificate = json.loads((out / "certificate.json").read_text())
    for name in certificate["figures"]:
        assert (out / name).stat().st_size > 1000
    assert "theory.pdf" in certificate["figures"]
    assert {"figures/t1_rate.png", "figures/t3_phase.png", "figures/maps_tau_kappa.png"} <= set(certificate["figures"])


def test_rerun_resumes_with_same_numbers(tiny_run):
    out, config_path, _ = tiny_run
    first = json.loads((out / "certificate.json").read_text())
    second = validate.run_validation(out, config_path=str(config_path), figures=False, progress=False)
    assert [c["value"] for c in second["checks"]] == [c["value"] for c in first["checks"]]
    # Every experiment came from the run folder, none was recomputed.
    assert max(second["timing"]["experiment_seconds"].values()) < 1.0


def test_invalid_config_exits_2(tmp_path, capsys):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"delta": 2.0}))
    assert main(["validate", "--out", str(tmp_path), "--config", str(path)]) == 2
    captured = capsys.readouterr()
    assert "delta" in captured.out + captured.err


def test_seeds_option_rejects_one():
    with pytest.raises(SystemExit):
        main(["validate", "--seeds", "1"])


def test_quick_config_is_smaller():
    quick, default = quick_config(), ValidateConfig()
    assert quick.t2.replications < default.t2.replications
    assert max(quick.t1.T_grid) < max(default.t1.T_grid)


@pytest.mark.slow
def test_quick_run_passes(tmp_path):
    """The full ``iga validate --quick``: every check passes."""
    status = main(["validate", "--quick", "--out", str(tmp_path)])
    certificate = json.loads((tmp_path / "certificate.json").read_text())
    failed = [check["name"] for check in certificate["checks"] if not check["passed"]]
    assert failed == []
    assert status == 0


def test_constant_risk_predictor_counts_as_covered():
    """An invariant S1 predictor has V_K = 0 and B ~ 0: its bound ties E_Q R up to rounding."""
    import numpy as np

    from iga_theory.synthetic import validate_t2
    from iga_theory.synthetic.models import make_model

    model = make_model("s1")
    thetas = np.repeat(model.invariant_solution()[None], 200, axis=0)
    result = validate_t2._certify(model, thetas, 64, 0.05, np.random.default_rng(0))
    assert result["covered"].all()
