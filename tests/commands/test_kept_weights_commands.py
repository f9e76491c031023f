"""Weights kept along a real run (``save_every``), measured afterwards (``sharpcomp measure iterations=``),
loaded (``sharpcomp.load_run(iteration=)``) and drawn (``sharpcomp landscape directions=pca``): a tiny mlp4
on Fashion-MNIST with momentum and a cosine schedule, through the command line."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

import sharpcomp
from sharpcomp.cli import main
from sharpcomp.results.kept_weights import weights_path
from sharpcomp.results.run_state import CHECKPOINT_FILE
from tests.conftest import TINY

TRAIN = [*TINY, "steps=12", "log_every=6", "optim.momentum=0.9", "schedule=cosine", "schedule.warmup=2",
         "save_every=3", "hydra.run.dir=R"]


@pytest.fixture
def run(in_tmp, capsys):
    assert main(["train", *TRAIN]) == 0, capsys.readouterr().err
    capsys.readouterr()
    return in_tmp / "R"


def test_kept_weights_are_measured_loaded_and_drawn(run, in_tmp, capsys):
    assert sorted(int(p.stem) for p in (run / "weights").iterdir()) == [0, 3, 6, 9, 12]
    final = torch.load(run / CHECKPOINT_FILE, weights_only=True)["model_state"]
    kept = torch.load(weights_path(run, 12), weights_only=True)["model_state"]
    assert all(torch.equal(kept[k], v) for k, v in final.items())  # the last kept point is the trained network

    loaded = sharpcomp.load_run(run, iteration=3)
    assert loaded.iteration == 3
    first = sharpcomp.load_run(run, iteration=0, data=loaded.data)
    assert not torch.equal(first.model.fc1.weight, loaded.model.fc1.weight)
    with pytest.raises(sharpcomp.ConfigError, match=r"no weights kept at iteration 4 .*kept: 0, 3, 6, 9, 12"):
        sharpcomp.load_run(run, iteration=4, data=loaded.data)

    assert main(["measure", f"run={run}", "iterations=0,6,12", "n=8", "out=M"]) == 0
    rows = pd.read_parquet(in_tmp / "M" / "metrics.parquet")
    assert sorted(rows["iteration"]) == [0, 6, 12] and rows["sharpness"].notna().all()
    assert rows["sharpness"].nunique() == 3  # three different networks
    trained = pd.read_parquet(run / "metrics.parquet").set_index("iteration")
    assert list(rows.sort_values("iteration")["lr_now"]) == pytest.approx(list(trained.loc[[0, 6, 12], "lr_now"]))
    assert main(["measure", f"run={run}", "iterations=all", "n=8", "out=M"]) == 0  # measured again: replaced
    assert sorted(pd.read_parquet(in_tmp / "M" / "metrics.parquet")["iteration"]) == [0, 3, 6, 9, 12]

    out = in_tmp / "traj"
    assert main(["landscape", str(run), "directions=pca", "points=7", "n=50", f"out={out}"]) == 0
    path = pd.read_csv(out / "trajectory_path.csv")
    assert list(path["iteration"]) == [0, 3, 6, 9, 12] and (out / "trajectory.png").stat().st_size > 10_000
    assert path[["pc1", "pc2"]].iloc[-1].abs().max() == 0 and path["off_plane"].between(0, 1).all()
    assert 0 < path["explained_pc1"].iloc[0] + path["explained_pc2"].iloc[0] <= 1 + 1e-12
    grid = pd.read_csv(out / "trajectory_2d.csv")
    assert len(grid) == 49 and grid["loss"].gt(0).all()


@pytest.mark.parametrize("argv,message,code", [
    (["landscape", "R", "directions=pca", "iterations=0,3"], "directions=pca needs at least 3 kept weights", 2),
    (["landscape", "R", "directions=sideways"], "directions must be random or pca", 2),
    (["landscape", "R", "R", "directions=pca"], "directions=pca draws the path of one run", 2),
    (["measure", "run=R", "iterations=5"], "no weights kept at iteration 5", 2),
    (["measure", "model=mlp4", "data=fashion_mnist", "iterations=5"], "iterations= picks kept weights", 2),
])
def test_bad_requests_one_line(run, argv, message, code, capsys):
    assert main(argv) == code
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
