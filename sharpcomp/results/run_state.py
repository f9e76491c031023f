"""One run's folder and its life: identity, records, resume point, status, lock.

A :class:`RunState` is opened on a run folder (``open``), takes the folder's lock for its whole life,
and is the only place that builds, writes and reads ``checkpoint.pt``:

- ``open``: lock the folder (a second writer gets one line, "in use by pid N"); refuse rows or a
  checkpoint of another run; load the checkpoint safely (``torch.load(weights_only=True)``: tensors
  and plain containers only, so a crafted pickle runs nothing); check the rows cover every checkpoint
  up to the saved state (else restart the run from iteration 0, with a line saying so); drop rows past
  the saved state (computed again, identically, on resume).
- ``commit``: append a checkpoint's rows, then write the state (rows first: a crash in between leaves
  rows without a state, which the next ``open`` drops). With ``resume_every`` > 0 the state is written
  at most that often (seconds; always at the end, on a divergence and on Ctrl-C): rows past the last
  written state are dropped and computed again, identically, on resume.
- ``diverge``: the NaN row and a state marked ``diverged`` (a rerun keeps the verdict).
- ``fail``: mark the records ``failed``. ``close``: release the lock.
"""

from __future__ import annotations

import io
import json
import math
import os
import pickle
import platform
import re
import stat
import sys
import time
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

import numpy
import torch

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: run folders are not locked
    fcntl = None

from sharpcomp._version import __version__
from sharpcomp.checkpoints import MAX_STEPS
from sharpcomp.results.kept_weights import WEIGHTS_DIR
from sharpcomp.results.own_files import kind, open_regular
from sharpcomp.results.records import (
    METRICS_FILE,
    RecordError,
    RunRecorder,
    atomic_write_bytes,
    read_metrics,
    reason,
    recover_swap,
    refuse_link,
    set_aside,
)
from sharpcomp.settings import STOP_CRITERIA, ConfigError, Settings, run_identity

CHECKPOINT_FILE = "checkpoint.pt"
LOCK_FILE = ".sharpcomp.lock"
ERROR_LOG = "error.log"
# a run folder's members the program reads or writes: none may be a symbolic link
# the live loggers' files (sharpcomp.results.loggers) are members too
LOGGER_FILES = ("metrics.csv", "mlflow_run_id", "tensorboard")
MEMBERS = (CHECKPOINT_FILE, METRICS_FILE, LOCK_FILE, ERROR_LOG, ".hydra", WEIGHTS_DIR, *LOGGER_FILES)
STATES = ("running", "finished", "diverged", "failed")
MAX_ITERATION = MAX_STEPS  # far beyond any run; a larger saved iteration is not a real resume point


def check_members(run_dir: Path) -> None:
    """ConfigError (one line) when a member of the run folder is a symbolic link."""
    for name in MEMBERS:
        try:
            refuse_link(Path(run_dir) / name)
        except RecordError as exc:
            raise ConfigError(str(exc)) from None


class RunInUse(ConfigError):
    """Another process holds the run folder."""


@dataclass
class RunResult:
    run_dir: Path
    status: str
    iteration: int
    rows: int
    seconds: float = 0.0  # wall time of this call
    checkpoint_seconds: float = 0.0  # of which in checkpoints (evaluation, metrics, writing)
    checkpoints: int = 0  # checkpoints logged by this call
    message: str = ""  # why a run was skipped (its folder in use or holding another run) or failed
    trace: str = ""  # the traceback of a failure that is not one of the expected ones (for error.log)


# ---------------------------------------------------------------------------------------------
# the folder lock


