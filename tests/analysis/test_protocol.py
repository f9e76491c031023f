"""From a sweep's rows to the ranking: the runs, targets, axes and measures found, what is refused, the bootstrap
draws and the intervals (planted and random measures)."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pandas as pd
import pytest

from sharpcomp.analysis.bootstrap import draws, percentile_interval
from sharpcomp.analysis.grid import RankingError, grid_of
from sharpcomp.analysis.protocol import rank
from sharpcomp.analysis.ranking import ALL, Statistics, pairs_of
from tests.analysis.sweeps import sweep


def _set(frame: pd.DataFrame, run: str, key: str, value) -> pd.DataFrame:
    """``frame`` with setting ``key`` (dotted) of run ``run`` changed."""
    frame = frame.copy()
    for i in frame.index[frame["_run"] == run]:
        settings = json.loads(frame.at[i, "settings"])
        node = settings
        *head, last = key.split(".")
        for h in head:
            node = node.setdefault(h, {})
        node[last] = value
        frame.at[i, "settings"] = json.dumps(settings)
    return frame


def test_the_grid_of_a_sweep():
    g = grid_of(sweep())
    assert g.axes == {"lr": ["0.05", "0.1", "0.2"], "batch": ["16", "64"], "model.width": ["0.5", "1"]}
    assert len(g.runs) == 24 and g.codes.shape == (24, 3) and len(set(g.configs)) == 12
    assert set(g.values.columns) == {"planted", "noise", "sharpness", "G", "train_loss"}  # no se, no bookkeeping
    assert g.families == {"planted": "other", "noise": "other", "sharpness": "study", "G": "study",
                          "train_loss": "baseline"}
    frame = sweep()
    last = frame[frame.iteration == 500].set_index("_run")
    np.testing.assert_allclose(g.runs["target"], last["train_acc"] - last["test_acc"])
    np.testing.assert_array_equal(g.values["planted"], last["planted"])  # the last checkpoint's values
    other = grid_of(sweep(), target="loss_gap")
    np.testing.assert_allclose(other.runs["target"], last["test_loss"] - last["train_loss"])


def test_settings_that_change_together_are_one_axis():
    frame = sweep(axes={"lr": (0.05, 0.1), "batch": (16, 64)})
    for run in frame["_run"].unique():  # the optimiser and its rho change together
        sam = json.loads(frame.loc[frame["_run"] == run, "settings"].iloc[0])["batch"] == 64
        frame = _set(frame, run, "optim.name", "sam" if sam else "sgd")
        frame = _set(frame, run, "optim.rho", 0.05 if sam else None)
    assert list(grid_of(frame).axes) == ["lr", "batch+optim.name+optim.rho"]


def test_runs_left_out_are_counted():
    frame = sweep()
    frame.loc[frame["_run"] == "r000", "status"] = "diverged"
    frame.loc[frame["_run"] == "r001", "status"] = "running"
    frame.loc[(frame["_run"] == "r002") & (frame.iteration == 500), "stop_reason"] = "steps"
    frame.loc[(frame["_run"] != "r003") & (frame.iteration == 500), "hessian_max"] = 1.0
    g = grid_of(frame)
    assert len(g.runs) == 21 and "r002" not in g.runs.index
    assert "left out 2 of 24 runs that did not finish (diverged 1, running 1)" in g.notes
    assert "left out 1 of 24 runs that reached the step cap before their stopping criterion" in g.notes
    assert "left out hessian_max: not computed for 1 of 21 runs" in g.notes and "hessian_max" not in g.values


@pytest.mark.parametrize("key,value", [("model.name", "vgg10"), ("loss", "ce"), ("data.name", "mnist"),
                                       ("stop.train_loss", 0.02), ("metrics.n", 50)])
def test_runs_of_different_tasks_models_losses_rules_or_measures_are_refused(key, value):
    with pytest.raises(RankingError, match=f"the runs differ in {key.replace('.', '[.]')} "):
        grid_of(_set(sweep(), "r005", key, value))


def test_input_that_cannot_be_ranked_gives_one_line():
    with pytest.raises(RankingError, match="no setting varies between the 3 runs"):
        grid_of(sweep(seeds=3, axes={"lr": (0.1,)}))
    with pytest.raises(RankingError, match="unknown target 'accuracy'"):
        grid_of(sweep(), target="accuracy")
    small = grid_of(sweep(seeds=1, axes={"lr": (0.1, 0.2)}))
    with pytest.raises(RankingError, match="2 runs are too few for bootstrap intervals"):
        rank(small)
    assert rank(small, boot=0).value("planted", "kendall") == 1.0  # without intervals it ranks
    with pytest.raises(RankingError, match="a bootstrap over seeds needs two runs or more"):
        rank(grid_of(sweep(seeds=1)), bootstrap="seeds")


def test_bootstrap_draws():
    configs = np.repeat(np.arange(5), [2, 3, 2, 4, 2])
    rng = np.random.default_rng(0)
    over_seeds = draws(configs, 200, rng, "seeds")
    for c in range(5):  # every configuration keeps its size: only which of its seeds stand for it varies
        np.testing.assert_array_equal(over_seeds[:, configs == c].sum(1), (configs == c).sum())
    over_runs = draws(configs, 2000, rng, "runs")
    np.testing.assert_array_equal(over_runs.sum(1), len(configs))
    assert over_runs.mean() == pytest.approx(1.0, abs=0.02) and over_runs.var() == pytest.approx(1 - 1 / 13, rel=0.1)
    lo, hi = percentile_interval(np.column_stack([np.arange(101.0), np.r_[np.full(60, np.nan), np.arange(41.0)]]))
    assert (lo[0], hi[0]) == pytest.approx((2.5, 97.5)) and np.isnan(lo[1]) and np.isnan(hi[1])  # too few finite


def test_a_planted_measure_and_a_random_one_with_their_intervals():
    r = rank(grid_of(sweep(seeds=2)), boot=300)
    t = r.table.set_index(["measure", "coefficient", "axis"])
    assert t.loc[("planted", "kendall", "all"), ["value", "low", "high"]].tolist() == [1.0, 1.0, 1.0]
    assert t.loc[("planted", "sign_error_max", "all"), "value"] == 0.0
    assert t.loc[("planted", "cmi", "all"), "value"] == pytest.approx(1.0)
    noise = t.loc[("noise", "kendall", "all")]
    assert abs(noise["value"]) < 0.3 and noise["low"] < 0 < noise["high"]
    assert set(r.table.columns) == {"measure", "family", "coefficient", "axis", "value", "low", "high"}
    assert set(r.table.axis[r.table.coefficient == "granulated"]) == {"lr", "batch", "model.width", "all"}
    assert r.argmin_set("planted") in {"lr & batch", "lr & model.width", "batch & model.width"}


@pytest.mark.parametrize("how,least,most", [("runs", 0.9, 0.995), ("seeds", 0.7, 0.93)])
def test_how_often_the_intervals_of_random_measures_hold_chance(how, least, most):
    """Statistical: for 150 measures of pure noise on 12 configurations x 2 seeds, the share of 95 % intervals
    that hold the value of chance (0 for tau and Psi, 0.5 for the mean sign error). Over runs it is about the
    nominal 95 %; over two seeds it is lower (a configuration's two seeds resample half their spread), as
    docs/ranking.md says."""
    rng = np.random.default_rng(1)
    codes = np.array([c for c in itertools.product(range(3), range(2), range(2)) for _ in range(2)])
    g = codes @ np.array([0.3, -0.2, 0.1]) + rng.normal(0, 0.05, len(codes))
    stats = Statistics(rng.normal(size=(len(g), 150)), g, pairs_of(codes))
    configs = np.unique(codes, axis=0, return_inverse=True)[1].ravel()
    reps = [stats(w) for w in draws(configs, 200, np.random.default_rng(0), how)]
    for key, chance in ((("kendall", ALL), 0.0), (("granulated", ALL), 0.0), (("sign_error_mean", ALL), 0.5)):
        lo, hi = percentile_interval(np.stack([r[key] for r in reps]))
        held = np.mean((lo <= chance) & (chance <= hi))
        assert least <= held <= most, (key, held)
