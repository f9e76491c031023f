"""The figures stage: sweep results (``metrics.parquet`` files) -> the study's figures.

Command line (``sharpcomp figures`` calls :func:`main`)::

    sharpcomp figures [RESULT_DIRS ...] [--out DIR] [--last-fraction 0.2] [--formats png,pdf]
                      [--only fig1,figD5] [--band minmax|std|none] [--by KEY]

- ``RESULT_DIRS`` (default ``outputs``): searched recursively for ``metrics.parquet``, so single
  runs, multirun folders and copies from a cluster all work. A file that cannot be read is skipped
  with a line; when nothing can be read, one error line on stderr and exit status 1.
- ``--out`` (default ``<first RESULT_DIR>/figures``): for each figure ``<id>.png``, ``<id>.pdf`` and
  CSVs of the numbers drawn: trend figures ``<id>.csv`` (per group, column and iteration: mean over
  runs, std, min, max, number of runs; the flatness figure adds ``se``, the standard error of the
  lines drawn with error bars) and ``<id>_runs.csv`` (per-run summary: identity, progress, mean of
  every quantity over the last ``--last-fraction`` of checkpoints); correlation figures
  ``<id>.csv`` (the per-run points) and ``<id>_pearson.csv`` (Pearson r, p-value and n per pair).
  A folder that cannot be written (or a file given as ``--out``): one error line, exit status 2.
- The CSVs' ``_run`` column names each run by its folder relative to the RESULT_DIR it was found
  under (with several RESULT_DIRs, prefixed by that folder's name), never by an absolute path.
- ``--by KEY``: a swept config key, dotted as in the run's settings (``model.width``, ``optim.rho``,
  ``metrics.layer``, ``lr``; the flat identity names ``width``, ``optim`` ... work too). The ``sweep``
  and ``sweep_correlation`` figures then draw one line / colour per value of it. Read from each run's
  ``settings`` column, or for older files from the identity columns; a key no run has: one error
  line, exit status 2.
- One line per figure written and one per thing skipped or worth knowing (a figure the results do
  not allow, a diverged run, an empty panel, a duplicate run). Exit status 0 when the results were
  read, even when they allow no figure (every skip is printed).

What each figure needs (SPEC, "Figures"); runs must have the ``train`` sample set unless noted:

==========  ===========================================================================
fig1        vgg10 / cifar10_2class at batch 20 with >= 2 learning rates (SPEC: 0.05, 0.1, 0.2)
fig2        vgg10 / cifar10_2class at lr 0.1 with >= 2 batch sizes (SPEC: 8, 20, 32)
figE7       mlp4 / fashion_mnist at lr 0.1 with >= 2 batch sizes
figE8       mlp4 / fashion_mnist at batch 20 with >= 2 learning rates
fig3        vgg10 / cifar10_2class at lr 0.1, batch 20 with the ``test`` or ``misclassified`` set
figD4       mlp4 / fashion_mnist runs with bound values (the lr 0.1 / batch 20 setting when
            present, else the setting with most runs)
figD5       >= 3 vgg10 / cifar10_2class runs (any lr / batch; SPEC's grid has 20)
figD6       >= 3 mlp4 / fashion_mnist runs
==========  ===========================================================================

Beyond SPEC's table, drawn from whatever results exist (any data / model; one figure per (data,
model) pair and experiment, named ``<id>-<differing values>`` when there are several):

==========  ===========================================================================
flatness    runs with optional flatness measures (``metrics.flatness``, issue 5) on their
            train rows: panels for those with values among sqrt(S), Tr H and Tr(PHP) (Hutchinson
            standard error as error bars), worst-case, adaptive and quotient worst-case
            sharpness, gradient disagreement and Fisher trace; one line per optim, lr or batch,
            whichever varies (several: one per combination)
sam_vs_sgd  runs that differ only in ``optim`` (sgd vs sam; same data, model, lr, batch, scale,
            ...): the six standard trend panels, one line per optimiser
runs        any run with the train sample set (e.g. a single ``make demo`` run): the six
            standard trend panels, one line per run (lr, batch, seed), at most 20 (said when
            capped)
sweep       with ``--by KEY``, any run with the train sample set: the six standard trend panels,
            one line per value of KEY (mean over seeds, band); one figure per value of every other
            config key that differs (named ``sweep-KEY-<key>-<value>``): KEY never splits a figure.
            ``sweep_correlation``: >= 3 such runs, figD5's scatter matrix with the points
            coloured by KEY (lr and batch pooled as in figD5; any other differing key splits)
==========  ===========================================================================

Conventions:

- Trend figures: x = iteration; one line per lr / batch size (per sample set for fig3), the mean
  over the runs (seeds) that reached that checkpoint, with a band for their spread (``--band``,
  default min to max). Train loss is ``train_loss_running`` (the running mean of minibatch losses,
  present at every checkpoint: what the reference code plots); the whole-set ``train_loss`` is in
  the CSVs. Sharpness is drawn as sqrt(S). Metric panels use the ``train`` sample set.
- A figure never mixes experiments: runs that differ in scale, loss, optimiser, width, outputs or
  data source (the folder it was read from aside) are drawn as separate figures named
  ``<id>-<field>-<value>``. The same setting found twice (e.g. by two sweeps) is used once: the run
  that got furthest.
- Diverged and failed runs are drawn up to their last finite checkpoint in trend figures and left
  out of correlation figures. Correlation figures also leave out runs still running that are behind
  the furthest run of their figure (their "end of training" is not there yet).
- Correlation figures: one point per run = its mean over the last ``--last-fraction`` (default
  0.2) of its checkpoints, missing values skipped; sqrt(S) is averaged per checkpoint. The flatness
  measures (``FLATNESS_CORRELATION_COLUMNS``) are added as quantities when every run of the figure
  has them; their /(1 + L) variants, standard errors and the trace gap are in the per-run CSV.
- Flatness measures have their own cadence (``metrics.flatness_every``): lines go through the
  checkpoints that have them (a marker on each), and a run's summary value is the mean over the
  last ``--last-fraction`` of those checkpoints.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from sharpcomp._figures_data import (
    RUN,
    SQRT_S,
    VARIANT_COLUMNS,
    correlation_table,
    dedupe_runs,
    describe,
    fmt,
    load_results,
    prepare,
    run_info,
    run_summary,
    same,
    trend_lines,
    trend_se,
    variant_key,
    variant_value,
)
from sharpcomp._figures_draw import BANDS, Panel, draw_correlation, draw_trend
from sharpcomp._figures_keys import key_table, ordered, resolve, value_text
from sharpcomp.columns import FLATNESS_COLUMNS, FLATNESS_MEASURES, FLATNESS_SE
from sharpcomp.records import RecordError

__all__ = [
    "ALL_FIGURE_IDS", "BOUND_COLUMNS", "CORRELATION_COLUMNS", "EXTRA_FIGURE_IDS", "FIGURES", "FIG3_PANELS",
    "FLATNESS_COLUMNS", "FLATNESS_CORRELATION_COLUMNS", "FLATNESS_PANELS", "Panel", "RUNS_CAP", "TREND_PANELS",
    "bound_figure", "correlation_figure", "correlation_table", "flatness_figure", "load_results", "main",
    "run_summary", "runs_figure", "sample_set_figure", "trend_figure", "trend_lines",
]

TREND_PANELS = ("train_loss_running", "test_acc", SQRT_S, "log_volume", "G", "local_dim")
FIG3_PANELS = (
    "train_loss_running",
    Panel(("test_loss", "sample_loss"), ylabel="test loss (whole test set; on the sample points)",
          groups=("all", "test", "misclassified")),
    SQRT_S, "log_volume", "G", "local_dim",
)
BOUND_COLUMNS = ("mls", "bound_b", "bound_c", "bound_d")
CORRELATION_COLUMNS = ("local_dim", SQRT_S, "log_volume", "G", "mls", "test_loss")
# The flatness figure's panels, those with values are drawn (issue 5; standard errors as error bars).
FLATNESS_PANELS = (SQRT_S, *(Panel((m,), se=FLATNESS_SE.get(m), markers=True) for m in FLATNESS_MEASURES))
# Flatness measures added to the correlation figures when every run of the figure has them (the
# /(1 + L) variants, standard errors and the trace gap are in the per-run CSV only).
FLATNESS_CORRELATION_COLUMNS = FLATNESS_MEASURES
# The overview figure draws at most this many runs (one line each).
RUNS_CAP = 20
# Flatness lines: one per value of the first of these that varies (several: per combination).
_FLATNESS_GROUPINGS = ("optim", "lr", "batch")


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
    fig, _, _ = _trend(frame, by, panels, sample_set=sample_set, band=band, title=title)
    return fig


def sample_set_figure(frame: pd.DataFrame, panels: Sequence = FIG3_PANELS, *, band: str = "minmax",
                      title: str | None = None) -> Figure:
    """fig3: one line per sample set (train / test / misclassified) on the same runs."""
    return trend_figure(frame, by="sample_set", panels=panels, band=band, title=title)


def bound_figure(frame: pd.DataFrame, *, band: str = "minmax", title: str | None = None) -> Figure:
    """figD4: mls, bound_b, bound_c, bound_d (mean over the runs of ``frame``) on one log axis."""
    fig, _, _ = _trend(frame, None, [_bound_panel()], band=band, title=title)
    return fig


def correlation_figure(summary: pd.DataFrame, columns: Sequence[str] = CORRELATION_COLUMNS, *,
                       title: str | None = None) -> Figure:
    """Scatter matrix of ``columns`` over the runs of ``summary`` (from :func:`run_summary`),
    Pearson r in every off-diagonal panel, points coloured by (lr, batch)."""
    return draw_correlation(summary, columns, correlation_table(summary, columns), title=title)


def flatness_figure(frame: pd.DataFrame, by: str | None = None, *, band: str = "minmax",
                    title: str | None = None) -> Figure:
    """Flatness measures (``FLATNESS_PANELS`` that have values: sqrt(S), Tr H and Tr(PHP) with their
    standard errors as error bars, worst-case / adaptive / quotient worst-case sharpness, gradient
    disagreement, Fisher trace) against iteration, mean over seeds with a band. Measures with their
    own cadence are drawn through the checkpoints that have them (a marker at each).
    ``by``: one line per value of this column; default the first of optim, lr, batch that varies
    over the runs (several vary: one line per combination, column ``setting``)."""
    fig, _, _, _ = _flatness_trend(frame, by, band=band, title=title)
    return fig


def runs_figure(frame: pd.DataFrame, *, band: str = "minmax", title: str | None = None,
                cap: int = RUNS_CAP) -> Figure:
    """Overview: the six standard trend panels, one line per run (labelled by lr, batch, seed and
    whatever else differs between the runs), at most ``cap`` runs (the first in that order)."""
    fig, _, _, _ = _runs_trend(frame, band=band, title=title, cap=cap)
    return fig


def _bound_panel() -> Panel:
    return Panel(BOUND_COLUMNS, ylabel="MLS (Eq. 13) and bounds b, c, d (Eq. 28)", log=True)


def _trend(frame, by, panels, *, sample_set="train", band="minmax", title=None, order=None, counts=True,
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


def _has_values(frame: pd.DataFrame, column: str, sample_set: str = "train") -> bool:
    if column not in frame.columns:
        return False
    return bool(frame.loc[frame["sample_set"] == sample_set, column].notna().any())


def _label_column(frame: pd.DataFrame, info: pd.DataFrame, name: str, fields: Sequence[str]) -> tuple:
    """Add column ``name`` to ``frame``: each run's ``fields`` as text ("lr 0.1, batch 20"); returns
    the frame and the labels in the order of ``info`` (one row per run)."""
    labels = info.apply(lambda r: ", ".join(f"{f} {variant_value(f, r[f])}" for f in fields), axis=1)
    frame = frame.assign(**{name: frame[RUN].map(dict(zip(info[RUN], labels)))})
    return frame, list(dict.fromkeys(labels))


def _sorted_info(frame: pd.DataFrame) -> pd.DataFrame:
    info = run_info(frame)
    variant = info.apply(lambda r: str(variant_key(r)), axis=1)
    return info.assign(_v=variant).sort_values(["_v", "optim", "lr", "batch", "seed", RUN]).drop(columns="_v")


def _flatness_grouping(info: pd.DataFrame) -> tuple[str, tuple]:
    """The flatness figure's lines: (column, ()) when one of optim, lr, batch varies over the runs,
    else ("setting", the fields that make its labels)."""
    varying = tuple(f for f in _FLATNESS_GROUPINGS if len({variant_value(f, v) for v in info[f]}) > 1)
    if len(varying) == 1:
        return varying[0], ()
    return "setting", varying or ("lr", "batch")


def _flatness_trend(frame, by=None, *, band="minmax", title=None):
    frame = prepare(frame)
    panels = [p for p in (Panel.of(x) for x in FLATNESS_PANELS) if _has_values(frame, p.columns[0])]
    info = _sorted_info(frame)
    order = None
    if by is None:
        by, fields = _flatness_grouping(info)
        if fields:
            frame, order = _label_column(frame, info, by, fields)
    fig, lines, empty = _trend(frame, by, panels or [SQRT_S], band=band, title=title, order=order)
    return fig, lines, empty, by


def _runs_trend(frame, *, band="minmax", title=None, cap=RUNS_CAP):
    frame = prepare(frame)
    info = _sorted_info(frame)
    shown = info.head(cap)
    differ = [c for c in VARIANT_COLUMNS if len({variant_value(c, v) for v in info[c]}) > 1]
    frame, order = _label_column(frame[frame[RUN].isin(shown[RUN])], shown, "run",
                                 ("lr", "batch", "seed", *differ))
    fig, lines, empty = _trend(frame, "run", TREND_PANELS, band=band, title=title, order=order, counts=False,
                               figure_legend=len(order) > 6)
    return fig, lines, empty, shown


# --------------------------------------------------------------------------------------------
# The figure table
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class FigureSpec:
    id: str
    kind: str                     # trend | samples | bounds | correlation
    data: str
    model: str
    fixed: dict = field(default_factory=dict)
    by: str | None = None
    expected: tuple = ()          # SPEC's values of `by` (trend) or (lr, batch) settings (correlation)
    columns: tuple = ()
    what: str = ""


_D5_GRID = ((0.05, 20), (0.1, 20), (0.2, 20), (0.1, 8), (0.1, 32))
FIGURES = (
    FigureSpec("fig1", "trend", "cifar10_2class", "vgg10", {"batch": 20}, "lr", (0.05, 0.1, 0.2),
               what="learning rates"),
    FigureSpec("fig2", "trend", "cifar10_2class", "vgg10", {"lr": 0.1}, "batch", (8, 20, 32),
               what="batch sizes"),
    FigureSpec("fig3", "samples", "cifar10_2class", "vgg10", {"lr": 0.1, "batch": 20}),
    FigureSpec("figD4", "bounds", "fashion_mnist", "mlp4"),
    FigureSpec("figD5", "correlation", "cifar10_2class", "vgg10", expected=_D5_GRID,
               columns=CORRELATION_COLUMNS),
    FigureSpec("figD6", "correlation", "fashion_mnist", "mlp4", expected=_D5_GRID,
               columns=CORRELATION_COLUMNS + ("bound_c", "bound_d")),
    FigureSpec("figE7", "trend", "fashion_mnist", "mlp4", {"lr": 0.1}, "batch", (8, 20, 32),
               what="batch sizes"),
    FigureSpec("figE8", "trend", "fashion_mnist", "mlp4", {"batch": 20}, "lr", (0.05, 0.1, 0.2),
               what="learning rates"),
)
FIGURE_IDS = tuple(s.id for s in FIGURES)


class _Context:
    def __init__(self, frame, info, out: Path, formats, last_fraction, band, by=None):
        self.frame, self.info, self.out = frame, info, out
        self.formats, self.last_fraction, self.band = formats, last_fraction, band
        self.written = 0
        self.keys = key_table(info)  # every run's config keys (``--by``)
        self.by = None if by is None else resolve(by, self.keys)  # KeyError: no run has it

    def say(self, fig_id: str, text: str) -> None:
        print(f"{fig_id}: {text}", flush=True)

    def save(self, name: str, fig: Figure, tables: dict[str, pd.DataFrame]) -> list[str]:
        self.out.mkdir(parents=True, exist_ok=True)
        names = []
        for ext in self.formats:
            path = self.out / f"{name}.{ext}"
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                fig.savefig(path, dpi=150)
            # the layout is settled by the first format; the others reuse it (layout is costly)
            fig.set_layout_engine("none")
            names.append(path.name)
        for suffix, table in tables.items():
            path = self.out / f"{name}{suffix}.csv"
            table.drop(columns=[c for c in ("versions",) if c in table.columns]).to_csv(path, index=False)
            names.append(path.name)
        self.written += 1
        return names


def _say_dupes(ctx: _Context, fig_id: str, dupes: list[str]) -> None:
    if len(dupes) == 1:
        ctx.say(fig_id, dupes[0])
    elif dupes:
        ctx.say(fig_id, f"{len(dupes)} runs found twice (same setting, e.g. from two sweeps); used the "
                        "furthest of each (see the CSV's _run column)")


def _where(spec: FigureSpec) -> str:
    text = f"{spec.model}/{spec.data} runs"
    if spec.fixed:
        text += " at " + ", ".join(f"{k} {fmt(v)}" for k, v in spec.fixed.items())
    return text


def _dedupe(ctx: _Context, fig_id: str, sel: pd.DataFrame) -> pd.DataFrame:
    """One run per setting (the furthest), saying which were found twice."""
    sel, dupes = dedupe_runs(sel)
    _say_dupes(ctx, fig_id, dupes)
    return sel


def _candidates(ctx: _Context, spec: FigureSpec, need_sets=("train",)) -> pd.DataFrame:
    """The deduplicated runs of ``spec``'s data, model and fixed settings that have ``need_sets``."""
    info = ctx.info
    sel = info[(info["data"].astype(str) == spec.data) & (info["model"].astype(str) == spec.model)]
    # masks as bool: an empty object-dtype mask would select (no) columns instead of rows
    for key, value in spec.fixed.items():
        sel = sel[sel[key].apply(lambda v, value=value: same(v, value)).astype(bool)]
    sel = sel[sel["sample_sets"].apply(lambda s: any(x in s for x in need_sets)).astype(bool)]
    return _dedupe(ctx, spec.id, sel)


