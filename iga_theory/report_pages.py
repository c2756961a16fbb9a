"""Pages of the PDF report, drawn with matplotlib from the results dictionary.

Each page function takes the results dictionary and returns one figure; `render_pdf`
writes them in order to a multi-page PDF through a temporary file, so an interrupted
render never leaves a truncated report behind.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.backends.backend_pdf import PdfPages  # noqa: E402

from iga_theory.runs import atomic_output  # noqa: E402

# US letter, landscape, in inches.
PAGE_SIZE = (11.0, 8.5)
COLORS = {"erm": "tab:red", "iga": "tab:blue", "oracle": "black", "erm_optimum": "tab:orange"}
LABELS = {"erm": "ERM", "iga": "IGA", "erm_fixed": "ERM, fixed", "iga_fixed": "IGA, fixed"}
# Mask values below this are drawn at this value on log axes (the mask can underflow to 0).
MASK_LOG_FLOOR = 1e-60
# Rows of the number table per page.
TABLE_ROWS_PER_PAGE = 34
# Arrays longer than this are summarised in the table (they are plotted on a figure page).
TABLE_MAX_ARRAY = 12

plt.rcParams.update({"font.size": 10, "axes.titlesize": 11, "legend.fontsize": 8.5,
                     "axes.grid": True, "grid.alpha": 0.3})


def _new_page(nrows=1, ncols=1, title=None):
    fig, axes = plt.subplots(nrows, ncols, figsize=PAGE_SIZE, layout="constrained", squeeze=False)
    if title:
        fig.suptitle(title, fontsize=14, fontweight="bold")
    return fig, axes


def _fmt(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (int, np.integer)):
        return str(value)
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _slope_text(fit) -> str:
    if fit is None:
        return "slope n/a"
    return f"slope {fit['slope']:.2f} [{fit['ci_low']:.2f}, {fit['ci_high']:.2f}]"


def title_page(results: dict):
    """Title, configuration, seed, versions and machine."""
    fig = plt.figure(figsize=PAGE_SIZE)
    fig.text(0.5, 0.93, "Invariant Gradient Alignment: synthetic report", ha="center",
             fontsize=20, fontweight="bold")
    prov = results["provenance"]
    timing = results.get("timing", {})
    subtitle = (f"seed {results['seed']}   |   generated {timing.get('started_at', 'n/a')[:19]} UTC   |   "
                f"git commit {(prov.get('git_commit') or 'n/a')[:12]}")
    fig.text(0.5, 0.885, subtitle, ha="center", fontsize=10)

    flat = _flatten(results["config"])
    config_lines = [f"{key} = {_fmt(value)}" for key, value in flat]
    half = (len(config_lines) + 1) // 2
    fig.text(0.04, 0.84, "Configuration", fontsize=12, fontweight="bold", va="top")
    config_lines = [textwrap.shorten(line, 44, placeholder=" ...") for line in config_lines]
    fig.text(0.04, 0.80, "\n".join(config_lines[:half]), fontsize=7.5, va="top", family="monospace")
    fig.text(0.33, 0.80, "\n".join(config_lines[half:]), fontsize=7.5, va="top", family="monospace")

    versions = "\n".join(f"{k} {v or 'not installed'}" for k, v in prov["versions"].items())
    machine = prov["machine"]
    fig.text(0.66, 0.84, "Packages", fontsize=12, fontweight="bold", va="top")
    fig.text(0.66, 0.80, versions, fontsize=8, va="top", family="monospace")
    fig.text(0.66, 0.48, "Machine", fontsize=12, fontweight="bold", va="top")
    machine_text = "\n".join(textwrap.wrap(f"{machine['platform']}", 48) +
                             [f"processor: {machine['processor']}", f"cores: {machine['cpu_count']}",
                              f"run time: {timing.get('elapsed_s', float('nan')):.1f} s"])
    fig.text(0.66, 0.44, machine_text, fontsize=8, va="top", family="monospace")

    note = ("Model S1: anti-causal regression, y = w*'x_inv + noise, x_sp = beta_e y 1 + noise, "
            "beta_e drawn per domain. ERM: gradient descent on the mean gradient. IGA: the same "
            "steps on mask * mean gradient, with the continuous gradient conflict mask. "
            "All risks are exact population risks (closed form), not Monte Carlo estimates.")
    fig.text(0.04, 0.08, "\n".join(textwrap.wrap(note, 150)), fontsize=9, va="bottom")
    return fig


def training_page(results: dict):
    """Spurious weight and risks against steps for ERM and IGA."""
    training = results["training"]
    steps = np.asarray(training["steps"]) + 1
    fig, axes = _new_page(2, 2, f"ERM and IGA from the same start (K = {training['n_domains']} training "
                                f"domains, exact gradients, step size 1/L = {training['eta']:.3g})")
    panels = [("spurious_weight", "spurious weight ||b|| (feature units)"),
              ("expected_ood_risk", "expected OOD risk E_Q R_e (squared loss / 2)"),
              ("shifted_risk", "risk on the shifted domain (beta = -mu_beta)"),
              ("train_risk", "mean training-domain risk")]
    for ax, (name, label) in zip(axes.flat, panels):
        for method in ("erm", "iga"):
            ax.plot(steps, training[method]["curves"][name], color=COLORS[method], label=LABELS[method], lw=2)
        if name != "spurious_weight":
            ax.axhline(training["invariant_oracle"][name], color=COLORS["oracle"], ls="--", lw=1,
                       label="invariant oracle")
            ax.axhline(training["erm_optimum"][name], color=COLORS["erm_optimum"], ls=":", lw=1.5,
                       label="pooled ERM optimum")
        ax.set_xscale("log")
        ax.set_xlabel("gradient-descent step (log scale)")
        ax.set_ylabel(label)
        ax.legend(loc="best")
    return fig


def mask_page(results: dict):
    """IGA's mask per coordinate, at the first and the last step, and its mean along the run."""
    mask = results["training"]["mask"]
    initial, final = np.asarray(mask["initial"]), np.asarray(mask["final"])
    invariant = np.zeros(initial.size, bool)
    invariant[mask["invariant_coordinates"]] = True
    basis = " (rotated features: coordinates mix both kinds)" if mask["rotated"] else ""
    fig, axes = _new_page(1, 2, "IGA's continuous gradient conflict mask per coordinate" + basis)

    ax = axes[0, 0]
    index = np.arange(initial.size)
    width = 0.4
    colors = np.where(invariant, "tab:green", "tab:purple")
    ax.bar(index - width / 2, np.maximum(initial, MASK_LOG_FLOOR), width, color=colors, alpha=0.5,
           edgecolor="k", label="first step")
    ax.bar(index + width / 2, np.maximum(final, MASK_LOG_FLOOR), width, color=colors, edgecolor="k",
           label="last step")
    ax.set_yscale("log")
    ax.set_ylim(MASK_LOG_FLOOR / 10, 10)
    ax.set_xticks(index, [f"{'inv' if inv else 'sp'}{i}" for i, inv in enumerate(invariant)], rotation=45)
    ax.set_xlabel("coordinate (green: invariant, purple: spurious)")
    ax.set_ylabel(f"mask value (log scale; values below {MASK_LOG_FLOOR:g} drawn at it)")
    ax.legend(loc="center right", title="light: first step, dark: last step")

    ax = axes[0, 1]
    steps = np.asarray(results["training"]["steps"][: len(mask["mean_invariant"])]) + 1
    ax.plot(steps, np.maximum(mask["mean_invariant"], MASK_LOG_FLOOR), color="tab:green", lw=2,
            label="mean over invariant coordinates")
    ax.plot(steps, np.maximum(mask["mean_spurious"], MASK_LOG_FLOOR), color="tab:purple", lw=2,
            label="mean over spurious coordinates")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_ylim(MASK_LOG_FLOOR / 10, 10)
    ax.set_xlabel("gradient-descent step (log scale)")
    ax.set_ylabel("mask value (log scale)")
    ax.legend(loc="center right")
    return fig