class FolderLock:
    """An exclusive OS lock (``flock``) on ``<run_dir>/.sharpcomp.lock`` holding the owner's pid; the
    OS releases it when the process dies, so a killed run never leaves a stale lock."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / LOCK_FILE
        self.fd: int | None = None

    def acquire(self) -> None:
        flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
        try:  # never through a link: the pid would be written wherever it points; a FIFO opens at once
            fd = os.open(self.path, flags, 0o666)
        except OSError as exc:
            if self.path.is_symlink():
                raise ConfigError(f"refusing run folder {self.path.parent}: {LOCK_FILE} is a symbolic link "
                                  f"(to {os.readlink(self.path)}); move the link away") from None
            raise ConfigError(f"cannot lock run folder {self.path.parent}: {exc.strerror or exc}") from None
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            os.close(fd)
            raise ConfigError(f"refusing run folder {self.path.parent}: {LOCK_FILE} is {kind(mode)}, "
                              f"not a regular file; move it away")
        try:
            if fcntl is not None:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = re.sub(r"\D", "", os.read(fd, 64).decode(errors="replace"))[:12] or "?"
            os.close(fd)
            raise RunInUse(f"run folder {self.path.parent} is in use by pid {holder}") from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self.fd = fd

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing drops the flock
            self.fd = None


# ---------------------------------------------------------------------------------------------
# checkpoint files


def save_checkpoint(run_dir: Path, state: dict) -> None:
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write_bytes(Path(run_dir) / CHECKPOINT_FILE, buf.getvalue())


def load_tensors(path: Path, device: torch.device | str = "cpu", what: str = "a plain file of tensors"):
    """What ``torch.save`` wrote to ``path``, loaded with ``weights_only=True`` (tensors and plain containers:
    a crafted pickle runs nothing), from a regular file only (never through a link, never a FIFO or device).

    ConfigError (one line) for what stands at ``path`` or contents that are not plain tensors and
    containers (``what`` the file should have been), saying why.
    """
    try:
        fh = open_regular(path)
    except RecordError as exc:
        raise ConfigError(str(exc)) from None
    with fh:
        try:
            return torch.load(fh, map_location=device, weights_only=True)
        except Exception as exc:  # torch raises many types for a file that is not its own (IndexError too)
            raise ConfigError(f"refusing to load {path}: not {what} ({torch_reason(exc)}); "
                              f"nothing in it was run") from None


_BOILERPLATE = ("Weights only load failed", "Please file an issue", "Check the documentation", "In PyTorch 2.6")


def torch_reason(exc: BaseException) -> str:
    """Why ``torch.load(weights_only=True)`` refused a file, in a few words of one line.

    Torch's own message is several paragraphs (advice to load with ``weights_only=False`` among them); only
    its reason is kept: the object the file would have built, or the unpickler's complaint.
    """
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))
    found = re.search(r"GLOBAL ([\w.]+)", text)
    if found:
        return f"it holds a pickled {found[1]}, which would run code"
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith(_BOILERPLATE)]
    why = lines[0].split("error:", 1)[-1].strip() if lines else ""
    if len(why) > 200:  # cut at a word, and say so
        why = why[:200].rsplit(" ", 1)[0] + " ..."
    if isinstance(exc, pickle.UnpicklingError) and why:
        return why
    return f"{type(exc).__name__}: {why}" if why else type(exc).__name__


def read_checkpoint(path: Path, device: torch.device | str = "cpu") -> dict:
    """A checkpoint's contents, loaded with ``weights_only=True``; ConfigError for anything else."""
    state = load_tensors(path, device, "a plain sharpcomp checkpoint")
    if not isinstance(state, dict) or not {"run_id", "iteration", "model_state"} <= set(state):
        raise ConfigError(f"refusing to load {path}: not a sharpcomp checkpoint")
    why = checkpoint_problem(state)
    if why:
        raise ConfigError(f"refusing to load {path}: {why}; nothing was changed (move it away to restart the run)")
    return state


def _tensors(d) -> bool:
    return isinstance(d, dict) and all(isinstance(k, str) and torch.is_tensor(v) for k, v in d.items())