def _variants(sel: pd.DataFrame, fig_id: str) -> list[tuple[str, pd.DataFrame]]:
    """Split runs into experiments that differ in VARIANT_COLUMNS; name each figure."""
    return _split(sel, fig_id, VARIANT_COLUMNS, by_value=())


def _status_notes(ctx: _Context, name: str, runs: pd.DataFrame, drawn: bool = True) -> None:
    running = 0
    for _, row in runs.iterrows():
        status = str(row["status"])
        if status in ("diverged", "failed"):
            if not drawn:
                end = "left out"
            elif pd.isna(row["last_finite_iteration"]):
                end = "no finite values to draw"
            else:
                end = f"drawn up to iteration {fmt(row['last_finite_iteration'])}"
            ctx.say(name, f"run {row[RUN]} ({describe(row)}) {status} at iteration "
                          f"{fmt(row['last_iteration'])}; {end}")
        elif status == "running":
            running += 1
    if running and drawn:
        ctx.say(name, f"{running} run{'s' if running > 1 else ''} still running; drawn up to their "
                      "latest checkpoint")


def _title(spec: FigureSpec, runs: pd.DataFrame, extra: str = "") -> str:
    first = runs.iloc[0]
    parts = [f"{spec.id}: {spec.model} on {spec.data}"]
    parts += [f"{k} {fmt(v)}" for k, v in spec.fixed.items()]
    if extra:
        parts.append(extra)
    parts.append(f"scale {fmt(first['scale'])}, loss {fmt(first['loss'])}")
    return ", ".join(parts)


