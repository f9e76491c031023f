"""``sharpcomp runs DIR``: a sweep as one table, a row per run (:func:`sharpcomp.results.sweep.summarize`)."""

from __future__ import annotations

import argparse
import sys
import warnings

import pandas as pd

from sharpcomp.results.records import RecordError
from sharpcomp.results.sweep import read_runs, summarize


def main(argv: list[str]) -> int:
    """``sharpcomp runs DIR [--csv FILE]``: print the summary; 2 when there is no run to read."""
    parser = argparse.ArgumentParser(prog="sharpcomp runs", description="One row per run found under a folder: "
                                     "the settings that differ, status, last iteration, final accuracy, metrics.")
    parser.add_argument("folder", help="a folder of runs, e.g. outputs/multirun")
    parser.add_argument("--csv", metavar="FILE", help="also write the summary as CSV")
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            table = summarize(read_runs(args.folder))
    except RecordError as exc:
        print(f"sharpcomp: error: {exc}", file=sys.stderr)
        return 2
    for w in caught:
        print(f"sharpcomp: {w.message}", file=sys.stderr)
    with pd.option_context("display.max_rows", None, "display.max_columns", None, "display.width", 200,
                           "display.float_format", "{:.4g}".format):
        print(table.to_string(index=False))
    if args.csv:
        table.to_csv(args.csv, index=False)
    return 0
