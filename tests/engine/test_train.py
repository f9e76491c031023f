"""The runner end to end: records, resume, divergence, determinism (real Fashion-MNIST, tiny mlp4)."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch
from omegaconf import OmegaConf

import sharpcomp.results.run_state as run_state_mod
from sharpcomp.engine.loading import load_run
from sharpcomp.engine.train import train
from sharpcomp.losses import make_loss
from sharpcomp.results.columns import COLUMNS, METRIC_COLUMNS
from sharpcomp.results.records import read_metrics
from sharpcomp.settings import ConfigError

NOT_COMPARED = ["wall_time"]


def _frame(run_dir):
    return read_metrics(run_dir).drop(columns=NOT_COMPARED)


def test_end_to_end_rows_columns_and_values(cfg_small, fmnist_small, tmp_path):
    cfg_small.metrics.sample_sets = ["train", "test", "misclassified"]
    res = train(cfg_small, tmp_path / "run", data=fmnist_small)
    assert res.status == "finished" and res.iteration == 12
    df = read_metrics(tmp_path / "run")
    assert set(COLUMNS) <= set(df.columns)
    assert sorted(df.iteration.unique()) == [0, 4, 8, 12]
    assert len(df) == 4 * 3 and set(df.sample_set) == {"train", "test", "misclassified"}
    assert (df.status == "finished").all() and df.run_id.nunique() == 1
    assert df.lr.iloc[0] == 0.1 and df.batch.iloc[0] == 16 and df.model.iloc[0] == "mlp4"
    assert df.outputs.iloc[0] == 10 and df.loss.iloc[0] == "mse" and "torch" in df.versions.iloc[0]
    train_rows = df[df.sample_set == "train"]
    for col in METRIC_COLUMNS + ("train_loss", "test_loss", "train_acc", "test_acc", "sample_loss"):
        assert train_rows[col].notna().all() and train_rows[col].map(math.isfinite).all(), col
    assert train_rows.train_loss_running.iloc[0] != train_rows.train_loss_running.iloc[0]  # NaN before any step
    assert train_rows.train_loss_running.iloc[1:].gt(0).all()
    assert (train_rows.n_samples == 8).all()
    # mlp4's first layer is fully connected: the bound chain of Eq. 28 holds
    assert (train_rows.mls <= train_rows.bound_b * (1 + 1e-5)).all()
    assert (train_rows.bound_b <= train_rows.bound_c * (1 + 1e-5)).all()
    assert (train_rows.bound_c <= train_rows.bound_d * (1 + 1e-5)).all()
    # the training loss falls and whole-set numbers are consistent with a direct evaluation
    assert train_rows.train_loss.iloc[-1] < train_rows.train_loss.iloc[0]
    run = load_run(tmp_path / "run")
    assert len(run.sample_x) == 8 and run.config["lr"] == 0.1 and run.iteration == 12
    # misclassified rows: at most n points, all misclassified at that checkpoint, and their loss logged
    mis = df[df.sample_set == "misclassified"]
    assert (mis.n_samples <= 8).all() and mis.sample_loss.notna().all()


def test_whole_set_evaluation_has_its_own_cadence(cfg_small, fmnist_small, tmp_path):
    cfg_small.eval_every = 2
    train(cfg_small, tmp_path / "run", data=fmnist_small)
    df = read_metrics(tmp_path / "run").set_index("iteration")
    assert df.test_acc.notna().to_dict() == {0: True, 4: False, 8: True, 12: True}  # the last is always evaluated
    assert df.train_loss_running.loc[4] > 0


def test_rows_match_a_direct_computation(cfg_small, fmnist_small, tmp_path):
    """Train loss / accuracy and the running loss against an independent plain-PyTorch replay."""
    from sharpcomp.data.order import batch_indices
    from sharpcomp.models import build_model

    train(cfg_small, tmp_path / "run", data=fmnist_small)
    df = read_metrics(tmp_path / "run").set_index("iteration")
    model = build_model("mlp4", 10, 0.2, input_shape=(1, 28, 28), seed=0)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    loss_fn = make_loss("mse", 10)
    losses = []
    for it in range(12):
        idx = batch_indices(0, it, 1000, 16)
        opt.zero_grad()
        loss = loss_fn(model(fmnist_small.train_x[idx]), fmnist_small.train_y[idx])
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert df.train_loss_running.loc[12] == pytest.approx(sum(losses[8:]) / 4, rel=1e-6)
    with torch.no_grad():
        out = model(fmnist_small.test_x)
    assert df.test_acc.loc[12] == pytest.approx((out.argmax(1) == fmnist_small.test_y).float().mean().item())
    assert df.test_loss.loc[12] == pytest.approx(loss_fn(out, fmnist_small.test_y).item(), rel=1e-5)


def test_deterministic_for_a_seed(cfg_small, fmnist_small, tmp_path):
    train(cfg_small, tmp_path / "a", data=fmnist_small)
    train(cfg_small, tmp_path / "b", data=fmnist_small)
    pd.testing.assert_frame_equal(_frame(tmp_path / "a"), _frame(tmp_path / "b"))
    cfg_small.seed = 1
    train(cfg_small, tmp_path / "c", data=fmnist_small)
    assert not _frame(tmp_path / "a").train_loss_running.equals(_frame(tmp_path / "c").train_loss_running)


class Crash(KeyboardInterrupt):
    pass


def test_resume_after_interrupt_gives_the_uninterrupted_rows(cfg_small, fmnist_small, tmp_path):
    train(cfg_small, tmp_path / "ref", data=fmnist_small)

    def crash_after_4(it, rows):
        if it == 4:
            raise Crash

    with pytest.raises(Crash):
        train(cfg_small, tmp_path / "run", data=fmnist_small, callback=crash_after_4)
    partial = read_metrics(tmp_path / "run")
    assert sorted(partial.iteration) == [0, 4] and (partial.status == "running").all()
    res = train(cfg_small, tmp_path / "run", data=fmnist_small)
    assert res.status == "finished"
    pd.testing.assert_frame_equal(_frame(tmp_path / "ref"), _frame(tmp_path / "run"))
    # a rerun of a finished run changes nothing
    train(cfg_small, tmp_path / "run", data=fmnist_small)
    pd.testing.assert_frame_equal(_frame(tmp_path / "ref"), _frame(tmp_path / "run"))


def test_crash_between_rows_and_model_state(cfg_small, fmnist_small, tmp_path, monkeypatch):
    """Rows of a checkpoint whose model state never reached disk are dropped and recomputed."""
    train(cfg_small, tmp_path / "ref", data=fmnist_small)
    real_save, calls = run_state_mod.save_checkpoint, []

    def failing_save(run_dir, state):
        calls.append(state["iteration"])
        if state["iteration"] == 8:
            raise Crash
        real_save(run_dir, state)

    monkeypatch.setattr(run_state_mod, "save_checkpoint", failing_save)
    with pytest.raises(Crash):
        train(cfg_small, tmp_path / "run", data=fmnist_small)
    assert sorted(read_metrics(tmp_path / "run").iteration) == [0, 4, 8]  # rows at 8 written, state not
    monkeypatch.setattr(run_state_mod, "save_checkpoint", real_save)
    train(cfg_small, tmp_path / "run", data=fmnist_small)
    pd.testing.assert_frame_equal(_frame(tmp_path / "ref"), _frame(tmp_path / "run"))


def test_longer_rerun_extends_the_run(cfg_small, fmnist_small, tmp_path):
    train(cfg_small, tmp_path / "ref", data=fmnist_small)
    cfg_small.steps = 8
    train(cfg_small, tmp_path / "run", data=fmnist_small)
    cfg_small.steps = 12
    train(cfg_small, tmp_path / "run", data=fmnist_small)
    a, b = _frame(tmp_path / "ref"), _frame(tmp_path / "run")
    # identical trajectory; only the row at 8 differs: it was the last of the short run (always evaluated)
    pd.testing.assert_frame_equal(a[a.iteration != 8].reset_index(drop=True),
                                  b[b.iteration != 8].reset_index(drop=True))


def test_divergence_is_recorded(cfg_small, fmnist_small, tmp_path):
    cfg_small.lr = 1e6
    res = train(cfg_small, tmp_path / "run", data=fmnist_small)
    assert res.status == "diverged"
    df = read_metrics(tmp_path / "run")
    assert (df.status == "diverged").all() and math.isnan(df.train_loss_running.iloc[-1])
    assert train(cfg_small, tmp_path / "run", data=fmnist_small).status == "diverged"  # rerun keeps the verdict


def test_folder_of_another_run_is_refused(cfg_small, fmnist_small, tmp_path):
    train(cfg_small, tmp_path / "run", data=fmnist_small)
    cfg_small.lr = 0.05
    with pytest.raises(ConfigError, match="holds another run"):
        train(cfg_small, tmp_path / "run", data=fmnist_small)


def test_batch_larger_than_train_set(cfg_small, fmnist_small, tmp_path):
    cfg_small.batch = 5000
    with pytest.raises(ConfigError, match="larger than the training set"):
        train(cfg_small, tmp_path / "run", data=fmnist_small)


def test_cross_entropy_and_class_outputs(cfg_small, fmnist_small, tmp_path):
    cfg_small.loss = "ce"
    cfg_small.model.outputs = "classes"
    res = train(cfg_small, tmp_path / "run", data=fmnist_small)
    df = read_metrics(tmp_path / "run")
    assert res.status == "finished" and df.loss.iloc[0] == "ce" and df.outputs.iloc[0] == 10
    assert df.train_loss.iloc[0] == pytest.approx(math.log(10), rel=0.1)  # near-uniform predictions at init


def test_sam_optimizer_runs(cfg_small, fmnist_small, tmp_path):
    pytest.importorskip("sharpcomp.optim")
    OmegaConf.set_struct(cfg_small, False)
    cfg_small.optim = {"name": "sam", "rho": 0.05, "adaptive": False}
    assert train(cfg_small, tmp_path / "run", data=fmnist_small).status == "finished"
    assert read_metrics(tmp_path / "run").optim.iloc[0] == "sam"


def test_flatness_measures_land_in_the_train_rows(cfg_small, fmnist_small, tmp_path):
    cfg_small.metrics.flatness_every = 2
    cfg_small.metrics.flatness.worst_case = {"rho": 0.05, "steps": 2, "batches": 2, "batch_size": 32}
    cfg_small.metrics.flatness.fisher = {"n": 32}
    cfg_small.metrics.flatness.disagreement = {"batches": 3, "batch_size": 16}
    train(cfg_small, tmp_path / "run", data=fmnist_small)
    df = read_metrics(tmp_path / "run").set_index("iteration")
    for col in ("worst_case", "worst_case_rel", "fisher_trace", "grad_disagreement"):
        assert df[col].notna().to_dict() == {0: True, 4: False, 8: True, 12: True}, col
    assert (df.worst_case.dropna() > 0).all() and (df.fisher_trace.dropna() > 0).all()