def _written(ctx, name, files, detail):
    ctx.say(name, f"wrote {ctx.out / files[0]}, {', '.join(files[1:])} ({detail})")


def _n_runs(n: int) -> str:
    return f"{n} run{'' if n == 1 else 's'}"


def _values_text(values) -> str:
    return ", ".join(fmt(v) for v in values) if len(values) else "none"


def _each_variant(ctx: _Context, spec: FigureSpec, need: str) -> list[tuple[str, pd.DataFrame]]:
    """``spec``'s runs split into experiments (one figure each), or a skip line when there are none."""
    sel = _candidates(ctx, spec)
    if sel.empty:
        ctx.say(spec.id, f"skipped, {need} (found none)")
        return []
    return _variants(sel, spec.id)


def _make_trend(ctx: _Context, spec: FigureSpec) -> None:
    need = f"needs {_where(spec)} with >= 2 {spec.what}"
    for name, runs in _each_variant(ctx, spec, need):
        values = sorted({float(v) for v in runs[spec.by].dropna()})
        if len(values) < 2:
            ctx.say(name, f"skipped, {need} (found {spec.by} {_values_text(values)} only)")
            continue
        missing = [v for v in spec.expected if not any(same(v, x) for x in values)]
        frame = ctx.frame[ctx.frame[RUN].isin(runs[RUN])]
        title = _title(spec, runs, f"one line per {spec.by}; mean over seeds, band {ctx.band}")
        fig, lines, empty = _trend(frame, spec.by, TREND_PANELS, band=ctx.band, title=title)
        summary = run_summary(frame, ctx.last_fraction)
        files = ctx.save(name, fig, {"": lines, "_runs": summary})
        seeds = sorted({fmt(s) for s in runs["seed"]})
        _written(ctx, name, files, f"{_n_runs(len(runs))}; {spec.by} {_values_text(values)}; seeds {', '.join(seeds)}")
        if missing:
            ctx.say(name, f"{spec.by} {_values_text(missing)} missing (SPEC: {_values_text(spec.expected)})")
        for e in empty:
            ctx.say(name, f"panel {e} skipped: no values in these runs")
        _status_notes(ctx, name, runs)


