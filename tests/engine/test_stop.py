"""Training to a criterion (``stop.*``): where a run stops, what its last checkpoint holds, resume and
extension, ensembles whose members stop apart, run identity; and dist_init as the engine computes it."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch
from omegaconf import OmegaConf

from sharpcomp.engine.ensemble import train_ensemble
from sharpcomp.engine.train import train
from sharpcomp.models import build_from_config
from sharpcomp.results.records import read_metrics
from sharpcomp.results.run_state import CHECKPOINT_FILE, read_checkpoint
from sharpcomp.settings import ConfigError, compose, run_identity, settings
from tests.conftest import SHRINK, compose_train

SAME = ["iteration", "epoch", "train_loss_running", "train_loss", "train_acc", "test_loss", "test_acc", "sharpness",
        "G", "sample_loss"]


def _cfg(data_dir, cache_dir, *extra):
    cfg = compose_train([*SHRINK, *extra])
    OmegaConf.set_struct(cfg, False)
    cfg.data_dir, cfg.cache_dir = str(data_dir), str(cache_dir)
    return cfg


@pytest.fixture(scope="module")
def straight(data_dir, cache_dir, fmnist_small, tmp_path_factory):
    """The run without a stopping rule: 12 steps, checkpoints 0, 4, 8, 12."""
    run = tmp_path_factory.mktemp("straight") / "run"
    train(_cfg(data_dir, cache_dir), run, data=fmnist_small)
    return read_metrics(run)


def _train_rows(frame: pd.DataFrame) -> pd.DataFrame:
    return frame[frame.sample_set == "train"].set_index("iteration", drop=False)


def test_a_run_stops_at_the_first_checkpoint_that_reaches_its_running_loss(straight, data_dir, cache_dir,
                                                                           fmnist_small, tmp_path, capsys):
    running = _train_rows(straight)["train_loss_running"]
    limit = float(running[8])
    assert running[4] > limit  # so the criterion is first met at checkpoint 8
    cfg = _cfg(data_dir, cache_dir, f"stop.running_loss={limit!r}")
    res = train(cfg, tmp_path / "r", data=fmnist_small)
    assert (res.status, res.iteration) == ("finished", 8)
    assert "stopped at iteration 8: running_loss <= stop.running_loss" in capsys.readouterr().out
    rows = read_metrics(tmp_path / "r")
    assert sorted(set(rows.iteration)) == [0, 4, 8] and set(rows.status) == {"finished"}
    same = straight[straight.iteration <= 8].reset_index(drop=True)
    pd.testing.assert_frame_equal(rows[SAME].reset_index(drop=True), same[SAME])  # the same trajectory to there
    last, before = rows[rows.iteration == 8], rows[rows.iteration < 8]
    assert (last.stop_reason == "running_loss").all() and (last.stop_iteration == 8).all()
    assert before.stop_reason.isna().all()
    assert read_checkpoint(tmp_path / "r" / CHECKPOINT_FILE)["stopped"] == "running_loss"
    cfg.steps = 20  # a stopped run is finished at its stop: a rerun, even a longer one, does not continue it
    again = train(cfg, tmp_path / "r", data=fmnist_small)
    assert (again.status, again.iteration) == ("finished", 8)
    pd.testing.assert_frame_equal(read_metrics(tmp_path / "r"), rows)


def test_an_interrupted_run_resumes_and_stops_where_an_uninterrupted_one_does(straight, data_dir, cache_dir,
                                                                               fmnist_small, tmp_path):
    limit = float(_train_rows(straight)["train_loss_running"][8])
    cfg = _cfg(data_dir, cache_dir, f"stop.running_loss={limit!r}")
    whole = train(cfg, tmp_path / "whole", data=fmnist_small)

    def interrupt(it, rows):
        if it == 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(cfg, tmp_path / "cut", callback=interrupt, data=fmnist_small)
    again = train(cfg, tmp_path / "cut", data=fmnist_small)
    assert (again.status, again.iteration) == (whole.status, whole.iteration) == ("finished", 8)
    a, b = (read_metrics(tmp_path / d).drop(columns="wall_time") for d in ("whole", "cut"))
    pd.testing.assert_frame_equal(a, b)


def test_the_whole_set_criterion_is_read_where_the_whole_set_is_evaluated_and_measures_are_taken_there(
        data_dir, cache_dir, fmnist_small, tmp_path):
    # whole-set evaluations at checkpoints 0, 8 and 12 (every 2nd); the measures at the last checkpoint only
    cfg = _cfg(data_dir, cache_dir, "stop.train_loss=100", "eval_every=2", "metrics.flatness_every=0",
               "metrics.flatness.param_norm={}", "metrics.flatness.dist_init={}")
    res = train(cfg, tmp_path / "r", data=fmnist_small)
    assert (res.status, res.iteration) == ("finished", 8)
    rows = _train_rows(read_metrics(tmp_path / "r"))
    assert list(rows.index) == [0, 4, 8] and math.isnan(rows.train_loss[4]) and rows.train_loss[8] <= 100
    assert rows.param_norm.notna().tolist() == [False, False, True]
    assert rows.stop_reason[8] == "train_loss"
    # dist_init at the stop: the distance of the saved weights from a network built again from the seed
    s = settings(cfg)
    start = build_from_config(s.model, 10, (1, 28, 28), seed=s.seed, device=torch.device("cpu"), num_classes=10)
    end = read_checkpoint(tmp_path / "r" / CHECKPOINT_FILE)["model_state"]
    dense = math.sqrt(sum(float((end[k].double() - p.detach().double()).pow(2).sum())
                          for k, p in start.named_parameters()))
    assert rows.dist_init[8] == pytest.approx(dense, rel=1e-12) and dense > 0


def test_a_run_that_never_reaches_its_criterion_stops_at_the_cap_and_extends(data_dir, cache_dir, fmnist_small,
                                                                              tmp_path):
    cfg = _cfg(data_dir, cache_dir, "stop.train_error=0")
    res = train(cfg, tmp_path / "r", data=fmnist_small)
    assert (res.status, res.iteration) == ("finished", 12)
    rows = read_metrics(tmp_path / "r")
    assert (rows[rows.iteration == 12].stop_reason == "steps").all()
    assert "stopped" not in read_checkpoint(tmp_path / "r" / CHECKPOINT_FILE)
    cfg.steps = 16
    assert train(cfg, tmp_path / "r", data=fmnist_small).iteration == 16  # the cap was reached, not the criterion
    rows = read_metrics(tmp_path / "r")
    assert sorted(set(rows.iteration)) == [0, 4, 8, 12, 16]
    assert (rows[rows.iteration == 16].stop_reason == "steps").all()


def test_ensemble_members_stop_apart_with_the_rows_of_separate_runs(straight, data_dir, cache_dir, fmnist_small,
                                                                    tmp_path):
    limit = float(_train_rows(straight)["train_loss"][8])  # member lr=0.1, seed=0 reaches it at 8
    cfgs = [_cfg(data_dir, cache_dir, f"stop.train_loss={limit!r}", f"lr={lr}") for lr in (0.1, 0.01)]
    dirs = [tmp_path / "fast", tmp_path / "slow"]
    res = train_ensemble(cfgs, dirs, data=fmnist_small)
    assert [(r.status, r.iteration) for r in res] == [("finished", 8), ("finished", 12)]
    for cfg, d in zip(cfgs, dirs):
        alone = tmp_path / f"alone-{d.name}"
        train(cfg, alone, data=fmnist_small)
        a, b = read_metrics(d).drop(columns="wall_time"), read_metrics(alone).drop(columns="wall_time")
        pd.testing.assert_frame_equal(a, b, rtol=1e-5, atol=1e-7)
    slow = read_metrics(dirs[1])
    assert (slow[slow.iteration == 12].stop_reason == "steps").all()


def test_the_rule_is_checked_and_takes_part_in_run_ids_only_when_set():
    base = compose(["data=fashion_mnist", "model=mlp4"])
    plain = OmegaConf.to_container(base, resolve=True)
    no_key = {k: v for k, v in plain.items() if k != "stop"}  # a config stored before there was a stopping rule
    assert run_identity(plain) == run_identity(no_key)
    assert "stop" not in run_identity(plain)["settings"]
    ruled = {**plain, "stop": {**plain["stop"], "train_loss": 0.01}}
    assert run_identity(ruled)["run_id"] != run_identity(plain)["run_id"]
    assert run_identity(ruled)["settings"]["stop"] == {"train_loss": 0.01}
    assert settings(ruled).stop.reached(1.0, 0.005, None) == "train_loss"
    assert settings(ruled).stop.reached(0.0, math.nan, 1.0) is None  # NaN never reaches it; error is not watched
    with pytest.raises(ConfigError, match="unknown stop criterion 'test_loss'"):
        settings({**plain, "stop": {"test_loss": 0.1}})
    with pytest.raises(ConfigError, match="stop.train_error must be >= 0"):
        settings({**plain, "stop": {"train_error": -0.1}})