def checkpoint_problem(state: dict) -> str | None:
    """Why a loaded checkpoint's fields are unusable (types and ranges), or None."""
    it = state["iteration"]
    if isinstance(it, bool) or not isinstance(it, int) or not 0 <= it <= MAX_ITERATION:
        return f"iteration must be an integer in [0, {MAX_ITERATION}], got {str(it)[:40]}"
    if not isinstance(state["run_id"], str) or not 0 < len(state["run_id"]) <= 400:
        return "run_id must be a non-empty string"
    wall = state.get("wall_time", 0.0)
    if isinstance(wall, bool) or not isinstance(wall, (int, float)) or not (math.isfinite(wall) and wall >= 0):
        return f"wall_time must be a finite number >= 0, got {str(wall)[:40]}"
    if state.get("status", "running") not in STATES:
        return f"unknown status {str(state.get('status'))[:40]!r}"
    if not _tensors(state["model_state"]) or not state["model_state"]:
        return "model_state must map parameter names to tensors"
    opt = state.get("optimizer_state", {})
    if not isinstance(opt, dict) or not isinstance(opt.get("state", {}), dict) \
            or not isinstance(opt.get("param_groups", []), list):
        return "optimizer_state must be an optimizer's state dictionary"
    if not isinstance(state.get("config", {}), dict):
        return "config must be a mapping"
    if state.get("stopped") not in (None, *STOP_CRITERIA):
        return f"stopped must name a stop criterion ({', '.join(STOP_CRITERIA)}), got {str(state['stopped'])[:40]!r}"
    if "running_sum" in state or "running_count" in state:
        total, count = state.get("running_sum"), state.get("running_count")
        if not (torch.is_tensor(total) and total.dim() == 0 and total.is_floating_point()
                and bool(torch.isfinite(total))):
            return "running_sum must be a finite scalar tensor"
        if isinstance(count, bool) or not isinstance(count, int) or not 0 < count <= it:
            return f"running_count must be an integer in [1, iteration], got {str(count)[:40]}"
    return None


def load_resume(model, optimizer, state: dict) -> None:
    """Load a saved state into ``model`` (and ``optimizer``); ConfigError (one line) when it does not fit
    the run's network (wrong names or shapes: a checkpoint.pt that is not this run's)."""
    try:
        model.load_state_dict(state["model_state"])
        if optimizer is not None:
            optimizer.load_state_dict(state["optimizer_state"])
    except (RuntimeError, ValueError, KeyError, TypeError, IndexError) as exc:
        why = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise ConfigError(f"the saved state in {CHECKPOINT_FILE} does not fit this run's network ({why}); "
                          f"move it away to restart the run") from None


def package_versions() -> str:
    vers = {"sharpcomp": __version__, "torch": torch.__version__, "numpy": numpy.__version__,
            "python": platform.python_version()}
    try:  # the installed version, without importing torchvision (seconds) just to read it
        vers["torchvision"] = version("torchvision")
    except Exception:  # pragma: no cover - not installed
        pass
    return json.dumps(vers, sort_keys=True)


def identity_columns(s: Settings, run_id: str, num_outputs: int, data_source: str, device: torch.device) -> dict:
    """The identity columns of a run's rows (``records.IDENTITY_COLUMNS`` less ``status``)."""
    return {
        "run_id": run_id, "data": s.data["name"], "model": s.model["name"], "lr": s.lr, "batch": s.batch,
        "seed": s.seed, "loss": s.loss, "width": float(s.model.get("width", 1.0)), "outputs": num_outputs,
        "optim": s.optim_name, "scale": s.raw.get("scale_name", "custom"), "data_source": data_source,
        "device": str(device), "versions": package_versions(),
        # every setting that defines the trajectory (any swept key), as JSON: figures group by any of them
        # (with the training precision always: allow_tf32, null = PyTorch's default)
        "settings": json.dumps({**_published(run_identity(s)["settings"]), "allow_tf32": s.allow_tf32},
                               sort_keys=True, default=str),
    }


def _published(settings: dict) -> dict:
    """Settings as records publish them: an image folder's root by its name, not a local path."""
    data = settings.get("data", {})
    if data.get("root"):
        settings = {**settings, "data": {**data, "root": Path(str(data["root"])).name}}
    return settings


