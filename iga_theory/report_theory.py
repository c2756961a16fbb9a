r"""Theory pages of the report: theorem statements, verification figures and the certificate.

`add_theory_section(pdf, certificate, figures_data)` appends the pages to an open
``matplotlib.backends.backend_pdf.PdfPages``; `save_figures` writes the same figures as
PNG files; `write_theory_pdf` writes a standalone PDF. Every number comes from the
certificate and the figure data that ``iga validate`` wrote; nothing is recomputed here.
"""

from __future__ import annotations

import logging
import textwrap
from pathlib import Path
from typing import Callable

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.backends.backend_pdf import PdfPages  # noqa: E402

logger = logging.getLogger(__name__)

PAGE = (8.27, 11.69)  # A4 portrait, inches
WIDE = (11.69, 8.27)

STATEMENTS = {
    "Theorem 1 (convergence of the lagged masked step)": [
        r"Assume $R=\frac{1}{K}\sum_e R_e$ is $L$-smooth with $R\geq R_{\inf}$, $\hat g_t$ is unbiased with "
        r"$E\|\hat g_t-\nabla R\|^2\leq\sigma^2$,",
        r"and $A_t$ is symmetric PSD with $\|A_t\|\leq 1$ and independent of the current minibatch. For $\eta\leq 1/L$:",
        r"$\frac{1}{T}\sum_{t<T} E\|A_t^{1/2}\nabla R(\theta_t)\|^2"
        r"\leq \frac{2(R(\theta_0)-R_{\inf})}{\eta T}+L\eta\sigma^2$.",
        r"With $A_t\succeq m_{\min}I$ the same bound holds for $m_{\min}\,\frac{1}{T}\sum_t E\|\nabla R(\theta_t)\|^2$.",
    ],
    "Theorem 2 (empirical Bernstein over domains)": [
        r"For $\theta$ independent of the $K$ certification domains and $R_e(\theta)\in[a,a+B]$, "
        r"with probability $\geq 1-\delta$:",
        r"$E_{e\sim Q}R_e(\theta)\leq\bar R_K+\sqrt{2V_K\ln(2/\delta)/K}+\frac{7B\ln(2/\delta)}{3(K-1)}$.",
        r"Union bound over $N$ candidates: $\delta\to\delta/N$.  Quantile certificate: the $k$-th smallest risk, "
        r"with $P(\mathrm{Bin}(K,1-\alpha)\geq k)\leq\delta$.",
        r"Crossover $K^*=\frac{49}{18}B^2\ln(2/\delta)/V$;  the bound is vacuous while $7\ln(2/\delta)\geq 3(K-1)$.",
    ],
    "Theorem 3 (what the mask changes)": [
        r"(a) $\theta=\theta-\eta\, m\odot\mu$ iff $m_j\mu_j=0$ for all $j$: a mask $m>0$ keeps ERM's "
        r"stationary points.",
        r"(b) $\|P(\theta_T-\theta_0)\|\leq\sum_{t<T}\eta\|P(m_t\odot\mu_t)\|$ along any run.",
        r"(c) S1 with $b=0$ and equal scales: $c_{sp}=s_\beta^2/\bar\beta^2=K/t^2$. In the hard limit $b\equiv 0$ iff "
        r"$c_{sp}>\tau$,",
        r"which has probability $P(|T_{K-1}(\sqrt{K}\mu_\beta/\tau_\beta)|<\sqrt{K/\tau})$.",
        r"(d) Suppression fails when $\mu_\beta\gg\tau_\beta$ (shared sign), under a rotation of the features, "
        r"and when domains differ in scale only.",
    ],
}


def _text_page(title: str, blocks: list[tuple[str, list[str]]], size=PAGE) -> plt.Figure:
    fig = plt.figure(figsize=size)
    fig.text(0.05, 0.96, title, fontsize=15, weight="bold", va="top")
    y = 0.91
    for heading, lines in blocks:
        fig.text(0.05, y, heading, fontsize=11, weight="bold", va="top")
        y -= 0.03
        for line in lines:
            fig.text(0.07, y, line, fontsize=9, va="top")
            y -= 0.06
        y -= 0.02
    return fig


