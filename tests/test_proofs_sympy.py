"""The symbolic checks of the proofs pass, and would fail on a wrong identity."""

from __future__ import annotations

import pytest
import sympy as sp

from iga_theory.proofs import build, checks


@pytest.mark.parametrize("name", sorted(checks.CHECKS))
def test_sympy_check_passes(name):
    passed, description = checks.CHECKS[name][1]()
    assert passed, description


def test_gaussian_expectation_moments():
    z, w = sp.symbols("z w")
    assert checks.gaussian_expectation(z**4, [z, w]) == 3
    assert checks.gaussian_expectation(z**2 * w**2 + z * w, [z, w]) == 1
    assert checks.gaussian_expectation(z**3, [z, w]) == 0


def test_wrong_identity_is_caught():
    """Negative control: the S1 risk with a wrong a3 coefficient is not the Gaussian expectation."""
    s, beta, S = sp.symbols("s beta S", positive=True)
    z = sp.Symbol("z")
    risk = checks.gaussian_expectation((s * z * (beta * S - 1)) ** 2 / 2, [z])
    assert checks._is_zero(risk - s**2 * (beta * S - 1) ** 2 / 2)
    assert not checks._is_zero(risk - s**2 * (beta * S - 1) ** 2)


def test_sympy_experiment_entries():
    result = checks.sympy_experiment()
    assert len(result["checks"]) == len(checks.CHECKS)
    for entry in result["checks"]:
        assert entry["passed"] is True
        assert set(entry) >= {"name", "theorem", "criterion", "value", "interval", "passed"}


def test_build_skips_without_latex(tmp_path, monkeypatch):
    monkeypatch.setattr(build.shutil, "which", lambda name: None)
    result = build.build(tmp_path)
    assert result["built"] == []
    assert "skipped" in result["message"]


def test_tex_sources_present():
    names = {path.name for path in build.tex_sources()}
    assert {"theorem1.tex", "theorem2.tex", "theorem3.tex"} <= names


@pytest.mark.skipif(build.shutil.which("latexmk") is None and build.shutil.which("pdflatex") is None,
                    reason="no TeX engine installed (latexmk or pdflatex)")
def test_proofs_build_to_pdf(tmp_path):
    result = build.build(tmp_path)
    assert [path.name for path in result["built"]] == ["theorem1.pdf", "theorem2.pdf", "theorem3.pdf"]
    for path in result["built"]:
        assert path.stat().st_size > 10_000