# ---------------------------------------------------------------------------------------------
# the run


class RunState:
    """One run folder, opened for training (see the module docstring)."""

    def __init__(self, s: Settings, run_dir: Path, identity: dict):
        self.settings, self.run_dir = s, Path(run_dir)
        self.run_id = identity["run_id"]
        self.identity = identity
        self.lock = FolderLock(self.run_dir)
        self.recorder: RunRecorder | None = None
        self.resume: dict | None = None  # the saved state to continue from (None: a fresh start)
        self.start = 0
        self.wall_offset = 0.0
        self.result: RunResult | None = None  # set once the run is finished, diverged or failed
        self.checkpoints = 0
        self._saved_at = time.monotonic()  # last write of checkpoint.pt
        self._pending: dict | None = None  # a resume point not yet written (resume_every)

    @property
    def fresh(self) -> bool:
        return self.resume is None

    @property
    def rows(self) -> int:
        return 0 if self.recorder is None else self.recorder.rows

    def open(self, device: torch.device) -> RunState:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        check_members(self.run_dir)
        self.lock.acquire()
        try:
            self._open(device)
        except BaseException:
            self.lock.release()
            raise
        return self

    def _open(self, device: torch.device) -> None:
        path = self.run_dir / CHECKPOINT_FILE
        state = read_checkpoint(path, device) if path.exists() else None
        if state is not None and state["run_id"] != self.run_id:
            raise ConfigError(f"output folder {self.run_dir} holds another run ({state['run_id']}); "
                              f"choose another folder (hydra.run.dir=...)")
        recover_swap(self.run_dir / METRICS_FILE)  # a compaction cut short by a kill, before reading
        frame = self._existing_rows(state)
        if state is not None and not self._rows_cover(frame, state):
            print(f"sharpcomp: {self.run_dir}: the results lack checkpoints before the saved state at iteration "
                  f"{state['iteration']}; restarting the run from iteration 0", file=sys.stderr)
            state = None
            set_aside(self.run_dir / CHECKPOINT_FILE, self.run_dir)  # a resume point is never deleted
        self.recorder = RunRecorder(self.run_dir, self.identity)
        if state is None:
            self.recorder.truncate_after(None)  # rows without a saved model state cannot be resumed
            return
        self.resume, self.start = state, int(state["iteration"])
        self.wall_offset = float(state["wall_time"])
        if state.get("status") == "diverged":
            self.recorder.set_status("diverged")
            self.result = RunResult(self.run_dir, "diverged", self.start, self.rows)
            return
        self.recorder.truncate_after(self.start)
        if self.start >= self.settings.steps or state.get("stopped"):  # at its cap, or at its stop criterion
            self.recorder.set_status("finished")
            self.result = RunResult(self.run_dir, "finished", self.start, self.rows)

    def _existing_rows(self, state: dict | None):
        """The rows already in the folder (None when there are none); refuses rows of another run.
        Only a results file that is not there at all counts as no rows: one that cannot be read
        stops the run with a line (the resume point is kept)."""
        target = self.run_dir / METRICS_FILE
        if not target.exists() and not target.is_symlink():
            return None
        try:
            frame = read_metrics(self.run_dir)
        except RecordError as exc:
            if "move it away" in str(exc):  # says already what to do
                raise
            raise RecordError(f"{exc}; move it away and rerun to restart the run from iteration 0") from None
        others = sorted(set(frame["run_id"]) - {self.run_id})
        if others:
            raise ConfigError(f"output folder {self.run_dir} holds rows of another run ({others[0]}); "
                              f"choose another folder (hydra.run.dir=...)")
        return frame

    def _rows_cover(self, frame, state: dict) -> bool:
        """Whether the rows hold every checkpoint before the saved state (the state's own included,
        except for a diverged state, whose NaN row is written first)."""
        it, every = int(state["iteration"]), self.settings.log_every
        have = set() if frame is None else {int(i) for i in frame["iteration"]}
        below = {i for i in have if i < it and i % every == 0}  # counted, never enumerated: no memory
        return it in have and len(below) == -(-it // every)  # for a huge saved iteration

    # -----------------------------------------------------------------------------------------

    def _state(self, it: int, status: str, wall: float, model_state: dict, optimizer_state: dict) -> dict:
        """The checkpoint dictionary: plain containers and tensors only (loadable with weights_only)."""
        return {"run_id": self.run_id, "iteration": int(it), "wall_time": float(wall), "status": status,
                "model_state": model_state, "optimizer_state": optimizer_state, "config": self.settings.raw}

    def commit(self, it: int, rows: list[dict], status: str, wall: float, model_state: dict,
               optimizer_state: dict, running: dict | None = None) -> None:
        """Append one checkpoint's rows, then save the state they belong to: at once when
        ``resume_every`` seconds have passed since the last save (0: always) or the run has ended;
        otherwise kept in memory (a copy) and written by the next save or by :meth:`close`."""
        self.recorder.append(rows, status=status)
        state = {**self._state(it, status, wall, model_state, optimizer_state), **(running or {})}
        self.checkpoints += 1
        if status != "running" or time.monotonic() - self._saved_at >= self.settings.resume_every:
            save_checkpoint(self.run_dir, state)
            self._saved_at, self._pending = time.monotonic(), None
        else:
            state["model_state"] = {k: v.detach().clone() for k, v in model_state.items()}
            self._pending = state

    def diverge(self, it: int, epoch: float, wall: float, model_state: dict, optimizer_state: dict) -> None:
        """Record a non-finite loss at checkpoint ``it``: one NaN row, status diverged, the state kept."""
        self.recorder.append([{"iteration": it, "epoch": epoch, "train_loss_running": math.nan,
                               "train_loss": math.nan, "sample_set": "train", "wall_time": wall}], status="diverged")
        save_checkpoint(self.run_dir, self._state(it, "diverged", wall, model_state, optimizer_state))

    def outcome(self) -> RunResult:
        """How the run ended, or where it stands when it has not ended (an interrupted call)."""
        return self.result or RunResult(self.run_dir, "running", self.start, self.rows)

    def failed(self, it: int, exc: BaseException, trace: str = "") -> RunResult:
        """The outcome of the run failed at iteration ``it`` by ``exc`` (its records marked ``failed`` where the
        folder can take it); ``trace``: the traceback of an unexpected failure, for its error.log."""
        self.fail()
        if trace:
            why = f"{type(exc).__name__}: {reason(exc)}"
        elif isinstance(exc, OSError) and exc.strerror:
            why = f"cannot use {exc.filename}: {exc.strerror}" if exc.filename else exc.strerror
        else:
            why = str(exc)
        return RunResult(self.run_dir, "failed", it, self.rows, message=why, trace=trace)

    def check_fit(self, model) -> None:
        """ConfigError (the folder closed) when the saved state does not fit ``model`` (the run's network)."""
        try:
            load_resume(model, None, self.resume)
        except ConfigError:
            self.close()
            raise

    def fail(self) -> None:
        """Mark the records ``failed`` (a run that failed before its first row gets one empty row), where the
        folder can take it (a folder removed or replaced under the run cannot: the failure is said anyway)."""
        if self.recorder is None or self.result is not None:
            return
        try:
            if self.rows:
                self.recorder.set_status("failed")
            else:
                self.recorder.append([{"iteration": self.start, "sample_set": "train"}], status="failed")
        except (OSError, RecordError):
            pass

    def close(self) -> None:
        """Write a resume point still held in memory (Ctrl-C, a failure), then release the lock."""
        try:
            if self._pending is not None:
                save_checkpoint(self.run_dir, self._pending)
                self._pending = None
        except OSError as exc:  # the folder was removed or replaced: the run has failed already
            print(f"sharpcomp: {self.run_dir}: the resume point could not be written ({exc.strerror or exc})",
                  file=sys.stderr, flush=True)
        finally:
            self.lock.release()
