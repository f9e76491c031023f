"""``sharpcomp rank``: the tables it prints, the files it writes, bad input in one line; and a sweep trained to a
criterion, ranked."""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from omegaconf import OmegaConf

from sharpcomp.cli import main
from sharpcomp.engine.ensemble import train_ensemble
from sharpcomp.results.records import read_metrics
from tests.analysis.sweeps import sweep, write_runs
from tests.conftest import SHRINK, compose_train


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("rank") / "sweep"
    write_runs(root, sweep(seeds=2))
    return root


def test_rank_prints_the_tables_and_writes_the_files(runs, tmp_path, capsys):
    out = tmp_path / "ranked"
    assert main(["rank", str(runs), f"out={out}", "boot=100", "formats=png,svg"]) == 0
    text = capsys.readouterr().out
    assert "ranked 24 runs (12 configurations, 2 seeds each) by their generalisation gap in error" in text
    assert "axes: lr (0.05, 0.1, 0.2); batch (16, 64); model.width (0.5, 1)" in text
    table = text.split("sign error (worst)", 1)[1].strip().splitlines()
    assert table[0].split()[:3] == ["planted", "other", "+1.00"]  # first by |tau|
    assert "granulated Kendall psi per axis" in text and "sign error per axis" in text
    assert sorted(p.name for p in out.iterdir()) == ["ranking.csv", "ranking.png", "ranking.svg", "ranking_axes.png",
                                                     "ranking_axes.svg", "ranking_runs.csv"]
    csv = pd.read_csv(out / "ranking.csv")
    assert list(csv.columns) == ["measure", "family", "coefficient", "axis", "value", "low", "high"]
    assert set(csv.measure) == {"planted", "noise", "sharpness", "G", "train_loss"}
    per_run = pd.read_csv(out / "ranking_runs.csv")
    assert len(per_run) == 24 and {"run", "seed", "lr", "batch", "model.width", "target", "planted"} <= set(per_run)


def test_a_reader_that_stops_early_loses_no_file(runs, tmp_path):
    """``sharpcomp rank ... | head -1``: the files are written before the tables are printed."""
    out = tmp_path / "piped"
    script = Path(sys.executable).with_name("sharpcomp")  # the console script, as a user runs it
    cmd = f"{shlex.quote(str(script))} rank {shlex.quote(str(runs))} out={out} boot=0 | head -1"
    res = subprocess.run(cmd, shell=True, capture_output=True, text=True, timeout=300)
    assert res.stdout.count("\n") == 1 and "Traceback" not in res.stderr
    assert {p.name for p in out.iterdir()} == {"ranking.csv", "ranking_runs.csv", "ranking.png", "ranking_axes.png"}


def test_the_default_folder_is_beside_the_results(runs, capsys):
    assert main(["rank", str(runs), "boot=0", "target=test_loss"]) == 0
    assert (runs.parent / "sweep-rank" / "ranking.csv").is_file()
    assert "by their test loss" in capsys.readouterr().out


@pytest.mark.parametrize("args,message", [
    ([], "missing DIR"),
    (["{runs}", "target=accuracy"], "unknown target 'accuracy'"),
    (["{runs}", "boot=-1"], "boot must be >= 0"),
    (["{runs}", "bootstrap=configs"], "unknown bootstrap 'configs'"),
    (["{runs}", "colour=red"], "unknown option 'colour'"),
    (["{runs}", "--colour", "red"], "unknown flag '--colour'"),
    (["{runs}/nowhere"], "no such folder"),
    (["{runs}", "out={runs}/r000/metrics.parquet/x"], "inside a run's metrics.parquet folder"),
])
def test_bad_input_gets_one_line(runs, capsys, args, message):
    assert main(["rank", *[a.format(runs=runs) for a in args]]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("sharpcomp rank: error: ") and message in err[0]


def test_runs_of_two_model_families_are_refused(tmp_path, capsys):
    write_runs(tmp_path / "a", sweep(seeds=1, axes={"lr": (0.1, 0.2)}))
    other = sweep(seeds=1, axes={"lr": (0.1, 0.2)}, **{"model.name": "vgg10"})
    write_runs(tmp_path / "b", other.assign(run_id=other["run_id"] + "-vgg10"))
    assert main(["rank", str(tmp_path / "a"), str(tmp_path / "b"), "boot=0"]) == 2
    assert "the runs differ in model.name (mlp4, vgg10)" in capsys.readouterr().err


def test_a_sweep_trained_to_a_criterion_ranks_its_baselines(data_dir, cache_dir, fmnist_small, tmp_path, capsys):
    """Six runs (lr 0.2 and 0.3, three seeds) trained in one ensemble to a running loss of 0.1, the baselines
    switched on at the stop only: ranked over lr, the baselines among the measures."""
    flags = ["stop.running_loss=0.1", "metrics.flatness_every=100", "metrics.flatness.param_norm={}",
             "metrics.flatness.dist_init={}", "metrics.flatness.grad_noise={batches: 4, n: 100}", "metrics.n=4",
             "metrics.network_wide=false"]
    base = compose_train([*SHRINK, *flags])
    OmegaConf.set_struct(base, False)
    base.data_dir, base.cache_dir = str(data_dir), str(cache_dir)
    cfgs = [OmegaConf.merge(base, {"lr": lr, "seed": seed}) for seed in range(3) for lr in (0.2, 0.3)]
    results = train_ensemble(cfgs, [tmp_path / "sweep" / f"run{i}" for i in range(6)], data=fmnist_small)
    assert [r.iteration for r in results] == [8] * 6  # each reaches 0.1 at checkpoint 8, before the cap of 12
    first = read_metrics(tmp_path / "sweep" / "run0")
    assert first.loc[first.iteration == 0, "dist_init"].tolist() == [0.0]  # at initialisation: no distance
    capsys.readouterr()
    assert main(["rank", str(tmp_path / "sweep"), "boot=50"]) == 0
    text = capsys.readouterr().out
    assert "ranked 6 runs (2 configurations, 3 seeds each)" in text and "axes: lr (0.2, 0.3)" in text
    ranked = pd.read_csv(tmp_path / "sweep-rank" / "ranking.csv")
    families = ranked.drop_duplicates("measure").set_index("measure")["family"]
    assert families[["param_norm", "dist_init", "grad_noise", "train_loss"]].tolist() == ["baseline"] * 4
    assert families[["sharpness", "G", "mls"]].tolist() == ["study"] * 3
