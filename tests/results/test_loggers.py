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
