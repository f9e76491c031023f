"""Drawing for the figures stage (see ``sharpcomp.figures``): matplotlib ``Figure`` objects built
without pyplot, so nothing depends on a display or a global backend."""

from __future__ import annotations

import re
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from sharpcomp.figures.tables import SQRT_S, fmt
from sharpcomp.figures.text import wrap

# Axis labels: the quantity and its equation in the paper (docs/science.md).
LABELS = {
    "train_loss_running": "train loss (running mean of minibatch losses)",
    "train_loss": "train loss (whole train set)",
    "train_acc": "train accuracy (whole train set)",
    "test_loss": "test loss (whole test set)",
    "test_acc": "test accuracy (whole test set)",
    "sample_loss": "loss on the sample points",
    SQRT_S: r"$\sqrt{S}$, sharpness (Eq. 3)",
    "sharpness": "S, sharpness (Eq. 3)",
    "G": "G (Eq. 6)",
    "log_volume": "log volume (Eq. 10)",
    "mls": "MLS (Eq. 13)",
    "local_dim": "local dimensionality (Eq. 14)",
    "bound_b": "bound b (Eq. 28)",
    "bound_c": "bound c (Eq. 28)",
    "bound_d": "bound d (Eq. 28)",
    "wall_time": "wall time (s)",
    # optional flatness measures; the standard errors are drawn as error bars
    "hessian_trace": "Tr H, Hessian trace",
    "quotient_trace": "Tr(PHP), quotient Hessian trace",
    "quotient_trace_gap": "Tr H - Tr(PHP), closed form",
    "worst_case": r"worst-case $\epsilon$-sharpness",
    "worst_case_rel": r"worst-case $\epsilon$-sharpness / (1 + L)",
    "worst_case_adaptive": r"adaptive $\epsilon$-sharpness ($\delta$ scaled by |w|)",
    "worst_case_adaptive_rel": r"adaptive $\epsilon$-sharpness / (1 + L)",
    "worst_case_quotient": r"quotient worst-case $\epsilon$-sharpness",
    "worst_case_quotient_rel": r"quotient worst-case $\epsilon$-sharpness / (1 + L)",
    "grad_disagreement": r"gradient disagreement E$\|g_2\|(1 - \cos(g_1, g_2))$",
    "fisher_trace": "Tr F, empirical Fisher trace",
    "hessian_max": r"$\lambda_{max}(H)$, top Hessian eigenvalue",
    "ggn_max": r"$\lambda_{max}$ of the Gauss-Newton matrix",
    "batch_sharpness": "batch sharpness",
    "nonuniformity": "non-uniformity",
    "average": "average-case sharpness",
    "average_adaptive": "adaptive average-case sharpness",
    "keskar": r"Keskar $\epsilon$-sharpness (%)",
    "pacbayes_flatness": "PAC-Bayes flatness",
    "pacbayes_mag_flatness": "PAC-Bayes flatness (magnitude-aware)",
    "contrastive": "contrastive flatness",
    "regret_kl": "regret in the Fisher (KL) ball",
    "grad_norm": "gradient norm",
}
# Short names for legends and scatter-matrix axes.
SHORT = {
    "train_loss_running": "train loss", "train_loss": "train loss", "test_loss": "test loss",
    "test_acc": "test acc.", "train_acc": "train acc.", "sample_loss": "sample loss",
    SQRT_S: r"$\sqrt{S}$ (Eq. 3)", "sharpness": "S (Eq. 3)", "G": "G (Eq. 6)",
    "log_volume": "log vol. (Eq. 10)", "mls": "MLS (Eq. 13)", "local_dim": "local dim (Eq. 14)",
    "bound_b": "bound b (Eq. 28)", "bound_c": "bound c (Eq. 28)", "bound_d": "bound d (Eq. 28)",
    "hessian_trace": "Tr H", "quotient_trace": "Tr(PHP)", "quotient_trace_gap": "Tr H - Tr(PHP)",
    "worst_case": "worst-case sh.", "worst_case_rel": "worst-case sh. rel.",
    "worst_case_adaptive": "adaptive sh.", "worst_case_adaptive_rel": "adaptive sh. rel.",
    "worst_case_quotient": "quotient worst sh.", "worst_case_quotient_rel": "quotient worst sh. rel.",
    "grad_disagreement": "grad. disagreement", "fisher_trace": "Tr F (Fisher)",
    "hessian_max": r"$\lambda_{max}(H)$", "ggn_max": r"$\lambda_{max}(GGN)$", "batch_sharpness": "batch sharpness",
    "nonuniformity": "non-uniformity", "average": "average-case sh.", "average_adaptive": "adaptive average-case sh.",
    "keskar": "Keskar sh.", "pacbayes_flatness": "PAC-Bayes flat.", "pacbayes_mag_flatness": "PAC-Bayes mag. flat.",
    "contrastive": "contrastive flat.", "regret_kl": "regret (KL)", "grad_norm": "grad. norm",
}
# Quantities drawn on a log axis when every value drawn is positive.
LOG_COLUMNS = {"train_loss_running", "train_loss", "test_loss", "sample_loss", "mls", "bound_b",
               "bound_c", "bound_d"}
