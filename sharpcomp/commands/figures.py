"""The figures command (``sharpcomp figures``).

Command line (``sharpcomp figures`` calls :func:`main`; the syntax every subcommand shares,
:mod:`sharpcomp.usage`)::

    sharpcomp figures [RESULT_DIR ...] [out=DIR] [last_fraction=0.2] [formats=png,pdf]
                      [only=fig1,figD5] [band=minmax|std|none] [by=KEY]

(``--out DIR``, ``--last-fraction 0.2`` ... mean the same.)

- ``RESULT_DIR`` (default ``outputs``): searched recursively for ``metrics.parquet``, so single
  runs, multirun folders and copies from a cluster all work. A file that cannot be read is skipped
  with a line; a folder that does not exist or holds no results: one error line, exit status 2; results
  that are there but none readable: exit status 1.
- ``out`` (default ``<first RESULT_DIR>-figures``, beside the results, never inside them): for each
  figure ``<id>.png``, ``<id>.pdf`` and
  CSVs of the numbers drawn: trend figures ``<id>.csv`` (per group, column and iteration: mean over
  runs, std, min, max, number of runs; the flatness figure adds ``se``, the standard error of the
  lines drawn with error bars) and ``<id>_runs.csv`` (per-run summary: identity, progress, mean of
  every quantity over the last ``last_fraction`` of checkpoints); correlation figures
  ``<id>.csv`` (the per-run points) and ``<id>_pearson.csv`` (Pearson r, p-value and n per pair).
  A folder that cannot be written (or a file given as ``out``): one error line, exit status 2.
- The CSVs' ``_run`` column names each run by its folder relative to the RESULT_DIR it was found
  under (with several RESULT_DIRs, prefixed by that folder's name), never by an absolute path.
- ``by=KEY``: a swept config key, dotted as in the run's settings (``model.width``, ``optim.rho``,
  ``metrics.layer``, ``lr``; the flat identity names ``width``, ``optim`` ... work too). The ``sweep``
  and ``sweep_correlation`` figures then draw one line / colour per value of it. Read from each run's
  ``settings`` column, or for older files from the identity columns; a key no run has: one error
  line, exit status 2. Without ``by``, a sweep of one's own networks (a model other than the study's
  vgg10 and mlp4) is grouped by the key that differs between its runs (the first of lr, batch, then
  the others by name, when several differ; a line says which).
- One line per figure written and one per thing skipped or worth knowing (a figure the results do
  not allow, a diverged run, an empty panel, a duplicate run). Exit status 0 when the results were
  read, even when they allow no figure (every skip is printed).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from sharpcomp.commands.output_folder import check_place, make_writable
from sharpcomp.figures.beyond import EXTRA_FIGURE_IDS, EXTRA_MAKERS
from sharpcomp.figures.catalogue import FIGURE_IDS, FIGURES, STUDY_MAKERS
from sharpcomp.figures.context import Context
from sharpcomp.figures.draw import BANDS
from sharpcomp.figures.tables import load_results, run_info
from sharpcomp.results.records import METRICS_FILE, RecordError
from sharpcomp.usage import (
    EXIT_USAGE,
    Option,
    Syntax,
    UsageError,
    choice,
    choices_list,
    number,
    report,
)

ALL_FIGURE_IDS = FIGURE_IDS + EXTRA_FIGURE_IDS


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------

SYNTAX = Syntax(
    command="figures",
    summary="Draw the study's figures (docs/figures.md) and figures of any results from every metrics.parquet "
            "under the given folders.",
    folders="[RESULT_DIR ...]",
    folders_help="folders to search for metrics.parquet (default: outputs)",
    most=None,
    options=(
        Option("out", "where figures go (default: <first RESULT_DIR>-figures, beside it)", "DIR"),
        Option("last_fraction", "correlation points and per-run summaries: mean over this last fraction of "
                                "each run's checkpoints (default 0.2)", "F"),
        Option("formats", "comma-separated image formats: png, pdf, svg (default png,pdf)", "LIST"),
        Option("only", f"comma-separated figure ids (default all: {','.join(ALL_FIGURE_IDS)})", "IDS"),
        Option("band", f"trend band over seeds: {' | '.join(BANDS)} (default minmax: min to max; std: mean +- std)",
               "BAND"),
        Option("by", "a swept config key (model.width, optim.rho, metrics.layer, lr, ...): the sweep figures "
                     "draw one line (trend) or colour (correlation) per value of it", "KEY"),
    ),
    examples=("sharpcomp figures outputs", "sharpcomp figures outputs/multirun out=figs only=fig1,runs",
              "sharpcomp figures outputs/multirun/fashion_mnist-mymodel by=model.width"),
)


@dataclass(frozen=True)
class Request:
    """What the command line asks for, checked."""

    dirs: list[Path]
    out: Path
    formats: list[str]
    only: tuple[str, ...]
    last_fraction: float
    band: str
    by: str | None


def _error(text: str, status: int = 1) -> int:
    return report("figures", text, status)


def _request(argv: Sequence[str]) -> Request:
    """The checked request of a command line; ``UsageError`` for a bad option or folder."""
    args = SYNTAX.parse(argv)
    fraction = number(args.said("last_fraction"), args.get("last_fraction", "0.2"))
    if not 0 < fraction <= 1:
        raise UsageError(f"{args.said('last_fraction')} must be in (0, 1], got {fraction:g}")
    formats = [f.strip().lstrip(".").lower() for f in args.get("formats", "png,pdf").split(",") if f.strip()]
    unknown = [f for f in formats if f not in ("png", "pdf", "svg")]
    if not formats or unknown:
        raise UsageError(f"{args.said('formats')} takes png, pdf, svg (got {args.get('formats')!r})")
    only = ALL_FIGURE_IDS
    if args.get("only") is not None:
        only = tuple(choices_list("figure id", args.get("only"), ALL_FIGURE_IDS))
    band = choice("band", args.get("band", "minmax"), BANDS)
    dirs = [Path(d) for d in (args.folders or ["outputs"])]
    missing = [str(d) for d in dirs if not d.exists()]
    if missing:
        raise UsageError(f"no such folder: {', '.join(missing)}")
    if not any(d.name == METRICS_FILE or next(d.rglob(METRICS_FILE), None) for d in dirs):
        raise UsageError(f"no {METRICS_FILE} files under {', '.join(map(str, dirs))} (name folders that hold "
                         f"sharpcomp results)")
    out = Path(args.get("out")) if args.get("out") else default_out(dirs[0])
    check_place(out, not args.get("out"), "figures")
    return Request(dirs, out, formats, only, fraction, band, args.get("by"))


def default_out(results: Path) -> Path:
    """Where figures go without ``--out``: beside the first results folder, never inside it
    (``outputs`` -> ``outputs-figures``, ``outputs/multirun`` -> ``outputs/multirun-figures``)."""
    results = Path(results).absolute()
    return results.parent / f"{results.name}-figures"


def _draw(ctx: Context, only: Sequence[str]) -> None:
    """Every figure asked for; one figure's failure does not stop the others."""
    jobs = [(s.id, STUDY_MAKERS[s.kind], s) for s in FIGURES]
    jobs += [(fig_id, maker, fig_id) for fig_id, maker in EXTRA_MAKERS.items()]
    for fig_id, maker, what in jobs:
        if fig_id in only:
            try:
                maker(ctx, what)
            except Exception as exc:
                ctx.say(fig_id, f"skipped, could not be drawn: {type(exc).__name__}: {exc}")