def statements_figure() -> plt.Figure:
    """Typeset the three theorem statements with matplotlib mathtext."""
    return _text_page("Theory: statements verified by `iga validate`",
                      [(title, lines) for title, lines in STATEMENTS.items()], size=WIDE)


def certificate_figures(certificate: dict, rows_per_page: int = 32) -> list[plt.Figure]:
    """Draw the certificate's checks as table pages (name, theorem, value, interval, verdict)."""
    checks = certificate.get("checks", [])
    figures = []
    for start in range(0, max(len(checks), 1), rows_per_page):
        fig, ax = plt.subplots(figsize=WIDE)
        ax.axis("off")
        rows, colours = [], []
        for check in checks[start:start + rows_per_page]:
            value = check["value"]
            shown = f"{value:.4g}" if isinstance(value, float) else textwrap.shorten(str(value), 38)
            interval = check.get("interval")
            if isinstance(interval, list) and len(interval) == 2 and all(isinstance(v, (int, float)) for v in interval):
                shown_interval = f"[{interval[0]:.4g}, {interval[1]:.4g}]"
            else:
                shown_interval = ""
            rows.append([check["name"], check["theorem"], shown, shown_interval, "pass" if check["passed"] else "FAIL"])
            colours.append(["white"] * 4 + ["#c8e6c9" if check["passed"] else "#ffcdd2"])
        if rows:
            table = ax.table(cellText=rows, cellColours=colours, loc="upper center",
                             colLabels=["check", "theorem", "value", "interval", "verdict"],
                             colWidths=[0.36, 0.07, 0.3, 0.19, 0.08])
            table.auto_set_font_size(False)
            table.set_fontsize(7)
            table.scale(1, 1.25)
        passed = certificate.get("n_checks", 0) - certificate.get("n_failed", 0)
        ax.set_title(f"Certificate: {passed}/{certificate.get('n_checks', 0)} checks passed "
                     f"({certificate.get('mode', '?')} run, {certificate.get('timing', {}).get('runtime_s', float('nan')):.0f} s)",
                     fontsize=12)
        figures.append(fig)
    return figures


def _caption(fig: plt.Figure, text: str) -> None:
    fig.text(0.05, 0.015, textwrap.fill(text, 150), fontsize=8, va="bottom")


def rate_figure(data: dict) -> plt.Figure:
    """Theorem 1: left and right side against T, per run, and the plain gradient norm."""
    T = np.array(data["T"])
    fig, axes = plt.subplots(1, 2, figsize=WIDE)
    lhs, rhs = np.array(data["lhs"]), np.array(data["rhs"])
    ax = axes[0]
    for row in lhs:
        ax.loglog(T, row, color="C0", alpha=0.25, lw=0.8)
    for row in rhs:
        ax.loglog(T, row, color="C3", alpha=0.25, lw=0.8)

    ax.loglog(T, lhs.mean(axis=0), "o-", color="C0", label=r"left: $\frac{1}{T}\sum\|A_t^{1/2}\nabla R\|^2$")
    ax.loglog(T, rhs.mean(axis=0), "s-", color="C3", label="right: computed bound")
    ax.loglog(T, np.array(data["plain"]).mean(axis=0), "^--", color="C2",
              label=r"$\frac{1}{T}\sum\|\nabla R\|^2$ ($m_{\min}=0$, not bounded)")
    slope = data.get("slope") or {}
    ax.set_title(f"fitted slope {slope.get('slope', float('nan')):.3f} "
                 f"[{slope.get('ci_low', float('nan')):.3f}, {slope.get('ci_high', float('nan')):.3f}]")
    ax.set_xlabel("steps T (eta ~ 1/sqrt(T))")
    ax.legend(fontsize=8)

    ax = axes[1]
    alignment = np.array(data["alignment"])
    steps = np.arange(alignment.shape[1])
    ax.fill_between(steps, alignment[0], alignment[2], alpha=0.3, label="5-95 % over runs")
    ax.plot(steps, alignment[1], label="median")
    ax.set_ylim(-1, 1)
    ax.set_xlabel("step")
    ax.set_ylabel(r"$\cos(\nabla R, d_t)$")
    ax.set_title("alignment of the non-lagged (same-minibatch) variant")
    ax.legend(fontsize=8)
    _caption(fig, "Theorem 1 on S1 with a lagged EMA mask: every run's left side (blue) lies below its computed right "
                  "side (red), and the mean decays at the T^(-1/2) rate. With m_min = 0 the plain gradient norm "
                  "(green) is not bounded by the theorem: it decays far more slowly and stays above the bound.")
    return fig