BANDS = ("minmax", "std", "none")
# Inches of figure height per row of trend panels.
PANEL_HEIGHT = 3.3
GROUP_NAMES = {"lr": "lr", "batch": "batch", "seed": "seed", "optim": "optim"}
# Group columns whose values are already full labels (e.g. "lr 0.1, batch 20, seed 0").
LABEL_GROUPS = ("run", "setting")
SET_NAMES = {"all": "whole set", "train": "train sample set", "test": "test sample set",
             "misclassified": "misclassified test points"}


@dataclass(frozen=True)
class Panel:
    """One axis of a trend figure: the columns drawn on it (one line per group and column)."""

    columns: tuple[str, ...]
    ylabel: str | None = None
    log: bool | None = None          # None: log when every column is in LOG_COLUMNS and values > 0
    groups: tuple | None = None      # only these group values (e.g. sample sets); None: all
    se: str | None = None            # standard-error column of the (first) column: drawn as error bars
    markers: bool = False            # a marker at every point (quantities with their own cadence)

    @classmethod
    def of(cls, spec) -> Panel:
        if isinstance(spec, Panel):
            return spec
        if isinstance(spec, str):
            return cls((spec,))
        return cls(tuple(spec))

    @property
    def label(self) -> str:
        if self.ylabel:
            return self.ylabel
        if len(self.columns) == 1:
            return label(self.columns[0])
        return " / ".join(short(c) for c in self.columns)


def label(col: str) -> str:
    return LABELS.get(col, col)


def short(col: str) -> str:
    return SHORT.get(col, col)


def group_label(by: str, value, n_runs: int | None = None) -> str:
    if by == "sample_set":
        text = SET_NAMES.get(str(value), str(value))
    elif by == "group":
        text = "mean over runs"
    elif by in LABEL_GROUPS:
        text = str(value)
    else:
        text = f"{GROUP_NAMES.get(by, by)} {fmt(value)}"
    if n_runs is not None and by != "sample_set":
        text += f" ({n_runs} run{'s' if n_runs != 1 else ''})"
    return text


def _band(line: pd.DataFrame, band: str):
    if band == "minmax":
        return line["min"].to_numpy(), line["max"].to_numpy()
    if band == "std":
        m, s = line["mean"].to_numpy(), line["std"].to_numpy()
        return m - s, m + s
    return None


