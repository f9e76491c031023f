"""``sharpcomp rank DIR ... [target=gap] [out=DIR] ...``: which measure predicts generalisation over a sweep.

Reads every run under the folders (as ``sharpcomp figures`` does), ranks the measures by the protocol of
:mod:`sharpcomp.analysis` (docs/ranking.md), prints the tables and writes the CSVs and figures.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from sharpcomp.analysis.bootstrap import SCHEMES
from sharpcomp.analysis.grid import TARGETS, RankingError, grid_of
from sharpcomp.analysis.protocol import Ranking, rank
from sharpcomp.analysis.report import axis_tables, header, main_table, order, run_table
from sharpcomp.commands.output_folder import check_place, make_writable
from sharpcomp.figures.context import replacing_file, replacing_path
from sharpcomp.figures.ranking import draw_ranking, draw_ranking_axes
from sharpcomp.figures.tables import load_results
from sharpcomp.results.records import RecordError
from sharpcomp.usage import EXIT_USAGE, Option, Syntax, UsageError, choice, choices_list, integer, report

SYNTAX = Syntax(
    command="rank",
    summary="Rank every measure the runs under DIR share by how well it predicts generalisation: Kendall's tau "
            "with the target, the granulated Kendall coefficient per axis and its mean, the conditional mutual "
            "information, and the sign-error distribution over single-hyperparameter pairs (mean and worst "
            "case), each with a bootstrap interval (docs/ranking.md). Each run is read at its last checkpoint; "
            "runs trained to a criterion that never reached it, and runs that did not finish, are left out "
            "with a count.",
    folders="DIR [DIR ...]",
    folders_help="folders searched for runs (metrics.parquet), e.g. a sweep's outputs/multirun/...",
    most=None,
    options=(
        Option("target", f"{', '.join(TARGETS)} (default gap: train_acc - test_acc)", "NAME"),
        Option("out", "folder for ranking.csv, ranking_runs.csv and the figures ranking.*, ranking_axes.* "
                      "(default: <first DIR>-rank, beside it)", "DIR"),
        Option("boot", "bootstrap draws (default 1000; 0: no intervals)", "N"),
        Option("bootstrap", "runs (default: resample the runs) or seeds (resample each configuration's seeds; "
                            "narrower than it should be for few seeds, see docs/ranking.md)", "SCHEME"),
        Option("seed", "seed of the bootstrap draws (default 0)", "N"),
        Option("cmi_size", "axes the conditional mutual information conditions on (default 2, as Jiang et al. "
                           "2020)", "N"),
        Option("formats", "comma-separated image formats: png, pdf, svg (default png)", "LIST"),
    ),
    examples=("sharpcomp rank outputs/multirun/rank-fashion_mnist-mlp4",
              "sharpcomp rank outputs/multirun/my-sweep target=test_error boot=2000 formats=png,pdf"),
)


@dataclass
class Request:
    """A checked command line."""

    dirs: list[Path]
    out: Path
    target: str
    boot: int
    bootstrap: str
    seed: int
    cmi_size: int
    formats: list[str]


def _request(argv: Sequence[str]) -> Request:
    """The checked request of a command line; UsageError (one line) for a bad option or folder."""
    args = SYNTAX.parse(argv)
    if not args.folders:
        raise UsageError("missing DIR, a folder of runs (see `sharpcomp rank --help`)")
    dirs = [Path(d) for d in args.folders]
    missing = [str(d) for d in dirs if not d.exists()]
    if missing:
        raise UsageError(f"no such folder: {', '.join(missing)}")
    out = Path(args.get("out")) if args.get("out") else dirs[0].absolute().parent / f"{dirs[0].absolute().name}-rank"
    check_place(out, not args.get("out"), "the ranking's files")
    return Request(
        dirs, out, choice("target", args.get("target", "gap"), tuple(TARGETS)),
        integer(args.said("boot"), args.get("boot", "1000"), 0),
        choice("bootstrap", args.get("bootstrap", "runs"), SCHEMES),
        integer(args.said("seed"), args.get("seed", "0"), 0),
        integer(args.said("cmi_size"), args.get("cmi_size", "2"), 0),
        choices_list("formats", args.get("formats", "png"), ("png", "pdf", "svg")))


def _write(ranking: Ranking, out: Path, formats: Sequence[str]) -> list[str]:
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


@SYNTAX.entry_point
def main(argv: list[str]) -> int:
    """``sharpcomp rank DIR ... [key=value ...]``: print the ranking and write its files; 0 on success."""
    try:
        req = _request(argv)
        frame, notes = load_results(req.dirs)
        grid = grid_of(frame, req.target)
        make_writable(req.out, "the ranking's files")
        if req.boot:
            notes.append(f"ranking {grid.values.shape[1]} measures over {len(grid.runs)} runs with {req.boot} "
                         f"bootstrap draws")
        print("\n".join(notes), flush=True)
        ranking = rank(grid, req.boot, req.seed, req.cmi_size, bootstrap=req.bootstrap)
    except (UsageError, RankingError, RecordError) as exc:
        return report("rank", str(exc), EXIT_USAGE)
    try:  # the files first: a reader of the tables that stops early (`| head`) loses none of them
        written = _write(ranking, req.out, req.formats)
    except OSError as exc:
        return report("rank", f"cannot write to {req.out}: {exc.strerror or exc}", 1)
    print("\n".join(header(ranking)) + "\n", flush=True)
    print(main_table(ranking) + "\n\n" + axis_tables(ranking) + "\n", flush=True)
    print(f"wrote {', '.join(written)} to {req.out}")
    return 0
