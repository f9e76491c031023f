"""The figures command (``sharpcomp figures``).

Command line (``sharpcomp figures`` calls :func:`main`)::

    sharpcomp figures [RESULT_DIRS ...] [--out DIR] [--last-fraction 0.2] [--formats png,pdf]
                      [--only fig1,figD5] [--band minmax|std|none] [--by KEY]

- ``RESULT_DIRS`` (default ``outputs``): searched recursively for ``metrics.parquet``, so single
  runs, multirun folders and copies from a cluster all work. A file that cannot be read is skipped
  with a line; when nothing can be read, one error line on stderr and exit status 1.
- ``--out`` (default ``<first RESULT_DIR>-figures``, beside the results, never inside them): for each
  figure ``<id>.png``, ``<id>.pdf`` and
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
  line, exit status 2. Without ``--by``, a sweep of one's own networks (a model other than the study's
  vgg10 and mlp4) is grouped by the key that differs between its runs (the first of lr, batch, then
  the others by name, when several differ; a line says which).
- One line per figure written and one per thing skipped or worth knowing (a figure the results do
  not allow, a diverged run, an empty panel, a duplicate run). Exit status 0 when the results were
  read, even when they allow no figure (every skip is printed).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from sharpcomp.figures.beyond import EXTRA_FIGURE_IDS, EXTRA_MAKERS
from sharpcomp.figures.catalogue import FIGURE_IDS, FIGURES, STUDY_MAKERS
from sharpcomp.figures.context import Context
from sharpcomp.figures.draw import BANDS
from sharpcomp.figures.tables import load_results, run_info
from sharpcomp.results.records import METRICS_FILE, SET_ASIDE, RecordError
from sharpcomp.usage import EXIT_USAGE, Parser, UsageError, report

ALL_FIGURE_IDS = FIGURE_IDS + EXTRA_FIGURE_IDS


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------

def _parser() -> argparse.ArgumentParser:
    p = Parser(
        prog="sharpcomp figures",
        description="Draw the study's figures (docs/figures.md) and figures of any results from every "
                    "metrics.parquet under the given folders.",
    )
    p.add_argument("dirs", nargs="*", metavar="RESULT_DIR", help="folders to search (default: outputs)")
    p.add_argument("--out", help="where figures go (default: <first RESULT_DIR>-figures, beside it)")
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


def _error(text: str, status: int = 1) -> int:
    return report("figures", text, status)


def _check_options(args) -> tuple[list[str], tuple[str, ...]]:
    """The image formats and figure ids asked for; ``UsageError`` for a bad option."""
    if not 0 < args.last_fraction <= 1:
        raise UsageError(f"--last-fraction must be in (0, 1], got {args.last_fraction:g}")
    formats = [f.strip().lstrip(".").lower() for f in args.formats.split(",") if f.strip()]
    unknown = [f for f in formats if f not in ("png", "pdf", "svg")]
    if not formats or unknown:
        raise UsageError(f"--formats takes png, pdf, svg (got {args.formats!r})")
    only = ALL_FIGURE_IDS
    if args.only:
        only = tuple(x.strip() for x in args.only.split(",") if x.strip())
        bad = [x for x in only if x not in ALL_FIGURE_IDS]
        if bad:
            raise UsageError(f"unknown figure id {', '.join(bad)} (known: {', '.join(ALL_FIGURE_IDS)})")
    return formats, only


def default_out(results: Path) -> Path:
    """Where figures go without ``--out``: beside the first results folder, never inside it
    (``outputs`` -> ``outputs-figures``, ``outputs/multirun`` -> ``outputs/multirun-figures``)."""
    results = Path(results).absolute()
    return results.parent / f"{results.name}-figures"


def _check_out(out: Path) -> None:
    """Make the output folder and check that a file can be written there; ``UsageError`` if not."""
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file, not a folder (choose a folder with --out)")
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise UsageError(f"cannot write figures to {out}: {reason} (choose a folder with --out)") from None


def _check_out_place(out: Path, default: bool) -> None:
    """``UsageError`` for an output folder inside a run's results (``metrics.parquet``, ``.hydra``,
    ``set-aside``: readers and compaction own those) or, for the default ``<RESULT_DIR>/figures``, a
    symbolic link (a results folder's member must not send writes elsewhere)."""
    parts = Path(os.path.abspath(out)).parts
    inside = next((p for p in parts if p in (METRICS_FILE, ".hydra", SET_ASIDE)), None)
    if inside:
        raise UsageError(f"--out {out} is inside a run's {inside} folder, which only sharpcomp writes "
                          f"(choose a folder with --out)")
    if default and out.is_symlink():
        raise UsageError(f"{out} is a symbolic link (to {os.readlink(out)}); figures are not written through "
                          f"a results folder's link (move it away, or choose a folder with --out)")


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


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    try:
        args = parser.parse_args(list(argv) if argv is not None else None)
        formats, only = _check_options(args)
    except SystemExit as exc:  # --help
        return int(exc.code or 0) if not isinstance(exc.code, str) else EXIT_USAGE
    except UsageError as exc:
        return _error(str(exc), EXIT_USAGE)
    dirs = [Path(d) for d in (args.dirs or ["outputs"])]
    out = Path(args.out) if args.out else default_out(dirs[0])
    try:
        _check_out_place(out, default=not args.out)
    except UsageError as exc:
        return _error(str(exc), EXIT_USAGE)
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
        ctx = Context(frame, info, out, formats, args.last_fraction, args.band, by=args.by)
        _check_out(out)
    except KeyError as exc:
        return _error(exc.args[0], EXIT_USAGE)
    except UsageError as exc:
        return _error(str(exc), EXIT_USAGE)
    _draw(ctx, only)
    print(f"{ctx.written} figure{'s' if ctx.written != 1 else ''} written to {out}"
          if ctx.written else "no figures written: the results allow none (see the lines above)", flush=True)
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main(sys.argv[1:]))