def _make_samples(ctx: _Context, spec: FigureSpec) -> None:
    sel = _candidates(ctx, spec, need_sets=("test", "misclassified"))
    if sel.empty:
        ctx.say(spec.id, f"skipped, needs {_where(spec)} with the test or misclassified sample set "
                         "(metrics.sample_sets)")
        return
    for name, runs in _variants(sel, spec.id):
        frame = ctx.frame[ctx.frame[RUN].isin(runs[RUN])]
        sets = sorted(set().union(*runs["sample_sets"]))
        title = _title(spec, runs, f"one line per sample set; mean over {_n_runs(len(runs))}, band {ctx.band}")
        fig, lines, empty = _trend(frame, "sample_set", FIG3_PANELS, band=ctx.band, title=title)
        summary = pd.concat(
            [run_summary(frame, ctx.last_fraction, s).assign(sample_set=s) for s in sets], ignore_index=True)
        files = ctx.save(name, fig, {"": lines, "_runs": summary})
        _written(ctx, name, files, f"{_n_runs(len(runs))}; sample sets {', '.join(sets)}")
        for s in ("test", "misclassified"):
            if s not in sets:
                ctx.say(name, f"no {s} sample set in these runs; drawn without it")
        for e in empty:
            ctx.say(name, f"panel {e} skipped: no values in these runs")
        _status_notes(ctx, name, runs)


