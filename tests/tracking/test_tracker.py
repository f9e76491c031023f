"""The tracker: its rows against float64 brute force, resume (its own state, or the loop's iteration), its
reports, bad input refused before training, and a tracked folder read by the commands."""

from __future__ import annotations

import copy
import math
import subprocess
import sys
import textwrap

import numpy as np
import pandas as pd
import pytest
import torch

from sharpcomp.cli import main as cli_main
from sharpcomp.data.order import train_sample_indices
from sharpcomp.measures.registry import plan
from sharpcomp.results.records import read_metrics
from sharpcomp.settings import ConfigError, flatness_by_name
from sharpcomp.tracking.tracker import Tracker
from tests import problems
from tests.conftest import REPO
from tests.reference import reference_metrics

PROBLEM = problems.MLP_MEDIUM  # 8-12-12-3, 24 samples
STEPS, EVERY = 9, 3


def case(seed: int = 0):
    c = PROBLEM.variant(seed=seed).make(torch.float32)
    test = PROBLEM.variant(seed=seed + 100).make(torch.float32)
    return c.model, c.x, c.y, test.x, test.y


def options(x, y, xt, yt, **more) -> dict:
    return {"train_samples": (x, y), "test_samples": (xt, yt), "steps": STEPS, "every": EVERY, "batch_size": 6,
            "seed": 5, "progress": False, "metrics": {"n": 10, "sample_sets": ["train", "test"]}, **more}


def sgd_step(model, opt, sched, x, y, it: int) -> torch.Tensor:
    """One update on the minibatch of iteration ``it`` (a function of the iteration alone); its loss."""
    idx = torch.randperm(len(x), generator=torch.Generator().manual_seed(it))[:6]
    loss = problems.mse(model(x[idx]), y[idx])
    opt.zero_grad()
    loss.backward()
    opt.step()
    sched.step()
    return loss


def loop(folder, model, x, y, xt, yt, stop: int | None = None, tracker_model=None, **more) -> Tracker:
    """SGD with momentum and a step schedule on minibatches fixed by the iteration (a restarted loop sees
    the same ones); ``stop``: leave the loop after that iteration, as a killed script would."""
    opt = torch.optim.SGD(model.parameters(), lr=0.2, momentum=0.9)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=4, gamma=0.5)
    tracker = Tracker(folder, model, problems.mse, optimizer=opt, extra_state={"schedule": sched},
                      **options(x, y, xt, yt, **more))
    with tracker:
        for it in range(tracker.start, STEPS):
            loss = sgd_step(model, opt, sched, x, y, it)
            tracker.step(it + 1, loss=loss.item())
            if stop is not None and it + 1 == stop:
                break
    return tracker


def rows_without_time(folder) -> pd.DataFrame:
    return read_metrics(folder).drop(columns=["wall_time", "status"]).sort_values(["iteration", "sample_set"])


# ---------------------------------------------------------------------------------------------------------
# the rows


def test_checkpoint_rows_against_float64_brute_force(tmp_path, one_thread):
    model, x, y, xt, yt = case()
    start = copy.deepcopy(model)
    tracker = Tracker(tmp_path / "run", model, problems.mse, measures={"grad_norm": {"n": 1000}},
                      **options(x, y, xt, yt))
    tracker.close()
    row = tracker.reports[0].train_row
    m64, x64, xt64 = start.double(), x.double(), xt.double()
    with torch.no_grad():
        out, out_t = m64(x64), m64(xt64)
    assert row["train_loss"] == pytest.approx(float(problems.mse(out, y)), rel=1e-5)
    assert row["train_acc"] == pytest.approx(float((out.argmax(1) == y).double().mean()), abs=1e-7)
    assert row["test_loss"] == pytest.approx(float(problems.mse(out_t, yt)), rel=1e-5)
    idx = train_sample_indices(5, len(x), 10)  # the train sample set sharpcomp train would choose
    assert row["n_samples"] == 10
    assert row["sample_loss"] == pytest.approx(float(problems.mse(out[idx], y[idx])), rel=1e-5)
    ref = reference_metrics(m64, x64[idx])
    for key in ("sharpness", "G", "mls", "local_dim"):
        assert row[key] == pytest.approx(ref[key], rel=1e-4), key
    loss = problems.mse(m64(x64), y)  # grad_norm on every point (n above the pool's size)
    grads = torch.autograd.grad(loss, list(m64.parameters()))
    assert row["grad_norm"] == pytest.approx(math.sqrt(sum(float((g ** 2).sum()) for g in grads)), rel=1e-5)
    test_row = next(r for r in tracker.reports[0].rows if r["sample_set"] == "test")
    assert test_row["sharpness"] == pytest.approx(reference_metrics(m64, xt64[:10])["sharpness"], rel=1e-4)


