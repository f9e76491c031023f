"""Extending a run (a rerun with more steps) gives the rows of an uninterrupted run at every checkpoint
they share; the shorter run's end checkpoint stays, off the log_every schedule (see docs/reliability.md).
Through the command line the rerun finds the same folder: ``steps`` names none."""

from __future__ import annotations

import pandas as pd

from sharpcomp.cli import main
from sharpcomp.engine.train import train
from sharpcomp.results.records import read_metrics
from sharpcomp.results.run_state import CHECKPOINT_FILE, read_checkpoint
from tests.conftest import TINY


def _rows(run_dir):
    return read_metrics(run_dir).drop(columns="wall_time").reset_index(drop=True)


def test_an_extended_run_agrees_with_a_straight_run_on_every_shared_checkpoint(cfg_small, fmnist_small, tmp_path):
    train(cfg_small, tmp_path / "straight", data=fmnist_small)  # 12 steps: checkpoints 0, 4, 8, 12
    cfg_small.steps = 10
    short = train(cfg_small, tmp_path / "extended", data=fmnist_small)  # 0, 4, 8 and its end at 10
    assert short.status == "finished"
    saved = read_checkpoint(tmp_path / "extended" / CHECKPOINT_FILE)
    assert saved["iteration"] == 10 and saved["running_count"] == 2  # steps 9 and 10 since checkpoint 8
    cfg_small.steps = 12
    train(cfg_small, tmp_path / "extended", data=fmnist_small)
    straight, extended = _rows(tmp_path / "straight"), _rows(tmp_path / "extended")
    assert sorted(set(extended.iteration)) == [0, 4, 8, 10, 12] and sorted(set(straight.iteration)) == [0, 4, 8, 12]
    shared = extended[extended.iteration != 10].reset_index(drop=True)
    pd.testing.assert_frame_equal(shared, straight)  # bit for bit, train_loss_running at 12 included
    end = extended[extended.iteration == 10]
    assert (end.iteration % cfg_small.log_every != 0).all() and end.train_loss_running.notna().all()
    assert set(extended.run_id) == set(straight.run_id)


def test_an_ordinary_run_saves_no_running_loss(cfg_small, fmnist_small, tmp_path):
    train(cfg_small, tmp_path / "r", data=fmnist_small)
    assert "running_sum" not in read_checkpoint(tmp_path / "r" / CHECKPOINT_FILE)


# ---------------------------------------------------------------------------------------------
# through the command line: a larger steps extends the run in its own folder

EXTEND = [a for a in TINY if not a.startswith("steps=")] + ["data.n_train=500"]  # checkpoints every 2 steps


def _numbers(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.drop(columns="wall_time").sort_values(["iteration", "sample_set"]).reset_index(drop=True)


def test_a_larger_steps_continues_the_same_folder_from_its_last_checkpoint(in_tmp, capsys):
    """``train ... steps=5`` then ``steps=8``: one folder, one run id, resumed at 5 (not trained again from 0),
    and the rows of an uninterrupted ``steps=8`` run at every checkpoint they share."""
    assert main(["train", *EXTEND, "steps=8", "hydra.run.dir=straight"]) == 0
    assert main(["train", *EXTEND, "steps=5"]) == 0
    capsys.readouterr()
    assert main(["train", *EXTEND, "steps=8"]) == 0
    assert "resumed at iteration 5" in capsys.readouterr().err
    (folder,) = [p.parent for p in (in_tmp / "outputs").rglob("metrics.parquet")]
    assert folder.name == "data.n_train=500,log_every=2,metrics.n=4,width=0.05"
    extended, straight = _numbers(read_metrics(folder)), _numbers(read_metrics(in_tmp / "straight"))
    assert sorted(set(extended.iteration)) == [0, 2, 4, 5, 6, 8] and extended.run_id.nunique() == 1
    assert set(extended.run_id) == set(straight.run_id)
    shared = extended[extended.iteration != 5].reset_index(drop=True)
    pd.testing.assert_frame_equal(shared, straight, check_exact=False, rtol=1e-6, atol=1e-9)


def test_a_folder_named_with_steps_before_is_extended_in_place(in_tmp, capsys):
    """Folders whose names held ``steps=`` (earlier naming) resume and extend; no new folder is made."""
    old = in_tmp / "outputs" / "runs" / "fashion_mnist-mlp4" / \
        "data.n_train=500,log_every=2,metrics.n=4,model.width=0.05,steps=4"
    assert main(["train", *EXTEND, "steps=4", f"hydra.run.dir='{old}'"]) == 0
    capsys.readouterr()
    assert main(["train", *EXTEND, "steps=6"]) == 0
    assert f"{old.name}: resumed at iteration 4" in capsys.readouterr().err
    assert [p.parent for p in (in_tmp / "outputs").rglob("metrics.parquet")] == [old]
    assert sorted(set(read_metrics(old).iteration)) == [0, 2, 4, 6]