def coverage_figure(data: list) -> plt.Figure:
    """Theorem 2: Monte Carlo coverage per model, method and route."""
    fig, ax = plt.subplots(figsize=WIDE)
    labels = [f"{d['model']} {d['method']}\n{d['route']}" for d in data]
    ax.bar(range(len(data)), [d["coverage"] for d in data],
           color=["C0" if d["method"] == "erm" else "C1" for d in data])
    ax.axhline(0.95, color="k", ls="--", lw=1, label="1 - delta")
    ax.set_xticks(range(len(data)))
    ax.set_xticklabels(labels, fontsize=7)
    ax.set_ylim(0.8, 1.01)
    ax.set_ylabel("coverage")
    ax.legend()
    _caption(fig, "Theorem 2 coverage of the empirical Bernstein bound over domains, for fixed predictors, "
                  "predictors trained on held-out domains and the best of a candidate set under the union bound.")
    return fig


def slopes_figure(data: dict) -> plt.Figure:
    """Theorem 2: variance and range terms against K, with K*."""
    K = np.array(data["K"])
    fig, axes = plt.subplots(1, 2, figsize=WIDE)
    ax = axes[0]
    for method, colour in (("erm", "C0"), ("iga", "C1")):
        d = data[method]
        variance = np.array(d["variance_term"])
        if np.any(variance > 0):
            ax.loglog(K, np.where(variance > 0, variance, np.nan), "o-", color=colour, label=f"{method} variance term")
        ax.loglog(K, d["range_term"], "--", color=colour, label=f"{method} range term")
    if np.isfinite(data.get("K_star") or np.nan):
        ax.axvline(data["K_star"], color="k", lw=1, ls=":", label=f"K* = {data['K_star']:.0f} (ERM)")
    ax.set_xlabel("K")
    ax.legend(fontsize=8)
    ax.set_title(f"excess terms (common B = {data['erm']['B']:.3g})")
    ax = axes[1]
    for method, colour in (("erm", "C0"), ("iga", "C1")):
        d = data[method]
        ax.semilogx(K, d["bound"], "o-", color=colour, label=f"{method} mean bound")
        ax.axhline(d["expected"], color=colour, ls=":", label=f"{method} exact E_Q R")
    ax.set_ylim(0, max(data["erm"]["expected"], data["iga"]["expected"]) * 3)
    ax.set_xlabel("K")
    ax.legend(fontsize=8)
    ax.set_title("bound against the exact expected risk")
    _caption(fig, "Theorem 2 on S1: ERM's variance term decays like K^(-1/2) and crosses its range term near K*; "
                  "IGA's variance term is near zero, so its excess is the range term, of order 1/K. ERM's mean "
                  "bound can still be lower, because its average risk is.")
    return fig


def quantile_figure(data: dict) -> plt.Figure:
    """Theorem 2: mean new-domain quantile certificates of ERM and IGA against K."""
    rows = data["rows"]
    fig, ax = plt.subplots(figsize=WIDE)
    K = [row["K"] for row in rows]
    for method, colour in (("erm", "C0"), ("iga", "C1")):
        ax.semilogx(K, [row[f"{method}_mean"] for row in rows], "o-", color=colour,
                    label=f"{method} mean certificate")
        ax.axhline(data["reference"][method], color=colour, ls=":", label=f"{method} true quantile")
    ax.set_xlabel("K")
    ax.set_ylabel("risk")
    ax.legend(fontsize=8)
    _caption(fig, "The distribution-free certificate on the (1 - alpha)-quantile of a new domain's risk: IGA's "
                  "risk barely varies over domains, so its certificate is close to its true quantile and below ERM's.")
    return fig


