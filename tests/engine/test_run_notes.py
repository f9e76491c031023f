"""What a run says about itself: why iteration 0's accuracy can be 0 (more outputs than classes), and
that a live logger switched on for a run that has ended has nothing to log."""

from __future__ import annotations

import torch
from omegaconf import OmegaConf

from sharpcomp.data.datasets import Dataset
from sharpcomp.engine.train import train
from tests.conftest import SHRINK, compose_train, random_images


def _cfg(*extra):
    cfg = compose_train([*SHRINK, "model.width=0.05", *extra])
    OmegaConf.set_struct(cfg, False)
    return cfg


def two_classes() -> Dataset:
    d = random_images(64, 32)
    return Dataset(d.name, d.train_x, d.train_y % 2, d.test_x, d.test_y % 2, 2, d.source)


def test_more_outputs_than_classes_is_explained_once_at_the_start(tmp_path, capsys):
    """mlp4 with 10 outputs (the study's) on two classes: argmax may fall on outputs 2-9, which name no class;
    the first rows show how low that puts the untrained network's accuracy."""
    data = two_classes()
    train(_cfg(), tmp_path / "run", data=data)
    err = capsys.readouterr().err
    (line,) = [x for x in err.splitlines() if "outputs for" in x]
    assert line == ("sharpcomp: mlp4 has 10 outputs for 2 classes (model.outputs=10): a prediction on outputs 2-9 "
                    "names no class and counts as wrong, so early accuracy can be near 0 (model.outputs=classes "
                    "gives 2 outputs)")
    train(_cfg("steps=16"), tmp_path / "run", data=data)  # resumed: said once, at the start
    assert "outputs for" not in capsys.readouterr().err
    train(_cfg("model.outputs=classes"), tmp_path / "classes", data=data)
    assert "outputs for" not in capsys.readouterr().err


def test_a_logger_on_a_finished_run_says_it_has_nothing_to_log(tmp_path, capsys):
    data = random_images(64, 32)
    assert train(_cfg(), tmp_path / "run", data=data).status == "finished"
    capsys.readouterr()
    assert train(_cfg("logger=csv"), tmp_path / "run", data=data).status == "finished"
    err = capsys.readouterr().err.splitlines()
    assert err == [f"sharpcomp: {tmp_path / 'run'}: finished at iteration 12; nothing to train (logger=csv logs "
                   "checkpoints as they are trained: nothing to log; the rows are in metrics.parquet)"]
    assert not (tmp_path / "run" / "metrics.csv").exists()
    assert torch.is_tensor(data.train_x)
