"""Result records: one tidy row per (checkpoint, sample set) under ``<run_dir>/metrics.parquet``.

A row carries the run's identity (so a figure needs nothing but parquet files), the whole-set
evaluations (missing between their cadence), and the metric columns computed on one sample set.

``metrics.parquet`` is a folder of parquet parts, read back whole by ``pd.read_parquet`` (pyarrow
reads a folder of parts) or by ``read_metrics``, which all of sharpcomp uses:

- each checkpoint appends one small part, ``part-<first iteration:09d>.parquet``, written atomically
  (temporary file, fsync, rename): an append costs the same at iteration 500,000 as at 200, and a kill
  at any moment leaves every completed checkpoint readable;
- the run's status (running, finished, diverged, failed) lives in the sidecar ``_status`` (pyarrow skips
  names starting with ``_`` or ``.``); ``read_metrics`` applies it to every row;
- when the run ends (a finished, diverged or failed status), the parts are compacted into one part
  whose rows all carry that status: the new folder is built beside the old one and swapped in with one
  atomic exchange (Linux ``renameat2``), so no reader ever sees a row twice or misses one. Where the
  exchange is not available, the swap is two renames and ``read_metrics`` waits out the gap;
- rows past a resume point are dropped by deleting parts from the last one backwards, so readers
  always see a prefix of the checkpoints.

A single-file ``metrics.parquet`` (results written before parts) still reads, and a run that opens
one converts it to a folder.
"""

from __future__ import annotations

import io
import os
import stat
import sys
import time
import uuid
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

# The column names are sharpcomp.results.columns' (one schema for every module); records re-exports them.
from sharpcomp.results.columns import (
    CHECKPOINT_COLUMNS,
    COLUMNS,
    METRIC_COLUMNS,
    NETWORK_WIDE_COLUMNS,
    current_names,
)

# Reading and writing a folder's own files (re-exported: the results' one error type and the writers)
from sharpcomp.results.own_files import (  # noqa: F401
    GiB,
    RecordError,
    atomic_write_bytes,
    exchange,
    fsync_dir,
    open_regular,
    read_regular,
    refuse_link,
    remove,
)

METRICS_FILE = "metrics.parquet"

STATUSES = ("running", "finished", "diverged", "failed")

SAMPLE_SETS = ("train", "test", "misclassified")


def atomic_write_parquet(path: Path, frame: pd.DataFrame) -> None:
    """Write ``frame`` as parquet to ``path``, atomically (:func:`atomic_write_bytes`)."""
    buf = io.BytesIO()
    frame.to_parquet(buf, index=False)
    atomic_write_bytes(Path(path), buf.getvalue())


# Names inside a ``metrics.parquet`` folder, and the hidden siblings of a folder being swapped in.
PART_PREFIX = "part-"
STATUS_FILE = "_status"
ENDED = ("finished", "diverged", "failed")
_SWAP = f".{METRICS_FILE}.swap-"
_NUMERIC = METRIC_COLUMNS + CHECKPOINT_COLUMNS[2:] + ("sample_loss",) + NETWORK_WIDE_COLUMNS
_READ_PATIENCE_S = 5.0  # how long a reader waits out a writer's swap or deletion before giving up


def part_name(iteration: int) -> str:
    """The file name of the part that holds checkpoint ``iteration``'s rows."""
    return f"{PART_PREFIX}{int(iteration):09d}.parquet"


def part_names(folder: Path) -> list[str]:
    """The part files of a ``metrics.parquet`` folder, in checkpoint order."""
    return sorted(n for n in os.listdir(folder) if n.startswith(PART_PREFIX) and n.endswith(".parquet"))


def tidy(frame: pd.DataFrame, status: str | None = None) -> pd.DataFrame:
    """Every column of ``COLUMNS`` (missing ones as missing values) in that order, then the extra ones.

    Numeric columns as float64; ``status`` (when given) in every row; measure columns under their current
    names (:func:`~sharpcomp.results.columns.current_names`).
    """
    frame = current_names(frame.copy())
    if status is not None:
        frame["status"] = status
    for col in COLUMNS:
        if col not in frame.columns:
            frame[col] = None
    frame = frame[list(COLUMNS) + [c for c in frame.columns if c not in COLUMNS]]
    for col in _NUMERIC:
        frame[col] = pd.to_numeric(frame[col], errors="coerce").astype("float64")
    return frame


PART_LIMIT = GiB  # no results part (a run's compacted rows included) comes near this size
_STATUS_LIMIT = 64


