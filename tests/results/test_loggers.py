"""Live monitoring: TensorBoard event files and MLflow runs hold every checkpoint's values, equal to the
parquet rows (read back with each library's own reader); a failing logger never stops a run; choosing a
logger changes no run id."""

from __future__ import annotations

import math

import pytest
from omegaconf import OmegaConf

from sharpcomp.data.datasets import Dataset
from sharpcomp.engine.train import train
from sharpcomp.results.records import read_metrics
from sharpcomp.settings import run_identity
from tests.conftest import SHRINK, compose_train, random_images

COLUMNS = ("G", "sharpness", "log_volume", "mls", "local_dim", "sample_loss")


@pytest.fixture(scope="module")
def toy() -> Dataset:
    return random_images(64, 32)


def _cfg(*extra):
    cfg = compose_train([*SHRINK, "model.width=0.05", "metrics.sample_sets=[train,test]", *extra])
    OmegaConf.set_struct(cfg, False)
    return cfg


def _expected(rows):
    """(tag, iteration) -> value, from the parquet rows."""
    out = {}
    for r in rows.to_dict("records"):
        for c in COLUMNS:
            out[(f"{r['sample_set']}/{c}", r["iteration"])] = r[c]
        for c in ("train_acc", "test_loss", "train_loss"):
            out[(c, r["iteration"])] = r[c]
    return {k: v for k, v in out.items() if v is not None and math.isfinite(v)}


