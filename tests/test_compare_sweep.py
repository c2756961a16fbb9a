"""The comparison sweep end to end: summary content, resume, workers, CLI and report pages."""

import json
import math
import shutil

import numpy as np
import pytest
from matplotlib.backends.backend_pdf import PdfPages

from iga_theory.cli import main
from iga_theory.config import ConfigError
from iga_theory.report_compare import add_compare_section
from iga_theory.synthetic.benchmarks import build_environment, evaluate, parse_benchmark
from iga_theory.synthetic.compare import quick_config, run_sweep, sweep_config, sweep_tasks

TINY = dict(benchmarks=["s1"], variants=["plain", "rotated"], methods=["erm", "iga-sgd", "iga-adam-update"],
            seeds=2, n_hparams=2, lodo_folds=1, steps=15)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("compare")
    summary = run_sweep(sweep_config(**TINY), out, workers=1, progress=False)
    return out, summary


def _results(summary):
    return json.loads(json.dumps(summary["results"]))


def test_summary_has_every_cell(tiny_run):
    out, summary = tiny_run
    assert (out / "compare.json").exists()
    assert set(summary["results"]) == {"s1", "s1-rotated"}
    for bench in summary["results"].values():
        assert set(bench) == {"erm", "iga-sgd", "iga-adam-update"}
        for method in bench.values():
            assert set(summary["selection_methods"]) <= set(method)
            for selection in summary["selection_methods"]:
                entry = method[selection]
                assert entry["n_selected"] == 2
                assert entry["ood"]["n"] == 2
                assert entry["ood"]["se"] is not None
                assert len(entry["hparams"]) == 2
    assert summary["methods"]["iga-adam-update"]["placement"] == "update"
    assert summary["benchmarks"]["s1"]["metric"] == "risk"
    gap = summary["gaps"]["rotated"]["s1"]["erm"]
    expected = (summary["results"]["s1-rotated"]["erm"]["train_domain"]["ood"]["mean"]
                - summary["results"]["s1"]["erm"]["train_domain"]["ood"]["mean"])
    assert gap["mean"] == pytest.approx(expected, rel=1e-12)


def test_task_count():
    assert len(sweep_tasks(sweep_config(**TINY))) == 2 * 3 * 2 * 2 * 2