def draw_trend(
    lines: pd.DataFrame,
    by: str,
    panels: Sequence,
    *,
    band: str = "minmax",
    title: str | None = None,
    runs_per_group: dict | None = None,
    ncols: int = 3,
    figure_legend: bool = False,
) -> tuple[Figure, list[str]]:
    """Draw the output of ``trend_lines``: one axis per panel, x = iteration.

    Lines connect the iterations present in ``lines`` (a quantity with its own cadence is drawn
    through the checkpoints that have it). A panel with ``se`` draws error bars from the ``se``
    column of ``lines`` (see ``trend_se``). ``figure_legend``: one legend for the whole figure
    (beside the panels) instead of one in the first panel, for many lines.

    Returns the figure and the names of panels that had nothing to draw (they keep an empty axis
    reading "no data", so the layout stays the same).
    """
    if band not in BANDS:
        raise ValueError(f"band must be one of {BANDS}, got {band!r}")
    panels = [Panel.of(p) for p in panels]
    ncols = max(1, min(ncols, len(panels)))
    nrows = int(np.ceil(len(panels) / ncols))
    width = max(4.4 * ncols, 9.0 if len(panels) == 1 else 7.0)  # one panel: room for its title on one line
    fig = Figure(figsize=(width, PANEL_HEIGHT * nrows + (0.5 if title else 0) + (1.2 if len(panels) == 1 else 0)),
                 layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    groups = list(dict.fromkeys(lines[by].tolist())) if len(lines) else []
    styles = ["-", "--", "-.", ":", (0, (6, 2, 1, 2, 1, 2))]
    colors, group_styles = _group_looks([g for g in groups if g != "all"], by, styles)
    colors["all"] = "black"
    look = {"groups": groups, "colors": colors, "group_styles": group_styles, "styles": styles}
    empty = []
    legend_done = False
    for ax, panel in zip(axes, panels):
        drawn = _draw_panel_lines(ax, panel, lines, by, look, band, runs_per_group or {})
        ax.set_xlabel("iteration")
        ax.set_ylabel(wrap(panel.label, fig.get_figheight() / nrows - 0.6, 9), fontsize=9)
        if not drawn:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes, color="0.5")
            empty.append(" / ".join(panel.columns))
            continue
        values = pd.concat(drawn)["mean"].to_numpy(dtype=float)
        values = values[np.isfinite(values)]
        want_log = panel.log if panel.log is not None else all(c in LOG_COLUMNS for c in panel.columns)
        if want_log and len(values) and (values > 0).all():
            ax.set_yscale("log")
        if all(c in ("test_acc", "train_acc") for c in panel.columns):
            _accuracy_limits(ax, drawn)
        ax.grid(alpha=0.3)
        n_groups = len({tuple(d[by].iloc[:1]) for d in drawn})
        if figure_legend and len(panel.columns) == 1:
            continue
        if len(panel.columns) > 1 or panel.groups is not None or (n_groups > 1 and not legend_done):
            ax.legend(fontsize=7, loc="best")
            legend_done = legend_done or (len(panel.columns) == 1 and n_groups > 1)
    if figure_legend:
        handles = {}
        for ax in axes[:len(panels)]:
            for h, text in zip(*ax.get_legend_handles_labels()):
                handles.setdefault(text, h)
        if handles:
            fig.legend(list(handles.values()), list(handles), loc="outside right center", fontsize=7)
    if title:
        fig.suptitle(textwrap.fill(title, int(width * 12)), fontsize=10)  # ~12 characters an inch at 10 pt
    return fig, empty


def _seedless(label) -> str:
    """A run's label without its seed ("lr 0.1, batch 20, seed 3" -> "lr 0.1, batch 20")."""
    return re.sub(r"(^|,\s*)seed [^,]+", "", str(label)).strip(", ")


