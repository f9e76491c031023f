"""The edge-of-stability figures, drawn from the curvature-spectrum columns of the train rows.

stability   one column of panels per learning rate: lambda_max(H) (``hessian_max``, solid) and batch
            sharpness (``batch_sharpness``, dashed) against iteration, one colour per batch size,
            with the 2/eta line (Cohen et al. 2021; Andreyev & Beneventano 2024); below, the
            non-uniformity against iteration with each batch size's sqrt(B)/eta line (Ma & Ying 2021).
            Under a learning-rate schedule eta is the rate at each checkpoint (``lr_now``): the lines
            follow it, one per run
spectrum    one heat map per run: the SLQ Hessian density (``hessian_density``) over training,
            iteration x eigenvalue bin (symmetric log grid), log colour, with the 2/eta line (following
            ``lr_now`` under a schedule)
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from sharpcomp.figures.context import Context, dedupe, pair_text, say_written, split_runs, train_runs
from sharpcomp.figures.tables import RUN, VARIANT_COLUMNS, fmt
from sharpcomp.figures.text import chars_per_inch, wrap
from sharpcomp.results.density_bins import DENSITY_EDGES

STABILITY_COLUMNS = ("hessian_max", "batch_sharpness", "nonuniformity")
# one figure per value of these (lr and batch are drawn within a figure, seeds as separate lines)
SPLIT_FIELDS = ("data", "model", *(c for c in VARIANT_COLUMNS if c not in ("data", "model", "lr", "batch", "seed")))
_COLOURS = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown")


def _with_run(frame: pd.DataFrame) -> pd.DataFrame:
    """Rows as read by read_metrics (run_id) or as the figures command prepares them (its run column)."""
    return frame if RUN in frame.columns else frame.assign(**{RUN: frame["run_id"]})


def _train_rows(frame: pd.DataFrame, col: str) -> pd.DataFrame:
    rows = frame[(frame["sample_set"] == "train")]
    if col not in rows.columns:
        return rows.iloc[0:0]
    return rows[rows[col].notna()].sort_values("iteration")


_NAMES = {"hessian_max": "lambda_max", "batch_sharpness": "batch sharpness", "nonuniformity": "non-uniformity"}
# what each panel draws: (column, row, line style)
_SERIES = (("hessian_max", 0, "-"), ("batch_sharpness", 0, "--"), ("nonuniformity", 1, "-"))


def _style_legend(fig: Figure, colour: dict) -> None:
    """One legend for the whole figure, below the panels: a colour per batch size, a line style per
    quantity (long handles, so that dashes read as dashes)."""
    handles = [Line2D([], [], color=c, lw=2.2) for c in colour.values()]
    labels = [f"batch {b}" for b in colour]
    handles += [Line2D([], [], color="k", ls="-", lw=1.4), Line2D([], [], color="k", ls="--", lw=1.4),
                Line2D([], [], color="k", ls=":", lw=1.4)]
    labels += ["lambda_max (top), non-uniformity (bottom)", "batch sharpness (top)",
               "2/eta (top), sqrt(B)/eta (bottom, the batch's colour)"]
    column = 0.7 + chars_per_inch(8) ** -1 * max(len(t) for t in labels)  # handle, padding and text (inches)
    fig.legend(handles, labels, loc="outside lower center", ncol=max(1, min(3, int(fig.get_figwidth() // column))),
               fontsize=8, handlelength=3.5, frameon=False)


def stability_figure(frame: pd.DataFrame, title: str | None = None) -> tuple[Figure, pd.DataFrame]:
    """The stability figure of the runs in ``frame`` (rows of metrics.parquet) and its lines as a table
    (run, lr, batch, iteration, column, value)."""
    frame = _with_run(frame)
    lrs = sorted({float(v) for v in frame["lr"]})
    batches = sorted({int(v) for v in frame["batch"]})
    colour = {b: _COLOURS[i % len(_COLOURS)] for i, b in enumerate(batches)}
    fig = Figure(figsize=(max(4.2 * len(lrs), 8.4), 7.0), layout="constrained")
    axes = fig.subplots(2, len(lrs), squeeze=False)
    table = []
    for j, lr in enumerate(lrs):
        top, bottom = axes[0, j], axes[1, j]
        panel = frame[frame["lr"].astype(float) == lr]
        scheduled = _scheduled(panel, lr)
        if not scheduled:
            top.axhline(2 / lr, color="k", ls=":", lw=1.4, label="2/eta")
        for run, rows in panel.groupby(RUN, sort=True):
            b = int(rows["batch"].iloc[0])
            eta = _eta(rows) if scheduled else None
            if eta is not None:
                top.plot(eta.index, 2 / eta.values, color="k", ls=":", lw=1.4, label="2/eta (scheduled)")
            for col, row, ls in _SERIES:
                r = _train_rows(rows, col)
                if r.empty:
                    continue
                axes[row, j].plot(r["iteration"], r[col].astype(float), ls=ls, color=colour[b], marker=".", ms=3,
                                  label=f"{_NAMES[col]}, batch {b}")
                table.append(pd.DataFrame({"run": run, "lr": lr, "batch": b, "iteration": r["iteration"].values,
                                           "column": col, "value": r[col].astype(float).values}))
            if eta is not None:
                bottom.plot(eta.index, math.sqrt(b) / eta.values, color=colour[b], ls=":", lw=1.4,
                            label=f"sqrt(B)/eta, batch {b}")
            else:
                bottom.axhline(math.sqrt(b) / lr, color=colour[b], ls=":", lw=1.4, label=f"sqrt(B)/eta, batch {b}")
        top.set_title(f"lr {fmt(lr)}, scheduled (2/eta at the peak = {fmt(2 / lr)})" if scheduled else
                      f"lr {fmt(lr)}  (2/eta = {fmt(2 / lr)})", fontsize=9)
        top.set_ylabel("top curvature")
        bottom.set_ylabel("non-uniformity")
        for ax in (top, bottom):
            ax.set_xlabel("iteration")
            ax.grid(alpha=0.3)
    _style_legend(fig, colour)
    if title:
        fig.suptitle(wrap(title, fig.get_figwidth() - 0.3, 9), fontsize=9)
    lines = pd.concat(table, ignore_index=True) if table else pd.DataFrame(
        columns=["run", "lr", "batch", "iteration", "column", "value"])
    return fig, lines


def _eta(rows: pd.DataFrame) -> pd.Series | None:
    """A run's learning rate at each checkpoint (iteration -> ``lr_now``), None when it holds none."""
    if "lr_now" not in rows.columns:
        return None
    eta = rows[rows["lr_now"].notna()].drop_duplicates("iteration").set_index("iteration")["lr_now"].astype(float)
    eta = eta[eta > 0].sort_index()
    return eta if len(eta) else None