def _make_bounds(ctx: _Context, spec: FigureSpec) -> None:
    sel = _candidates(ctx, spec)
    need = f"needs {_where(spec)} with bound values (bound_b, bound_c, bound_d)"
    if sel.empty:
        ctx.say(spec.id, f"skipped, {need} (found none)")
        return
    frame_all = ctx.frame[ctx.frame[RUN].isin(sel[RUN])]
    has = frame_all.groupby(RUN)[list(BOUND_COLUMNS[1:])].apply(lambda g: bool(np.isfinite(g.to_numpy()).any()))
    sel = sel[sel[RUN].map(has).fillna(False).astype(bool)]
    if sel.empty:
        reasons = frame_all.get("bounds_reason", pd.Series(dtype=object)).dropna().astype(str)
        reasons = [r for r in reasons.unique() if r]
        ctx.say(spec.id, f"skipped, {need} (bounds missing{': ' + reasons[0] if reasons else ''})")
        return
    for name, runs in _variants(sel, spec.id):
        settings = runs.groupby(["lr", "batch"])[RUN].nunique()
        pick = next(((lr, b) for (lr, b) in settings.index if same(lr, 0.1) and same(b, 20)), None)
        if pick is None:
            pick = settings.sort_values(ascending=False, kind="stable").index[0]
        chosen = runs[runs["lr"].apply(lambda v, p=pick[0]: same(v, p))
                      & runs["batch"].apply(lambda v, p=pick[1]: same(v, p))]
        frame = ctx.frame[ctx.frame[RUN].isin(chosen[RUN])]
        title = _title(spec, chosen, f"lr {fmt(pick[0])}, batch {fmt(pick[1])}; mean over "
                                     f"{_n_runs(len(chosen))}, band {ctx.band}")
        fig, lines, _ = _trend(frame, None, [_bound_panel()], band=ctx.band, title=title)
        summary = run_summary(frame, ctx.last_fraction)
        files = ctx.save(name, fig, {"": lines, "_runs": summary})
        _written(ctx, name, files, f"{_n_runs(len(chosen))} at lr {fmt(pick[0])}, batch {fmt(pick[1])}")
        if len(settings) > 1:
            ctx.say(name, f"drew the lr {fmt(pick[0])} / batch {fmt(pick[1])} setting; "
                          f"{len(settings) - 1} other setting(s) not drawn")
        _check_chain(ctx, name, frame)
        _status_notes(ctx, name, chosen)


def _check_chain(ctx, name, frame) -> None:
    cols = [c for c in BOUND_COLUMNS if c in frame.columns]
    if len(cols) < 4:
        return
    v = frame[cols].to_numpy(dtype=float)
    v = v[np.isfinite(v).all(axis=1)]
    if not len(v):
        return
    bad = int((np.diff(v, axis=1) < -1e-6 * np.abs(v[:, 1:])).any(axis=1).sum())
    if bad:
        ctx.say(name, f"warning: mls <= bound_b <= bound_c <= bound_d fails on {bad} of {len(v)} rows")


def _make_correlation(ctx: _Context, spec: FigureSpec) -> None:
    need = f"needs >= 3 {_where(spec)} (diverged, failed and lagging running runs left out)"
    for name, runs in _each_variant(ctx, spec, need):
        runs = _correlation_runs(ctx, name, runs, need)
        if runs is None:
            continue
        title = _title(spec, runs, f"one point per run (mean over the last {ctx.last_fraction:g} of "
                                   "checkpoints)")
        if not _correlation(ctx, name, runs, spec.columns, title):
            continue
        have = {(float(lr), float(b)) for lr, b in zip(runs["lr"], runs["batch"])}
        missing = [s for s in spec.expected if not any(same(s[0], h[0]) and same(s[1], h[1]) for h in have)]
        if missing:
            text = ", ".join(f"lr {fmt(lr)}/batch {fmt(b)}" for lr, b in missing)
            ctx.say(name, f"SPEC settings missing: {text} (SPEC: 20 runs, 4 seeds each)")


def _correlation_runs(ctx: _Context, name: str, runs: pd.DataFrame, need: str) -> pd.DataFrame | None:
    """The runs a correlation figure may use: diverged and failed runs and running runs behind the
    furthest one left out (with a line each); None (with a skip line) when fewer than 3 remain."""
    bad = runs[runs["status"].astype(str).isin(["diverged", "failed"])]
    _status_notes(ctx, name, bad, drawn=False)
    runs = runs.drop(bad.index)
    if len(runs):
        furthest = runs["last_iteration"].max()
        lagging = runs[(runs["status"].astype(str) == "running") & (runs["last_iteration"] < furthest)]
        if len(lagging):
            ctx.say(name, f"{len(lagging)} running run(s) behind iteration {fmt(furthest)} left out "
                          "(rerun figures when they finish)")
        runs = runs.drop(lagging.index)
    if len(runs) < 3:
        ctx.say(name, f"skipped, {need} (found {len(runs)})")
        return None
    return runs


def _correlation(ctx: _Context, name: str, runs: pd.DataFrame, columns: Sequence[str], title: str,
                 color_by: Sequence[str] = ("lr", "batch"), colors: dict | None = None,
                 optional: Sequence[str] = FLATNESS_CORRELATION_COLUMNS) -> bool:
    """Draw and save one correlation figure over ``runs``: ``columns`` that have values, and the
    ``optional`` ones every run has. ``colors``: per-run columns set on the summary ({column: {run:
    value}}), e.g. to colour by. False (with a skip line) when fewer than 2 quantities have values."""
    frame = ctx.frame[ctx.frame[RUN].isin(runs[RUN])]
    summary = run_summary(frame, ctx.last_fraction)
    for col, values in (colors or {}).items():
        _set_column(summary, col, summary[RUN].map(values))
    cols = [c for c in columns if c in summary and np.isfinite(summary[c].to_numpy(dtype=float)).any()]
    for c in columns:
        if c not in cols:
            ctx.say(name, f"column {c} skipped: no values in these runs")
    for c in optional:  # optional measures: only when every run has them
        v = summary[c].to_numpy(dtype=float) if c in summary else np.full(len(summary), np.nan)
        ok = np.isfinite(v)
        if ok.all():
            cols.append(c)
        elif ok.any():
            ctx.say(name, f"column {c} left out: values in {int(ok.sum())} of {len(v)} runs only")
    if len(cols) < 2:
        ctx.say(name, f"skipped, needs >= 2 quantities with values (found {len(cols)})")
        return False
    pearson = correlation_table(summary, cols)
    fig = draw_correlation(summary, cols, pearson, color_by=color_by, title=title)
    files = ctx.save(name, fig, {"": summary, "_pearson": pearson})
    _written(ctx, name, files, f"{_n_runs(len(runs))}, {len(cols)} quantities")
    return True