FIXED_TOO = ("erm", "erm_fixed", "iga", "iga_fixed")


def _style(method: str) -> str:
    return "s--" if method.endswith("_fixed") else "o-"


def bound_page(results: dict):
    """Theorem 2: bound, expected risk, excess and variance term against K."""
    bound = results["bound_vs_K"]
    K = np.asarray(bound["K"], dtype=float)
    delta = bound["delta"]
    fig, axes = _new_page(2, 2, f"Theorem 2 (empirical Bernstein over domains, delta = {delta}) "
                                f"against the number of domains K")
    vacuous = bound["vacuous_below_K"]

    ax = axes[0, 0]
    for method in ("erm", "iga"):
        ax.plot(K, bound[method]["bound"], "o-", color=COLORS[method], label=f"{LABELS[method]}: bound")
        ax.plot(K, bound[method]["expected_risk"], "s--", color=COLORS[method], alpha=0.7,
                label=f"{LABELS[method]}: exact expected risk")
    ax.axvspan(K.min() * 0.9, vacuous, color="0.85", label=f"range term > B (K < {vacuous})")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("number of domains K (training = certification count; log scale)")
    ax.set_ylabel("risk (squared loss / 2, log scale)")
    ax.legend(loc="upper right")

    ax = axes[0, 1]
    for method in FIXED_TOO:
        ax.plot(K, bound[method]["excess"], _style(method), color=COLORS[method.split("_")[0]],
                label=f"{LABELS[method]}: {_slope_text(bound[method]['slope_excess'])}")
    ax.plot(K, bound["erm"]["range_term"], "k:", label="range term 7 B ln(2/delta) / (3 (K-1)), trained")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("number of domains K (log scale)")
    ax.set_ylabel("excess: bound - exact expected risk (log scale)")
    ax.legend(loc="upper right", title=f"trained at each K (solid) or once on {results['training']['n_domains']} domains (dashed);\n"
                                       "95% bootstrap CI over repetitions", title_fontsize=8)

    ax = axes[1, 0]
    for method in FIXED_TOO:
        values = np.asarray(bound[method]["variance_term"], dtype=float)
        positive = values > 0
        if positive.any():
            ax.plot(K[positive], values[positive], _style(method), color=COLORS[method.split("_")[0]],
                    label=f"{LABELS[method]}: {_slope_text(bound[method]['slope_variance_term'])}")
        if not positive.all():
            ax.plot([], [], " ", label=f"{LABELS[method]}: 0 at K >= {int(K[~positive].min())} (not on log axis)")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("number of domains K (log scale)")
    ax.set_ylabel("variance term sqrt(2 V_K ln(2/delta) / K) (log scale)")
    k_star = {m: bound[m]["K_star"] for m in FIXED_TOO}
    ax.legend(loc="upper right", fontsize=7, title_fontsize=7,
              title=f"crossover K* at K = {int(K[-1])}: ERM {_fmt(k_star['erm'])}, ERM fixed "
                    f"{_fmt(k_star['erm_fixed'])}, IGA {_fmt(k_star['iga'])} (null: V = 0)")

    ax = axes[1, 1]
    for method in ("erm", "iga"):
        certificate = [np.nan if v is None else v for v in bound[method]["quantile_certificate"]]
        ax.plot(K, certificate, "o-", color=COLORS[method], label=f"{LABELS[method]}: quantile certificate")
        ax.plot(K, bound[method]["quantile_reference"], "x--", color=COLORS[method], alpha=0.7,
                label=f"{LABELS[method]}: exact quantile (Monte Carlo over Q)")
        ax.plot(K, bound[method]["shifted_risk"], "^:", color=COLORS[method], alpha=0.7,
                label=f"{LABELS[method]}: shifted-domain risk")
    ax.axvline(bound["min_K_quantile"], color="0.5", ls="--", lw=1)
    ax.set_xscale("log", base=2)
    ax.set_xlabel(f"number of domains K (certificate defined for K >= {bound['min_K_quantile']}; log scale)")
    ax.set_ylabel("risk (squared loss / 2)")
    ax.legend(loc="upper right", fontsize=7.5)
    return fig