def test_running_loss_is_the_mean_of_the_losses_given(tmp_path, one_thread):
    model, x, y, xt, yt = case()
    tracker = Tracker(tmp_path / "run", model, "ce", **options(x, y, xt, yt, progress=False))
    given = [0.5, 1.5, 4.0, 2.0, torch.tensor(3.0), 1.0]
    for it, loss in enumerate(given, start=1):
        tracker.step(it, loss=loss)
    tracker.close()
    frame = read_metrics(tmp_path / "run").query("sample_set == 'train'").set_index("iteration")
    assert math.isnan(frame.loc[0, "train_loss_running"])
    assert frame.loc[3, "train_loss_running"] == pytest.approx(2.0)
    assert frame.loc[6, "train_loss_running"] == pytest.approx(2.0)
    assert (frame.loss == "ce").all() and (frame.optim == "none").all()


# ---------------------------------------------------------------------------------------------------------
# resume


def test_a_restarted_loop_resumes_from_the_trackers_state(tmp_path, one_thread, capsys):
    model, x, y, xt, yt = case()
    whole = loop(tmp_path / "whole", copy.deepcopy(model), x, y, xt, yt)
    assert whole.start == 0 and [r.iteration for r in whole.reports] == [0, 3, 6, 9]
    loop(tmp_path / "cut", copy.deepcopy(model), x, y, xt, yt, stop=7)  # killed after iteration 7
    assert sorted(set(read_metrics(tmp_path / "cut").iteration)) == [0, 3, 6]
    other, *_ = case(seed=9)  # a fresh network: the tracker loads the saved one into it
    again = loop(tmp_path / "cut", other, x, y, xt, yt)
    assert again.start == 6 and "resumed at iteration 6 (network, optimizer, schedule loaded)" in \
        capsys.readouterr().err
    a, b = rows_without_time(tmp_path / "whole"), rows_without_time(tmp_path / "cut")
    assert b.groupby(["iteration", "sample_set"]).size().max() == 1  # nothing twice
    pd.testing.assert_frame_equal(a.drop(columns="run_id").reset_index(drop=True),
                                  b.drop(columns="run_id").reset_index(drop=True))
    assert (read_metrics(tmp_path / "cut").status == "finished").all()


def _trained_to(model, x, y, iterations: int):
    """The network after ``iterations`` of :func:`loop`'s updates, and its optimizer (restored by the loop
    itself, as a Lightning Trainer restores them)."""
    opt = torch.optim.SGD(model.parameters(), lr=0.2, momentum=0.9)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=4, gamma=0.5)
    for it in range(iterations):
        sgd_step(model, opt, sched, x, y, it)
    return model, opt


