"""Live monitoring: every checkpoint's rows, as they are recorded, also sent to TensorBoard, MLflow or a
CSV file (the ``logger`` config group: ``none`` by default, ``tensorboard``, ``mlflow``, ``csv``).

``metrics.parquet`` stays the record of truth; a logger only mirrors it. Each value goes out under the
tag ``<sample set>/<column>`` (``train/G``, ``test/sharpness``, ``train/hessian_trace``) for the columns of
a sample set's row, and ``<column>`` (``train_acc``, ``test_loss``, ``train_loss_running``) for the
whole-set columns, at step = the iteration; missing values are left out. The run's settings (its
identity settings, flattened to dotted keys, and ``steps``) are its hyperparameters. A logger that fails
(missing package, unwritable folder, a server away) prints one line and is dropped: the run goes on.

- ``tensorboard``: event files through ``torch.utils.tensorboard.SummaryWriter`` in ``logger.dir``
  (default ``<run folder>/tensorboard``); settings as TensorBoard hparams. ``tensorboard --logdir outputs``.
- ``mlflow``: an MLflow run (experiment ``logger.experiment``) in ``logger.tracking_uri`` (default: the
  local file store ``<run folder>/../mlruns``, shared by the runs beside it; MLflow 3 keeps that store in
  maintenance mode, so ``MLFLOW_ALLOW_FILE_STORE`` is set for it); a resumed run continues its MLflow run
  (its id kept in ``<run folder>/mlflow_run_id``). ``mlflow ui --backend-store-uri <that folder>``. A
  server that does not answer within ``logger.timeout`` seconds is given up at once (``logger.retries``
  more tries, 0 by default): one line, and the run goes on without the logger.
- ``csv``: ``<run folder>/metrics.csv``, one line per row, columns as in the parquet file.

The loggers' files in a run folder (``metrics.csv``, ``mlflow_run_id``, ``tensorboard/``) are members of
the folder (:data:`sharpcomp.results.run_state.MEMBERS`): written only as the folder's own files, never
through a symbolic link, and the default MLflow store is not used when it, or anything in it, is a link.
"""

from __future__ import annotations

import json
import math
import os
import re
import stat
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd

from sharpcomp.results.own_files import RecordError, append_bytes, atomic_write_bytes, kind, read_regular

LOGGERS = ("none", "tensorboard", "mlflow", "csv")
# whole-set columns (the same on every row of a checkpoint): logged once, untagged
WHOLE_SET = ("epoch", "train_loss", "train_acc", "test_loss", "test_acc", "train_loss_running")
SKIP = ("iteration", "sample_set", "wall_time")


def _number(v) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    v = float(v)
    return v if math.isfinite(v) else None


def scalars(rows: Sequence[Mapping]) -> dict[str, float]:
    """``{tag: value}`` of one checkpoint's rows (see the module docstring)."""
    out: dict[str, float] = {}
    for row in rows:
        for key, value in row.items():
            v = _number(value)
            if v is None or key in SKIP:
                continue
            tag = key if key in WHOLE_SET else f"{row.get('sample_set', 'train')}/{key}"
            out.setdefault(tag, v)
    return out


def hyperparameters(settings: Mapping, prefix: str = "") -> dict[str, object]:
    """Nested settings flattened to dotted keys, values as numbers, booleans or text."""
    out: dict[str, object] = {}
    for k, v in settings.items():
        if isinstance(v, Mapping) and v:
            out.update(hyperparameters(v, f"{prefix}{k}."))
        elif isinstance(v, (bool, int, float, str)):
            out[f"{prefix}{k}"] = v
        else:
            out[f"{prefix}{k}"] = json.dumps(v, sort_keys=True)
    return out


class Logger:
    """The interface: ``log(iteration, rows)`` after a checkpoint is recorded, ``close()`` at the end."""

    name = "none"

    def log(self, iteration: int, rows: Sequence[Mapping]) -> None:
        pass

    def close(self) -> None:
        pass


class TensorBoardLogger(Logger):
    name = "tensorboard"

    def __init__(self, folder: Path, hparams: dict):
        # lazy: tensorboard is an optional extra (monitor), loaded only by logger=tensorboard
        from torch.utils.tensorboard import SummaryWriter
        from torch.utils.tensorboard.summary import hparams as hparam_summaries

        self.writer = SummaryWriter(log_dir=str(folder))
        for summary in hparam_summaries(hparams, {}):  # the settings, shown in TensorBoard's HPARAMS tab
            self.writer.file_writer.add_summary(summary)

    def log(self, iteration, rows):
        for tag, value in scalars(rows).items():
            self.writer.add_scalar(tag, value, global_step=int(iteration))
        self.writer.flush()

    def close(self):
        self.writer.close()


RUN_ID = re.compile(r"[0-9A-Za-z_-]{1,64}")  # an MLflow run id (32 hex digits), as the id file may hold it