def _read_table(path: Path) -> pa.Table:
    # read the bytes once: pyarrow opens a path more than once, so a reader racing a writer's
    # atomic replace could mix two versions of the file; only a regular file, of a bounded size
    data = read_regular(path, PART_LIMIT)
    return pq.ParquetFile(pa.BufferReader(data)).read(use_threads=False)  # 5x faster than read_table


def _read_file(path: Path) -> pd.DataFrame:
    return _read_table(path).to_pandas()


def _regular(path: Path) -> bool:
    """Whether ``path`` is a plain file (not a folder, a link or a device); FileNotFoundError if absent."""
    return stat.S_ISREG(os.lstat(path).st_mode)


def _read_status(folder: Path) -> str | None:
    """The sidecar's status.

    None when it is absent or its content is not a status (garbage: the status then comes from the
    parts' rows, and the next write rebuilds the sidecar).
    """
    path = folder / STATUS_FILE
    try:
        with open_regular(path) as fh:
            status = fh.read(_STATUS_LIMIT).decode("ascii", errors="replace").strip()
    except FileNotFoundError:
        return None
    except RecordError:
        raise RecordError(f"{path} is not a file (a folder, link or device where the run's status belongs); "
                          f"move it away and rerun") from None
    return status if status in STATUSES else None


