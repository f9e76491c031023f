"""Training with momentum, weight decay, Adam/AdamW and learning-rate schedules (real Fashion-MNIST, small mlp4):

- a run equals a plain torch loop built here from ``torch.optim`` and ``torch.optim.lr_scheduler`` alone, on
  the same initial weights and data order, and logs the schedule's rate (``lr_now``) at every checkpoint;
- a run interrupted at a checkpoint, or mid-way between two with its resume point held in memory
  (``resume_every``), resumes to the rows, weights and optimizer state of the uninterrupted run, bit for bit;
- an ensemble equals separate runs within float round-off (momentum SGD with a schedule, AdamW), hands
  its optimizer state to a separate run that resumes it, and trains SAM runs one by one with a line.
"""

from __future__ import annotations

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch.optim import lr_scheduler

from sharpcomp.data.order import epoch_permutation
from sharpcomp.engine.ensemble import train_ensemble
from sharpcomp.engine.steppers import PlainStepper
from sharpcomp.engine.train import train
from sharpcomp.models import build_model
from sharpcomp.results.records import read_metrics
from sharpcomp.results.run_state import CHECKPOINT_FILE
from sharpcomp.settings import ConfigError
from tests.conftest import compose_train

BASE = ["data=fashion_mnist", "model=mlp4", "model.width=0.2", "steps=24", "log_every=8", "metrics.n=4",
        "progress=false", "batch=16", "metrics.network_wide=false"]
MOMENTUM = ["optim.momentum=0.9", "optim.weight_decay=5e-4", "schedule=cosine", "schedule.warmup=5"]
ADAMW = ["optim=adamw", "lr=0.002", "schedule=linear", "schedule.warmup=3", "schedule.final=0.1"]


def _cfg(data_dir, cache_dir, extra):
    cfg = compose_train([*BASE, *extra])
    OmegaConf.set_struct(cfg, False)
    cfg.data_dir, cfg.cache_dir = str(data_dir), str(cache_dir)
    return cfg


def plain_loop(data, seed: int, steps: int, batch: int, make_opt, make_sched):
    """mlp4 (width 0.2) trained by torch alone: MSE against one-hot targets, the run's data order, one
    optimizer and scheduler step per iteration. Returns the parameters and each step's rate."""
    model = build_model("mlp4", 10, 0.2, input_shape=(1, 28, 28), seed=seed)
    opt = make_opt(model.parameters())
    sched = make_sched(opt)
    n, per_epoch, rates = len(data.train_x), len(data.train_x) // batch, []
    for it in range(steps):
        epoch, k = divmod(it, per_epoch)
        idx = epoch_permutation(seed, epoch, n)[k * batch:(k + 1) * batch]
        rates.append(opt.param_groups[0]["lr"])
        opt.zero_grad(set_to_none=True)
        loss = F.mse_loss(model(data.train_x[idx]), F.one_hot(data.train_y[idx], 10).float())
        loss.backward()
        opt.step()
        sched.step()
    rates.append(opt.param_groups[0]["lr"])
    return dict(model.named_parameters()), rates


def warm_then(opt, warmup, main):
    warm = lr_scheduler.LinearLR(opt, start_factor=1 / warmup, end_factor=1.0, total_iters=warmup - 1)
    return lr_scheduler.SequentialLR(opt, [warm, main], milestones=[warmup])


TORCH_LOOPS = {
    "momentum": (MOMENTUM, lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=5e-4),
                 lambda o: warm_then(o, 5, lr_scheduler.CosineAnnealingLR(o, T_max=24 - 5))),
    "adamw": (ADAMW, lambda p: torch.optim.AdamW(p, lr=0.002),
              lambda o: warm_then(o, 3, lr_scheduler.LinearLR(o, start_factor=1.0, end_factor=0.1, total_iters=21))),
}


@pytest.mark.parametrize("case", list(TORCH_LOOPS))
def test_a_run_equals_a_plain_torch_loop(case, data_dir, cache_dir, fmnist_small, tmp_path):
    extra, make_opt, make_sched = TORCH_LOOPS[case]
    train(_cfg(data_dir, cache_dir, extra), tmp_path / case, data=fmnist_small)
    params, rates = plain_loop(fmnist_small, 0, 24, 16, make_opt, make_sched)
    state = torch.load(tmp_path / case / CHECKPOINT_FILE, weights_only=True)
    assert state["iteration"] == 24 and len(state["optimizer_state"]["state"]) == len(params)
    moved = 0.0
    for name, p in params.items():
        torch.testing.assert_close(state["model_state"][name], p.detach(), rtol=1e-6, atol=1e-8)
        moved = max(moved, float((p.detach() - build_model("mlp4", 10, 0.2, seed=0).state_dict()[name]).abs().max()))
    assert moved > 1e-3  # the weights moved: the comparison can fail
    rows = read_metrics(tmp_path / case)
    assert list(rows["iteration"]) == [0, 8, 16, 24]
    assert list(rows["lr_now"]) == pytest.approx([rates[i] for i in (0, 8, 16, 24)], rel=1e-12, abs=1e-15)
    assert rows["lr_now"].nunique() == 4 and (rows["lr"] == rows["lr"].iloc[0]).all()


