"""``sharpcomp rank DIRS [target=gap] [out=DIR] ...``: which measure predicts generalisation over a sweep.

Reads every run under the folders (as ``sharpcomp figures`` does), ranks the measures by the protocol of
:mod:`sharpcomp.analysis` (docs/ranking.md), prints the tables and writes the CSVs and figures.
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

from sharpcomp.analysis.bootstrap import SCHEMES
from sharpcomp.analysis.grid import TARGETS, RankingError, grid_of
from sharpcomp.analysis.protocol import rank
from sharpcomp.analysis.report import axis_tables, header, main_table, order, run_table
from sharpcomp.commands.figures import _check_out, _check_out_place
from sharpcomp.figures.context import replacing_file, replacing_path
from sharpcomp.figures.ranking import draw_ranking, draw_ranking_axes
from sharpcomp.figures.tables import load_results
from sharpcomp.results.records import RecordError
from sharpcomp.usage import EXIT_USAGE, UsageError, report

USAGE = f"""usage: sharpcomp rank DIR [DIR ...] [target=gap] [out=DIR] [boot=1000] [bootstrap=runs] [seed=0]
                      [cmi_size=2] [formats=png]

Rank every measure the runs under DIR share by how well it predicts generalisation: Kendall's tau with the
target, the granulated Kendall coefficient per axis and its mean, the conditional mutual information, and
the sign-error distribution over single-hyperparameter pairs (mean and worst case), each with a bootstrap
interval (docs/ranking.md). Each run is read at its last checkpoint; runs trained to a criterion that never
reached it, and runs that did not finish, are left out with a count.
  target    {', '.join(TARGETS)} (default gap: train_acc - test_acc)
  out       folder for ranking.csv, ranking_runs.csv and the figures ranking.*, ranking_axes.*
            (default: <first DIR>-rank, beside it)
  boot      bootstrap draws (default 1000; 0: no intervals)
  bootstrap runs (default: resample the runs) or seeds (resample each configuration's seeds; narrower
            than it should be for few seeds, see docs/ranking.md)
  seed      seed of the bootstrap draws (default 0)
  cmi_size  axes the conditional mutual information conditions on (default 2, as Jiang et al. 2020)
  formats   comma-separated image formats: png, pdf, svg (default png)"""
OPTIONS = {"target": "gap", "out": None, "boot": "1000", "bootstrap": "runs", "seed": "0", "cmi_size": "2",
           "formats": "png"}


def _parse(argv: Sequence[str]) -> tuple[list[Path], dict]:
    dirs, opts = [], dict(OPTIONS)
    for a in argv:
        if a.startswith("-"):
            raise UsageError(f"unknown flag '{a}' (options are key=value; see `sharpcomp rank --help`)")
        if "=" in a and not Path(a).is_dir():  # run folders may carry '=' in their names
            k, v = a.split("=", 1)
            if k not in OPTIONS:
                raise UsageError(f"unknown option '{k}' (options: {', '.join(OPTIONS)})")
            opts[k] = v
        else:
            dirs.append(Path(a))
    if not dirs:
        raise UsageError("missing DIR: a folder of runs (see `sharpcomp rank --help`)")
    if opts["target"] not in TARGETS:
        raise UsageError(f"unknown target '{opts['target']}' (choose from {', '.join(TARGETS)})")
    if opts["bootstrap"] not in SCHEMES:
        raise UsageError(f"unknown bootstrap '{opts['bootstrap']}' (choose from {', '.join(SCHEMES)})")
    for k, low in (("boot", 0), ("seed", 0), ("cmi_size", 0)):
        try:
            opts[k] = int(opts[k])
        except ValueError:
            raise UsageError(f"{k} must be an integer, got '{opts[k]}'") from None
        if opts[k] < low:
            raise UsageError(f"{k} must be >= {low}, got {opts[k]}")
    formats = [f.strip().lstrip(".").lower() for f in opts["formats"].split(",") if f.strip()]
    if not formats or any(f not in ("png", "pdf", "svg") for f in formats):
        raise UsageError(f"formats takes png, pdf, svg (got '{opts['formats']}')")
    opts["formats"] = formats
    return dirs, opts


def _write(ranking, out: Path, formats: Sequence[str]) -> list[str]:
    """The CSVs and the figures, each written whole (beside its name, then renamed in)."""
    written = []
    for name, table in (("ranking.csv", ranking.table), ("ranking_runs.csv", run_table(ranking))):
        with replacing_file(out / name) as fh:
            table.to_csv(fh, index=False)
        written.append(name)
    names, axes = order(ranking), list(ranking.grid.axes)
    title = f"{len(ranking.grid.runs)} runs, target: {TARGETS[ranking.grid.target]}"
    for stem, fig in (("ranking", draw_ranking(ranking.table, names, title)),
                      ("ranking_axes", draw_ranking_axes(ranking.table, names, axes, title))):
        for ext in formats:
            with warnings.catch_warnings(), replacing_path(out / f"{stem}.{ext}") as tmp:
                warnings.simplefilter("ignore")
                fig.savefig(tmp, dpi=150)
            written.append(f"{stem}.{ext}")
    return written


def main(argv: Sequence[str] | None = None) -> int:
    """``sharpcomp rank DIR ... [key=value ...]``: print the ranking and write its files; 0 on success."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "rank":
        argv = argv[1:]
    if any(a in ("-h", "--help", "help") for a in argv):
        print(USAGE)
        return 0
    try:
        dirs, opts = _parse(argv)
        out = Path(opts["out"]) if opts["out"] else dirs[0].absolute().parent / f"{dirs[0].absolute().name}-rank"
        _in_our_words(_check_out_place, out, not opts["out"])
        frame, notes = load_results(dirs)
        grid = grid_of(frame, opts["target"])
        _in_our_words(_check_out, out)
        print("\n".join(notes + header_before(grid, opts)), flush=True)
        ranking = rank(grid, opts["boot"], opts["seed"], opts["cmi_size"], bootstrap=opts["bootstrap"])
    except (UsageError, RankingError, RecordError) as exc:
        return report("rank", str(exc), EXIT_USAGE)
    print("\n".join(header(ranking)) + "\n", flush=True)
    print(main_table(ranking) + "\n\n" + axis_tables(ranking) + "\n", flush=True)
    try:
        written = _write(ranking, out, opts["formats"])
    except OSError as exc:
        return report("rank", f"cannot write to {out}: {exc.strerror or exc}", 1)
    print(f"wrote {', '.join(written)} to {out}")
    return 0


def _in_our_words(check, *args) -> None:
    """One of the figures' checks of an output folder (inside a run's own folders, a link, not writable), its
    refusal in this command's words."""
    try:
        check(*args)
    except UsageError as exc:
        raise UsageError(str(exc).replace("--out ", "out=").replace("--out", "out=DIR")) from None


def header_before(grid, opts: dict) -> list[str]:
    """The line said before the bootstrap starts (it may take a while)."""
    if not opts["boot"]:
        return []
    return [f"ranking {grid.values.shape[1]} measures over {len(grid.runs)} runs with {opts['boot']} bootstrap draws"]