def rate_page(results: dict):
    """Theorem 1: lagged-mask SGD stationarity against T, with the computed right side."""
    rate = results["rate_vs_T"]
    T = np.asarray(rate["T"], dtype=float)
    fig, axes = _new_page(1, 1, "Theorem 1: (1/T) sum_t ||A_t^(1/2) grad R(theta_t)||^2 of SGD with a lagged mask")
    ax = axes[0, 0]
    ax.plot(T, rate["lhs"], "o-", color=COLORS["iga"], lw=2,
            label=f"measured left side (mean over runs): {_slope_text(rate['slope'])}")
    ax.plot(T, rate["rhs"], "s--", color="k", label="computed right side 2 (R0 - R_inf)/(eta T) + L eta sigma^2")
    ax.plot(T, rate["plain_stationarity"], "^:", color="tab:gray",
            label=f"unmasked (1/T) sum ||grad R||^2, not covered by the theorem: {_slope_text(rate['slope_plain'])}")
    ax.plot(T, rate["lhs"][0] * (T / T[0]) ** -0.5, color="0.6", lw=1, label="reference slope -1/2")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("number of SGD steps T (eta proportional to 1/sqrt(T); log scale)")
    ax.set_ylabel("stationarity measure (squared gradient norm, log scale)")
    verdict = "yes" if rate["all_runs_below_rhs"] else "NO"
    ax.legend(loc="upper right", title=f"left side below right side in every run: {verdict}; L = {rate['L']:.3g}")
    return fig