def stop_at_8(it, rows):
    """A callback that interrupts a run (Ctrl-C) right after checkpoint 8 is written."""
    if it == 8:
        raise KeyboardInterrupt


def _same_run(a, b) -> None:
    """Rows (wall time aside), weights and optimizer state bit for bit."""
    pd.testing.assert_frame_equal(read_metrics(a).drop(columns="wall_time"), read_metrics(b).drop(columns="wall_time"))
    sa, sb = (torch.load(d / CHECKPOINT_FILE, weights_only=True) for d in (a, b))
    for k in sa["model_state"]:
        assert torch.equal(sa["model_state"][k], sb["model_state"][k]), k
    for i, st in sa["optimizer_state"]["state"].items():
        for key, v in st.items():
            assert torch.equal(v, sb["optimizer_state"]["state"][i][key]), (i, key)


@pytest.mark.parametrize("extra", [MOMENTUM, ADAMW], ids=["momentum-cosine", "adamw-linear"])
def test_resume_after_an_interrupt_equals_the_uninterrupted_run(extra, data_dir, cache_dir, fmnist_small, tmp_path,
                                                                monkeypatch):
    cfg = _cfg(data_dir, cache_dir, extra)
    train(cfg, tmp_path / "whole", data=fmnist_small)

    with pytest.raises(KeyboardInterrupt):
        train(cfg, tmp_path / "cut", data=fmnist_small, callback=stop_at_8)
    assert torch.load(tmp_path / "cut" / CHECKPOINT_FILE, weights_only=True)["iteration"] == 8
    train(cfg, tmp_path / "cut", data=fmnist_small)
    _same_run(tmp_path / "whole", tmp_path / "cut")

    # resume points kept in memory (resume_every): Ctrl-C between two checkpoints writes the one held, whose
    # optimizer state must be that of its own iteration, not the live one four steps on
    held = _cfg(data_dir, cache_dir, [*extra, "resume_every=1e9"])
    step = PlainStepper.step

    def interrupt_at_12(self, idx):
        if self.it == 12:
            raise KeyboardInterrupt
        return step(self, idx)

    monkeypatch.setattr(PlainStepper, "step", interrupt_at_12)
    with pytest.raises(KeyboardInterrupt):
        train(held, tmp_path / "held", data=fmnist_small)
    monkeypatch.setattr(PlainStepper, "step", step)
    assert torch.load(tmp_path / "held" / CHECKPOINT_FILE, weights_only=True)["iteration"] == 8
    train(held, tmp_path / "held", data=fmnist_small)
    _same_run(tmp_path / "whole", tmp_path / "held")


MEMBERS = ((0.1, 0), (0.05, 1))  # (lr scale, seed)


# (extra settings, the two members' lrs, a diverging member's lr, the weights' absolute tolerance). Weights: the
# records' tolerance, and for Adam(W) an absolute one of a thousandth of a step (lr / 1000): Adam divides each
# coordinate by the root of its second moment, so where a gradient coordinate is near zero the normalised
# step turns the grouped and plain kernels' round-off into a visible share of a step.
ENSEMBLES = {
    "momentum-cosine": (MOMENTUM, (0.1, 0.05), 1e6, 1e-7),
    "adamw-linear": (ADAMW[:1] + ADAMW[2:], (0.002, 0.001), 1e9, 2e-6),
    "adam-step": (["optim=adam", "optim.weight_decay=1e-3", "schedule=step", "schedule.milestones=[12]",
                   "steps=16"], (0.002, 0.001), 1e9, 2e-6),
    "nesterov": (["optim.momentum=0.8", "optim.nesterov=true", "steps=16"], (0.1, 0.05), 1e6, 1e-7),
    "plain-sgd-cosine": (["schedule=cosine", "schedule.warmup=3", "steps=16"], (0.1, 0.05), 1e6, 1e-7),
}