@SYNTAX.entry_point
def main(argv: list[str]) -> int:
    """``sharpcomp figures [RESULT_DIR ...] [key=value ...]``: draw every figure the results allow; 0 on success."""
    try:
        req = _request(argv)
    except UsageError as exc:
        return _error(str(exc), EXIT_USAGE)
    try:
        frame, notes = load_results(req.dirs)
    except RecordError as exc:
        return _error(str(exc))
    except Exception as exc:  # a damaged folder must not end in a traceback
        return _error(f"cannot read results under {', '.join(map(str, req.dirs))}: {exc}")
    for note in notes:
        print(note, flush=True)
    info = run_info(frame)
    print(f"read {len(info)} runs from {len(req.dirs)} folder{'s' if len(req.dirs) > 1 else ''}", flush=True)
    try:
        ctx = Context(frame, info, req.out, req.formats, req.last_fraction, req.band, by=req.by)
        make_writable(req.out, "figures")
    except KeyError as exc:
        return _error(exc.args[0], EXIT_USAGE)
    except UsageError as exc:
        return _error(str(exc), EXIT_USAGE)
    _draw(ctx, req.only)
    print(f"{ctx.written} figure{'s' if ctx.written != 1 else ''} written to {req.out}"
          if ctx.written else "no figures written: the results allow none (see the lines above)", flush=True)
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main(sys.argv[1:]))
