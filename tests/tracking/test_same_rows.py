"""A plain loop, a Lightning Trainer and ``sharpcomp train`` of the same network, data order and seed record
the same rows: every column but the run's identity and the wall time, within float round-off."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from sharpcomp.engine.train import train
from sharpcomp.results.columns import IDENTITY_COLUMNS
from sharpcomp.results.records import read_metrics
from tests.conftest import compose_train
from tests.tracking import loops

pytest.importorskip("lightning")


def comparable(frame: pd.DataFrame) -> pd.DataFrame:
    """The rows by (iteration, sample set), without identity and wall time, columns in one order."""
    drop = set(IDENTITY_COLUMNS) | {"wall_time"}
    frame = frame[[c for c in frame.columns if c not in drop]]
    frame = frame.dropna(axis=1, how="all")
    return frame.sort_values(["iteration", "sample_set"]).reset_index(drop=True)[sorted(frame.columns)]


def missing(v) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def assert_same_rows(a: pd.DataFrame, b: pd.DataFrame, rtol: float = 1e-5) -> None:
    a, b = comparable(a), comparable(b)
    assert list(a.columns) == list(b.columns)
    assert list(zip(a.iteration, a.sample_set)) == list(zip(b.iteration, b.sample_set))
    for col in a.columns:
        x, y = a[col].to_numpy(), b[col].to_numpy()
        if x.dtype.kind in "fiu" and y.dtype.kind in "fiu":
            np.testing.assert_allclose(x.astype(float), y.astype(float), rtol=rtol, atol=1e-7, err_msg=col)
        elif col == "hessian_top":  # lists of eigenvalues
            for u, v in zip(x, y):
                assert missing(u) == missing(v), col
                if not missing(u):
                    np.testing.assert_allclose(np.asarray(u, float), np.asarray(v, float), rtol=rtol, err_msg=col)
        else:
            assert [str(v) for v in x] == [str(v) for v in y], col


def test_plain_loop_lightning_and_train_record_the_same_rows(tmp_path, one_thread):
    s, d = loops.config(), loops.data()
    train(compose_train(loops.OVERRIDES), tmp_path / "train", data=d)
    loops.plain_loop(tmp_path / "plain", s, d)
    from lightning.pytorch.loggers import CSVLogger

    loops.lightning_fit(tmp_path / "lightning", s, d, logger=CSVLogger(tmp_path / "logs", name="fit"))
    trained = read_metrics(tmp_path / "train")
    # the shared checkpoints: 0, 4, 8, 12 and the end at 14, each with its three sample sets
    assert sorted(set(trained.iteration)) == [0, 4, 8, 12, 14] and len(trained) == 15
    measured = trained[trained.grad_norm.notna()]
    assert sorted(set(measured.iteration)) == [0, 8, 14]  # flatness_every=2, and at the end
    assert trained.test_acc.notna().groupby(trained.iteration).any().tolist() == [True, False, True, False, True]
    for name in ("plain", "lightning"):
        tracked = read_metrics(tmp_path / name)
        assert_same_rows(trained, tracked)
        assert (tracked.status == "finished").all() and (tracked.scale == "tracked").all()
        assert tracked.run_id.nunique() == 1 and not math.isnan(tracked.train_loss_running.iloc[-1])
    # the Trainer's own logger has the train rows' numbers too, at the tracker's checkpoints
    logged = pd.read_csv(next((tmp_path / "logs").rglob("metrics.csv"))).groupby("step").first()
    train_rows = trained[trained.sample_set == "train"].set_index("iteration")
    assert list(logged.index) == [0, 4, 8, 12, 14]
    for col in ("sharpness", "grad_norm", "hessian_max", "train_loss_running", "test_acc", "sample_loss"):
        np.testing.assert_allclose(logged[f"sharpcomp/{col}"], train_rows[col], rtol=1e-5, err_msg=col)