@pytest.mark.parametrize("case", list(ENSEMBLES))
def test_an_ensemble_equals_separate_runs(case, data_dir, cache_dir, fmnist_small, tmp_path):
    """Two members against their separate runs, a third diverging and dropped from the stack mid-way."""
    extra, lrs, bad_lr, atol = ENSEMBLES[case]
    cfgs = [_cfg(data_dir, cache_dir, [*extra, f"lr={lr}", f"seed={seed}"])
            for lr, seed in zip((lrs[0], bad_lr, lrs[1]), (0, 2, 1))]
    for j in (0, 2):
        train(cfgs[j], tmp_path / f"alone{j}", data=fmnist_small)
    dirs = [tmp_path / f"member{j}" for j in range(3)]
    res = train_ensemble(cfgs, dirs, data=fmnist_small)
    assert [r.status for r in res] == ["finished", "diverged", "finished"]
    for j in (0, 2):
        ref, got = (read_metrics(d).drop(columns="wall_time") for d in (tmp_path / f"alone{j}", dirs[j]))
        pd.testing.assert_frame_equal(ref, got, rtol=1e-5, atol=1e-7)
        sa, sb = (torch.load(p / CHECKPOINT_FILE, weights_only=True) for p in (tmp_path / f"alone{j}", dirs[j]))
        for k in sa["model_state"]:
            torch.testing.assert_close(sb["model_state"][k], sa["model_state"][k], rtol=1e-5, atol=atol)
        assert sa["optimizer_state"]["state"].keys() == sb["optimizer_state"]["state"].keys()
        for i, st in sa["optimizer_state"]["state"].items():
            for key, v in st.items():
                torch.testing.assert_close(sb["optimizer_state"]["state"][i][key], v, rtol=1e-4, atol=1e-7)


def test_a_user_optimizer_trains_and_its_run_loads_without_importing_it(data_dir, cache_dir, fmnist_small,
                                                                      tmp_path, monkeypatch):
    import sharpcomp.optim
    from sharpcomp.engine.loading import load_run

    cfg = _cfg(data_dir, cache_dir, ["optim=custom", "optim._target_=torch.optim.RMSprop", "+optim.alpha=0.9",
                                     "lr=0.001", "steps=4", "log_every=4"])
    train(cfg, tmp_path / "rms", data=fmnist_small)
    state = torch.load(tmp_path / "rms" / CHECKPOINT_FILE, weights_only=True)
    assert {"square_avg", "step"} <= set(state["optimizer_state"]["state"][0])
    assert state["optimizer_state"]["param_groups"][0]["alpha"] == 0.9

    def refuse(path):
        raise AssertionError(f"loading a run imported its optimizer {path}")

    monkeypatch.setattr(sharpcomp.optim, "optimizer_class", refuse)
    run = load_run(tmp_path / "rms", data=fmnist_small)
    assert run.iteration == 4 and run.settings.optim["_target_"] == "torch.optim.RMSprop"
    state["config"]["optim"]["_args_"] = ["x"]  # a stored key that would choose code is refused
    torch.save(state, tmp_path / "rms" / CHECKPOINT_FILE)
    with pytest.raises(ConfigError, match=r"config.optim._args_ would choose code"):
        load_run(tmp_path / "rms", data=fmnist_small)


def test_an_ensemble_hands_its_state_to_a_separate_run(data_dir, cache_dir, fmnist_small, tmp_path):
    """Interrupted at 8 in an ensemble, member 0 resumed alone: its momentum buffers carried over."""
    cfgs = [_cfg(data_dir, cache_dir, [*MOMENTUM, f"lr={lr}", f"seed={s}"]) for lr, s in MEMBERS]
    train(cfgs[0], tmp_path / "alone", data=fmnist_small)

    dirs = [tmp_path / f"m{j}" for j in range(2)]
    with pytest.raises(KeyboardInterrupt):
        train_ensemble(cfgs, dirs, data=fmnist_small, callback=stop_at_8)
    assert len(torch.load(dirs[0] / CHECKPOINT_FILE, weights_only=True)["optimizer_state"]["state"]) == 8
    train(cfgs[0], dirs[0], data=fmnist_small)
    ref, got = read_metrics(tmp_path / "alone").drop(columns="wall_time"), read_metrics(dirs[0]).drop(
        columns="wall_time")
    pd.testing.assert_frame_equal(ref, got, rtol=1e-5, atol=1e-7)


def test_sam_runs_are_not_batched_and_train_one_by_one(data_dir, cache_dir, fmnist_small, tmp_path, capsys):
    from sharpcomp.engine.ensemble_groups import group_compatible

    short = ["steps=4", "log_every=4"]
    cfgs = [_cfg(data_dir, cache_dir, ["optim=sam", "optim.base=adamw", "lr=0.001", *short, f"seed={s}"])
            for s in (0, 1)]
    assert group_compatible(cfgs) == ([], [0, 1])
    assert "2 run(s) train one by one: optim=sam takes a second gradient" in capsys.readouterr().err
    res = train_ensemble(cfgs, [tmp_path / "a", tmp_path / "b"], data=fmnist_small)
    assert [r.status for r in res] == ["finished"] * 2
    err = capsys.readouterr().err
    assert "no stacked ensemble (optim=sam takes a second gradient" in err and "training the runs one by one" in err
    train(cfgs[1], tmp_path / "alone", data=fmnist_small)
    _same_run(tmp_path / "alone", tmp_path / "b")
