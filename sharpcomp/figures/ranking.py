"""The ranking's figures (``sharpcomp rank``): one row per measure, each coefficient with its interval.

Both figures take the long table of :mod:`sharpcomp.analysis.protocol` (``measure, family, coefficient,
axis, value, low, high``) and the order of the measures (top to bottom), and colour the measures by family:

* :func:`draw_ranking`: Kendall's tau, the granulated coefficient Psi, the conditional mutual information
  and the sign error (its mean over environments as a dot, its worst case as a cross), side by side;
* :func:`draw_ranking_axes`: per axis of the grid, the granulated psi_a (top) and the sign error (bottom).

Error bars are the bootstrap intervals (none where there are none).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

FAMILY_COLORS = {"study": "tab:blue", "curvature": "tab:orange", "perturbation": "tab:green",
                 "baseline": "tab:gray", "other": "tab:purple"}
# coefficient, title, reference line, range (None: from 0 to a little past the largest interval, at least
# 0.1, at most 1: the CMI of a grid of few runs is small, and [0, 1] would crowd every measure at 0)
PANELS = (("kendall", "Kendall's tau", 0.0, (-1.05, 1.05)),
          ("granulated", "granulated Kendall Psi", 0.0, (-1.05, 1.05)),
          ("cmi", "conditional mutual information", None, None),
          ("sign_error_mean", "sign error", 0.5, (-0.03, 1.03)))


def _rows(table: pd.DataFrame, coefficient: str, axis: str, order: Sequence[str]) -> pd.DataFrame:
    sel = table[(table.coefficient == coefficient) & (table.axis == axis)].set_index("measure")
    return sel.reindex(list(order))


def _bars(ax, rows: pd.DataFrame, y: np.ndarray, marker: str = "o", interval: bool = True) -> None:
    """Each measure's value (coloured by family) with its interval as a horizontal error bar."""
    value, low, high = (rows[c].to_numpy(dtype=float) for c in ("value", "low", "high"))
    families = rows["family"].fillna("other").to_numpy()
    for family in dict.fromkeys(families):
        sel = families == family
        color = FAMILY_COLORS.get(family, "black")
        if interval and np.isfinite(low[sel]).any():
            err = np.vstack([np.clip(value[sel] - low[sel], 0, None), np.clip(high[sel] - value[sel], 0, None)])
            ax.errorbar(value[sel], y[sel], xerr=np.where(np.isfinite(err), err, 0.0), fmt="none", ecolor=color,
                        elinewidth=1.2, capsize=2, alpha=0.8)
        ax.scatter(value[sel], y[sel], color=color, marker=marker, s=22 if marker == "o" else 30, zorder=3)


def _frame(ax, title: str, ref: float | None, names: Sequence[str] | None, y: np.ndarray) -> None:
    ax.set_title(title, fontsize=9)
    if ref is not None:
        ax.axvline(ref, color="0.6", lw=0.8, ls="--", zorder=0)
    ax.set_yticks(y)
    if names is not None:
        ax.set_yticklabels(list(names), fontsize=7)
    else:
        ax.tick_params(labelleft=False)
    ax.set_ylim(len(y) - 0.5, -0.5)
    ax.grid(axis="x", color="0.9", lw=0.6)
    ax.tick_params(axis="x", labelsize=7)


def _legend(fig: Figure, families: Sequence[str], sign_error: bool = True) -> None:
    handles = [Line2D([], [], ls="", marker="o", color=FAMILY_COLORS.get(f, "black"), label=f)
               for f in dict.fromkeys(families)]
    if sign_error:
        handles.append(Line2D([], [], ls="", marker="x", color="black", label="worst case (sign error)"))
    fig.legend(handles=handles, loc="outside lower center", ncol=min(len(handles), 6), fontsize=8, frameon=False)


def _families(table: pd.DataFrame, order: Sequence[str]) -> list[str]:
    return list(table.drop_duplicates("measure").set_index("measure")["family"].reindex(list(order)).fillna("other"))


def _height(n: int) -> float:
    return 1.6 + 0.24 * max(n, 3)


def draw_ranking(table: pd.DataFrame, order: Sequence[str], title: str) -> Figure:
    """Tau, Psi, the CMI and the sign error of every measure, in ``order`` from the top."""
    fig = Figure(figsize=(13, _height(len(order))), layout="constrained")
    axes = fig.subplots(1, len(PANELS), sharey=True)
    y = np.arange(len(order))
    for p, (ax, (coefficient, label, ref, limits)) in enumerate(zip(axes, PANELS)):
        rows = _rows(table, coefficient, "all", order)
        _bars(ax, rows, y)
        if limits is None:
            top = np.nanmax(rows[["value", "high"]].to_numpy(dtype=float), initial=0.0)
            limits = (-0.01 * min(max(0.1, 1.15 * top), 1.03), min(max(0.1, 1.15 * top), 1.03))
        if coefficient == "sign_error_mean":
            _bars(ax, _rows(table, "sign_error_max", "all", order), y, marker="x", interval=False)
        ax.set_xlim(*limits)
        _frame(ax, label, ref, order if p == 0 else None, y)
    _finish(fig, title, _families(table, order))
    return fig


def _finish(fig: Figure, title: str, families: Sequence[str]) -> None:
    fig.suptitle(title, fontsize=10)
    _legend(fig, families)


def draw_ranking_axes(table: pd.DataFrame, order: Sequence[str], axes_names: Sequence[str], title: str) -> Figure:
    """Per axis: the granulated psi_a (top row) and the sign error, mean and worst (bottom row)."""
    k = max(len(axes_names), 1)
    fig = Figure(figsize=(3.2 * k + 1.6, 2 * _height(len(order)) - 1.0), layout="constrained")
    grid = np.atleast_2d(fig.subplots(2, k, sharey=True)).reshape(2, k)
    y = np.arange(len(order))
    for a, name in enumerate(axes_names):
        _bars(grid[0, a], _rows(table, "granulated", name, order), y)
        _frame(grid[0, a], f"psi along {name}", 0.0, order if a == 0 else None, y)
        grid[0, a].set_xlim(-1.05, 1.05)
        _bars(grid[1, a], _rows(table, "sign_error_mean", name, order), y)
        _bars(grid[1, a], _rows(table, "sign_error_max", name, order), y, marker="x", interval=False)
        _frame(grid[1, a], f"sign error along {name}", 0.5, order if a == 0 else None, y)
        grid[1, a].set_xlim(-0.03, 1.03)
    _finish(fig, title, _families(table, order))
    return fig