@pytest.mark.parametrize("at, extra", [(6, []), (4, [4])])
def test_a_loop_that_restores_itself_rewinds_the_records(tmp_path, one_thread, capsys, at, extra):
    """at_iteration: rows past it are dropped and computed again; off the schedule, one more checkpoint."""
    model, x, y, xt, yt = case()
    loop(tmp_path / "run", copy.deepcopy(model), x, y, xt, yt)
    before = rows_without_time(tmp_path / "run")
    restored, opt = _trained_to(copy.deepcopy(model), x, y, at)
    tracker = Tracker(tmp_path / "run", restored, problems.mse, optimizer=opt, at_iteration=at,
                      **options(x, y, xt, yt))
    assert tracker.start == at
    assert f"resumed at iteration {at}" in capsys.readouterr().err
    tracker.close()
    after = rows_without_time(tmp_path / "run")
    assert sorted(set(after.iteration)) == sorted({0, 3, *extra, 6} if at == 6 else {0, 3, 4})
    same = after[after.iteration.isin([0, 3, 6])].reset_index(drop=True)
    pd.testing.assert_frame_equal(before[before.iteration.isin(set(same.iteration))].reset_index(drop=True),
                                  same, check_exact=False, rtol=1e-6)


def test_a_rewind_needs_records_from_the_start_and_no_gap(tmp_path, one_thread):
    model, x, y, xt, yt = case()
    with pytest.raises(ConfigError, match=r"holds no records, and the training stands at iteration 4"):
        Tracker(tmp_path / "new", copy.deepcopy(model), "mse", at_iteration=4, **options(x, y, xt, yt))
    loop(tmp_path / "run", copy.deepcopy(model), x, y, xt, yt, stop=4)  # records 0 and 3
    for at in (7, 5):
        restored, opt = _trained_to(copy.deepcopy(model), x, y, at)
        args = dict(optimizer=opt, at_iteration=at, **options(x, y, xt, yt))
        if at == 7:
            with pytest.raises(ConfigError, match=r"the records end at iteration 3 and the training stands at 7: "
                                                  r"the checkpoints between are missing"):
                Tracker(tmp_path / "run", restored, problems.mse, **args)
        else:  # between two checkpoints: nothing is missing
            Tracker(tmp_path / "run", restored, problems.mse, **args).close()


def test_a_folder_has_one_tracker_at_a_time(tmp_path):
    model, x, y, xt, yt = case()
    with Tracker(tmp_path / "run", model, "mse", **options(x, y, xt, yt)):
        with pytest.raises(ConfigError, match="is in use by pid"):
            Tracker(tmp_path / "run", model, "mse", **options(x, y, xt, yt))


# ---------------------------------------------------------------------------------------------------------
# reports, failing measures


def test_each_checkpoint_reports_its_parts_and_its_cost(tmp_path, one_thread, capsys):
    model, x, y, xt, yt = case()
    tracker = loop(tmp_path / "run", model, x, y, xt, yt, measures={"grad_norm": {}}, progress=True)
    reports = tracker.reports
    assert [r.iteration for r in reports] == [0, 3, 6, 9]
    for r in reports:
        assert set(r.seconds) == {"evaluation", "metrics", "grad_norm", "write"}
        assert all(v >= 0 for v in r.seconds.values()) and r.total == pytest.approx(sum(r.seconds.values()))
    assert math.isnan(reports[0].cost)
    assert all(r.loop_seconds > 0 and r.cost == pytest.approx(r.total / r.loop_seconds) for r in reports[1:])
    err = capsys.readouterr().err.splitlines()
    assert sum(ln.endswith("checkpoint: measuring ...") for ln in err) == 4
    lines = [ln for ln in err if "checkpoint" in ln and not ln.endswith("measuring ...")]
    assert len(lines) == 4 and lines[-1].startswith(f"sharpcomp: {tmp_path / 'run'}: [      9/9] loss(run)=")
    assert "grad_norm=" in lines[-1] and "of the loop's" in lines[-1]
    assert {"train_loss", "grad_norm", "sharpness"} <= set(reports[-1].scalars())


