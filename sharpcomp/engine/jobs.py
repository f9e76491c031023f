"""Jobs of a command or a sweep: how a training job ends, is reported, and adds up.

Every job -- a single ``sharpcomp train``, a job of a Hydra sweep under any launcher, or the runs of an
ensemble -- goes through :func:`run_job`: expected errors (bad settings, missing data, unreadable
results, a run folder in use) give one line; anything else also leaves its traceback in the run folder's
``error.log`` (the training loop has marked the run's records ``failed``). In a sweep, each job writes
its outcome into the folder named by ``$SHARPCOMP_OUTCOMES`` (set by the command for the sweep's life,
inherited by launchers' worker processes), and :func:`sweep_summary` adds them up once every job has
ended.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import stat
import sys
import tempfile
import time
import traceback
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: abandoned outcome folders are left
    fcntl = None

from sharpcomp.data.sources import DataError
from sharpcomp.results.records import RecordError, atomic_write_bytes
from sharpcomp.results.run_state import RunInUse
from sharpcomp.settings import ConfigError

OUTCOMES_ENV = "SHARPCOMP_OUTCOMES"
# outcomes of the jobs run in this process (basic and ensemble launchers): the tally does not depend on
# the outcome folder alone, which a cleaning command may delete mid-sweep
RECORDED: dict[str, dict] = {}


class JobExit(Exception):
    """A single (non-sweep) job ended badly: ``code`` is the exit status, the line already printed."""

    def __init__(self, code: int):
        super().__init__(code)
        self.code = code


def _record(status: str, run_dir: Path, message: str = "") -> None:
    """Keep a job's outcome for the tally (``message``: why it did not finish, in one line)."""
    folder = os.environ.get(OUTCOMES_ENV)
    if not folder:
        return
    key = uuid.uuid4().hex
    outcome = {"status": status, "run_dir": str(run_dir), "message": message, "key": key, "t": time.time()}
    RECORDED[key] = outcome
    try:
        Path(folder).mkdir(parents=True, exist_ok=True)  # made again when deleted mid-sweep
        (Path(folder) / f"{key}.json").write_text(json.dumps(outcome))
    except OSError:
        pass


def _write_log(path: Path, text: str) -> str:
    """Write a traceback to ``path`` (never through a link: a link is left alone); where it went."""
    if path.is_symlink():
        return f"; no traceback written ({path} is a symbolic link)"
    try:
        atomic_write_bytes(path, text.encode())
    except OSError:
        return ""
    return f"; traceback in {path}"


def run_job(train_fn: Callable[[], list], run_dirs: Sequence[Path], multirun: bool) -> list[str]:
    """Run ``train_fn() -> [RunResult]`` for the runs in ``run_dirs``; report every outcome; return the
    statuses. Outside a sweep, a failure raises :class:`JobExit` (2: bad input; 1: anything else)."""
    try:
        results = train_fn()
    except KeyboardInterrupt:
        raise
    except RunInUse as exc:
        return _report_all(run_dirs, "skipped", str(exc), multirun, 2)
    except (ConfigError, DataError, RecordError) as exc:
        return _report_all(run_dirs, "failed", str(exc), multirun, 2)
    except Exception as exc:
        text = traceback.format_exc()
        first = str(exc).splitlines()[0] if str(exc) else ""
        lines = []
        for d in run_dirs:
            where = _write_log(Path(d) / "error.log", text)
            lines.append(f"run {d} failed: {type(exc).__name__}: {first}{where}")
        return _report_all(run_dirs, "failed", lines, multirun, 1, why=f"{type(exc).__name__}: {first}")
    for r in results:
        if r.status == "skipped":  # one run of an ensemble whose folder is in use
            print(f"sharpcomp: {'job skipped' if multirun else 'error'}: {r.message}", file=sys.stderr)
            _record(r.status, r.run_dir, r.message)
        elif r.status == "failed" and r.message:  # one run of an ensemble, failed by its own folder
            where = _write_log(Path(r.run_dir) / "error.log", r.trace) if r.trace else ""
            print(f"sharpcomp: run {r.run_dir} failed: {r.message}{where}", file=sys.stderr, flush=True)
            _record(r.status, r.run_dir, r.message)
        else:
            print(f"{r.status}: {r.rows} rows in {r.run_dir / 'metrics.parquet'}", flush=True)
            _record(r.status, r.run_dir)
    if not multirun and any(r.status in ("failed", "skipped") for r in results):
        raise JobExit(1 if any(r.trace for r in results) else 2)
    return [r.status for r in results]