def _set_column(table: pd.DataFrame, column: str, values) -> None:
    """Set ``column`` of ``table`` in place (a new column goes second, after the run)."""
    if column in table.columns:
        table[column] = values
    else:
        table.insert(1, column, values)


def _train_runs(ctx: _Context) -> pd.DataFrame:
    info = ctx.info
    return info[info["sample_sets"].apply(lambda s: "train" in s).astype(bool)]


def _split(sel: pd.DataFrame, fig_id: str, fields: Sequence[str],
           by_value: Sequence[str] = ("data", "model")) -> list[tuple[str, pd.DataFrame]]:
    """Split runs by ``fields``; one figure per distinct value, named by the fields that differ
    (those in ``by_value`` by their value, others as ``field-value``; a missing field reads "?")."""
    if sel.empty:
        return []
    keys = sel.apply(lambda r: tuple(variant_value(c, r[c]) if c in r else "?" for c in fields), axis=1)
    distinct = list(dict.fromkeys(keys.tolist()))
    if len(distinct) == 1:
        return [(fig_id, sel)]
    differ = [i for i in range(len(fields)) if len({k[i] for k in distinct}) > 1]
    out = []
    for k in sorted(distinct):
        suffix = "-".join(k[i] if fields[i] in by_value else f"{fields[i]}-{k[i]}" for i in differ)
        out.append((f"{fig_id}-{re.sub(r'[^A-Za-z0-9_.=-]+', '_', suffix).strip('_')}", sel[keys == k]))
    return out


def _common(runs: pd.DataFrame, fields=("scale", "loss")) -> str:
    """The ``fields`` that all ``runs`` share, as text ("scale quick, loss mse")."""
    return ", ".join(f"{f} {variant_value(f, runs[f].iloc[0])}" for f in fields
                     if len({variant_value(f, v) for v in runs[f]}) == 1)


def _pair(runs: pd.DataFrame) -> str:
    models, datas = sorted({fmt(v) for v in runs["model"]}), sorted({fmt(v) for v in runs["data"]})
    return f"{'/'.join(models)} on {'/'.join(datas)}"


_NO_OPTIM = tuple(c for c in VARIANT_COLUMNS if c != "optim")


def _make_flatness(ctx: _Context, fig_id: str) -> None:
    sel = _train_runs(ctx)
    train = ctx.frame[ctx.frame["sample_set"] == "train"]
    cols = [c for c in FLATNESS_COLUMNS if c in train.columns]
    if cols and len(sel):
        has = train[cols].notna().any(axis=1).groupby(train[RUN]).any()
        sel = sel[sel[RUN].map(has).fillna(False).astype(bool)]
    else:
        sel = sel.iloc[0:0]
    if sel.empty:
        ctx.say(fig_id, "skipped, needs runs with flatness measures (metrics.flatness: Hessian traces, "
                        "worst-case or adaptive sharpness, gradient disagreement, Fisher trace)")
        return
    sel = _dedupe(ctx, fig_id, sel)
    for name, runs in _split(sel, fig_id, ("data", "model", *_NO_OPTIM)):
        frame = ctx.frame[ctx.frame[RUN].isin(runs[RUN])]
        by, fields = _flatness_grouping(runs)
        one = all(len({variant_value(f, v) for v in runs[f]}) == 1 for f in _FLATNESS_GROUPINGS)
        per = "setting" if one else (by if not fields else ", ".join(fields))
        title = (f"{name}: flatness measures, {_pair(runs)}, one line per {per}; mean over seeds, band "
                 f"{ctx.band}; error bars: Hutchinson standard error; {_common(runs, ('optim', *_NO_OPTIM[:2]))}")
        fig, lines, empty, by = _flatness_trend(frame, band=ctx.band, title=title.rstrip("; "))
        drawn = [c for c in dict.fromkeys(lines["column"]) if c != SQRT_S] if len(lines) else []
        summary = run_summary(frame, ctx.last_fraction)
        files = ctx.save(name, fig, {"": lines, "_runs": summary})
        _written(ctx, name, files, f"{_n_runs(len(runs))}; one line per {per}; {', '.join(drawn)}")
        for e in empty:
            ctx.say(name, f"panel {e} skipped: no values in these runs")
        _status_notes(ctx, name, runs)