def test_a_measure_that_raises_records_why_and_the_loop_goes_on(tmp_path, one_thread):
    model, x, y, xt, yt = case()
    broken = {"broken": {"_target_": "tests.own_measures.BROKEN"}, "grad_norm": {}}
    loop(tmp_path / "run", copy.deepcopy(model), x, y, xt, yt, measures=broken)
    train = read_metrics(tmp_path / "run").query("sample_set == 'train'")
    assert len(train) == 4 and train.broken.isna().all() and train.grad_norm.notna().all()
    assert (train.measure_errors == "broken: ValueError: no margin here").all()
    with pytest.raises(ValueError, match="no margin here"):
        loop(tmp_path / "fatal", copy.deepcopy(model), x, y, xt, yt, measures=broken, fatal=True)


# ---------------------------------------------------------------------------------------------------------
# bad input: one line, before anything is written


def _nan_model():
    model, *_ = case()
    with torch.no_grad():
        model.fc1.weight[0, 0] = math.nan
    return model


def _frozen():
    model, *_ = case()
    return model.requires_grad_(False)


BAD = [
    ({"model": torch.nn.Identity()}, "the model has no parameters"),
    ({"model": _frozen}, "no parameter of the model requires a gradient"),
    ({"model": _nan_model}, "parameter fc1.weight holds NaN or infinite values"),
    ({"model": lambda: PROBLEM.model().to("meta")}, "parameter fc1.weight is on the meta device"),
    ({"model": "not a network"}, "model must be a torch.nn.Module, got str"),
    ({"train_samples": lambda x, y: (x[:5], y)}, "train_samples: inputs (5, 8) and labels (24,) do not match"),
    ({"train_samples": lambda x, y: (x, y.float())}, "labels must be integer class indices, got torch.float32"),
    ({"train_samples": lambda x, y: (x, y + 3)}, "labels must be class indices in [0, 3)"),
    ({"train_samples": lambda x, y: (x[:, :5], y), "test_samples": None},
     "the model fails on two training inputs of shape (2, 5)"),
    ({"test_samples": lambda x, y: (x[:, None], y)}, "test_samples: inputs of shape (1, 8), the training"),
    ({"measures": {"hessian_maxx": {}}}, "unknown metrics.flatness key 'hessian_maxx'"),
    ({"measures": {"hessian_max": {"n": 0}}}, "metrics.flatness.hessian_max.n must be > 0, got 0"),
    ({"measures": {"mine": {"_target_": "tests.nowhere.MEASURE"}}}, "cannot import metrics.flatness.mine._target_"),
    ({"metrics": {"n": 0}}, "metrics.n must be > 0"),
    ({"metrics": {"nn": 3}}, "unknown metrics key 'nn'"),
    ({"metrics": {"sample_sets": ["misclassified"]}, "test_samples": None}, "'misclassified' needs test_samples"),
    ({"every": 0}, "every must be an integer >= 1, got 0"),
    ({"steps": 2.5}, "steps must be an integer >= 1, got 2.5"),
    ({"loss_fn": "hinge"}, "unknown loss 'hinge'"),
    ({"extra_state": {"s": object()}}, "extra_state 's' has no state_dict() and load_state_dict()"),
]


@pytest.mark.parametrize("change, message", BAD, ids=[m[:40] for _, m in BAD])
def test_bad_input_is_one_line_before_any_folder_is_written(tmp_path, change, message):
    model, x, y, xt, yt = case()
    args = {"model": model, "loss_fn": "mse", **options(x, y, xt, yt)}
    for key, value in change.items():
        if key in ("train_samples", "test_samples") and callable(value):
            value = value(*args[key])
        args[key] = value() if key == "model" and callable(value) and not isinstance(value, torch.nn.Module) \
            else value
    folder = tmp_path / "run"
    with pytest.raises(ConfigError) as info:
        Tracker(folder, args.pop("model"), args.pop("loss_fn"), **args)
    assert message in str(info.value) and "\n" not in str(info.value)
    assert not folder.exists()


