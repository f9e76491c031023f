"""The catalogue of the study's figures: which runs each needs and how it is drawn.

What each figure needs (the study's figures: ``docs/figures.md``); runs must have the ``train`` sample set unless noted:

==========  ===========================================================================
fig1        vgg10 / cifar10_2class at batch 20 with >= 2 learning rates (the study's: 0.05, 0.1, 0.2)
fig2        vgg10 / cifar10_2class at lr 0.1 with >= 2 batch sizes (the study's: 8, 20, 32)
figE7       mlp4 / fashion_mnist at lr 0.1 with >= 2 batch sizes
figE8       mlp4 / fashion_mnist at batch 20 with >= 2 learning rates
fig3        vgg10 / cifar10_2class at lr 0.1, batch 20 with the ``test`` or ``misclassified`` set
figD4       mlp4 / fashion_mnist runs with bound values (the lr 0.1 / batch 20 setting when
            present, else the setting with most runs)
figD5       >= 3 vgg10 / cifar10_2class runs (any lr / batch; the study's grid has 20)
figD6       >= 3 mlp4 / fashion_mnist runs
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

from collections.abc import Sequence

import numpy as np
import pandas as pd

from sharpcomp.figures.context import (
    Context,
    FigureSpec,
    candidates,
    each_variant,
    n_runs,
    say_written,
    set_column,
    status_notes,
    title_for,
    values_text,
    variants,
    where,
)
from sharpcomp.figures.panels import (
    BOUND_COLUMNS,
    CORRELATION_COLUMNS,
    FIG3_PANELS,
    FLATNESS_CORRELATION_COLUMNS,
    TREND_PANELS,
    bound_panel,
    trend,
)
from sharpcomp.figures.scatter import draw_correlation
from sharpcomp.figures.tables import (
    RUN,
    correlation_table,
    fmt,
    run_summary,
    same,
)

D5_GRID = ((0.05, 20), (0.1, 20), (0.2, 20), (0.1, 8), (0.1, 32))
FIGURES = (
    FigureSpec("fig1", "trend", "cifar10_2class", "vgg10", {"batch": 20}, "lr", (0.05, 0.1, 0.2),
               what="learning rates"),
    FigureSpec("fig2", "trend", "cifar10_2class", "vgg10", {"lr": 0.1}, "batch", (8, 20, 32),
               what="batch sizes"),
    FigureSpec("fig3", "samples", "cifar10_2class", "vgg10", {"lr": 0.1, "batch": 20}),
    FigureSpec("figD4", "bounds", "fashion_mnist", "mlp4"),
    FigureSpec("figD5", "correlation", "cifar10_2class", "vgg10", expected=D5_GRID,
               columns=CORRELATION_COLUMNS),
    FigureSpec("figD6", "correlation", "fashion_mnist", "mlp4", expected=D5_GRID,
               columns=CORRELATION_COLUMNS + ("bound_c", "bound_d")),
    FigureSpec("figE7", "trend", "fashion_mnist", "mlp4", {"lr": 0.1}, "batch", (8, 20, 32),
               what="batch sizes"),
    FigureSpec("figE8", "trend", "fashion_mnist", "mlp4", {"batch": 20}, "lr", (0.05, 0.1, 0.2),
               what="learning rates"),
)
FIGURE_IDS = tuple(s.id for s in FIGURES)


def _make_trend(ctx: Context, spec: FigureSpec) -> None:
    need = f"needs {where(spec)} with >= 2 {spec.what}"
    for name, runs in each_variant(ctx, spec, need):
        values = sorted({float(v) for v in runs[spec.by].dropna()})
        if len(values) < 2:
            ctx.say(name, f"skipped, {need} (found {spec.by} {values_text(values)} only)")
            continue
        missing = [v for v in spec.expected if not any(same(v, x) for x in values)]
        frame = ctx.frame[ctx.frame[RUN].isin(runs[RUN])]
        title = title_for(spec, runs, f"one line per {spec.by}; mean over seeds, band {ctx.band}")
        fig, lines, empty = trend(frame, spec.by, TREND_PANELS, band=ctx.band, title=title)
        summary = run_summary(frame, ctx.last_fraction)
        files = ctx.save(name, fig, {"": lines, "_runs": summary})
        seeds = sorted({fmt(s) for s in runs["seed"]})
        say_written(ctx, name, files, f"{n_runs(len(runs))}; {spec.by} {values_text(values)}; seeds {', '.join(seeds)}")
        if missing:
            ctx.say(name, f"{spec.by} {values_text(missing)} missing (the study's: {values_text(spec.expected)})")
        for e in empty:
            ctx.say(name, f"panel {e} skipped: no values in these runs")
        status_notes(ctx, name, runs)


def _make_samples(ctx: Context, spec: FigureSpec) -> None:
    sel = candidates(ctx, spec, need_sets=("test", "misclassified"))
    if sel.empty:
        ctx.say(spec.id, f"skipped, needs {where(spec)} with the test or misclassified sample set "
                         "(metrics.sample_sets)")
        return
    for name, runs in variants(sel, spec.id):
        frame = ctx.frame[ctx.frame[RUN].isin(runs[RUN])]
        sets = sorted(set().union(*runs["sample_sets"]))
        title = title_for(spec, runs, f"one line per sample set; mean over {n_runs(len(runs))}, band {ctx.band}")
        fig, lines, empty = trend(frame, "sample_set", FIG3_PANELS, band=ctx.band, title=title)
        summary = pd.concat(
            [run_summary(frame, ctx.last_fraction, s).assign(sample_set=s) for s in sets], ignore_index=True)
        files = ctx.save(name, fig, {"": lines, "_runs": summary})
        say_written(ctx, name, files, f"{n_runs(len(runs))}; sample sets {', '.join(sets)}")
        for s in ("test", "misclassified"):
            if s not in sets:
                ctx.say(name, f"no {s} sample set in these runs; drawn without it")
        for e in empty:
            ctx.say(name, f"panel {e} skipped: no values in these runs")
        status_notes(ctx, name, runs)


def _make_bounds(ctx: Context, spec: FigureSpec) -> None:
    sel = candidates(ctx, spec)
    need = f"needs {where(spec)} with bound values (bound_b, bound_c, bound_d)"
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
    for name, runs in variants(sel, spec.id):
        settings = runs.groupby(["lr", "batch"])[RUN].nunique()
        if settings.empty:
            ctx.say(name, f"skipped, {need} (no run has both lr and batch values)")
            continue
        pick = next(((lr, b) for (lr, b) in settings.index if same(lr, 0.1) and same(b, 20)), None)
        if pick is None:
            pick = settings.sort_values(ascending=False, kind="stable").index[0]
        chosen = runs[runs["lr"].apply(lambda v, p=pick[0]: same(v, p))
                      & runs["batch"].apply(lambda v, p=pick[1]: same(v, p))]
        frame = ctx.frame[ctx.frame[RUN].isin(chosen[RUN])]
        title = title_for(spec, chosen, f"lr {fmt(pick[0])}, batch {fmt(pick[1])}; mean over "
                                     f"{n_runs(len(chosen))}, band {ctx.band}")
        fig, lines, _ = trend(frame, None, [bound_panel()], band=ctx.band, title=title)
        summary = run_summary(frame, ctx.last_fraction)
        files = ctx.save(name, fig, {"": lines, "_runs": summary})
        say_written(ctx, name, files, f"{n_runs(len(chosen))} at lr {fmt(pick[0])}, batch {fmt(pick[1])}")
        if len(settings) > 1:
            ctx.say(name, f"drew the lr {fmt(pick[0])} / batch {fmt(pick[1])} setting; "
                          f"{len(settings) - 1} other setting(s) not drawn")
        check_chain(ctx, name, frame)
        status_notes(ctx, name, chosen)


def check_chain(ctx, name, frame) -> None:
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


def _make_correlation(ctx: Context, spec: FigureSpec) -> None:
    need = f"needs >= 3 {where(spec)} (diverged, failed and lagging running runs left out)"
    for name, runs in each_variant(ctx, spec, need):
        runs = correlation_runs(ctx, name, runs, need)
        if runs is None:
            continue
        title = title_for(spec, runs, f"one point per run (mean over the last {ctx.last_fraction:g} of "
                                   "checkpoints)")
        if not correlation(ctx, name, runs, spec.columns, title):
            continue
        have = {(float(lr), float(b)) for lr, b in zip(runs["lr"], runs["batch"])}
        missing = [s for s in spec.expected if not any(same(s[0], h[0]) and same(s[1], h[1]) for h in have)]
        if missing:
            text = ", ".join(f"lr {fmt(lr)}/batch {fmt(b)}" for lr, b in missing)
            ctx.say(name, f"the study's settings missing: {text} (the study's: 20 runs, 4 seeds each)")


def correlation_runs(ctx: Context, name: str, runs: pd.DataFrame, need: str) -> pd.DataFrame | None:
    """The runs a correlation figure may use: diverged and failed runs and running runs behind the
    furthest one left out (with a line each); None (with a skip line) when fewer than 3 remain."""
    bad = runs[runs["status"].astype(str).isin(["diverged", "failed"])]
    status_notes(ctx, name, bad, drawn=False)
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


def correlation(ctx: Context, name: str, runs: pd.DataFrame, columns: Sequence[str], title: str,
                 color_by: Sequence[str] = ("lr", "batch"), colors: dict | None = None,
                 optional: Sequence[str] = FLATNESS_CORRELATION_COLUMNS) -> bool:
    """Draw and save one correlation figure over ``runs``: ``columns`` that have values, and the
    ``optional`` ones every run has. ``colors``: per-run columns set on the summary ({column: {run:
    value}}), e.g. to colour by. False (with a skip line) when fewer than 2 quantities have values."""
    frame = ctx.frame[ctx.frame[RUN].isin(runs[RUN])]
    summary = run_summary(frame, ctx.last_fraction)
    for col, values in (colors or {}).items():
        set_column(summary, col, summary[RUN].map(values))
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
    say_written(ctx, name, files, f"{n_runs(len(runs))}, {len(cols)} quantities")
    return True


STUDY_MAKERS = {"trend": _make_trend, "samples": _make_samples, "bounds": _make_bounds,
           "correlation": _make_correlation}
