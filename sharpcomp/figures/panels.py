"""Figure functions: a frame of checkpoint rows (or per-run summaries) -> a matplotlib Figure.

The panels of each standard figure and the quantities of the correlation figures are named here."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from sharpcomp.figures.draw import Panel, draw_trend, short
from sharpcomp.figures.scatter import draw_correlation
from sharpcomp.figures.tables import (
    RUN,
    SQRT_S,
    VARIANT_COLUMNS,
    correlation_table,
    prepare,
    run_info,
    trend_lines,
    trend_se,
    variant_key,
    variant_value,
)
from sharpcomp.results.columns import FLATNESS_MEASURES, measure_values, se_column

TREND_PANELS = ("train_loss_running", "test_acc", SQRT_S, "log_volume", "G", "local_dim")
FIG3_PANELS = (
    "train_loss_running",
    Panel(("test_loss", "sample_loss"), ylabel="test loss (whole test set; on the sample points)",
          groups=("all", "test", "misclassified")),
    SQRT_S, "log_volume", "G", "local_dim",
)
BOUND_COLUMNS = ("mls", "bound_b", "bound_c", "bound_d")
CORRELATION_COLUMNS = ("local_dim", SQRT_S, "log_volume", "G", "mls", "test_loss")
# Flatness measures added to the correlation figures when every run of the figure has them (the
# /(1 + L) variants, standard errors and the trace gap are in the per-run CSV only).
FLATNESS_CORRELATION_COLUMNS = FLATNESS_MEASURES
# The overview figure draws at most this many runs (one line each).
RUNS_CAP = 20
# Flatness lines: one per value of the first of these that varies (several: per combination).
FLATNESS_GROUPINGS = ("optim", "lr", "batch")


# --------------------------------------------------------------------------------------------
# Public figure functions (each returns a matplotlib Figure)
# --------------------------------------------------------------------------------------------

def trend_figure(
    frame: pd.DataFrame,
    by: str = "lr",
    panels: Sequence = TREND_PANELS,
    *,
    sample_set: str = "train",
    band: str = "minmax",
    title: str | None = None,
) -> Figure:
    """Quantities against iteration, one line per value of ``by`` (mean over the runs sharing it,
    band = spread). ``panels``: column names, tuples of columns (one axis) or :class:`Panel`."""
    fig, _, _ = trend(frame, by, panels, sample_set=sample_set, band=band, title=title)
    return fig


def sample_set_figure(frame: pd.DataFrame, panels: Sequence = FIG3_PANELS, *, band: str = "minmax",
                      title: str | None = None) -> Figure:
    """fig3: one line per sample set (train / test / misclassified) on the same runs."""
    return trend_figure(frame, by="sample_set", panels=panels, band=band, title=title)


def bound_figure(frame: pd.DataFrame, *, band: str = "minmax", title: str | None = None) -> Figure:
    """figD4: mls, bound_b, bound_c, bound_d (mean over the runs of ``frame``) on one log axis."""
    fig, _, _ = trend(frame, None, [bound_panel()], band=band, title=title)
    return fig


def correlation_figure(summary: pd.DataFrame, columns: Sequence[str] = CORRELATION_COLUMNS, *,
                       title: str | None = None) -> Figure:
    """Scatter matrix of ``columns`` over the runs of ``summary`` (from :func:`run_summary`),
    Pearson r in every off-diagonal panel, points coloured by (lr, batch)."""
    return draw_correlation(summary, columns, correlation_table(summary, columns), title=title)


def flatness_figure(frame: pd.DataFrame, by: str | None = None, *, band: str = "minmax",
                    title: str | None = None) -> Figure:
    """Flatness measures (:func:`flatness_panels` that have values: sqrt(S), Tr H and Tr(PHP) with their
    standard errors as error bars, worst-case / adaptive / quotient worst-case sharpness, gradient
    disagreement, Fisher trace) against iteration, mean over seeds with a band. Measures with their
    own cadence are drawn through the checkpoints that have them (a marker at each).
    ``by``: one line per value of this column; default the first of optim, lr, batch that varies
    over the runs (several vary: one line per combination, column ``setting``)."""
    fig, _, _, _ = flatness_trend(frame, by, band=band, title=title)
    return fig


def runs_figure(frame: pd.DataFrame, *, band: str = "minmax", title: str | None = None,
                cap: int = RUNS_CAP) -> Figure:
    """Overview: the six standard trend panels, one line per run (labelled by lr, batch, seed and
    whatever else differs between the runs), at most ``cap`` runs (the first in that order)."""
    fig, _, _, _ = runs_trend(frame, band=band, title=title, cap=cap)
    return fig


def flatness_panels(frame: pd.DataFrame) -> list[Panel]:
    """The flatness figure's panels: sqrt(S), then every measure value the records carry
    (:func:`sharpcomp.results.columns.measure_values`: the built-in measures' values, then the numeric columns
    of measures of one's own), with their standard errors as error bars; those with values are drawn."""
    return [Panel.of(SQRT_S), *(Panel((m,), se=se_column(m, frame.columns), markers=True)
                                for m in measure_values(frame))]


def bound_panel() -> Panel:
    return Panel(BOUND_COLUMNS, ylabel="MLS (Eq. 13) and bounds b, c, d (Eq. 28)", log=True)


def trend(frame, by, panels, *, sample_set="train", band="minmax", title=None, order=None, counts=True,
           figure_legend=False):
    """Lines and figure. ``order``: the group values in the order to draw them (default sorted);
    ``counts``: say how many runs each line averages in the legend."""
    frame = prepare(frame)
    panels = [Panel.of(p) for p in panels]
    columns = list(dict.fromkeys(c for p in panels for c in p.columns))
    lines = trend_lines(frame, by, columns, sample_set=sample_set)
    key = "group" if by is None else by
    se = [trend_se(frame, by, p.columns[0], p.se, sample_set).assign(column=p.columns[0])
          for p in panels if p.se and p.columns[0] in columns]
    se = [t for t in se if len(t)]
    if se and len(lines):
        lines = lines.merge(pd.concat(se, ignore_index=True), on=[key, "column", "iteration"], how="left")
    if order is not None and len(lines):
        rank = {v: i for i, v in enumerate(order)}
        col_rank = {c: i for i, c in enumerate(columns)}
        pos = np.lexsort((lines[key].map(rank).to_numpy(dtype=float), lines["column"].map(col_rank).to_numpy()))
        lines = lines.iloc[pos].reset_index(drop=True)
    runs_per_group = None
    if counts and by not in (None, "sample_set") and by in frame.columns:
        runs_per_group = frame.groupby(by)[RUN].nunique().to_dict()
    fig, empty = draw_trend(lines, key, panels, band=band, title=title, runs_per_group=runs_per_group,
                            figure_legend=figure_legend)
    return fig, lines, empty


def has_values(frame: pd.DataFrame, column: str, sample_set: str = "train") -> bool:
    if column not in frame.columns:
        return False
    return bool(frame.loc[frame["sample_set"] == sample_set, column].notna().any())


def label_column(frame: pd.DataFrame, info: pd.DataFrame, name: str, fields: Sequence[str]) -> tuple:
    """Add column ``name`` to ``frame``: each run's ``fields`` as text ("lr 0.1, batch 20"); returns
    the frame and the labels in the order of ``info`` (one row per run)."""
    labels = info.apply(lambda r: ", ".join(f"{f} {variant_value(f, r[f])}" for f in fields), axis=1)
    frame = frame.assign(**{name: frame[RUN].map(dict(zip(info[RUN], labels)))})
    return frame, list(dict.fromkeys(labels))


def sorted_info(frame: pd.DataFrame) -> pd.DataFrame:
    info = run_info(frame)
    variant = info.apply(lambda r: str(variant_key(r)), axis=1)
    return info.assign(_v=variant).sort_values(["_v", "optim", "lr", "batch", "seed", RUN]).drop(columns="_v")


def flatness_grouping(info: pd.DataFrame) -> tuple[str, tuple]:
    """The flatness figure's lines: (column, ()) when one of optim, lr, batch varies over the runs,
    else ("setting", the fields that make its labels)."""
    varying = tuple(f for f in FLATNESS_GROUPINGS if len({variant_value(f, v) for v in info[f]}) > 1)
    if len(varying) == 1:
        return varying[0], ()
    return "setting", varying or ("lr", "batch")


def error_bar_columns(frame: pd.DataFrame) -> list[str]:
    """The measures whose panels carry error bars in these rows: those with standard errors on their train
    rows (a built-in measure's declared one, or ``<value>_se`` of a measure of one's own)."""
    frame = prepare(frame)
    train = frame[frame["sample_set"] == "train"]
    bars = []
    for c in measure_values(train):
        se = se_column(c, train.columns)
        if se is not None and train.loc[train[c].notna(), se].notna().any():
            bars.append(c)
    return bars


def error_bar_text(frame: pd.DataFrame) -> str:
    """What the flatness figure's error bars are, named from the measures that have them."""
    cols = error_bar_columns(frame)
    if not cols:
        return "no error bars (no measure here reports a standard error)"
    return f"error bars: one standard error of {', '.join(short(c) for c in cols)}"


def flatness_trend(frame, by=None, *, band="minmax", title=None):
    frame = prepare(frame)
    panels = [p for p in flatness_panels(frame) if has_values(frame, p.columns[0])]
    info = sorted_info(frame)
    order = None
    if by is None:
        by, fields = flatness_grouping(info)
        if fields:
            frame, order = label_column(frame, info, by, fields)
    fig, lines, empty = trend(frame, by, panels or [SQRT_S], band=band, title=title, order=order,
                              figure_legend=len(info) > 3)
    return fig, lines, empty, by


def runs_trend(frame, *, band="minmax", title=None, cap=RUNS_CAP):
    frame = prepare(frame)
    info = sorted_info(frame)
    shown = info.head(cap)
    differ = [c for c in VARIANT_COLUMNS if len({variant_value(c, v) for v in info[c]}) > 1]
    frame, order = label_column(frame[frame[RUN].isin(shown[RUN])], shown, "run",
                                 ("lr", "batch", "seed", *differ))
    fig, lines, empty = trend(frame, "run", TREND_PANELS, band=band, title=title, order=order, counts=False,
                               figure_legend=len(order) > 6)
    return fig, lines, empty, shown