def drift_figure(data: dict) -> plt.Figure:
    """Theorem 3 (a): spurious weight over ERM's along soft-mask runs."""
    fig, ax = plt.subplots(figsize=WIDE)
    for row in data["rows"]:
        path = np.array(row["path"])
        steps = np.linspace(0, data["steps"], path.size)
        ax.plot(steps, path, label=f"kappa0 = {row['kappa0']:g}")
    ax.set_yscale("symlog", linthresh=1e-6)
    ax.set_xlabel("step")
    ax.set_ylabel("spurious weight / ERM's")
    ax.legend()
    _caption(fig, "Theorem 3 (a): a strictly positive mask keeps ERM's stationary points, so soft masks drift back "
                  "towards ERM's solution; sharp masks underflow to 0 on the spurious coordinates and stay near 0.")
    return fig


def suppression_figure(data: dict) -> plt.Figure:
    """Theorem 3 (c, d): closed-form and Monte Carlo probability of suppression over (mu/tau, K)."""
    fig, axes = plt.subplots(1, 2, figsize=WIDE)
    for ax, key, title in ((axes[0], "formula", "closed form (noncentral t)"),
                           (axes[1], "frequency", "Monte Carlo")):
        image = ax.imshow(np.array(data[key]), origin="lower", aspect="auto", vmin=0, vmax=1, cmap="viridis")
        ax.set_xticks(range(len(data["K"])))
        ax.set_xticklabels(data["K"])
        ax.set_yticks(range(len(data["ratios"])))
        ax.set_yticklabels([f"{r:g}" for r in data["ratios"]])
        ax.set_xlabel("K")
        ax.set_ylabel("mu_beta / tau_beta")
        ax.set_title(title)
    fig.colorbar(image, ax=axes, label="P(shortcut suppressed, hard limit)")
    _caption(fig, "Where the hard-limit mask removes the shortcut: a shortcut whose sign is shared by the training "
                  "domains (large mu_beta / tau_beta) has a small conflict score and is kept, and more so as K grows, "
                  "because the default tau falls to tau0 = 0.1. No gradient statistic can tell it from an invariant "
                  "feature.")
    return fig


def phase_figure(data: dict) -> plt.Figure:
    """Theorem 3 (d): ERM's minus IGA's shifted-domain risk over (mu/tau, K), per variant."""
    maps = data["maps"]
    fig, axes = plt.subplots(1, len(maps), figsize=WIDE, squeeze=False)
    gains = [np.array(m["gain"]) for m in maps.values()]
    limit = max(float(np.max(np.abs(g))) for g in gains) or 1.0
    for ax, (label, m) in zip(axes[0], maps.items()):
        image = ax.imshow(np.array(m["gain"]), origin="lower", aspect="auto", cmap="RdBu", vmin=-limit, vmax=limit)
        ax.set_xticks(range(len(data["K"])))
        ax.set_xticklabels(data["K"], fontsize=7)
        ax.set_yticks(range(len(data["ratios"])))
        ax.set_yticklabels([f"{r:g}" for r in data["ratios"]], fontsize=7)
        ax.set_title(label, fontsize=9)
        ax.set_xlabel("K")
    axes[0][0].set_ylabel("mu_beta / tau_beta")
    fig.colorbar(image, ax=axes[0].tolist(), label="ERM minus IGA shifted-domain risk (blue: IGA better)")
    _caption(fig, "Where IGA beats ERM on the domain with the shortcut reversed (blue) and where it loses (red): "
                  "the coordinate-wise mask needs the unrotated basis, and domains that differ in scale look like "
                  "conflict to the variance score; the sign-agreement score ignores scale.")
    return fig


