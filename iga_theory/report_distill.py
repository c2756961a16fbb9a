"""The distillation page of the PDF report: the headline table of ``iga distill``'s metrics.json.

`add_distill_section` appends one page to an open `matplotlib.backends.backend_pdf.PdfPages`:
a table with, per method, the in-domain and OOD accuracy (%), the accuracy gain over
ERM-SFT in percentage points, the LCS and the answer consistency, each as
``mean ± se`` (se: the standard deviation of the bootstrap replicates over isomer sets
and seeds; the best entry of each column and every entry whose interval overlaps it in
bold), and a bar chart of the accuracies with their bootstrap intervals.
"""

from __future__ import annotations

import textwrap

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from iga_theory.tables import Summary, draw_table  # noqa: E402

PAGE_SIZE = (11.0, 8.5)
SPLITS = (("in_domain", "ID"), ("ood", "OOD"))
# Column: (label, metric path, scale, higher is better).
COLUMNS = (
    ("ID acc. %", ("in_domain", "accuracy"), 100.0, True),
    ("OOD acc. %", ("ood", "accuracy"), 100.0, True),
    ("ID gain pp", ("gain_over_erm_pp", "in_domain"), 1.0, True),
    ("OOD gain pp", ("gain_over_erm_pp", "ood"), 1.0, True),
    ("ID LCS", ("in_domain", "lcs"), 1.0, False),
    ("OOD LCS", ("ood", "lcs"), 1.0, False),
    ("ID consist. %", ("in_domain", "answer_consistency"), 100.0, True),
    ("OOD consist. %", ("ood", "answer_consistency"), 100.0, True),
)


def _summary(entry: dict, path: tuple[str, str], scale: float) -> Summary | None:
    """The interval summary at ``entry[path[0]][path[1]]`` scaled by ``scale``; None when missing."""
    data = (entry.get(path[0]) or {}).get(path[1])
    if not data:
        return None
    low, high = data["ci"]
    se = data.get("se")
    return Summary(mean=scale * data["mean"], se=None if se is None else scale * se, n=int(data.get("n", 1)),
                   low=scale * low, high=scale * high, confidence=float(data.get("confidence", 0.95)))


def check_metrics(metrics: dict) -> list[str]:
    """Return the method names of a metrics.json dictionary; raise ValueError when it is not one."""
    if not isinstance(metrics, dict) or not isinstance(metrics.get("methods"), dict) or not metrics["methods"]:
        raise ValueError("metrics must be the contents of iga distill's metrics.json, with a non-empty 'methods' table")
    return list(metrics["methods"])


def distill_figure(metrics: dict):
    """Build the distillation page (a matplotlib Figure) from a metrics.json dictionary."""
    methods = check_metrics(metrics)
    cells = [[_summary(metrics["methods"][m], path, scale) for _, path, scale, _ in COLUMNS] for m in methods]

    fig = plt.figure(figsize=PAGE_SIZE, layout="constrained")
    fig.suptitle("Chain-of-thought distillation on Logical Isomer Sets", fontsize=14, fontweight="bold")
    grid = fig.add_gridspec(2, 1, height_ratios=[1.0, 1.3])
    table_ax = fig.add_subplot(grid[0])
    draw_table(table_ax, methods, [label for label, *_ in COLUMNS], cells,
               [higher for *_, higher in COLUMNS], digits=2, font_size=8.0)

    # Accuracy bars with their bootstrap intervals.
    bar_ax = fig.add_subplot(grid[1])
    width = 0.38
    x = np.arange(len(methods))
    for offset, (split, label) in zip((-width / 2, width / 2), SPLITS):
        summaries = [_summary(metrics["methods"][m], (split, "accuracy"), 100.0) for m in methods]
        means = [np.nan if s is None else s.mean for s in summaries]
        errors = np.array([[0.0, 0.0] if s is None else [s.mean - s.low, s.high - s.mean] for s in summaries]).T
        bar_ax.bar(x + offset, means, width, yerr=errors, capsize=3, label=f"{label} accuracy")
    bar_ax.set_xticks(x, methods)
    bar_ax.set_ylabel("exact-match accuracy (%)")
    bar_ax.legend()

    config = metrics.get("config", {})
    student = (config.get("model") or {}).get("name_or_path") or "built from config (tiny, pre-trained here)"
    train = config.get("train") or {}
    confidence = ((config.get("eval") or {}).get("confidence")) or 0.95
    note = (f"Student: {student}; {train.get('steps', '?')} steps per method and seed; seeds "
            f"{train.get('seeds', '?')}; training domains {', '.join(metrics.get('train_domains', []))}; "
            f"held-out domains {', '.join(metrics.get('heldout_domains', []))}. Cells: mean ± standard deviation "
            f"of the bootstrap replicates over isomer sets and seeds; bars: {100 * confidence:.0f}% percentile "
            "intervals. Gain: accuracy minus ERM-SFT's on the same sets and seeds, in percentage points. "
            "LCS: lower is more consistent.")
    fig.text(0.01, 0.005, "\n".join(textwrap.wrap(note, 180)), fontsize=7.5, va="bottom")
    return fig


def add_distill_section(pdf, metrics: dict) -> None:
    """Append the distillation page to ``pdf`` (an open ``PdfPages``), built from metrics.json's contents."""
    fig = distill_figure(metrics)
    try:
        pdf.savefig(fig)
    finally:
        plt.close(fig)