def _flatten(obj, prefix=""):
    """(key, value) pairs of every leaf of nested dictionaries."""
    rows = []
    if isinstance(obj, dict):
        for key, value in obj.items():
            rows += _flatten(value, f"{prefix}.{key}" if prefix else str(key))
    else:
        rows.append((prefix, obj))
    return rows


def number_rows(results: dict) -> list[tuple[str, str]]:
    """Rows of the number table: every leaf of results.json except the configuration."""
    rows = []
    for key, value in _flatten({k: v for k, v in results.items() if k not in ("config", "provenance")}):
        if isinstance(value, list):
            if len(value) > TABLE_MAX_ARRAY or any(isinstance(v, (list, dict)) for v in value):
                numbers = [v for v in value if isinstance(v, (int, float)) and not isinstance(v, bool)]
                text = f"{len(value)} values" + (f", from {_fmt(numbers[0])} to {_fmt(numbers[-1])} (plotted)"
                                                  if numbers else "")
            else:
                text = ", ".join(_fmt(v) for v in value)
        else:
            text = _fmt(value)
        rows.append((key, text))
    return rows


def table_pages(results: dict):
    """All numbers of results.json as key/value tables."""
    rows = number_rows(results)
    figures = []
    for start in range(0, len(rows), TABLE_ROWS_PER_PAGE):
        chunk = rows[start:start + TABLE_ROWS_PER_PAGE]
        fig = plt.figure(figsize=PAGE_SIZE)
        fig.suptitle(f"Numbers in results.json ({start + 1}-{start + len(chunk)} of {len(rows)})",
                     fontsize=13, fontweight="bold")
        ax = fig.add_axes([0.03, 0.03, 0.94, 0.88])
        ax.axis("off")
        cell_text = [[k, textwrap.shorten(v, 110, placeholder=" ...")] for k, v in chunk]
        table = ax.table(cellText=cell_text, colLabels=["key", "value"], loc="upper left",
                         colWidths=[0.36, 0.64], cellLoc="left")
        table.auto_set_font_size(False)
        table.set_fontsize(7.5)
        table.scale(1, 1.25)
        figures.append(fig)
    return figures


PAGES = (title_page, training_page, mask_page, bound_page, rate_page)


def render_pdf(results: dict, path: str | Path, extra_sections=()) -> Path:
    """Write the report to ``path`` (atomically); ``extra_sections`` are callables ``f(pdf)``."""
    path = Path(path)
    metadata = {"Title": "IGA synthetic report",
                "Subject": json.dumps({"seed": results["seed"], "schema_version": results["schema_version"]})}
    with atomic_output(path) as tmp, PdfPages(tmp, metadata=metadata) as pdf:
        for page in PAGES:
            fig = page(results)
            pdf.savefig(fig)
            plt.close(fig)

        for section in extra_sections:
            section(pdf)

        for fig in table_pages(results):
            pdf.savefig(fig)
            plt.close(fig)
    return path