def test_tensorboard_values_equal_the_parquet_rows(toy, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    assert train(_cfg("logger=tensorboard"), tmp_path / "run", data=toy).status == "finished"
    acc = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    acc.Reload()
    want = _expected(read_metrics(tmp_path / "run"))
    assert {t for t, _ in want} <= set(acc.Tags()["scalars"]) and len(want) >= 4 * (2 * len(COLUMNS) + 1)
    for (tag, it), value in want.items():
        (event,) = [e for e in acc.Scalars(tag) if e.step == it]
        assert event.value == pytest.approx(value, rel=1e-6, abs=1e-12), (tag, it)


def test_mlflow_values_and_settings_equal_the_parquet_rows(toy, tmp_path):
    from mlflow.tracking import MlflowClient

    cfg = _cfg("logger=mlflow", "lr=0.05")
    assert train(cfg, tmp_path / "runs" / "a", data=toy).status == "finished"
    client = MlflowClient(tracking_uri=(tmp_path / "runs" / "mlruns").as_uri())
    run_id = (tmp_path / "runs" / "a" / "mlflow_run_id").read_text().strip()
    run = client.get_run(run_id)
    assert run.data.params["lr"] == "0.05" and run.data.params["model.width"] == "0.05"
    assert run.data.params["steps"] == "12" and run.info.status == "FINISHED"
    for (tag, it), value in _expected(read_metrics(tmp_path / "runs" / "a")).items():
        (m,) = [m for m in client.get_metric_history(run_id, tag) if m.step == it]
        assert m.value == value, (tag, it)  # float64 stored exactly


def test_a_failing_logger_never_stops_a_run(toy, tmp_path, capsys, monkeypatch):
    (tmp_path / "file").write_text("")
    res = train(_cfg("logger=tensorboard", f"logger.dir={tmp_path / 'file' / 'tb'}"), tmp_path / "a", data=toy)
    err = capsys.readouterr().err
    assert res.status == "finished" and len([x for x in err.splitlines() if "logger tensorboard could not" in x]) == 1

    def broken(self, iteration, rows):
        raise OSError("disk full")

    monkeypatch.setattr("sharpcomp.results.loggers.TensorBoardLogger.log", broken)
    res = train(_cfg("logger=tensorboard"), tmp_path / "b", data=toy)
    lines = [x for x in capsys.readouterr().err.splitlines() if "logger tensorboard failed" in x]
    assert res.status == "finished" and len(lines) == 1 and "OSError: disk full" in lines[0]
    assert sorted(set(read_metrics(tmp_path / "b").iteration)) == [0, 4, 8, 12]


def test_the_logger_changes_no_run_id():
    ids = {run_identity(OmegaConf.to_container(_cfg(*x), resolve=True))["run_id"]
           for x in ([], ["logger=tensorboard"], ["logger=mlflow"], ["logger=csv"])}
    assert len(ids) == 1


# --- the loggers' files are the run folder's own; no logger waits on a server ---------------------------

VICTIM = "the user's own file\n"


def _victim(tmp_path):
    target = tmp_path / "home" / "victim.txt"
    target.parent.mkdir(exist_ok=True)
    target.write_text(VICTIM)
    return target


LINKED = [("csv", "metrics.csv", True), ("mlflow", "mlflow_run_id", False), ("tensorboard", "tensorboard", False)]


@pytest.mark.parametrize("logger,member,resume", [("csv", "metrics.csv", False),
                                                  *(pytest.param(*c, marks=pytest.mark.slow) for c in LINKED)])
def test_a_linked_logger_file_refuses_the_run_and_its_target_is_untouched(toy, tmp_path, logger, member, resume):
    from sharpcomp.settings import ConfigError

    run = tmp_path / "runs" / "a"
    if resume:  # a finished run extended: the rows so far were mirrored to metrics.csv
        assert train(_cfg(f"logger={logger}"), run, data=toy).status == "finished"
        (run / member).unlink()
    target = _victim(tmp_path)
    run.mkdir(parents=True, exist_ok=True)
    (run / member).symlink_to(target.parent if member == "tensorboard" else target)
    with pytest.raises(ConfigError, match=f"{member}: it is a symbolic link"):
        train(_cfg(f"logger={logger}", "steps=16"), run, data=toy)
    assert target.read_text() == VICTIM and [p.name for p in target.parent.iterdir()] == ["victim.txt"]
    assert logger != "mlflow" or not (tmp_path / "runs" / "mlruns").exists()  # refused before the logger starts


def _replacing_at(iteration, path, make):
    """A train callback that puts ``make(path)`` where a logger file is, after checkpoint ``iteration``."""
    def callback(it, rows):
        if it == iteration:
            path.unlink(missing_ok=True)
            make(path)
    return callback


def test_a_link_made_while_the_run_trains_is_not_followed(toy, tmp_path, capsys):
    target = _victim(tmp_path)
    run = tmp_path / "a"
    res = train(_cfg("logger=csv"), run, data=toy,
                callback=_replacing_at(4, run / "metrics.csv", lambda p: p.symlink_to(target)))
    lines = [x for x in capsys.readouterr().err.splitlines() if "logger csv" in x]
    assert res.status == "finished" and target.read_text() == VICTIM
    assert len(lines) == 1 and "logger csv failed" in lines[0] and "symbolic link" in lines[0]
    assert sorted(set(read_metrics(run).iteration)) == [0, 4, 8, 12]


@pytest.mark.slow
def test_a_fifo_made_while_the_run_trains_never_blocks_it(toy, tmp_path, capsys):
    """A FIFO where metrics.csv was, with no reader: appending to it would wait for ever. A watchdog opens its
    reading end after 60 s, so that a regression fails here instead of hanging."""
    import os
    import threading

    run, fired = tmp_path / "a", []

    def unblock():
        fired.append(True)
        with open(os.open(run / "metrics.csv", os.O_RDONLY | os.O_NONBLOCK), "rb") as fh:
            fh.read()

    watchdog = threading.Timer(60, unblock)
    watchdog.start()
    try:
        res = train(_cfg("logger=csv"), run, data=toy, callback=_replacing_at(4, run / "metrics.csv", os.mkfifo))
    finally:
        watchdog.cancel()
    assert not fired and res.status == "finished"
    assert "logger csv failed" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize("content", ["../../../home/victim\n", "\x1b]0;owned\x07\n", "x" * 5000])
def test_a_crafted_mlflow_run_id_is_never_used(toy, tmp_path, content):
    from mlflow.tracking import MlflowClient

    run = tmp_path / "runs" / "a"
    run.mkdir(parents=True)
    (run / "mlflow_run_id").write_text(content)
    assert train(_cfg("logger=mlflow"), run, data=toy).status == "finished"
    run_id = (run / "mlflow_run_id").read_text().strip()
    assert run_id != content.strip() and len(run_id) == 32
    client = MlflowClient(tracking_uri=(tmp_path / "runs" / "mlruns").as_uri())
    assert client.get_run(run_id).info.status == "FINISHED"


@pytest.mark.parametrize("where", ["mlruns", pytest.param("mlruns/0", marks=pytest.mark.slow)])
def test_a_linked_default_mlflow_store_is_not_used(toy, tmp_path, capsys, where):
    outside = tmp_path / "home"
    outside.mkdir()
    link = tmp_path / "runs" / where
    link.parent.mkdir(parents=True)
    link.symlink_to(outside, target_is_directory=True)
    res = train(_cfg("logger=mlflow"), tmp_path / "runs" / "a", data=toy)
    lines = [x for x in capsys.readouterr().err.splitlines() if "logger mlflow" in x]
    assert res.status == "finished" and list(outside.iterdir()) == []
    assert len(lines) == 1 and "could not start" in lines[0] and "is a symbolic link" in lines[0]


def test_an_unanswering_tracking_server_is_given_up_at_once(toy, tmp_path, capsys):
    """A server that accepts and never answers, and a port nothing listens on: one line each within
    ``logger.timeout`` seconds, no retries; the run trains to the end (MLflow's own defaults wait minutes)."""
    import socket
    import threading
    import time

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    held = []
    threading.Thread(target=lambda: [held.append(server.accept()) for _ in range(16)], daemon=True).start()
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
    for port in (server.getsockname()[1], closed.getsockname()[1]):
        t0 = time.monotonic()
        res = train(_cfg("logger=mlflow", f"logger.tracking_uri=http://127.0.0.1:{port}", "logger.timeout=2"),
                    tmp_path / str(port), data=toy)
        err = capsys.readouterr().err
        lines = [x for x in err.splitlines() if "logger mlflow" in x]
        assert res.status == "finished" and time.monotonic() - t0 < 60
        assert len(lines) == 1 and "could not start" in lines[0] and "Retrying" not in err, err
    server.close()
    closed.close()
