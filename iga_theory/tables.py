r"""Statistics and rendering of result tables: means, standard errors, t-intervals, bold best.

For n values ``x_1 .. x_n`` (one per seed):

.. math::

    \bar x = \frac1n \sum_i x_i,\qquad
    s^2 = \frac1{n-1} \sum_i (x_i - \bar x)^2,\qquad
    \mathrm{se} = s / \sqrt n,\qquad
    \bar x \pm t_{n-1,\,1-(1-c)/2}\ \mathrm{se}

(the Student-t confidence interval at level c, exact for normal data). The standard
error divides the sample standard deviation by sqrt(n), not the variance by n.

Bold best. In each column, the entry with the best mean is bold, and so is every
entry whose confidence interval overlaps the best entry's interval: those are the
entries the seeds cannot tell apart from the best. An entry from a single seed has
no interval, so it ties only with an entry of exactly the same mean.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy import stats

DEFAULT_CONFIDENCE = 0.95
# Background of the best-mean cell in `draw_table` (a light grey).
BEST_SHADE = "#dddddd"


@dataclass(frozen=True)
class Summary:
    """Mean, standard error and t-interval of n values (se and interval are None for n = 1)."""

    mean: float
    se: float | None
    n: int
    low: float | None
    high: float | None
    confidence: float = DEFAULT_CONFIDENCE

    def as_dict(self) -> dict:
        """Plain-data form for JSON: mean, se, n, ci (the interval as [low, high] or None)."""
        ci = None if self.low is None else [self.low, self.high]
        return {"mean": self.mean, "se": self.se, "n": self.n, "ci": ci, "confidence": self.confidence}

    @classmethod
    def from_dict(cls, data: dict) -> "Summary":
        ci = data.get("ci")
        return cls(mean=data["mean"], se=data.get("se"), n=data["n"],
                   low=None if ci is None else ci[0], high=None if ci is None else ci[1],
                   confidence=data.get("confidence", DEFAULT_CONFIDENCE))


def summarize(values: Sequence[float], confidence: float = DEFAULT_CONFIDENCE) -> Summary:
    """Mean, standard error ``s / sqrt(n)`` and Student-t interval of finite ``values``.

    Parameters
    ----------
    values : sequence of float, length n >= 1, all finite
    confidence : float in (0, 1)

    Returns
    -------
    Summary
        With ``se``, ``low`` and ``high`` None when n = 1.
    """
    x = np.asarray(values, dtype=np.float64).ravel()
    if x.size == 0:
        raise ValueError("values is empty; a summary needs at least one value")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"values must be finite; got {x.tolist()}")
    if not (isinstance(confidence, float) and 0.0 < confidence < 1.0):
        raise ValueError(f"confidence must be a float in (0, 1); got {confidence!r}")
    n = int(x.size)
    mean = float(x.mean())
    if n == 1:
        return Summary(mean=mean, se=None, n=1, low=None, high=None, confidence=confidence)
    se = float(x.std(ddof=1) / math.sqrt(n))
    half = float(stats.t.ppf(1.0 - (1.0 - confidence) / 2.0, df=n - 1)) * se
    return Summary(mean=mean, se=se, n=n, low=mean - half, high=mean + half, confidence=confidence)


def _interval(summary: Summary) -> tuple[float, float]:
    if summary.low is None:
        return summary.mean, summary.mean
    return summary.low, summary.high


def best_index(column: Sequence[Summary | None], higher_is_better: bool) -> int | None:
    """Return the index of the best mean of a column (the first among equal means), or None if empty."""
    present = [i for i, s in enumerate(column) if s is not None]
    if not present:
        return None
    pick = max if higher_is_better else min
    return pick(present, key=lambda i: column[i].mean)


def bold_best(column: Sequence[Summary | None], higher_is_better: bool) -> list[bool]:
    """Flag the entries of a column to set in bold: the best mean and every interval overlapping it.

    Missing entries (None) are never bold. Returns one flag per entry.
    """
    best = best_index(column, higher_is_better)
    if best is None:
        return [False] * len(column)
    best_low, best_high = _interval(column[best])
    flags = []
    for summary in column:
        if summary is None:
            flags.append(False)
            continue
        low, high = _interval(summary)
        flags.append(low <= best_high and best_low <= high)
    return flags


def format_summary(summary: Summary | None, digits: int = 3, missing: str = "--") -> str:
    """``"mean ± se"`` with ``digits`` decimals (``"mean"`` alone for one seed)."""
    if summary is None:
        return missing
    if summary.se is None:
        return f"{summary.mean:.{digits}f}"
    return f"{summary.mean:.{digits}f} ± {summary.se:.{digits}f}"


_LATEX_SPECIAL = {"&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{", "}": r"\}",
                  "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "\\": r"\textbackslash{}"}


def latex_escape(text: str) -> str:
    """Escape the characters that LaTeX treats specially."""
    return "".join(_LATEX_SPECIAL.get(char, char) for char in str(text))


def latex_table(row_labels: Sequence[str], column_labels: Sequence[str],
                cells: Sequence[Sequence[Summary | None]], higher_is_better: Sequence[bool],
                caption: str = "", digits: int = 3) -> str:
    r"""Render a LaTeX ``tabular`` of ``mean $\pm$ se`` cells with the best of each column in bold.

    Parameters
    ----------
    row_labels : n_rows labels
    column_labels : n_cols labels
    cells : n_rows x n_cols Summary or None
    higher_is_better : one flag per column
    caption : optional caption (a ``table`` environment is added when given)
    """
    n_rows, n_cols = len(row_labels), len(column_labels)
    if len(cells) != n_rows or any(len(row) != n_cols for row in cells):
        raise ValueError(f"cells must be {n_rows} x {n_cols} to match the labels")
    if len(higher_is_better) != n_cols:
        raise ValueError(f"higher_is_better needs one flag per column ({n_cols}); got {len(higher_is_better)}")
    bold = [bold_best([cells[r][c] for r in range(n_rows)], higher_is_better[c]) for c in range(n_cols)]

    lines = [r"\begin{tabular}{l" + "c" * n_cols + "}", r"\hline",
             " & ".join([""] + [latex_escape(c) for c in column_labels]) + r" \\", r"\hline"]
    for r, label in enumerate(row_labels):
        entries = [latex_escape(label)]
        for c in range(n_cols):
            text = format_summary(cells[r][c], digits).replace("±", r"$\pm$")
            entries.append(r"\textbf{" + text + "}" if bold[c][r] else text)
        lines.append(" & ".join(entries) + r" \\")
    lines += [r"\hline", r"\end{tabular}"]
    if caption:
        lines = [r"\begin{table}[t]", r"\centering"] + lines + [r"\caption{" + latex_escape(caption) + "}",
                                                            r"\end{table}"]
    return "\n".join(lines) + "\n"


def draw_table(ax, row_labels: Sequence[str], column_labels: Sequence[str],
               cells: Sequence[Sequence[Summary | None]], higher_is_better: Sequence[bool],
               digits: int = 3, font_size: float = 7.0):
    """Draw the table on a matplotlib axis (axis hidden), best of each column in bold.

    The entry with the best mean of each column is also shaded, because with few seeds
    the intervals are wide and many entries of a column can be bold. Returns the
    matplotlib ``Table``.
    """
    n_rows, n_cols = len(row_labels), len(column_labels)
    columns = [[cells[r][c] for r in range(n_rows)] for c in range(n_cols)]
    bold = [bold_best(columns[c], higher_is_better[c]) for c in range(n_cols)]
    text = [[format_summary(cells[r][c], digits) for c in range(n_cols)] for r in range(n_rows)]
    ax.axis("off")
    table = ax.table(cellText=text, rowLabels=list(row_labels), colLabels=list(column_labels),
                     loc="upper center", cellLoc="center")
    table.auto_set_font_size(False)
    table.set_fontsize(font_size)
    for r in range(n_rows):
        for c in range(n_cols):
            if bold[c][r]:
                table[r + 1, c].get_text().set_fontweight("bold")
    for c in range(n_cols):
        best = best_index(columns[c], higher_is_better[c])
        if best is not None:
            table[best + 1, c].set_facecolor(BEST_SHADE)
    return table