def test_measures_are_refused_with_the_configs_own_lines(tmp_path):
    """The same entry gives the same line from a tracker as from a config."""
    model, x, y, xt, yt = case()
    for entry in ({"hessian_maxx": {}}, {"hessian_max": {"n": 0}}, {"average": {"sigma": "a"}}):
        with pytest.raises(ConfigError) as info:
            Tracker(tmp_path / "run", model, "mse", measures=entry, **options(x, y, xt, yt))
        try:
            plan(flatness_by_name(entry))
        except ValueError as exc:
            expected = str(exc)
        assert str(info.value) == expected


def test_step_counts_one_update_at_a_time(tmp_path):
    model, x, y, xt, yt = case()
    with Tracker(tmp_path / "run", model, "mse", **options(x, y, xt, yt)) as tracker:
        tracker.step(1)
        with pytest.raises(ConfigError, match=r"tracker.step\(3\): the next iteration is 2"):
            tracker.step(3)


# ---------------------------------------------------------------------------------------------------------
# the commands read a tracked folder as a train folder


def test_commands_read_a_tracked_folder(tmp_path, one_thread, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    model, x, y, xt, yt = case()
    loop(tmp_path / "run", model, x, y, xt, yt, measures={"margin": {"_target_": "tests.own_measures.MEASURE"}})
    capsys.readouterr()
    assert cli_main(["runs", str(tmp_path / "run")]) == 0
    assert "finished" in capsys.readouterr().out
    assert cli_main(["figures", str(tmp_path / "run"), "--out", str(tmp_path / "figs"), "--only", "flatness"]) == 0
    assert "flatness: wrote" in capsys.readouterr().out
    drawn = pd.read_csv(tmp_path / "figs" / "flatness.csv")
    assert set(drawn.column) == {"sqrt_sharpness", "margin"}
    code = cli_main(["reparam", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip()
    assert code == 1 and len(err.splitlines()) == 1 and "recorded by sharpcomp.Tracker" in err
    np.testing.assert_array_equal(sorted(set(read_metrics(tmp_path / "run").iteration)), [0, 3, 6, 9])


def test_the_tracker_needs_no_lightning():
    """Without Lightning installed: sharpcomp and its tracker import and record; the callback says what to install."""
    code = textwrap.dedent("""
        import sys, tempfile, torch
        sys.modules["lightning"] = None  # as if not installed
        import sharpcomp
        model = torch.nn.Sequential(torch.nn.Linear(3, 2))
        x, y = torch.randn(8, 3), torch.randint(0, 2, (8,))
        with sharpcomp.Tracker(tempfile.mkdtemp(), model, "ce", train_samples=(x, y), steps=2, every=1,
                               batch_size=4, progress=False) as tracker:
            tracker.step(1), tracker.step(2)
        try:
            import sharpcomp.tracking.lightning
        except ImportError as exc:
            print(len(tracker.reports), exc)
    """)
    res = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip() == "3 sharpcomp.tracking.lightning needs Lightning: pip install 'sharpcomp[lightning]'"


def test_rows_record_the_rate_the_loops_schedule_gives(tmp_path, one_thread):
    """lr_now at checkpoint it: the rate of the step from it to it + 1, as the loop's StepLR (0.2, halved
    every 4 steps) has set it; NaN without an optimizer."""
    model, x, y, xt, yt = case()
    loop(tmp_path / "run", model, x, y, xt, yt)
    rows = read_metrics(tmp_path / "run").groupby("iteration").lr_now.first()
    assert rows.to_dict() == pytest.approx({0: 0.2, 3: 0.2, 6: 0.1, 9: 0.05}, rel=1e-12)
    with Tracker(tmp_path / "bare", case()[0], "mse", **options(x, y, xt, yt)) as tracker:
        tracker.step(1)
    assert read_metrics(tmp_path / "bare").lr_now.isna().all()
