"""A sweep read as one table: every run under a folder (``outputs/multirun``, ``outputs/runs``, any
folder of run folders), and a summary with one row per run.

``read_runs(folder)`` finds every run's ``metrics.parquet`` under ``folder`` (a folder of parquet parts
or a single file; the parts themselves are not runs) and returns all their rows in one frame, with a
``run`` column naming each run's folder relative to ``folder``. Other files (``checkpoint.pt``,
``.hydra/``) are ignored. ``summarize(frame)`` gives one row per run: the settings that differ between
the runs (dotted keys from each run's ``settings``), its status, last iteration, final train and test
accuracy and the metrics of its last ``train`` row (``sharpcomp runs DIR`` prints it,
:mod:`sharpcomp.commands.runs`).
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Mapping
from pathlib import Path

import pandas as pd

from sharpcomp.results.columns import METRIC_COLUMNS
from sharpcomp.results.records import METRICS_FILE, RecordError, read_metrics
from sharpcomp.results.stored_text import settings_json

RUN = "run"
SUMMARY_METRICS = ("sharpness", "G", "log_volume", "mls", "local_dim")


def run_folders(folder: str | Path) -> list[Path]:
    """Every run folder under ``folder`` (itself included), i.e. every folder holding ``metrics.parquet``."""
    folder = Path(folder)
    if folder.name == METRICS_FILE:
        return [folder.parent]
    found = []
    for path in sorted(folder.rglob(METRICS_FILE)):
        if not any(p.name == METRICS_FILE for p in path.parents):  # the parts of a parquet folder are not runs
            found.append(path.parent)
    return found


def run_label(rel: Path) -> str:
    """A run folder's name as text: bytes of a name that is not UTF-8 written as ``\\xff``."""
    return os.fsencode(rel).decode("utf-8", errors="backslashreplace")


def read_runs(folder: str | Path) -> pd.DataFrame:
    """Every run's rows under ``folder`` in one frame, with a ``run`` column (the run's folder relative to
    ``folder``; ``.`` for the folder itself; a name that is not UTF-8 with its bytes escaped). RecordError
    (one line) when there is no run to read; unreadable runs (a link, a FIFO, a foreign parquet file) are
    skipped with a warning."""
    folder = Path(folder)
    if not folder.exists():
        raise RecordError(f"no such folder: {folder}")
    frames = []
    for run_dir in run_folders(folder):
        try:
            frame = read_metrics(run_dir)
        except RecordError as exc:
            warnings.warn(f"skipped {run_dir}: {exc}", stacklevel=2)
            continue
        rel = run_dir.resolve().relative_to(folder.resolve()) if folder.is_dir() else Path(".")
        frames.append(frame.assign(**{RUN: run_label(rel)}))
    if not frames:
        raise RecordError(f"no {METRICS_FILE} under {folder}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # all-NA columns in some frames
        return pd.concat(frames, ignore_index=True, sort=False)


def _flatten(settings: Mapping, prefix: str = "") -> dict:
    out = {}
    for k, v in settings.items():
        if isinstance(v, Mapping) and v:
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = json.dumps(v, sort_keys=True) if isinstance(v, (list, tuple, Mapping)) else v
    return out


def _settings(text) -> dict:
    value = settings_json(text)  # bounded: a results file's settings may be anything
    return {} if value is None else _flatten(value)


def _last(frame: pd.DataFrame, column: str):
    if column not in frame:
        return None
    values = frame[column].dropna()
    return values.iloc[-1] if len(values) else None


def summarize(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per run of ``frame`` (from :func:`read_runs`): ``run``, the settings that differ between
    runs, ``status``, ``iteration`` (the last), ``train_acc``/``test_acc`` (the last evaluated) and the
    metrics of the last ``train`` row."""
    rows = []
    for run, rows_of_run in frame.groupby(RUN, sort=True):
        r = rows_of_run.sort_values("iteration", kind="stable")
        train = r[r["sample_set"] == "train"] if "sample_set" in r else r
        row = {**_settings(_last(r, "settings")), RUN: run}  # a settings key "run" never renames the run
        row.update(status=_last(r, "status"), iteration=_last(r, "iteration"),
                   train_acc=_last(r, "train_acc"), test_acc=_last(r, "test_acc"))
        for name in SUMMARY_METRICS:
            row[name] = _last(train, name) if name in METRIC_COLUMNS else None
        rows.append(row)
    table = pd.DataFrame(rows)
    fixed = ("status", "iteration", "train_acc", "test_acc", *SUMMARY_METRICS)
    keys = [c for c in table.columns if c not in (RUN, *fixed)]
    differ = [k for k in keys if table[k].astype(str).nunique(dropna=False) > 1]
    return table[[RUN, *differ, *fixed]]
