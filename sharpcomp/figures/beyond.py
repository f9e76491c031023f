"""Figures beyond the study's table, drawn from whatever results exist (any data, any model).

Beyond the study's figures, drawn from whatever results exist (any data / model; one figure per (data,
model) pair and experiment, named ``<id>-<differing values>`` when there are several):

==========  ===========================================================================
flatness    runs with optional flatness measures (``metrics.flatness``) on their
            train rows: sqrt(S) and a panel per measure with values, with one standard error as error
            bars for the measures that report one (Tr H, Tr(PHP), batch sharpness, average-case
            sharpness; the title names them); one line per optim, lr or batch, whichever varies
            (several: one per combination)
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
stability   runs with hessian_max / batch_sharpness / nonuniformity: per lr, lambda_max and batch
            sharpness against iteration with 2/eta, the non-uniformity with sqrt(B)/eta
            (:mod:`sharpcomp.figures.stability`)
spectrum    runs with hessian_density: the SLQ density over training as a heat map per run
==========  ===========================================================================
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from sharpcomp.figures.catalogue import correlation, correlation_runs
from sharpcomp.figures.context import (
    Context,
    common_text,
    dedupe,
    n_runs,
    pair_text,
    say_dupes,
    say_written,
    set_column,
    split_runs,
    status_notes,
    train_runs,
)
from sharpcomp.figures.keys import ordered, value_text
from sharpcomp.figures.panels import (
    CORRELATION_COLUMNS,
    FLATNESS_CORRELATION_COLUMNS,
    FLATNESS_GROUPINGS,
    RUNS_CAP,
    TREND_PANELS,
    error_bar_text,
    flatness_grouping,
    flatness_trend,
    runs_trend,
    trend,
)
from sharpcomp.figures.stability import make_spectrum, make_stability
from sharpcomp.figures.tables import (
    RUN,
    SQRT_S,
    VARIANT_COLUMNS,
    dedupe_runs,
    fmt,
    run_summary,
    variant_value,
)
from sharpcomp.results.columns import FLATNESS_COLUMNS, measure_values

NO_OPTIM = tuple(c for c in VARIANT_COLUMNS if c != "optim")


def _make_flatness(ctx: Context, fig_id: str) -> None:
    sel = train_runs(ctx)
    train = ctx.frame[ctx.frame["sample_set"] == "train"]
    cols = list(dict.fromkeys([*(c for c in FLATNESS_COLUMNS if c in train.columns), *measure_values(train)]))
    if cols and len(sel):
        has = train[cols].notna().any(axis=1).groupby(train[RUN]).any()
        sel = sel[sel[RUN].map(has).fillna(False).astype(bool)]
    else:
        sel = sel.iloc[0:0]
    if sel.empty:
        ctx.say(fig_id, "skipped, needs runs with flatness measures (metrics.flatness: Hessian traces, "
                        "worst-case or adaptive sharpness, gradient disagreement, Fisher trace)")
        return
    sel = dedupe(ctx, fig_id, sel)
    for name, runs in split_runs(sel, fig_id, ("data", "model", *NO_OPTIM)):
        frame = ctx.frame[ctx.frame[RUN].isin(runs[RUN])]
        by, fields = flatness_grouping(runs)
        one = all(len({variant_value(f, v) for v in runs[f]}) == 1 for f in FLATNESS_GROUPINGS)
        per = "setting" if one else (by if not fields else ", ".join(fields))
        title = (f"{name}: flatness measures, {pair_text(runs)}, one line per {per}; mean over seeds, band "
                 f"{ctx.band}; {error_bar_text(frame)}; {common_text(runs, ('optim', *NO_OPTIM[:2]))}")
        fig, lines, empty, by = flatness_trend(frame, band=ctx.band, title=title.rstrip("; "))
        drawn = [c for c in dict.fromkeys(lines["column"]) if c != SQRT_S] if len(lines) else []
        summary = run_summary(frame, ctx.last_fraction)
        files = ctx.save(name, fig, {"": lines, "_runs": summary})
        say_written(ctx, name, files, f"{n_runs(len(runs))}; one line per {per}; {', '.join(drawn)}")
        for e in empty:
            ctx.say(name, f"panel {e} skipped: no values in these runs")
        status_notes(ctx, name, runs)


def _make_sam(ctx: Context, fig_id: str) -> None:
    sel, dupes = dedupe_runs(train_runs(ctx))
    fields = ("data", "model", "lr", "batch", *NO_OPTIM)
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
    say_dupes(ctx, fig_id, dupes)
    for name, runs in split_runs(sel, fig_id, fields):
        frame = ctx.frame[ctx.frame[RUN].isin(runs[RUN])]
        first = runs.iloc[0]
        title = (f"{name}: {pair_text(runs)}, lr {fmt(first['lr'])}, batch {fmt(first['batch'])}, one line per "
                 f"optimiser; mean over seeds, band {ctx.band}; {common_text(runs)}")
        fig, lines, empty = trend(frame, "optim", TREND_PANELS, band=ctx.band, title=title)
        summary = run_summary(frame, ctx.last_fraction)
        files = ctx.save(name, fig, {"": lines, "_runs": summary})
        seeds = sorted({fmt(x) for x in runs["seed"]})
        say_written(ctx, name, files, f"{n_runs(len(runs))}; optim {', '.join(sorted({fmt(x) for x in runs['optim']}))}"
                                   f"; seeds {', '.join(seeds)}")
        for e in empty:
            ctx.say(name, f"panel {e} skipped: no values in these runs")
        status_notes(ctx, name, runs)


def _make_runs(ctx: Context, fig_id: str) -> None:
    sel = train_runs(ctx)
    if sel.empty:
        ctx.say(fig_id, "skipped, needs runs with the train sample set")
        return
    sel = dedupe(ctx, fig_id, sel)
    for name, runs in split_runs(sel, fig_id, ("data", "model", "scale")):  # a demo run never joins quick runs
        frame = ctx.frame[ctx.frame[RUN].isin(runs[RUN])]
        n = len(runs)
        shown = f"first {RUNS_CAP} of {n} runs" if n > RUNS_CAP else n_runs(n)
        title = f"{name}: {pair_text(runs)}, one line per run ({shown}); {common_text(runs)}".rstrip("; ")
        fig, lines, empty, drawn = runs_trend(frame, band=ctx.band, title=title, cap=RUNS_CAP)
        summary = run_summary(frame, ctx.last_fraction)
        files = ctx.save(name, fig, {"": lines, "_runs": summary})
        say_written(ctx, name, files, f"{n_runs(len(drawn))}, one line each")
        if n > RUNS_CAP:
            ctx.say(name, f"capped at {RUNS_CAP} lines: drew the first {RUNS_CAP} of {n} runs (by lr, batch, "
                          f"seed); all {n} are in {name}_runs.csv")
        for e in empty:
            ctx.say(name, f"panel {e} skipped: no values in these runs")
        status_notes(ctx, name, drawn)


# Any swept config key (``--by KEY``): keys pooled in every sweep figure besides the key itself.
SWEEP_POOLED = ("seed", "metrics.sample_sets")


def sweep_groups(ctx: Context, fig_id: str, pooled: Sequence[str] = ()) -> list[tuple[str, pd.DataFrame]]:
    """Runs with the train sample set (one per setting) of any data and model, split into
    experiments: one figure per value of every config key that differs between them except the
    ``--by`` key, the seed and ``pooled``. The ``--by`` key never splits a figure."""
    if ctx.by is None:
        ctx.say(fig_id, "skipped, needs --by KEY (a swept config key, e.g. --by model.width)")
        return []
    sel = train_runs(ctx)
    if sel.empty:
        ctx.say(fig_id, "skipped, needs runs with the train sample set")
        return []
    sel = dedupe(ctx, fig_id, sel)
    table = ctx.keys[ctx.keys[RUN].isin(sel[RUN])]
    skip = {RUN, ctx.by, *SWEEP_POOLED, *pooled}
    first = [c for c in ("data.name", "model.name") if c in table.columns and c not in skip]
    skip.update(first)
    fields = first + sorted(c for c in table.columns if c not in skip)
    parts = split_runs(table, f"{fig_id}-{ctx.by}", fields, by_value=("data.name", "model.name"))
    return [(name, sel[sel[RUN].isin(part[RUN])]) for name, part in parts]


def key_values(ctx: Context, runs: pd.DataFrame, numeric: bool = False) -> dict:
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


def _make_sweep(ctx: Context, fig_id: str) -> None:
    for name, runs in sweep_groups(ctx, fig_id):
        values = key_values(ctx, runs)
        distinct = ordered(values.values())
        if len(distinct) < 2:
            ctx.say(name, f"skipped, needs >= 2 values of {ctx.by} (found {ctx.by} {', '.join(distinct)} only)")
            continue
        frame = ctx.frame[ctx.frame[RUN].isin(runs[RUN])]
        frame = frame.assign(**{ctx.by: frame[RUN].map(values)})
        title = (f"{name}: {pair_text(runs)}, one line per {ctx.by}; mean over seeds, band {ctx.band}; "
                 f"{common_text(runs)}")
        fig, lines, empty = trend(frame, ctx.by, TREND_PANELS, band=ctx.band, title=title.rstrip("; "),
                                   order=distinct)
        summary = run_summary(frame, ctx.last_fraction)
        set_column(summary, ctx.by, summary[RUN].map(values))
        files = ctx.save(name, fig, {"": lines, "_runs": summary})
        seeds = sorted({fmt(s) for s in runs["seed"]})
        say_written(ctx, name, files, f"{n_runs(len(runs))}; {ctx.by} {', '.join(distinct)}; seeds {', '.join(seeds)}")
        for e in empty:
            ctx.say(name, f"panel {e} skipped: no values in these runs")
        status_notes(ctx, name, runs)


def _make_sweep_correlation(ctx: Context, fig_id: str) -> None:
    need = "needs >= 3 runs (diverged, failed and lagging running runs left out)"
    for name, runs in sweep_groups(ctx, fig_id, pooled=("lr", "batch")):
        runs = correlation_runs(ctx, name, runs, need)
        if runs is None:
            continue
        title = (f"{name}: {pair_text(runs)}, one point per run (mean over the last {ctx.last_fraction:g} of "
                 f"checkpoints), coloured by {ctx.by}; {common_text(runs)}")
        correlation(ctx, name, runs, CORRELATION_COLUMNS, title.rstrip("; "), color_by=(ctx.by,),
                     colors={ctx.by: key_values(ctx, runs, numeric=True)},
                     optional=("bound_c", "bound_d", *FLATNESS_CORRELATION_COLUMNS))


# Figures beyond the study's, drawn from whatever results exist (id -> maker).
EXTRA_MAKERS = {"flatness": _make_flatness, "sam_vs_sgd": _make_sam, "runs": _make_runs, "sweep": _make_sweep,
                 "sweep_correlation": _make_sweep_correlation, "stability": make_stability, "spectrum": make_spectrum}
EXTRA_FIGURE_IDS = tuple(EXTRA_MAKERS)