def _group_looks(groups: list, by: str, styles: list) -> tuple[dict, dict]:
    """Colour and line style of each group. Runs labelled by their settings (``by`` = run/setting) that
    differ only in the seed share a colour (one per setting, e.g. per learning rate) and are told apart
    by the line style; otherwise one colour per group, and past ten groups the next ten are dashed."""
    keys = [_seedless(g) for g in groups] if by in LABEL_GROUPS else list(groups)
    distinct = list(dict.fromkeys(keys))
    if by in LABEL_GROUPS and len(distinct) < len(groups) and len(distinct) <= 10:
        seen: dict = {}
        colors, looks = {}, {}
        for g, k in zip(groups, keys):
            colors[g] = f"C{distinct.index(k)}"
            looks[g] = styles[seen.get(k, 0) % len(styles)]
            seen[k] = seen.get(k, 0) + 1
        return colors, looks
    return ({g: f"C{i % 10}" for i, g in enumerate(groups)},
            {g: styles[(i // 10) % len(styles)] for i, g in enumerate(groups)})


def _accuracy_limits(ax, drawn: list) -> None:
    """An accuracy axis spans the values after the first fifth of training (with a margin), so the late
    differences (0.94 against 0.96) are not squashed by the first checkpoints (0.5); earlier points run
    off the axis and a note says so."""
    frame = pd.concat(drawn)
    late = frame[frame["iteration"] >= 0.2 * frame["iteration"].max()]
    cols = [c for c in ("mean", "lo", "hi", "min", "max") if c in late]
    values = late[cols].to_numpy(dtype=float)
    values = values[np.isfinite(values)]
    everything = frame["mean"].to_numpy(dtype=float)
    everything = everything[np.isfinite(everything)]
    if not len(values) or not len(everything):
        return
    lo, hi = float(values.min()), float(values.max())
    pad = max(0.05 * (hi - lo), 0.002)
    if everything.min() < lo - pad:
        ax.set_ylim(lo - pad, min(1.0, hi + pad) if hi <= 1 else hi + pad)
        note_above(ax, f"earlier checkpoints below the axis (down to {everything.min():.3g})")


def note_above(ax, text: str) -> None:
    """A note about the panel, above its top right corner: outside the data, so it never sits on a line."""
    ax.annotate(text, (1.0, 1.0), xycoords="axes fraction", xytext=(0, 3), textcoords="offset points",
                ha="right", va="bottom", fontsize=7, color="0.35")


def _mark_neg_inf(ax, line: pd.DataFrame, col: str, color) -> bool:
    """Triangles on the bottom edge at the checkpoints where some runs of ``line`` were -inf (left out of
    the mean); whether there were any."""
    if "n_neg_inf" not in line.columns:
        return False
    at = line.loc[line["n_neg_inf"].fillna(0) > 0, "iteration"].to_numpy(dtype=float)
    if not len(at):
        return False
    ax.plot(at, np.zeros_like(at), ls="none", marker="v", ms=6, color=color, clip_on=False,
            transform=ax.get_xaxis_transform(), label="_neg_inf")
    return True


def _draw_panel_lines(ax, panel: Panel, lines: pd.DataFrame, by: str, look: dict, band: str,
                      runs_per_group: dict) -> list[pd.DataFrame]:
    """Draw ``panel``'s lines on ``ax``: one per group and column, with error bars and a band;
    returns the line tables drawn. ``look``: the groups, their colours and line styles."""
    groups, styles = look["groups"], look["styles"]
    several = len(panel.columns) > 1
    drawn, neg_inf = [], False
    for ci, col in enumerate(panel.columns):
        sub = lines[lines["column"] == col]
        for g in dict.fromkeys(sub[by].tolist()):
            if panel.groups is not None and g not in panel.groups:
                continue
            line = sub[sub[by] == g].sort_values("iteration")
            x, y = line["iteration"].to_numpy(dtype=float), line["mean"].to_numpy(dtype=float)
            name = group_label(by, g, runs_per_group.get(g))
            if several:
                name = short(col) if len(groups) <= 1 else f"{short(col)}, {name}"
            color = look["colors"].get(g, "C0") if not several or len(groups) > 1 else f"C{ci}"
            style = styles[ci % len(styles)] if several and len(groups) > 1 else look["group_styles"].get(g, "-")
            ax.plot(x, y, color=color, linestyle=style, label=name, lw=1.4,
                    marker="o" if len(x) == 1 or panel.markers else None, ms=3)
            if panel.se and ci == 0 and "se" in line.columns and line["se"].notna().any():
                ax.errorbar(x, y, yerr=line["se"].to_numpy(dtype=float), fmt="none", ecolor=color,
                            elinewidth=1.0, capsize=0, alpha=0.8)
            lohi = _band(line, band)
            if lohi is not None and line["n_runs"].max() > 1:
                ax.fill_between(x, lohi[0], lohi[1], color=color, alpha=0.18, lw=0)
            neg_inf = _mark_neg_inf(ax, line, col, color) or neg_inf
            drawn.append(line)
    if neg_inf:
        note_above(ax, "\u25bc: -inf in some runs there (left out of the mean)")
    return drawn
