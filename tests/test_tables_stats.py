"""Table statistics against hand-computed values; bold best with ties; rendering."""

import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

from iga_theory.tables import (Summary, best_index, bold_best, draw_table, format_summary,  # noqa: E402
                               latex_escape, latex_table, summarize)

TOL = 1e-12


def test_summary_hand_computed():
    s = summarize([1.0, 2.0, 3.0, 4.0])
    # mean 2.5; sample variance (2.25 + 0.25 + 0.25 + 2.25) / 3 = 5/3; se = sqrt(5/3) / 2.
    assert s.mean == 2.5
    assert s.n == 4
    assert s.se == pytest.approx(math.sqrt(5.0 / 3.0) / 2.0, rel=TOL)
    # t_{3, 0.975} = 3.182446305284263 (Student t quantile).
    half = 3.182446305284263 * math.sqrt(5.0 / 3.0) / 2.0
    assert s.low == pytest.approx(2.5 - half, rel=1e-12)
    assert s.high == pytest.approx(2.5 + half, rel=1e-12)


def test_summary_two_values_and_confidence():
    s = summarize([0.0, 2.0], confidence=0.9)
    # se = sqrt(2) / sqrt(2) = 1; t_{1, 0.95} = 6.313751514675041.
    assert s.se == pytest.approx(1.0, rel=TOL)
    assert s.high - s.mean == pytest.approx(6.313751514675041, rel=1e-12)


def test_standard_error_is_not_std_over_n():
    # A classic slip divides the standard deviation by n; here sd = 1, n = 4, se = 0.5.
    s = summarize([1.0, -1.0, 1.0, -1.0])
    assert s.se == pytest.approx(math.sqrt(4.0 / 3.0) / 2.0, rel=TOL)
    assert s.se != pytest.approx(math.sqrt(4.0 / 3.0) / 4.0)


def test_single_value_has_no_interval():
    s = summarize([0.3])
    assert (s.mean, s.se, s.low, s.high, s.n) == (0.3, None, None, None, 1)
    assert format_summary(s) == "0.300"


@pytest.mark.parametrize("values, message", [([], "empty"), ([1.0, float("nan")], "finite")])
def test_summary_bad_input(values, message):
    with pytest.raises(ValueError, match=message):
        summarize(values)


def test_summary_round_trip():
    s = summarize([1.0, 2.0, 4.0])
    assert Summary.from_dict(s.as_dict()) == s


def _summary(mean, half):
    return Summary(mean=mean, se=half / 2, n=5, low=mean - half, high=mean + half)


def test_bold_best_ties_by_overlap():
    column = [_summary(0.50, 0.05),   # best when higher is better
              _summary(0.46, 0.02),   # [0.44, 0.48] overlaps [0.45, 0.55]
              _summary(0.30, 0.10),   # [0.20, 0.40] does not
              None]
    assert bold_best(column, higher_is_better=True) == [True, True, False, False]
    # Lower is better: best is 0.30 with [0.20, 0.40]; neither other interval reaches 0.40.
    assert bold_best(column, higher_is_better=False) == [False, False, True, False]


def test_bold_best_single_seed_ties():
    column = [Summary(0.2, None, 1, None, None), Summary(0.2, None, 1, None, None), Summary(0.3, None, 1, None, None)]
    assert bold_best(column, higher_is_better=False) == [True, True, False]
    assert bold_best([None, None], True) == [False, False]


def test_format_summary():
    assert format_summary(_summary(0.5, 0.04)) == "0.500 ± 0.020"
    assert format_summary(None) == "--"


def test_latex_table_bold_and_escaping():
    cells = [[_summary(0.5, 0.01)], [_summary(0.1, 0.01)]]
    text = latex_table(["IGA (Adam, update)", "ERM_1"], ["S1 OOD %"], cells, [True], caption="a & b")
    assert r"\textbf{0.500 $\pm$ 0.005}" in text
    assert r"0.100 $\pm$ 0.005 \\" in text
    assert r"\textbf{0.100" not in text
    assert r"ERM\_1" in text
    assert r"S1 OOD \%" in text
    assert r"a \& b" in text
    with pytest.raises(ValueError, match="cells must be"):
        latex_table(["a"], ["b", "c"], [[None]], [True, True])


def test_latex_escape_backslash():
    assert latex_escape("a\\b") == r"a\textbackslash{}b"


def test_draw_table_sets_bold():
    fig, ax = plt.subplots()
    cells = [[_summary(0.5, 0.01), None], [_summary(0.1, 0.01), _summary(0.2, 0.01)]]
    table = draw_table(ax, ["a", "b"], ["x", "y"], cells, [True, False])
    assert table[1, 0].get_text().get_fontweight() == "bold"
    assert table[2, 0].get_text().get_fontweight() != "bold"
    assert table[2, 1].get_text().get_fontweight() == "bold"
    assert table[1, 1].get_text().get_text() == "--"
    # The best mean of each column is shaded: row a in column x (higher), row b in y (lower).
    assert table[1, 0].get_facecolor() != table[2, 0].get_facecolor()
    assert table[2, 1].get_facecolor() != table[1, 1].get_facecolor()
    plt.close(fig)


def test_best_index():
    column = [_summary(0.3, 0.1), None, _summary(0.5, 0.1), _summary(0.5, 0.2)]
    assert best_index(column, higher_is_better=True) == 2
    assert best_index(column, higher_is_better=False) == 0
    assert best_index([None], higher_is_better=True) is None
