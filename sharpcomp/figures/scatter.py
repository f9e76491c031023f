"""The scatter matrix of the correlation figures (figD5, figD6, sweep_correlation): one point per run.

Above the panels, the title and the legend of the point colours (in as many rows as it needs, so no
column of the figure is left blank); below the diagonal the scatter plots with Pearson r, on the diagonal
each quantity's histogram, above it each pair's r, p-value and n (the p-value from ``MIN_P_RUNS`` runs on).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from sharpcomp.figures.draw import short
from sharpcomp.figures.tables import fmt
from sharpcomp.figures.text import chars_per_inch, wrap

# Inches per panel.
PANEL = 2.0
# A pair's p-value is printed from this many runs on (with fewer, a t test on n - 2 degrees of freedom
# says little; the CSV keeps every p-value).
MIN_P_RUNS = 5


def draw_correlation(
    summary: pd.DataFrame,
    columns: Sequence[str],
    pearson: pd.DataFrame,
    *,
    color_by: Sequence[str] = ("lr", "batch"),
    title: str | None = None,
) -> Figure:
    """Scatter matrix over ``columns``, one point per run.

    Below the diagonal, row i / column j plots ``columns[i]`` (y) against ``columns[j]`` (x) with
    Pearson r in the corner; above it, panel (j, i) repeats that pair's r, p-value and n in large
    type (axis hidden); the diagonal holds each quantity's histogram. Points are coloured by
    ``color_by`` (default lr and batch size).
    """
    cols = list(columns)
    k = len(cols)
    order, point_colors, handles = _point_colors(summary, color_by)
    fig, legend_top = _figure(k, title, order if len(order) > 1 and handles else [])
    grid = fig.add_gridspec(k, k)
    axes = [[None] * k for _ in range(k)]
    rvalue = {}
    for _, row in pearson.iterrows():
        rvalue[(row["x"], row["y"])] = rvalue[(row["y"], row["x"])] = (row["r"], row["p"], row["n"])
    for i, ycol in enumerate(cols):
        for j, xcol in enumerate(cols):
            r, p, n = rvalue.get((xcol, ycol), (np.nan, np.nan, 0))
            if j > i:  # upper triangle: the pair's numbers (text only, no axis)
                box = grid[i, j].get_position(fig)
                fig.text((box.x0 + box.x1) / 2, (box.y0 + box.y1) / 2, pair_text(r, p, n), ha="center",
                         va="center", fontsize=10, color=_r_color(r))
                continue
            share_x = axes[i - 1][j] if i > j else None      # column j: the axis above (same x)
            share_y = axes[i][j - 1] if 0 < j < i else None  # row i: the scatter to the left
            ax = axes[i][j] = fig.add_subplot(grid[i, j], sharex=share_x, sharey=share_y)
            ax.tick_params(labelsize=8, length=2.5, pad=1.5)
            ax.xaxis.set_major_locator(MaxNLocator(3))
            ax.yaxis.set_major_locator(MaxNLocator(3))
            if i == j:
                v = summary[xcol].to_numpy(dtype=float)
                v = v[np.isfinite(v)]
                if len(v):  # own y scale (counts): this axis shares no y; bars with edges, and a rug
                    bins = int(min(10, max(2, np.ceil(np.sqrt(len(v))) + 1)))
                    ax.hist(v, bins=bins, color="0.88", edgecolor="0.3", linewidth=0.8)
                    ax.plot(v, np.zeros_like(v), "|", color="0.15", ms=7, mew=0.9, clip_on=False)
                ax.set_yticks([])
            else:
                ax.scatter(summary[xcol], summary[ycol], s=24, c=point_colors, edgecolors="white", linewidths=0.4,
                           alpha=0.9)
                text = f"r = {r:.2f}" if np.isfinite(r) else "r = n/a"
                x0, y0, ha, va = _free_corner(summary[xcol].to_numpy(dtype=float), summary[ycol].to_numpy(dtype=float))
                ax.text(x0, y0, text, transform=ax.transAxes, fontsize=8, ha=ha, va=va,
                        bbox={"facecolor": "white", "alpha": 0.8, "lw": 0, "pad": 1})
            if i == k - 1:
                ax.set_xlabel(short(xcol), fontsize=9)
            else:
                ax.tick_params(labelbottom=False)
            if j == 0:
                ax.set_ylabel(short(ycol), fontsize=9)
            elif i != j:
                ax.tick_params(labelleft=False)
    fig.sharpcomp_axes = axes  # k x k, None above the diagonal (for tests and callers)
    if legend_top is not None:
        fig.legend(handles, order, loc="upper center", bbox_to_anchor=(0.5, legend_top), fontsize=9, frameon=False,
                   ncol=_legend_columns(fig.get_figwidth(), order), columnspacing=1.2, handletextpad=0.3)
    return fig


def pair_text(r: float, p: float, n: int) -> str:
    """A pair's r, p-value and n, as the upper triangle prints them (no p-value from fewer than
    ``MIN_P_RUNS`` runs: it would say little)."""
    if not np.isfinite(r):
        return f"r = n/a\nn = {int(n)}"
    if n < MIN_P_RUNS:
        return f"r = {r:.2f}\nn = {int(n)} (no p below {MIN_P_RUNS})"
    return f"r = {r:.2f}\np = {p:.2g}\nn = {int(n)}"


def _legend_columns(width: float, labels: Sequence[str]) -> int:
    """How many legend entries fit side by side in ``width`` inches (a marker, its label, spacing)."""
    entry = 0.45 + max(len(t) for t in labels) / chars_per_inch(9)
    return max(1, min(len(labels), int((width - 0.4) // entry)))


def _figure(k: int, title: str | None, legend: Sequence[str]) -> tuple[Figure, float | None]:
    """The figure of a k x k scatter matrix: panels of ``PANEL`` inches with margins for the tick and axis
    labels, and above them the title (wrapped to the width) and a legend of ``legend`` in as many rows as
    its entries need; returns the figure and the top of the legend (figure fraction), or None."""
    left, right, bottom = 0.9, 0.35, 0.6
    width = PANEL * k + left + right
    title_text = wrap(title, width - 0.4, 11) if title else ""
    title_h = 0.15 + (title_text.count("\n") + 1) * 11 * 1.35 / 72 if title else 0.1
    rows = -(-len(legend) // _legend_columns(width, legend)) if legend else 0
    legend_h = 0.1 + rows * 9 * 1.5 / 72 if legend else 0.0
    top = title_h + legend_h + 0.15
    height = PANEL * k + top + bottom
    fig = Figure(figsize=(width, height))
    fig.subplots_adjust(left=left / width, right=1 - right / width, bottom=bottom / height, top=1 - top / height,
                        wspace=0.08, hspace=0.08)
    if title:
        fig.suptitle(title_text, fontsize=11, y=1 - 0.1 / height, va="top")
    return fig, (1 - title_h / height if legend else None)


def _point_colors(summary: pd.DataFrame, color_by: Sequence[str]) -> tuple[list[str], list[str], list]:
    """Colours of a scatter matrix's points: the legend labels in order ("lr 0.1, batch 20"), one
    colour per run of ``summary`` and the legend handles."""
    color_by = [c for c in color_by if c in summary.columns]
    if color_by:
        keys = summary[color_by].apply(lambda r: ", ".join(f"{c} {fmt(v)}" for c, v in zip(color_by, r)), axis=1)
        order = summary.assign(_k=keys).sort_values(color_by)["_k"].drop_duplicates().tolist()
    else:
        keys = pd.Series(["run"] * len(summary), index=summary.index)
        order = ["run"]
    color_of = {key: f"C{i % 10}" for i, key in enumerate(order)}
    handles = [Line2D([], [], ls="none", marker="o", ms=4, color=color_of[key], label=key) for key in order]
    return order, [color_of[key] for key in keys], handles


def _free_corner(x: np.ndarray, y: np.ndarray) -> tuple[float, float, str, str]:
    """The corner of a scatter panel (axes coordinates, alignment) with the fewest points under a label
    box of about a third of the width and a sixth of the height, so the label covers as few as can be."""
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    if len(x):
        span_x, span_y = np.ptp(x) or 1.0, np.ptp(y) or 1.0
        u, v = 0.05 + 0.9 * (x - x.min()) / span_x, 0.05 + 0.9 * (y - y.min()) / span_y  # autoscale margins
    else:
        u = v = np.array([])
    corners = [(0.04, 0.96, "left", "top"), (0.96, 0.96, "right", "top"), (0.04, 0.04, "left", "bottom"),
               (0.96, 0.04, "right", "bottom")]

    def covered(c):
        cx, cy, ha, va = c
        inx = (u <= cx + 0.36) if ha == "left" else (u >= cx - 0.36)
        iny = (v >= cy - 0.2) if va == "top" else (v <= cy + 0.2)
        return int((inx & iny).sum())

    return min(corners, key=covered)


def _r_color(r: float) -> str:
    if not np.isfinite(r):
        return "0.5"
    return "C3" if r > 0.5 else ("C0" if r < -0.5 else "0.2")
