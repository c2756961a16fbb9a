"""Report pages of the baseline comparison, drawn from the summary that ``iga compare`` writes.

`add_compare_section` appends to an open matplotlib ``PdfPages``:

1. the comparison table: in-domain and OOD metric of every method on every plain
   benchmark (mean ± standard error over trial seeds). The best of each column and
   every entry whose confidence interval overlaps it are bold. The table comes twice,
   under the primary selection (training-domain validation) and under the defaults;
2. the robustness table (shifted domain and worst held-out domain), the same two ways;
3. IGA (and ERM for reference) under each model-selection method;
4. the LCS figure: Logical Consistency Score per method on the benchmarks whose
   domains change the inputs;
5. the basis-dependence figure: how much each method's OOD metric degrades from the
   plain to the rotated variant (and to the heteroskedastic variant), in percent of
   its plain value, under the default hyperparameters. Selection can pick a leaky
   mask that behaves like ERM and hides the mask's own basis dependence.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from iga_theory.tables import Summary, draw_table  # noqa: E402

# US letter, landscape, in inches (the size of the other report pages).
PAGE_SIZE = (11.0, 8.5)
SELECTION_LABELS = {"train_domain": "training-domain validation", "lodo": "leave-one-domain-out",
                    "oracle": "test-domain oracle", "default": "defaults (no selection)"}


def _cell(compare: dict, benchmark: str, method: str, metric: str, selection: str | None = None) -> Summary | None:
    selection = selection or compare["primary_selection"]
    entry = compare["results"].get(benchmark, {}).get(method, {}).get(selection, {}).get(metric)
    return None if entry is None else Summary.from_dict(entry)


def _plain_benchmarks(compare: dict) -> list[str]:
    return [name for name, info in compare["benchmarks"].items() if info["variant"] == "plain"]


def _arrow(info: dict) -> str:
    return "↑" if info["higher_is_better"] else "↓"


def _table_page(compare: dict, title: str, columns: list[tuple[str, str, str]], rows: list[tuple[str, str, str]],
                note: str):
    """One page holding a table; columns are (label, benchmark, metric), rows (label, method, selection)."""
    fig, ax = plt.subplots(figsize=PAGE_SIZE, layout="constrained")
    fig.suptitle(title, fontsize=14, fontweight="bold")
    cells = [[_cell(compare, bench, method, metric, selection) for _, bench, metric in columns]
             for _, method, selection in rows]
    higher = [compare["benchmarks"][bench]["higher_is_better"] for _, bench, _ in columns]
    draw_table(ax, [label for label, _, _ in rows], [label for label, _, _ in columns], cells, higher)
    fig.text(0.01, 0.01, note, fontsize=8, va="bottom", wrap=True)
    return fig


def _note(compare: dict, selection: str | None = None, extra: str = "", chosen: str | None = None) -> str:
    config = compare["config"]
    selection = selection or compare["primary_selection"]
    units = "; ".join(f"{name}: {info['metric']} {_arrow(info)}" for name, info in compare["benchmarks"].items()
                      if info["variant"] == "plain")
    if chosen is None:
        chosen = ("Default hyperparameters (draw 0) of every method" if selection == "default" else
                  f"Hyperparameters selected by {SELECTION_LABELS[selection]} among {config['n_hparams']} draws "
                  "(draw 0 = defaults)")
    return (f"Mean ± standard error over {config['seeds']} trial seeds; shaded: the best mean of the column; bold: "
            f"it and every entry whose 95% t-interval overlaps it. {chosen}, {config['steps']} steps per run. "
            f"Metrics: {units}. Optimizer and mask placement in each row label (mask methods: SGD = both "
            f"placements). {extra}")


def _selection_title(compare: dict, selection: str | None) -> str:
    return SELECTION_LABELS[selection or compare["primary_selection"]]


def comparison_table_page(compare: dict, selection: str | None = None):
    """In-domain and OOD metric of every method on every plain benchmark (primary selection by default)."""
    columns = []
    for bench in _plain_benchmarks(compare):
        info = compare["benchmarks"][bench]
        columns += [(f"{bench} ID {_arrow(info)}", bench, "in_domain"), (f"{bench} OOD {_arrow(info)}", bench, "ood")]
    rows = [(info["label"], method, selection) for method, info in compare["methods"].items()]
    return _table_page(compare, "Baselines vs IGA: in-domain (ID) and held-out-domain (OOD) metric, "
                       f"{_selection_title(compare, selection)}", columns, rows, _note(compare, selection))


def robustness_table_page(compare: dict, selection: str | None = None):
    """Shifted-domain and worst held-out-domain metric of every method on every plain benchmark."""
    columns = []
    for bench in _plain_benchmarks(compare):
        info = compare["benchmarks"][bench]
        columns += [(f"{bench} shifted {_arrow(info)}", bench, "shifted"),
                    (f"{bench} worst {_arrow(info)}", bench, "ood_worst")]
    rows = [(info["label"], method, selection) for method, info in compare["methods"].items()]
    return _table_page(compare, "Shifted domain (spurious mechanism reversed) and worst held-out domain, "
                       f"{_selection_title(compare, selection)}", columns, rows, _note(compare, selection))


def default_comparison_table_page(compare: dict):
    """`comparison_table_page` under the default hyperparameters."""
    return comparison_table_page(compare, "default")


def default_robustness_table_page(compare: dict):
    """`robustness_table_page` under the default hyperparameters."""
    return robustness_table_page(compare, "default")


def selection_table_page(compare: dict):
    """IGA and ERM under every model-selection method."""
    columns = []
    for bench in _plain_benchmarks(compare):
        info = compare["benchmarks"][bench]
        columns += [(f"{bench} OOD {_arrow(info)}", bench, "ood"), (f"{bench} shifted {_arrow(info)}", bench, "shifted")]
    rows = []
    for method, info in compare["methods"].items():
        if info["algorithm"] not in ("iga", "iga_lora", "erm"):
            continue
        for selection in compare["selection_methods"]:
            rows.append((f"{info['label']} / {SELECTION_LABELS[selection]}", method, selection))
    return _table_page(compare, "Model selection: IGA (and ERM) under each selection method", columns, rows,
                       _note(compare, extra="Training-domain validation rewards whatever lowers in-domain error, "
                                            "the shortcut included, so it tends to pick the loosest mask.",
                             chosen=f"Hyperparameters chosen by the rule in each row label among "
                                    f"{compare['config']['n_hparams']} draws (draw 0 = defaults)"))


def lcs_figure(compare: dict):
    """Bar chart of the Logical Consistency Score (lower is better) per method and benchmark."""
    benchmarks = [b for b in _plain_benchmarks(compare) if compare["benchmarks"][b].get("consistency", True)]
    methods = list(compare["methods"])
    fig, ax = plt.subplots(figsize=PAGE_SIZE, layout="constrained")
    fig.suptitle("Logical Consistency Score on isomer sets (lower is better)", fontsize=14, fontweight="bold")
    width = 0.8 / max(len(benchmarks), 1)
    x = np.arange(len(methods))
    for i, bench in enumerate(benchmarks):
        summaries = [_cell(compare, bench, m, "lcs") for m in methods]
        means = [s.mean if s is not None else np.nan for s in summaries]
        errors = [s.se if s is not None and s.se is not None else 0.0 for s in summaries]
        ax.bar(x + (i - (len(benchmarks) - 1) / 2) * width, means, width, yerr=errors, capsize=2, label=bench)
    ax.set_xticks(x, [compare["methods"][m]["label"] for m in methods], rotation=60, ha="right")
    ax.set_ylabel("LCS (mean ± s.e. over seeds)")
    ax.legend(title="benchmark")
    skipped = [b for b in _plain_benchmarks(compare) if b not in benchmarks]
    if skipped:
        fig.text(0.01, 0.01, f"Not shown: {', '.join(skipped)}, whose domains change the targets only, so every "
                             "predictor is consistent by construction.", fontsize=8)
    return fig


def _gaps(compare: dict) -> tuple[dict, str]:
    """Variant gaps under the defaults when present (the mask's own behaviour), else the primary selection's."""
    if compare.get("gaps_default"):
        return compare["gaps_default"], "default"
    return compare.get("gaps", {}), compare["primary_selection"]


def _relative_degradation(compare: dict, variant: str, family: str, method: str) -> tuple[float, float]:
    """OOD degradation from the plain benchmark in percent of the plain value (positive = worse), and its se."""
    gaps, selection = _gaps(compare)
    gap = gaps[variant][family].get(method)
    plain = _cell(compare, family, method, "ood", selection)
    if gap is None or plain is None or plain.mean == 0:
        return np.nan, 0.0
    sign = -1.0 if compare["benchmarks"][family]["higher_is_better"] else 1.0
    scale = 100.0 / abs(plain.mean)
    return sign * gap["mean"] * scale, (gap["se"] or 0.0) * scale


def basis_dependence_figure(compare: dict):
    """OOD degradation from the plain to the rotated (left) and heteroskedastic (right) variant."""
    methods = list(compare["methods"])
    gaps, selection = _gaps(compare)
    variants = [v for v in ("rotated", "hetero") if gaps.get(v)]
    fig, axes = plt.subplots(1, max(len(variants), 1), figsize=PAGE_SIZE, layout="constrained", squeeze=False)
    fig.suptitle("Basis and scale dependence: change of the OOD metric from the plain benchmark "
                 f"({SELECTION_LABELS[selection]})", fontsize=13, fontweight="bold")
    fig.get_layout_engine().set(rect=(0.0, 0.05, 1.0, 0.95))   # room for the note below the axes
    for ax, variant in zip(axes[0], variants):
        families = list(gaps[variant])
        width = 0.8 / max(len(families), 1)
        y = np.arange(len(methods))
        for i, family in enumerate(families):
            values, errors = zip(*[_relative_degradation(compare, variant, family, m) for m in methods])
            ax.barh(y + (i - (len(families) - 1) / 2) * width, values, width, xerr=errors, capsize=2, label=family)
        ax.axvline(0.0, color="black", linewidth=0.8)
        ax.set_yticks(y, [compare["methods"][m]["label"] for m in methods])
        ax.invert_yaxis()
        ax.set_xlabel("degradation, % of the plain OOD metric (positive = worse)")
        ax.set_title(f"{variant} variant")
        ax.legend(title="family", fontsize=8)
    fig.text(0.01, 0.005, "Rotation is an isometry, so the best achievable risk or accuracy is unchanged and a "
                          "rotation-equivariant method (ERM under SGD) keeps its result in distribution; a "
                          "coordinate-wise mask does not. The heteroskedastic variant also changes the "
                          "benchmark's difficulty: compare each bar with ERM's, not with 0.", fontsize=8, wrap=True)
    return fig


SECTION_PAGES = (comparison_table_page, default_comparison_table_page, robustness_table_page,
                 default_robustness_table_page, selection_table_page, lcs_figure, basis_dependence_figure)


def add_compare_section(pdf, compare: dict) -> int:
    """Append the comparison pages to an open ``matplotlib.backends.backend_pdf.PdfPages``.

    Parameters
    ----------
    pdf : PdfPages
    compare : dict
        The content of ``compare.json`` written by ``iga compare``.

    Returns
    -------
    int : the number of pages added.
    """
    for key in ("results", "benchmarks", "methods", "primary_selection", "config"):
        if key not in compare:
            raise ValueError(f"compare is missing the key {key!r}; pass the content of a compare.json "
                             "written by `iga compare`")
    for page in SECTION_PAGES:
        fig = page(compare)
        pdf.savefig(fig)
        plt.close(fig)
    return len(SECTION_PAGES)
