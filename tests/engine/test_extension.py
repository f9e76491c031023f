"""Extending a run (a rerun with more steps) gives the rows of an uninterrupted run at every checkpoint
they share; the shorter run's end checkpoint stays, off the log_every schedule (see docs/reliability.md)."""

from __future__ import annotations

import pandas as pd

from sharpcomp.engine.train import train
from sharpcomp.results.records import read_metrics
from sharpcomp.results.run_state import CHECKPOINT_FILE, read_checkpoint


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