def _concat(frames: list[pd.DataFrame]) -> pd.DataFrame:
    if len(frames) == 1:
        return frames[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # all-missing columns in some parts
        return pd.concat(frames, ignore_index=True, sort=False)


def _concat_tables(tables: list[pa.Table]) -> pd.DataFrame:
    """Parts as one frame.

    Parts whose columns differ (a column missing in some, or missing values in all of a part's rows) are
    combined as ``pd.concat`` combines their frames; equal schemas, the common case, go through one arrow
    table (much faster than a frame per part).
    """
    if all(t.schema.equals(tables[0].schema) for t in tables[1:]):
        return pa.concat_tables(tables).to_pandas()
    return _concat([t.to_pandas() for t in tables])


def _read_folder(folder: Path) -> pd.DataFrame:
    """All parts of a folder, tidy, with the sidecar's status in every row.

    Parts are opened in checkpoint order; one that vanishes (a writer swapped the folder or dropped rows)
    raises FileNotFoundError and the caller starts over.
    """
    names = part_names(folder)
    for name in names:
        if not _regular(folder / name):
            raise RecordError(f"{folder / name} is not a results part (a folder or link among the parts); "
                              f"move it away and rerun")
    tables = [_read_table(folder / name) for name in names]
    status = _read_status(folder)
    if not tables:
        return tidy(pd.DataFrame({c: [] for c in COLUMNS}), status)
    frame = _concat_tables(tables)
    _check_columns(frame, folder)  # before tidy adds every column: a folder of foreign parts is no run
    if status is None and "status" in frame.columns:
        status = frame["status"].iloc[-1]  # no sidecar: the last part's status is the run's
    return tidy(frame, status)


def _check_columns(frame: pd.DataFrame, target: Path) -> None:
    missing = {"run_id", "iteration", "sample_set"} - set(current_names(frame.iloc[:0]).columns)
    if missing:
        raise RecordError(f"{target} is not a sharpcomp results file (missing columns: {', '.join(sorted(missing))})")


def reason(exc: BaseException) -> str:
    """An exception in one line for a message: its first line, or its type when it says nothing."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return lines[0][:300] if lines else type(exc).__name__


def _results_path(path: Path) -> Path:
    """``metrics.parquet`` (file or folder) of a run folder, or the path itself."""
    if path.name != METRICS_FILE and path.is_dir():
        return path / METRICS_FILE
    return path


def _in_flux(target: Path) -> bool:
    """Whether a missing file under ``target`` may be a writer's swap or deletion in progress."""
    return target.exists() or any(p.name.startswith(_SWAP) for p in target.parent.glob(f".{METRICS_FILE}.*"))


def read_metrics(path: Path) -> pd.DataFrame:
    """Read one run's records (one row per checkpoint and sample set).

    ``path``: a run folder, its ``metrics.parquet`` folder, or a single-file ``metrics.parquet`` of older
    results. Safe while the run writes: whole checkpoints, each once. Only regular files are read (a link,
    a FIFO or a device is refused with one line), none larger than ``PART_LIMIT``.
    """
    target = _results_path(Path(path))
    deadline = time.monotonic() + _READ_PATIENCE_S
    while True:
        try:
            if _is_folder(target):
                frame = _read_folder(target)
            else:
                frame = current_names(_read_file(target))
                _check_columns(frame, target)
            break
        except RecordError:
            raise
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            if time.monotonic() > deadline or not _in_flux(target):
                raise RecordError(f"no results file at {target}") from None
            time.sleep(0.002)
        except Exception as exc:  # pyarrow raises several types for a damaged file; MemoryError says nothing
            raise RecordError(f"cannot read results file {target}: {reason(exc)}") from None
    return frame


def _is_folder(path: Path) -> bool:
    """Whether ``path`` is a folder of its own (not a link to one); FileNotFoundError if absent."""
    return stat.S_ISDIR(os.lstat(path).st_mode)


def _is_dir(path: Path) -> bool:
    """Whether ``path`` is a folder of its own (False when absent or anything else)."""
    try:
        return _is_folder(path)
    except OSError:
        return False


def swap_in(new: Path, target: Path) -> None:
    """Replace ``target`` (file or folder, or nothing) by the complete folder ``new``, then delete the old.

    Atomic where the OS can exchange two paths; elsewhere two renames, whose gap ``read_metrics`` waits out
    (``new`` is named ``.metrics.parquet.swap-*``: a run that is killed in the gap is recovered by
    ``recover_swap``).
    """
    fsync_dir(new)
    if target.exists() and exchange(new, target):
        remove(new)
    else:
        old = target.with_name(f"{_SWAP}old-{uuid.uuid4().hex}")
        if target.exists():
            os.rename(target, old)
        os.rename(new, target)
        remove(old)
    fsync_dir(target.parent)


def recover_swap(target: Path) -> None:
    """Finish or undo a swap that a kill interrupted.

    Complete folders named ``.swap-<id>`` replace a missing target; every other leftover is deleted.
    """
    left = sorted(p for p in target.parent.glob(f".{METRICS_FILE}.*") if p.name.startswith(_SWAP))
    for p in left:
        complete = not p.name.startswith(f"{_SWAP}old-") and (p / STATUS_FILE).exists()
        if not target.exists() and complete:
            os.rename(p, target)
        else:
            remove(p)


def _ours(name: str) -> bool:
    """Whether a name inside ``metrics.parquet`` is one the program writes.

    Parts, the status sidecar and their temporary files.
    """
    if name == STATUS_FILE or (name.startswith(PART_PREFIX) and name.endswith(".parquet")):
        return True
    return name.endswith(".tmp") and name.startswith((f".{PART_PREFIX}", f".{STATUS_FILE}."))


SET_ASIDE = "set-aside"  # where files the program did not write are moved from inside a run folder


def set_aside(path: Path, run_dir: Path) -> Path:
    """Move ``path`` into ``<run_dir>/set-aside/`` under a name not yet taken, with one line on stderr.

    For a file or folder the program did not write, or a resume point it no longer uses: never deleted.
    """
    dest_dir = Path(run_dir) / SET_ASIDE
    dest_dir.mkdir(exist_ok=True)
    refuse_link(dest_dir)
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    dest = dest_dir / f"{path.name}.{stamp}"
    n = 1
    while dest.exists() or dest.is_symlink():
        n += 1
        dest = dest_dir / f"{path.name}.{stamp}.{n}"
    os.rename(path, dest)
    print(f"sharpcomp: moved {path} aside to {dest}", file=sys.stderr, flush=True)
    return dest


def _write_folder(folder: Path, frame: pd.DataFrame, status: str) -> None:
    """A new ``metrics.parquet`` folder holding ``frame`` as one part (none when it is empty)."""
    folder.mkdir()
    if len(frame):
        atomic_write_parquet(folder / part_name(frame["iteration"].min()), frame)
    atomic_write_bytes(folder / STATUS_FILE, f"{status}\n".encode())


class RunRecorder:
    """Appends checkpoint rows to one run's ``metrics.parquet`` folder: one part per append.

    ``identity`` is the mapping of identity columns (without ``status``). Rows are mappings of
    the other columns; absent columns are stored as missing values. Extra metric columns (for
    example from optional flatness measures) are kept as they come. ``rows`` and
    ``last_iteration`` are kept in memory; ``frame`` reads every row back (once per run, not per
    checkpoint).
    """

    def __init__(self, run_dir: Path, identity: Mapping[str, object]):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / METRICS_FILE
        self.identity = dict(identity)
        self.status = "running"
        self._disk_status: str | None = None
        self.rows, self._last = 0, None
        if self.run_dir.is_dir():
            recover_swap(self.path)
        if self.path.is_file():
            self._convert()
        if self.path.is_dir():
            self._scan()

    @property
    def last_iteration(self) -> int | None:
        """The iteration of the last checkpoint recorded (None: no rows)."""
        return self._last

    @property
    def frame(self) -> pd.DataFrame | None:
        """Every row written so far (read back from disk), or None when there is no results file."""
        return read_metrics(self.path) if self.path.exists() else None

    def _scan(self) -> None:
        for stale in self.path.glob(".*.tmp"):  # temporary files of a killed atomic write
            if _ours(stale.name) and not stale.is_symlink():
                remove(stale)
        frame = read_metrics(self.path)
        self.rows = len(frame)
        self._last = int(frame["iteration"].max()) if len(frame) else None
        self._disk_status = _read_status(self.path)

    def _convert(self) -> None:
        """A single-file ``metrics.parquet`` of older results becomes a folder of one part."""
        frame = read_metrics(self.path)
        status = str(frame["status"].iloc[-1]) if len(frame) and "status" in frame.columns else "running"
        new = self.path.with_name(f"{_SWAP}{uuid.uuid4().hex}")
        _write_folder(new, frame, status if status in STATUSES else "running")
        swap_in(new, self.path)

    def truncate_after(self, iteration: int | None) -> None:
        """Drop rows past ``iteration`` (rows of a checkpoint whose model state was not saved).

        All rows when ``iteration`` is None. Parts go from the last one backwards, so a reader always sees
        whole checkpoints from the first one on.
        """
        if self._last is None or (iteration is not None and self._last <= iteration):
            return
        self._write_status()
        names = part_names(self.path)
        for name in reversed(names):
            first = int(name[len(PART_PREFIX):].split(".")[0])
            if iteration is not None and first <= iteration:
                part = _read_file(self.path / name)
                keep = part[part["iteration"] <= iteration]
                if len(keep) != len(part):
                    atomic_write_parquet(self.path / name, keep.reset_index(drop=True))
                break
            (self.path / name).unlink()
        self._scan()

    def append(self, rows: Iterable[Mapping[str, object]], status: str | None = None) -> None:
        """Write one checkpoint's rows as a new part (with the identity columns), and the status."""
        if status is not None:
            self.set_status(status, write=False)
        rows = [{**self.identity, **row, "status": self.status} for row in rows]
        if rows:
            self._write_part(pd.DataFrame(rows))
        self._commit_status()

    def set_status(self, status: str, write: bool = True) -> None:
        """Set the run's status (one of ``STATUSES``); ``write``: record it at once."""
        if status not in STATUSES:
            raise ValueError(f"unknown status {status!r}")
        self.status = status
        if write:
            self._commit_status()

    def _write_part(self, part: pd.DataFrame) -> None:
        for col in _NUMERIC:
            if col in part.columns:
                part[col] = pd.to_numeric(part[col], errors="coerce").astype("float64")
        self._folder_for_part()
        target, added = self.path / part_name(part["iteration"].min()), len(part)
        if target.exists():  # the same first iteration again: one part holds both
            part = _concat([_read_file(target), part])
        atomic_write_parquet(target, part)
        self.rows += added
        last = int(part["iteration"].max())
        self._last = last if self._last is None else max(self._last, last)

    def _folder_for_part(self) -> None:
        """Make ``metrics.parquet`` (and the run folder) for the first part.

        RecordError when rows were written and their folder is gone: it is never made again with rows missing.
        """
        if _is_dir(self.path):
            return
        if self.rows and (self.path.exists() or self.path.is_symlink()):
            raise RecordError(f"{self.path} was replaced while the run wrote it (by something other than the "
                              f"folder of its {self.rows} rows); move it away and rerun")
        if self.rows:
            raise RecordError(f"{self.path} was removed while the run wrote it ({self.rows} rows lost); "
                              f"rerun to start the run again")
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except FileExistsError:
            raise RecordError(f"{self.path} is not a folder of results parts; move it away and rerun") from None

    def _commit_status(self) -> None:
        """Write the status where it changed; when the run has ended, compact its parts."""
        if self.rows == 0:
            return
        self._write_status()
        if self.status in ENDED:
            self.compact()

    def _write_status(self) -> None:
        if self._disk_status != self.status:
            atomic_write_bytes(self.path / STATUS_FILE, f"{self.status}\n".encode())
            self._disk_status = self.status

    def compact(self) -> None:
        """One part whose rows all carry the run's status, swapped in for the folder."""
        if not self.path.is_dir():
            return
        names = part_names(self.path)
        if len(names) == 1:
            only = _read_file(self.path / names[0])
            if "status" in only.columns and (only["status"] == self.status).all():
                return
        frame = read_metrics(self.path)
        for name in sorted(os.listdir(self.path)):  # the old folder is deleted: keep what is not ours
            if not _ours(name):
                set_aside(self.path / name, self.run_dir)
        frame["status"] = self.status
        new = self.path.with_name(f"{_SWAP}{uuid.uuid4().hex}")
        _write_folder(new, frame, self.status)
        swap_in(new, self.path)
