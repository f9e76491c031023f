"""Training on CUDA: steps replayed as captured CUDA graphs give the records of the eager CUDA
path (within float tolerance), for a single run and for an ensemble, and resume stays exact.

Skipped where no CUDA device exists (this project's CI machines); run on a GPU machine with
``pytest tests/test_cuda_training.py``."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from omegaconf import OmegaConf

from sharpcomp.engine.ensemble import train_ensemble
from sharpcomp.engine.train import train
from sharpcomp.results.records import read_metrics
from tests.conftest import SHRINK, compose_train

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
NUMERIC = ["train_loss_running", "train_loss", "test_loss", "sample_loss", "sharpness", "G", "log_volume", "mls",
           "local_dim"]


def _cfg(*extra):
    cfg = compose_train([*SHRINK, "device=cuda", "allow_tf32=false", "steps=40", "log_every=10", *extra])
    OmegaConf.set_struct(cfg, False)
    return cfg


def _close(a: pd.DataFrame, b: pd.DataFrame, rtol: float) -> None:
    assert list(a.iteration) == list(b.iteration) and list(a.sample_set) == list(b.sample_set)
    pd.testing.assert_frame_equal(a[NUMERIC], b[NUMERIC], rtol=rtol, atol=1e-7)


def test_graph_steps_give_the_eager_records(fmnist_small, tmp_path, capfd):
    train(_cfg("cuda_graph=off"), tmp_path / "eager", data=fmnist_small)
    train(_cfg("cuda_graph=auto"), tmp_path / "graph", data=fmnist_small)
    assert "capture failed" not in capfd.readouterr().err
    _close(read_metrics(tmp_path / "eager"), read_metrics(tmp_path / "graph"), 1e-4)


def test_graph_ensemble_gives_the_eager_records(fmnist_small, tmp_path, capfd):
    for mode in ("off", "auto"):
        cfgs = [_cfg(f"cuda_graph={mode}", f"lr={lr}", f"seed={s}") for lr, s in ((0.05, 0), (0.1, 1), (0.2, 2))]
        train_ensemble(cfgs, [tmp_path / mode / str(j) for j in range(3)], data=fmnist_small)
    assert "capture failed" not in capfd.readouterr().err
    for j in range(3):
        _close(read_metrics(tmp_path / "off" / str(j)), read_metrics(tmp_path / "auto" / str(j)), 1e-4)


def test_graph_resume_is_exact(fmnist_small, tmp_path):
    train(_cfg(), tmp_path / "ref", data=fmnist_small)

    def stop_at_20(it, rows):
        if it == 20:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(_cfg(), tmp_path / "run", data=fmnist_small, callback=stop_at_20)
    train(_cfg(), tmp_path / "run", data=fmnist_small)
    a, b = (read_metrics(tmp_path / d).drop(columns="wall_time") for d in ("ref", "run"))
    pd.testing.assert_frame_equal(a, b)
