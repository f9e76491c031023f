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

    capsys.readouterr()
    for argv, message in BAD:  # bad requests: one line, exit 2
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err


BAD = [
    (["landscape", "R", "directions=pca", "iterations=0,3"], "directions=pca needs at least 3 kept weights"),
    (["landscape", "R", "directions=sideways"], "directions must be random or pca"),
    (["landscape", "R", "R", "directions=pca"], "directions=pca draws the path of one run"),
    (["measure", "run=R", "iterations=5"], "no weights kept at iteration 5"),
    (["measure", "model=mlp4", "data=fashion_mnist", "iterations=5"], "iterations= picks kept weights"),
]


@pytest.mark.slow
@pytest.mark.parametrize("recipe", [
    ["optim=sgd", "optim.momentum=0.9", "optim.weight_decay=5e-4", "schedule=cosine", "schedule.warmup=100"],
    ["optim=adamw", "lr=0.001", "schedule=linear", "schedule.warmup=20"],
], ids=["momentum-cosine", "adamw"])
def test_a_killed_run_resumes_exactly(recipe, in_tmp):
    """SIGKILL a real process mid-run; the rerun ends with the rows, kept weights, weights and optimizer state
    of an uninterrupted run, bit for bit (slow: two real runs of 300 steps each; the fast suite interrupts
    runs in process, tests/engine/test_optimizers.py)."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from sharpcomp.results.records import read_metrics

    args = ["train", *TINY, "steps=300", "log_every=10", "eval_every=1000", "save_every=50", *recipe]

    def cli(folder):
        return subprocess.run([sys.executable, "-m", "sharpcomp.cli", *args, f"hydra.run.dir={folder}"], cwd=in_tmp,
                              env=dict(os.environ), capture_output=True, text=True, timeout=600)

    assert cli("ref").returncode == 0
    proc = subprocess.Popen([sys.executable, "-m", "sharpcomp.cli", *args, "hydra.run.dir=run"], cwd=in_tmp,
                            env=dict(os.environ), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    target, deadline = in_tmp / "run" / "metrics.parquet", time.time() + 300
    while time.time() < deadline and not (target.exists() and len(read_metrics(target)) >= 8):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert len(read_metrics(target)) < 31  # killed before the end
    again = cli("run")
    assert again.returncode == 0 and "resumed at iteration" in again.stderr, again.stderr[-2000:]
    a, b = (read_metrics(in_tmp / d).drop(columns="wall_time") for d in ("ref", "run"))
    assert a.equals(b) and a["lr_now"].nunique() > 5
    for name in ("checkpoint.pt", *(f"weights/{it}.pt" for it in range(0, 301, 50))):
        sa, sb = (torch.load(in_tmp / d / name, weights_only=True) for d in ("ref", "run"))
        assert all(torch.equal(v, sb["model_state"][k]) for k, v in sa["model_state"].items()), name
    opt_a, opt_b = (torch.load(in_tmp / d / "checkpoint.pt", weights_only=True)["optimizer_state"]["state"]
                    for d in ("ref", "run"))
    assert opt_a and all(torch.equal(v, opt_b[i][k]) for i, st in opt_a.items() for k, v in st.items())
