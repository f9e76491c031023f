"""Result records: one tidy row per (checkpoint, sample set) in ``<run_dir>/metrics.parquet``.

A row carries the run's identity (so a figure needs nothing but parquet files), the whole-set
evaluations (missing between their cadence), and the metric columns computed on one sample set.

Writes are atomic (write a temporary file in the same folder, fsync, rename), so a kill at any
moment leaves a readable file holding every completed checkpoint. The run's current status is
stored in every row (``status``) and rewritten with each append; a finished, diverged or failed
run therefore says so in its parquet file.
"""

from __future__ import annotations

import io
import os
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path

import pandas as pd

# The column names are sharpcomp.columns' (one schema for every module); records re-exports them.
from sharpcomp.columns import CHECKPOINT_COLUMNS as CHECKPOINT_COLUMNS
from sharpcomp.columns import COLUMNS as COLUMNS
from sharpcomp.columns import IDENTITY_COLUMNS as IDENTITY_COLUMNS
from sharpcomp.columns import METRIC_COLUMNS as METRIC_COLUMNS
from sharpcomp.columns import REASON_COLUMNS as REASON_COLUMNS
from sharpcomp.columns import SAMPLE_COLUMNS as SAMPLE_COLUMNS

METRICS_FILE = "metrics.parquet"

STATUSES = ("running", "finished", "diverged", "failed")

SAMPLE_SETS = ("train", "test", "misclassified")


class RecordError(RuntimeError):
    """A results file that cannot be read or does not look like sharpcomp output."""


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_parquet(path: Path, frame: pd.DataFrame) -> None:
    buf = io.BytesIO()
    frame.to_parquet(buf, index=False)
    atomic_write_bytes(Path(path), buf.getvalue())


def read_metrics(path: Path) -> pd.DataFrame:
    """Read one run's ``metrics.parquet`` (or a folder holding one)."""
    path = Path(path)
    if path.is_dir():
        path = path / METRICS_FILE
    try:
        # read the bytes once: pyarrow opens a path more than once, so a reader racing a writer's
        # atomic replace could mix two versions of the file
        with open(path, "rb") as fh:
            frame = pd.read_parquet(io.BytesIO(fh.read()))
    except FileNotFoundError:
        raise RecordError(f"no results file at {path}") from None
    except Exception as exc:  # pyarrow raises several types for a damaged file
        raise RecordError(f"cannot read results file {path}: {exc}") from None
    missing = {"run_id", "iteration", "sample_set"} - set(frame.columns)
    if missing:
        raise RecordError(f"{path} is not a sharpcomp results file (missing columns: {', '.join(sorted(missing))})")
    return frame


class RunRecorder:
    """Appends checkpoint rows to one run's parquet file, atomically.

    ``identity`` is the mapping of identity columns (without ``status``). Rows are mappings of
    the other columns; absent columns are stored as missing values. Extra metric columns (for
    example from optional flatness measures) are kept as they come.
    """

    def __init__(self, run_dir: Path, identity: Mapping[str, object]):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / METRICS_FILE
        self.identity = dict(identity)
        self.status = "running"
        self.frame = read_metrics(self.path) if self.path.exists() else None

    @property
    def rows(self) -> int:
        return 0 if self.frame is None else len(self.frame)

    @property
    def last_iteration(self) -> int | None:
        if self.frame is None or len(self.frame) == 0:
            return None
        return int(self.frame["iteration"].max())

    def truncate_after(self, iteration: int | None) -> None:
        """Drop rows past ``iteration`` (rows of a checkpoint whose model state was not saved)."""
        if self.frame is None:
            return
        keep = self.frame if iteration is None else self.frame[self.frame["iteration"] <= iteration]
        if iteration is None:
            keep = self.frame.iloc[0:0]
        if len(keep) != len(self.frame):
            self.frame = keep.reset_index(drop=True)
            self._write()

    def append(self, rows: Iterable[Mapping[str, object]], status: str | None = None) -> None:
        if status is not None:
            self.set_status(status, write=False)
        new = pd.DataFrame([{**self.identity, **row} for row in rows])
        frame = new if self.frame is None or len(self.frame) == 0 else pd.concat([self.frame, new], ignore_index=True)
        self.frame = frame
        self._write()

    def set_status(self, status: str, write: bool = True) -> None:
        if status not in STATUSES:
            raise ValueError(f"unknown status {status!r}")
        self.status = status
        if write and self.frame is not None and len(self.frame):
            self._write()

    def _write(self) -> None:
        frame = self.frame.copy()
        frame["status"] = self.status
        ordered = [c for c in COLUMNS if c in frame.columns] + [c for c in frame.columns if c not in COLUMNS]
        for col in COLUMNS:
            if col not in frame.columns:
                frame[col] = None
                ordered.append(col)
        frame = frame[ordered]
        for col in METRIC_COLUMNS + CHECKPOINT_COLUMNS[2:] + ("sample_loss",):
            frame[col] = pd.to_numeric(frame[col], errors="coerce").astype("float64")
        self.frame = frame.drop(columns=["status"])
        self.run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_parquet(self.path, frame)