def _make_sam(ctx: _Context, fig_id: str) -> None:
    sel, dupes = dedupe_runs(_train_runs(ctx))
    fields = ("data", "model", "lr", "batch", *_NO_OPTIM)
    need = ("skipped, needs runs that differ only in optim (e.g. optim=sgd and optim=sam at the same data, "
            "model, lr, batch and scale)")
    if sel.empty:
        ctx.say(fig_id, need)
        return
    keys = sel.apply(lambda r: tuple(variant_value(c, r[c]) for c in fields), axis=1)
    optims = sel.groupby(keys)["optim"].agg(lambda v: len({fmt(x) for x in v}))
    sel = sel[keys.map(optims) > 1]
    if sel.empty:
        ctx.say(fig_id, need)
        return
    _say_dupes(ctx, fig_id, dupes)
    for name, runs in _split(sel, fig_id, fields):
        frame = ctx.frame[ctx.frame[RUN].isin(runs[RUN])]
        first = runs.iloc[0]
        title = (f"{name}: {_pair(runs)}, lr {fmt(first['lr'])}, batch {fmt(first['batch'])}, one line per "
                 f"optimiser; mean over seeds, band {ctx.band}; {_common(runs)}")
        fig, lines, empty = _trend(frame, "optim", TREND_PANELS, band=ctx.band, title=title)
        summary = run_summary(frame, ctx.last_fraction)
        files = ctx.save(name, fig, {"": lines, "_runs": summary})
        seeds = sorted({fmt(x) for x in runs["seed"]})
        _written(ctx, name, files, f"{_n_runs(len(runs))}; optim {', '.join(sorted({fmt(x) for x in runs['optim']}))}"
                                   f"; seeds {', '.join(seeds)}")
        for e in empty:
            ctx.say(name, f"panel {e} skipped: no values in these runs")
        _status_notes(ctx, name, runs)


def _make_runs(ctx: _Context, fig_id: str) -> None:
    sel = _train_runs(ctx)
    if sel.empty:
        ctx.say(fig_id, "skipped, needs runs with the train sample set")
        return
    sel = _dedupe(ctx, fig_id, sel)
    for name, runs in _split(sel, fig_id, ("data", "model")):
        frame = ctx.frame[ctx.frame[RUN].isin(runs[RUN])]
        n = len(runs)
        shown = f"first {RUNS_CAP} of {n} runs" if n > RUNS_CAP else _n_runs(n)
        title = f"{name}: {_pair(runs)}, one line per run ({shown}); {_common(runs)}".rstrip("; ")
        fig, lines, empty, drawn = _runs_trend(frame, band=ctx.band, title=title, cap=RUNS_CAP)
        summary = run_summary(frame, ctx.last_fraction)
        files = ctx.save(name, fig, {"": lines, "_runs": summary})
        _written(ctx, name, files, f"{_n_runs(len(drawn))}, one line each")
        if n > RUNS_CAP:
            ctx.say(name, f"capped at {RUNS_CAP} lines: drew the first {RUNS_CAP} of {n} runs (by lr, batch, "
                          f"seed); all {n} are in {name}_runs.csv")
        for e in empty:
            ctx.say(name, f"panel {e} skipped: no values in these runs")
        _status_notes(ctx, name, drawn)


# Any swept config key (``--by KEY``, issue 12): keys pooled in every sweep figure besides the key itself.
_SWEEP_POOLED = ("seed", "metrics.sample_sets")


def _sweep_groups(ctx: _Context, fig_id: str, pooled: Sequence[str] = ()) -> list[tuple[str, pd.DataFrame]]:
    """Runs with the train sample set (one per setting) of any data and model, split into
    experiments: one figure per value of every config key that differs between them except the
    ``--by`` key, the seed and ``pooled``. The ``--by`` key never splits a figure."""
    if ctx.by is None:
        ctx.say(fig_id, "skipped, needs --by KEY (a swept config key, e.g. --by model.width)")
        return []
    sel = _train_runs(ctx)
    if sel.empty:
        ctx.say(fig_id, "skipped, needs runs with the train sample set")
        return []
    sel = _dedupe(ctx, fig_id, sel)
    table = ctx.keys[ctx.keys[RUN].isin(sel[RUN])]
    skip = {RUN, ctx.by, *_SWEEP_POOLED, *pooled}
    first = [c for c in ("data.name", "model.name") if c in table.columns and c not in skip]
    skip.update(first)
    fields = first + sorted(c for c in table.columns if c not in skip)
    parts = _split(table, f"{fig_id}-{ctx.by}", fields, by_value=("data.name", "model.name"))
    return [(name, sel[sel[RUN].isin(part[RUN])]) for name, part in parts]


def _key_values(ctx: _Context, runs: pd.DataFrame, numeric: bool = False) -> dict:
    """Each run's value of the ``--by`` key: as text ("0.5", "none"), or numbers when ``numeric`` and
    every value is one (so colours go in numeric order)."""
    table = ctx.keys.set_index(RUN)[ctx.by]
    text = {run: value_text(ctx.by, table.get(run)) for run in runs[RUN]}
    if numeric:
        try:
            return {run: float(v) for run, v in text.items()}
        except ValueError:
            pass
    return text


def _make_sweep(ctx: _Context, fig_id: str) -> None:
    for name, runs in _sweep_groups(ctx, fig_id):
        values = _key_values(ctx, runs)
        distinct = ordered(values.values())
        if len(distinct) < 2:
            ctx.say(name, f"skipped, needs >= 2 values of {ctx.by} (found {ctx.by} {', '.join(distinct)} only)")
            continue
        frame = ctx.frame[ctx.frame[RUN].isin(runs[RUN])]
        frame = frame.assign(**{ctx.by: frame[RUN].map(values)})
        title = (f"{name}: {_pair(runs)}, one line per {ctx.by}; mean over seeds, band {ctx.band}; "
                 f"{_common(runs)}")
        fig, lines, empty = _trend(frame, ctx.by, TREND_PANELS, band=ctx.band, title=title.rstrip("; "),
                                   order=distinct)
        summary = run_summary(frame, ctx.last_fraction)
        _set_column(summary, ctx.by, summary[RUN].map(values))
        files = ctx.save(name, fig, {"": lines, "_runs": summary})
        seeds = sorted({fmt(s) for s in runs["seed"]})
        _written(ctx, name, files, f"{_n_runs(len(runs))}; {ctx.by} {', '.join(distinct)}; seeds {', '.join(seeds)}")
        for e in empty:
            ctx.say(name, f"panel {e} skipped: no values in these runs")
        _status_notes(ctx, name, runs)


