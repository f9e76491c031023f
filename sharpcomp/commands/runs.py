"""``sharpcomp runs DIR [csv=FILE]``: a sweep as one table, a row per run (``results.sweep.summarize``)."""

from __future__ import annotations

import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from sharpcomp.results.records import METRICS_FILE, RecordError, atomic_write_bytes
from sharpcomp.results.sweep import read_runs, summarize
from sharpcomp.usage import Option, Syntax, UsageError, check_output_place, report
from sharpcomp.warning_lines import drop_noise

SYNTAX = Syntax(
    command="runs",
    summary="One row per run found under a folder: the settings that differ, status, last iteration, final "
            "accuracy, metrics.",
    folders="DIR",
    folders_help="a folder of runs (e.g. outputs/multirun), or one run's folder",
    most=1,
    options=(Option("csv", "also write the summary as CSV to FILE", "FILE"),),
    examples=("sharpcomp runs outputs/multirun", "sharpcomp runs outputs/runs csv=runs.csv"),
)


def _request(argv: Sequence[str]) -> tuple[Path, Path | None]:
    """The folder to read and the CSV to write; UsageError for a bad command line."""
    args = SYNTAX.parse(argv)
    if not args.folders:
        raise UsageError("missing DIR, the folder of runs to read (see `sharpcomp runs --help`)")
    folder = Path(args.folders[0])
    if folder.name == METRICS_FILE:  # a run's records named directly: the run
        folder = folder.parent
    csv = args.get("csv")
    if csv is not None:
        if not csv:
            raise UsageError("csv needs a file name: csv=FILE")
        check_output_place(csv, args.said("csv"))
        if Path(csv).is_dir():
            raise UsageError(f"{args.said('csv')} {csv} is a folder; name a file")
    return folder, None if csv is None else Path(csv)


@SYNTAX.entry_point
def main(argv: list[str]) -> int:
    """``sharpcomp runs DIR [csv=FILE]``: print the summary; 2 when there is no run to read."""
    try:
        folder, csv = _request(argv)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            drop_noise()  # collected to be said, but never a library's notice of its own deprecation
            table = summarize(read_runs(folder))
    except (UsageError, RecordError) as exc:
        return report("runs", str(exc))
    for w in caught:
        print(f"sharpcomp runs: {w.message}", file=sys.stderr)
    with pd.option_context("display.max_rows", None, "display.max_columns", None, "display.width", 200,
                           "display.float_format", "{:.4g}".format):
        print(table.to_string(index=False))
    if csv is not None:
        try:
            atomic_write_bytes(csv, table.to_csv(index=False).encode())
        except OSError as exc:
            return report("runs", f"cannot write {csv}: {exc.strerror or exc}")
    return 0