def tau_kappa_figure(data: dict) -> plt.Figure:
    """Mask sensitivity: IGA's shifted-domain and expected risk over (tau, kappa0)."""
    fig, axes = plt.subplots(1, 2, figsize=WIDE)
    for ax, key, reference in ((axes[0], "shifted", data["erm_shifted"]), (axes[1], "expected", data["erm_expected"])):
        values = np.array(data[key])
        image = ax.imshow(values - reference, origin="lower", aspect="auto", cmap="RdBu_r",
                          vmin=-np.max(np.abs(values - reference)), vmax=np.max(np.abs(values - reference)))
        ax.set_xticks(range(len(data["kappas"])))
        ax.set_xticklabels([f"{k:g}" for k in data["kappas"]])
        ax.set_yticks(range(len(data["taus"])))
        ax.set_yticklabels([f"{t:g}" for t in data["taus"]])
        ax.set_xlabel("kappa0")
        ax.set_ylabel("tau")
        ax.set_title(f"IGA minus ERM, {key} risk (ERM: {reference:.3f})")
        fig.colorbar(image, ax=ax)
    _caption(fig, "The mask's parameters matter: a sharp mask below the spurious conflict score recovers the "
                  "invariant predictor (blue on the shifted domain), while a loose threshold also masks the "
                  "invariant coordinates and ends worse than ERM (red).")
    return fig


def statistics_figure(data: dict) -> plt.Figure:
    """Statistics options: final shifted-domain risk per option and minibatch size."""
    fig, ax = plt.subplots(figsize=WIDE)
    values = np.array(data["shifted"])
    image = ax.imshow(values, aspect="auto", cmap="magma_r")
    ax.set_yticks(range(len(data["labels"])))
    ax.set_yticklabels(data["labels"])
    ax.set_xticks(range(len(data["batches"])))
    ax.set_xticklabels(data["batches"])
    ax.set_xlabel("examples per domain and step")
    for i in range(values.shape[0]):
        for j in range(values.shape[1]):
            ax.text(j, i, f"{values[i, j]:.3f}", ha="center", va="center", fontsize=8, color="w")
    fig.colorbar(image, ax=ax, label="shifted-domain risk")
    ax.set_title(f"statistics options of the mask (oracle: {data['oracle_shifted']:.3f})")
    _caption(fig, "Minibatch noise inflates s2: with the same minibatch the mask also suppresses invariant "
                  "coordinates at small batches; a lagged EMA of the per-domain means removes most of the noise.")
    return fig


# figure key in figures_data -> (file stem, plotting function)
FIGURES: dict[str, tuple[str, Callable]] = {
    "rate": ("t1_rate", rate_figure),
    "coverage": ("t2_coverage", coverage_figure),
    "slopes": ("t2_slopes", slopes_figure),
    "quantile": ("t2_quantile", quantile_figure),
    "drift": ("t3_drift", drift_figure),
    "suppression": ("t3_suppression", suppression_figure),
    "phase": ("t3_phase", phase_figure),
    "tau_kappa": ("maps_tau_kappa", tau_kappa_figure),
    "statistics": ("maps_statistics", statistics_figure),
}


def _figures(figures_data: dict):
    for key, (stem, function) in FIGURES.items():
        if key not in figures_data:
            continue
        try:
            yield stem, function(figures_data[key])
        except (KeyError, ValueError, TypeError) as error:
            logger.warning("figure %s skipped: invalid figure data (%s)", key, error)


def save_figures(figures_data: dict, out_dir: str | Path) -> list[Path]:
    """Write every figure that ``figures_data`` has data for as PNG; return the paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for stem, fig in _figures(figures_data):
        path = out_dir / f"{stem}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


def add_theory_section(pdf: PdfPages, certificate: dict, figures_data: dict) -> int:
    """Append the theory pages to ``pdf``: statements, certificate table, figures. Returns the page count."""
    pages = 0
    for fig in [statements_figure(), *certificate_figures(certificate)]:
        pdf.savefig(fig)
        plt.close(fig)
        pages += 1
    for _, fig in _figures(figures_data):
        pdf.savefig(fig)
        plt.close(fig)
        pages += 1
    return pages


def write_theory_pdf(path: str | Path, certificate: dict, figures_data: dict) -> Path:
    """Write the theory pages as a standalone PDF (through a temporary file, then moved into place)."""
    from iga_theory.runs import atomic_output

    path = Path(path)
    with atomic_output(path) as tmp, PdfPages(tmp) as pdf:
        add_theory_section(pdf, certificate, figures_data)
    return path