def _make_sweep_correlation(ctx: _Context, fig_id: str) -> None:
    need = "needs >= 3 runs (diverged, failed and lagging running runs left out)"
    for name, runs in _sweep_groups(ctx, fig_id, pooled=("lr", "batch")):
        runs = _correlation_runs(ctx, name, runs, need)
        if runs is None:
            continue
        title = (f"{name}: {_pair(runs)}, one point per run (mean over the last {ctx.last_fraction:g} of "
                 f"checkpoints), coloured by {ctx.by}; {_common(runs)}")
        _correlation(ctx, name, runs, CORRELATION_COLUMNS, title.rstrip("; "), color_by=(ctx.by,),
                     colors={ctx.by: _key_values(ctx, runs, numeric=True)},
                     optional=("bound_c", "bound_d", *FLATNESS_CORRELATION_COLUMNS))


_MAKERS = {"trend": _make_trend, "samples": _make_samples, "bounds": _make_bounds,
           "correlation": _make_correlation}
# Figures beyond SPEC's table, drawn from whatever results exist (id -> maker).
_EXTRA_MAKERS = {"flatness": _make_flatness, "sam_vs_sgd": _make_sam, "runs": _make_runs, "sweep": _make_sweep,
                 "sweep_correlation": _make_sweep_correlation}
EXTRA_FIGURE_IDS = tuple(_EXTRA_MAKERS)
ALL_FIGURE_IDS = FIGURE_IDS + EXTRA_FIGURE_IDS


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------

def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="sharpcomp figures",
        description="Draw the study's figures (SPEC 'Figures') from every metrics.parquet under the "
                    "given folders.",
    )
    p.add_argument("dirs", nargs="*", metavar="RESULT_DIR", help="folders to search (default: outputs)")
    p.add_argument("--out", help="where figures go (default: <first RESULT_DIR>/figures)")
    p.add_argument("--last-fraction", type=float, default=0.2,
                   help="correlation points and per-run summaries: mean over this last fraction of "
                        "each run's checkpoints (default 0.2)")
    p.add_argument("--formats", default="png,pdf", help="comma-separated image formats (default png,pdf)")
    p.add_argument("--only", help=f"comma-separated figure ids (default all: {','.join(ALL_FIGURE_IDS)})")
    p.add_argument("--band", choices=BANDS, default="minmax",
                   help="trend band over seeds: min to max (default), mean +- std, or none")
    p.add_argument("--by", metavar="KEY",
                   help="a swept config key (model.width, optim.rho, metrics.layer, lr, ...): the sweep "
                        "figures draw one line (trend) or colour (correlation) per value of it")
    return p


class _UsageError(ValueError):
    """Bad input on the command line: one error line, exit status 2."""


def _error(text: str, status: int = 1) -> int:
    print(f"sharpcomp figures: error: {text}", file=sys.stderr, flush=True)
    return status


def _check_options(args) -> tuple[list[str], tuple[str, ...]]:
    """The image formats and figure ids asked for; ``_UsageError`` for a bad option."""
    if not 0 < args.last_fraction <= 1:
        raise _UsageError(f"--last-fraction must be in (0, 1], got {args.last_fraction:g}")
    formats = [f.strip().lstrip(".").lower() for f in args.formats.split(",") if f.strip()]
    unknown = [f for f in formats if f not in ("png", "pdf", "svg")]
    if not formats or unknown:
        raise _UsageError(f"--formats takes png, pdf, svg (got {args.formats!r})")
    only = ALL_FIGURE_IDS
    if args.only:
        only = tuple(x.strip() for x in args.only.split(",") if x.strip())
        bad = [x for x in only if x not in ALL_FIGURE_IDS]
        if bad:
            raise _UsageError(f"unknown figure id {', '.join(bad)} (known: {', '.join(ALL_FIGURE_IDS)})")
    return formats, only


def _check_out(out: Path) -> None:
    """Make the output folder and check that a file can be written there; ``_UsageError`` if not."""
    if out.exists() and not out.is_dir():
        raise _UsageError(f"--out {out} is a file, not a folder (choose a folder with --out)")
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise _UsageError(f"cannot write figures to {out}: {reason} (choose a folder with --out)") from None


def _draw(ctx: _Context, only: Sequence[str]) -> None:
    """Every figure asked for; one figure's failure does not stop the others."""
    jobs = [(s.id, _MAKERS[s.kind], s) for s in FIGURES]
    jobs += [(fig_id, maker, fig_id) for fig_id, maker in _EXTRA_MAKERS.items()]
    for fig_id, maker, what in jobs:
        if fig_id in only:
            try:
                maker(ctx, what)
            except Exception as exc:
                ctx.say(fig_id, f"skipped, could not be drawn: {type(exc).__name__}: {exc}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    try:
        args = parser.parse_args(list(argv) if argv is not None else None)
    except SystemExit as exc:  # --help, or a usage error (argparse printed it)
        return int(exc.code or 0) if not isinstance(exc.code, str) else 2
    try:
        formats, only = _check_options(args)
    except _UsageError as exc:
        return _error(str(exc))
    dirs = [Path(d) for d in (args.dirs or ["outputs"])]
    out = Path(args.out) if args.out else dirs[0] / "figures"
    try:
        frame, notes = load_results(dirs)
    except RecordError as exc:
        return _error(str(exc))
    except Exception as exc:  # a damaged folder must not end in a traceback
        return _error(f"cannot read results under {', '.join(map(str, dirs))}: {exc}")
    for note in notes:
        print(note, flush=True)
    info = run_info(frame)
    print(f"read {len(info)} runs from {len(dirs)} folder{'s' if len(dirs) > 1 else ''}", flush=True)
    try:
        ctx = _Context(frame, info, out, formats, args.last_fraction, args.band, by=args.by)
        _check_out(out)
    except KeyError as exc:
        return _error(exc.args[0], status=2)
    except _UsageError as exc:
        return _error(str(exc), status=2)
    _draw(ctx, only)
    print(f"{ctx.written} figure{'s' if ctx.written != 1 else ''} written to {out}"
          if ctx.written else "no figures written: the results allow none (see the lines above)", flush=True)
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main(sys.argv[1:]))