def _report_all(run_dirs, status: str, message, multirun: bool, code: int, why: str = "") -> list[str]:
    messages = message if isinstance(message, list) else [message] * len(run_dirs)
    for d, msg in zip(run_dirs, messages):
        if multirun and status == "skipped":
            line = f"job skipped: {msg}"
        elif multirun and code == 2:
            line = f"job ({d}) {status}: {msg}"
        else:
            line = msg
        print(f"sharpcomp train: error: {line}" if not multirun else f"sharpcomp: {line}", file=sys.stderr)
        _record(status, Path(d), why or msg)
    if not multirun:
        raise JobExit(code)
    return [status] * len(run_dirs)


def sweep_summary(folder: Path) -> int:
    """Print the sweep's tally (and the folders of jobs that did not finish); the exit status:
    0 when every job finished or diverged, 1 when one failed, 2 when one was skipped (folder in use)."""
    found = {}
    for p in sorted(Path(folder).glob("*.json")):
        try:
            o = json.loads(p.read_text())
            found[o.get("key", p.stem)] = o
        except (OSError, ValueError, AttributeError):
            continue
    latest: dict[str, dict] = {}  # a job run twice (again after a killed worker): its last outcome
    for o in sorted({**found, **RECORDED}.values(), key=lambda o: o.get("t", 0.0)):
        latest[o["run_dir"]] = o
    outcomes = list(latest.values())
    RECORDED.clear()
    if not outcomes:
        return 0
    counts: dict[str, list[str]] = {}
    for o in outcomes:
        counts.setdefault(o["status"], []).append(o["run_dir"])
    shown = ("finished", "diverged", "failed") + tuple(k for k in ("running", "skipped") if k in counts)
    tally = ", ".join(f"{len(counts.get(k, []))} {k}" for k in shown)
    print(f"sharpcomp: sweep of {len(outcomes)} jobs: {tally}", file=sys.stderr)
    for status in ("diverged", "failed", "skipped"):
        for o in (o for o in outcomes if o["status"] == status):
            why = str(o.get("message") or "").strip().splitlines()
            print(f"  {status}: {o['run_dir']}" + (f" ({why[0][:300]})" if why else ""), file=sys.stderr)
    return 1 if "failed" in counts else 2 if "skipped" in counts else 0


# ---------------------------------------------------------------------------------------------
# the outcome folder of a sweep

_SWEEP_PREFIX = ".sharpcomp-sweep-"
_SWEEP_LOCK = ".lock"
_NOFOLLOW, _NONBLOCK = getattr(os, "O_NOFOLLOW", 0), getattr(os, "O_NONBLOCK", 0)
_HELD: dict[str, int] = {}  # outcome folder -> the descriptor of its held lock


def open_outcomes() -> Path:
    """A new outcome folder for a sweep, named by ``$SHARPCOMP_OUTCOMES`` until :func:`close_outcomes`.

    In the current folder (shared with a cluster's nodes) when it is writable, else in the temporary folder.
    The folder holds a lock for the sweep's life, so that a sweep that was killed (no ``finally`` ran) leaves
    a folder the next sweep recognises as abandoned and removes (:func:`remove_abandoned`).
    """
    here = os.access(".", os.W_OK)
    if here:
        remove_abandoned(Path("."))
    folder = Path(tempfile.mkdtemp(prefix=_SWEEP_PREFIX if here else _SWEEP_PREFIX[1:], dir="." if here else None))
    fd = os.open(folder / f"{_SWEEP_LOCK}.new", os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    if fcntl is not None:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.rename(folder / f"{_SWEEP_LOCK}.new", folder / _SWEEP_LOCK)  # only ever seen locked
    _HELD[str(folder.absolute())] = fd
    os.environ[OUTCOMES_ENV] = str(folder.absolute())
    return folder.absolute()


def close_outcomes(folder: Path) -> None:
    """Remove a sweep's outcome folder and release its lock."""
    os.environ.pop(OUTCOMES_ENV, None)
    shutil.rmtree(folder, ignore_errors=True)
    fd = _HELD.pop(str(folder), None)
    if fd is not None:
        os.close(fd)


def remove_abandoned(where: Path) -> list[Path]:
    """Remove the outcome folders in ``where`` that no live sweep holds (their lock is free); those removed."""
    removed = []
    for folder in sorted(where.glob(f"{_SWEEP_PREFIX}*")):
        if fcntl is None or not stat.S_ISDIR(os.lstat(folder).st_mode):
            continue
        try:
            fd = os.open(folder / _SWEEP_LOCK, os.O_RDONLY | _NOFOLLOW | _NONBLOCK)
        except OSError:  # no lock: a sweep that is starting, or one of an earlier version (empty: removed)
            if time.time() - os.lstat(folder).st_mtime > 60:
                with contextlib.suppress(OSError):
                    folder.rmdir()
                    removed.append(folder)
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            continue  # a live sweep holds it
        finally:
            os.close(fd)
        shutil.rmtree(folder, ignore_errors=True)
        removed.append(folder)
    return removed
