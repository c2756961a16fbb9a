"""Theory pages: add_theory_section appends pages to a PdfPages from certificate data."""

from __future__ import annotations

import numpy as np
from matplotlib.backends.backend_pdf import PdfPages

from iga_theory import report_theory


def _figures_data():
    T = [64, 128, 256]
    return {
        "rate": {"T": T, "lhs": [[1.0, 0.7, 0.5]] * 2, "rhs": [[2.0, 1.4, 1.0]] * 2, "plain": [[3.0, 2.0, 1.5]] * 2,
                 "floor_plain": [[1, 1, 1]], "floor_rhs": [[2, 2, 2]], "floor": 0.05,
                 "slope": {"slope": -0.5, "ci_low": -0.55, "ci_high": -0.45},
                 "alignment": np.full((3, 10), 0.5).tolist()},
        "coverage": [{"model": "s1", "method": "erm", "route": "fixed", "coverage": 1.0}],
        "suppression": {"ratios": [0.0, 1.0], "K": [4, 8], "formula": [[1, 1], [0.5, 0.2]],
                        "frequency": [[1, 1], [0.5, 0.2]]},
        "phase": {"ratios": [0.0, 1.0], "K": [4, 8],
                  "maps": {"plain": {"gain": [[0.1, 0.2], [-0.1, 0.0]]}, "rotated": {"gain": [[0, 0], [0, 0]]}}},
    }


def _certificate():
    return {"n_checks": 2, "n_failed": 1, "mode": "quick", "timing": {"runtime_s": 12.0},
            "checks": [{"name": "a", "theorem": "T1", "criterion": "", "value": 0.5, "interval": [0.4, 0.6],
                        "passed": True},
                       {"name": "b", "theorem": "T2", "criterion": "", "value": {"x": 1}, "interval": None,
                        "passed": False}]}


def test_add_theory_section_pages(tmp_path):
    with PdfPages(tmp_path / "report.pdf") as pdf:
        pages = report_theory.add_theory_section(pdf, _certificate(), _figures_data())
    # statements + certificate table + one page per figure with data (rate, coverage, suppression, phase)
    assert pages == 2 + 4
    assert (tmp_path / "report.pdf").stat().st_size > 10_000


def test_save_figures_skips_missing_data(tmp_path):
    paths = report_theory.save_figures({"coverage": _figures_data()["coverage"]}, tmp_path)
    assert [path.name for path in paths] == ["t2_coverage.png"]


def test_bad_figure_data_is_skipped(tmp_path, caplog):
    paths = report_theory.save_figures({"rate": {"T": [1]}}, tmp_path)
    assert paths == []
    assert "skipped" in caplog.text