def _scheduled(rows: pd.DataFrame, lr: float) -> bool:
    """Whether any run of a panel took a rate other than its ``lr`` at a checkpoint."""
    return "lr_now" in rows.columns and bool((rows["lr_now"].dropna().astype(float) != lr).any())


def _density_matrix(rows: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    its = rows["iteration"].to_numpy()
    mat = np.stack([np.asarray(v, dtype=float) for v in rows["hessian_density"]])
    return its, mat


def _checkpoint_edges(its: np.ndarray) -> np.ndarray:
    """Cell edges along iteration: each checkpoint's cell reaches halfway to its neighbours, and the
    first and last cells end at the first and last checkpoints (the axis spans the run, no further)."""
    its = np.asarray(its, dtype=float)
    if len(its) == 1:
        return np.array([its[0] - 0.5, its[0] + 0.5])
    return np.concatenate([[its[0]], (its[1:] + its[:-1]) / 2, [its[-1]]])


def _bin_position(value: float) -> float:
    """Where a positive eigenvalue lies on the heat map's axis (bin indices; bin i spans i - 0.5 .. i + 0.5)."""
    k = int(np.searchsorted(DENSITY_EDGES, 0.0, side="right"))  # the first positive edge
    step = math.log10(DENSITY_EDGES[k + 1] / DENSITY_EDGES[k])
    return k - 0.5 + math.log10(max(value, DENSITY_EDGES[k]) / DENSITY_EDGES[k]) / step


def _eigenvalue_ticks(span: tuple[float, float]) -> tuple[list[float], list[str]]:
    """Ticks at 0 and at +-10^k (every decade, or every other one on a tall span) within ``span``."""
    middle = int(np.searchsorted(DENSITY_EDGES, 0.0)) - 1  # the bin around zero
    decades = sorted({round(math.log10(abs(e))) for e in DENSITY_EDGES[1:-1]})[1:]  # 10^-4 sits beside 0
    every = 1 if span[1] - span[0] <= 90 else 2
    pos, text = [float(middle)], ["0"]
    for k in decades[::-1 if every == 1 else -every]:
        for sign in (-1, 1):
            i = int(np.flatnonzero(np.isclose(DENSITY_EDGES, sign * 10.0 ** k))[0])
            if span[0] <= i - 0.5 <= span[1]:
                pos.append(i - 0.5)
                text.append(f"${'-' if sign < 0 else ''}10^{{{k}}}$")
    return pos, text


def spectrum_figure(frame: pd.DataFrame, title: str | None = None) -> tuple[Figure, pd.DataFrame]:
    """One heat map per run of the SLQ density over training (iteration x eigenvalue bin, one log colour
    scale for all, one colour bar) and the densities as a long table (run, iteration, bin_low, bin_high, mass)."""
    frame = _with_run(frame)
    runs = [(run, _train_rows(rows, "hessian_density")) for run, rows in frame.groupby(RUN, sort=True)]
    runs = [(run, rows, *_density_matrix(rows)) for run, rows in runs if len(rows)]
    cols = min(3, max(1, len(runs)))
    nrows = max(1, math.ceil(len(runs) / cols))
    fig = Figure(figsize=(max(4.4 * cols + 1.0, 6.0), 3.4 * nrows + 0.8), layout="constrained")
    axes = fig.subplots(nrows, cols, squeeze=False).ravel()
    nbins = len(DENSITY_EDGES) - 1
    positive = np.concatenate([m[m > 0] for *_, m in runs]) if runs else np.array([])
    filled = np.flatnonzero(np.any([np.any(m > 0, axis=0) for *_, m in runs], axis=0)) if runs else np.array([0])
    span = (max(filled.min() - 2, 0) - 0.5, min(filled.max() + 2, nbins - 1) + 0.5)
    norm = LogNorm(vmin=max(positive.min(), 1e-6), vmax=positive.max()) if positive.size else None
    ticks = _eigenvalue_ticks(span)
    table, image = [], None
    for ax, (run, rows, its, mat) in zip(axes, runs):
        if norm is None or not (mat > 0).any():
            ax.set_axis_off()
            continue
        image = ax.pcolormesh(_checkpoint_edges(its), np.arange(nbins + 1) - 0.5, np.where(mat > 0, mat, np.nan).T,
                              norm=norm, cmap="viridis", shading="flat")
        lr = float(rows["lr"].iloc[0])
        eta = _eta(rows) if _scheduled(rows, lr) else None
        if eta is None:
            ax.axhline(_bin_position(2 / lr), color="red", ls="--", lw=1.6)
        else:  # the rate at each checkpoint: the line follows the schedule
            ax.plot(eta.index, [_bin_position(2 / e) for e in eta.to_numpy()], color="red", ls="--", lw=1.6)
        ax.set_yticks(*ticks, fontsize=7)
        ax.set_ylim(*span)
        if len(its) > 1:
            ax.set_xlim(its[0], its[-1])
        ax.set_title(f"lr {fmt(lr)}, batch {fmt(rows['batch'].iloc[0])}", fontsize=8)
        ax.set_xlabel("iteration")
        ax.set_ylabel("Hessian eigenvalue")
        table += [pd.DataFrame({"run": run, "iteration": it, "bin_low": DENSITY_EDGES[:-1],
                                "bin_high": DENSITY_EDGES[1:], "mass": m}) for it, m in zip(its, mat)]
    for ax in axes[len(runs):]:
        ax.set_axis_off()
    if image is not None:
        fig.colorbar(image, ax=list(axes), label="density mass (per bin)", shrink=0.7, aspect=30)
        fig.legend([Line2D([], [], color="red", ls="--", lw=1.6)], ["2/eta, the stability threshold of the run's lr"],
                   loc="outside lower center", fontsize=8, handlelength=3.5, frameon=False)
    if title:
        fig.suptitle(wrap(title, fig.get_figwidth() - 0.3, 9), fontsize=9)
    out = pd.concat(table, ignore_index=True) if table else pd.DataFrame(
        columns=["run", "iteration", "bin_low", "bin_high", "mass"])
    return fig, out


def _runs_with(ctx: Context, fig_id: str, cols, need: str) -> pd.DataFrame:
    sel = train_runs(ctx)
    train = ctx.frame[ctx.frame["sample_set"] == "train"]
    cols = [c for c in cols if c in train.columns]
    if not cols or sel.empty:
        ctx.say(fig_id, need)
        return sel.iloc[0:0]
    has = train[cols].notna().any(axis=1).groupby(train[RUN]).any()
    sel = sel[sel[RUN].map(has).fillna(False).astype(bool)]
    if sel.empty:
        ctx.say(fig_id, need)
    return sel


def _make(ctx: Context, fig_id: str, columns: Sequence[str], need: str, what: str, draw, detail) -> None:
    """One figure per (data, model, ...) group of the runs that have ``columns``."""
    sel = _runs_with(ctx, fig_id, columns, need)
    if sel.empty:
        return
    sel = dedupe(ctx, fig_id, sel)
    for name, runs in split_runs(sel, fig_id, SPLIT_FIELDS):
        frame = ctx.frame[ctx.frame[RUN].isin(runs[RUN])]
        fig, table = draw(frame, f"{name}: {pair_text(runs)}; {what}")
        say_written(ctx, name, ctx.save(name, fig, {"": table}), detail(runs))


def make_stability(ctx: Context, fig_id: str) -> None:
    """lambda_max, batch sharpness and non-uniformity against 2/lr, one figure per group of runs."""
    _make(ctx, fig_id, STABILITY_COLUMNS,
          "skipped, needs runs with metrics.flatness.hessian_max, batch_sharpness or nonuniformity",
          "lambda_max, batch sharpness and non-uniformity against their thresholds", stability_figure,
          lambda runs: f"{len(runs)} runs; lr {', '.join(sorted({fmt(v) for v in runs['lr']}))}")


def make_spectrum(ctx: Context, fig_id: str) -> None:
    """The Hessian's spectral density over training, one figure per group of runs."""
    _make(ctx, fig_id, ("hessian_density",), "skipped, needs runs with metrics.flatness.hessian_density",
          "Hessian spectral density (SLQ) over training", spectrum_figure, lambda runs: f"{len(runs)} runs")