def test_resume_after_interruption_gives_same_numbers(tiny_run, tmp_path):
    out, reference = tiny_run
    shutil.copytree(out, tmp_path, dirs_exist_ok=True)
    records = next(tmp_path.glob("compare-*/records.jsonl"))
    lines = records.read_text().splitlines(keepends=True)
    # Keep a third of the records and a torn half line, as a kill in mid-write leaves them.
    records.write_text("".join(lines[: len(lines) // 3]) + lines[len(lines) // 3][:40])
    resumed = run_sweep(sweep_config(**TINY), tmp_path, workers=1, progress=False)
    assert resumed["timing"]["runs_this_call"] == len(lines) - len(lines) // 3
    assert _results(resumed) == _results(reference)


def test_workers_give_same_numbers(tiny_run, tmp_path):
    _, reference = tiny_run
    parallel = run_sweep(sweep_config(**TINY), tmp_path, workers=2, progress=False)
    assert _results(parallel) == _results(reference)


def test_evaluate_metrics_are_finite_and_in_range():
    env = build_environment(parse_benchmark("s2", n_train=32, n_val=32, n_test=64, n_isomer_sets=16), 1)
    theta = np.random.default_rng(0).standard_normal(env.predictor.n_params)
    metrics = evaluate(env, theta, left_out=0)
    for key in ("val", "in_domain", "oracle", "ood", "ood_worst", "shifted", "left_out", "lcs", "answer_consistency"):
        assert math.isfinite(metrics[key]), key
    for key in ("val", "in_domain", "ood", "ood_worst", "shifted", "answer_consistency"):
        assert 0.0 <= metrics[key] <= 1.0, key
    assert metrics["ood_worst"] <= metrics["ood"]


def test_invariant_predictor_is_consistent_on_isomers():
    # The invariant oracle ignores x_sp, and the renderings of a set share x_inv: LCS = 0.
    env = build_environment(parse_benchmark("s1", n_isomer_sets=32), 0)
    metrics = evaluate(env, env.model.invariant_solution())
    assert metrics["lcs"] == pytest.approx(0.0, abs=1e-20)
    assert metrics["answer_consistency"] == 1.0
    erm = evaluate(env, env.model.erm_solution(env.train_domains))
    assert erm["lcs"] > 1e-3


def test_same_seed_same_environment():
    a = build_environment(parse_benchmark("s3", n_train=8), 5)
    b = build_environment(parse_benchmark("s3", n_train=8), 5)
    c = build_environment(parse_benchmark("s3", n_train=8), 6)
    assert np.array_equal(a.data["train"][0].numpy(), b.data["train"][0].numpy())
    assert not np.array_equal(a.data["train"][0].numpy(), c.data["train"][0].numpy())


def test_config_validation():
    with pytest.raises(ConfigError, match="seeds"):
        sweep_config(seeds=0)
    with pytest.raises(ConfigError, match="methods"):
        sweep_config(methods=["iga-rmsprop"])
    with pytest.raises(ConfigError, match="lodo_folds"):
        sweep_config(lodo_folds=9, n_train_domains=8)
    assert quick_config().seeds == 2


def test_cli_writes_compare_json(tmp_path, capsys):
    status = main(["compare", "--benchmarks", "s1", "--variants", "plain", "--methods", "erm", "iga-sgd",
                   "--seeds", "2", "--hparams", "1", "--lodo-folds", "0", "--steps", "10",
                   "--out", str(tmp_path), "--workers", "1", "--no-progress"])
    assert status == 0
    summary = json.loads((tmp_path / "compare.json").read_text())
    assert summary["selection_methods"] == ["train_domain", "oracle", "default"]
    assert "s1 OOD risk" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["--seeds", "0"], "seeds"),
    (["--methods", "nope"], "unknown method"),
    (["--workers", "0"], "--workers"),
])
def test_cli_rejects_bad_input(tmp_path, capsys, argv, message):
    status = main(["compare", "--out", str(tmp_path), "--no-progress"] + argv)
    assert status == 2
    assert message in capsys.readouterr().err


def test_report_section_adds_pages(tiny_run, tmp_path):
    _, summary = tiny_run
    path = tmp_path / "section.pdf"
    with PdfPages(path) as pdf:
        pages = add_compare_section(pdf, summary)
        assert pdf.get_pagecount() == pages == 7
    assert path.stat().st_size > 10_000
    with pytest.raises(ValueError, match="compare.json"):
        with PdfPages(tmp_path / "bad.pdf") as pdf:
            add_compare_section(pdf, {"results": {}})


def test_rotated_variant_is_paired_with_plain():
    # Same trial seed: the rotated variant contains the plain samples times the rotation,
    # so ERM under SGD from theta = 0 (rotation-equivariant) gives the same metrics.
    from iga_theory.synthetic.benchmarks import train_method

    plain = build_environment(parse_benchmark("s1", n_isomer_sets=16), 3)
    rotated = build_environment(parse_benchmark("s1-rotated", n_isomer_sets=16), 3)
    rotation = rotated.model.rotation
    np.testing.assert_allclose(rotated.data["train"][0].numpy() @ rotation, plain.data["train"][0].numpy(),
                               atol=1e-13)
    results = []
    for env in (plain, rotated):
        method, _ = train_method(env, "erm", None, optimizer="sgd", seed=0, steps=30)
        results.append((method.parameters(), evaluate(env, method.parameters())))
    np.testing.assert_allclose(results[1][0], rotation @ results[0][0], atol=1e-12)
    for key in ("in_domain", "ood", "shifted", "lcs"):
        assert results[1][1][key] == pytest.approx(results[0][1][key], rel=1e-9), key