class MLflowLogger(Logger):
    name = "mlflow"

    def __init__(self, run_dir: Path, uri: str, experiment: str, run_name: str, hparams: dict):
        if uri.startswith("file:") or "://" not in uri:
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        # lazy: mlflow is an optional extra (monitor), loaded only by logger=mlflow, after the line above
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri=uri)
        found = self.client.get_experiment_by_name(experiment)
        exp_id = found.experiment_id if found is not None else self.client.create_experiment(experiment)
        id_file = run_dir / "mlflow_run_id"
        run_id = _read_run_id(id_file)
        if run_id is None or self._missing(run_id):
            run_id = self.client.create_run(exp_id, run_name=run_name).info.run_id
            atomic_write_bytes(id_file, f"{run_id}\n".encode())
            params = [Param(k[:250], str(v)[:6000]) for k, v in sorted(hparams.items())]
            for i in range(0, len(params), 100):
                self.client.log_batch(run_id, params=params[i:i + 100])
        else:
            self.client.update_run(run_id, status="RUNNING")
        self.run_id = run_id

    def _missing(self, run_id: str) -> bool:
        try:
            self.client.get_run(run_id)
            return False
        except Exception:
            return True

    def log(self, iteration, rows):
        from mlflow.entities import Metric  # lazy: an optional extra, as in __init__

        now = int(time.time() * 1000)
        metrics = [Metric(tag, value, now, int(iteration)) for tag, value in scalars(rows).items()]
        for i in range(0, len(metrics), 500):
            self.client.log_batch(self.run_id, metrics=metrics[i:i + 500])

    def close(self):
        self.client.set_terminated(self.run_id)


def _read_run_id(path: Path) -> str | None:
    """The MLflow run id a run folder keeps (None when there is none, or it is not an id)."""
    try:
        text = read_regular(path, 256).decode("ascii", errors="replace").strip()
    except (FileNotFoundError, RecordError):  # none, or not a small regular file: a new MLflow run replaces it
        return None
    return text if RUN_ID.fullmatch(text) else None


class CSVLogger(Logger):
    name = "csv"

    def __init__(self, path: Path):
        self.path = path

    def log(self, iteration, rows):
        frame = pd.DataFrame(list(rows))
        append_bytes(self.path, frame.to_csv(header=False, index=False).encode(),
                     header=frame.iloc[:0].to_csv(index=False).encode())


def _own_folder(path: Path) -> Path:
    """``path``, a folder of the run's own (absent, or a folder that is not a link); RecordError otherwise."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return path
    if not stat.S_ISDIR(mode):
        raise RecordError(f"{path} is {kind(mode)}, not a folder of the run's own; move it away")
    return path


STORE_ENTRIES = 10**6  # a local MLflow store is checked entry by entry up to this size


def checked_store(store: Path) -> str:
    """The URI of the local MLflow store ``store`` (beside the run folders), when neither it nor anything in
    it is a symbolic link (MLflow writes into it wherever its folders lead); RecordError otherwise."""
    _own_folder(store)
    seen = 0
    for top, dirs, files in os.walk(store):  # never into a linked folder: a link is found, not followed
        for name in dirs + files:
            seen += 1
            if os.path.islink(os.path.join(top, name)) or seen > STORE_ENTRIES:
                what = "is a symbolic link" if seen <= STORE_ENTRIES else "ends a store too large to check"
                raise RecordError(f"{os.path.join(top, name)} {what}; the MLflow store {store} is not used "
                                  f"(set logger.tracking_uri, or move it away)")
    return store.absolute().as_uri()


def _mlflow(cfg: Mapping, run_dir: Path, hparams: dict) -> Logger:
    """The MLflow logger, with its requests bounded: ``timeout`` seconds each, ``retries`` more tries."""
    os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = str(max(1, int(cfg.get("timeout") or 10)))
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = str(max(0, int(cfg.get("retries") or 0)))
    uri = cfg.get("tracking_uri") or checked_store(run_dir.parent / "mlruns")
    return MLflowLogger(run_dir, uri, cfg.get("experiment") or "sharpcomp", run_dir.name, hparams)


def make_logger(cfg: Mapping | None, run_dir: Path, run_id: str, settings: Mapping) -> Logger:
    """The logger ``cfg`` (the ``logger`` config node) describes for the run in ``run_dir``; a plain
    :class:`Logger` (does nothing) for ``none``, or when it cannot start (one line says why)."""
    cfg = dict(cfg or {})
    name = cfg.get("name", "none")
    if name == "none":
        return Logger()
    run_dir = Path(run_dir)
    hparams = hyperparameters(settings)
    try:
        if name == "tensorboard":
            folder = Path(cfg["dir"]) if cfg.get("dir") else _own_folder(run_dir / "tensorboard")
            return Guarded(TensorBoardLogger(folder, hparams))
        if name == "mlflow":
            return Guarded(_mlflow(cfg, run_dir, hparams))
        if name == "csv":
            return Guarded(CSVLogger(run_dir / "metrics.csv"))
        raise ValueError(f"unknown logger '{name}' (choose from {', '.join(LOGGERS)})")
    except Exception as exc:
        _say(name, "could not start", exc)
        return Logger()


def _say(name: str, what: str, exc: BaseException) -> None:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    text = text if len(text) <= 240 else text[:240].rsplit(" ", 1)[0] + " ..."  # cut at a word, and say so
    print(f"sharpcomp: logger {name} {what} ({type(exc).__name__}: {text}); the run goes on without it "
          f"(metrics.parquet has every row)", file=sys.stderr, flush=True)


class Guarded(Logger):
    """A logger whose failures are one line, after which it is dropped."""

    def __init__(self, inner: Logger):
        self.inner, self.name, self.alive = inner, inner.name, True

    def _call(self, what: str, *args) -> None:
        if not self.alive:
            return
        try:
            getattr(self.inner, what)(*args)
        except Exception as exc:
            self.alive = False
            _say(self.name, "failed", exc)

    def log(self, iteration, rows):
        self._call("log", iteration, rows)

    def close(self):
        self._call("close")
