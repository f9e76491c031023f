"""One member's folder never decides another's fate: a member whose results folder is replaced or removed
while an ensemble trains, whose saved state does not fit, or whose folder holds a link, fails alone and the
tally says which and why; a sweep that was killed leaves no outcome folder behind for good."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
from omegaconf import OmegaConf

from sharpcomp.engine import jobs
from sharpcomp.engine.ensemble import train_ensemble
from sharpcomp.engine.train import train
from sharpcomp.results.records import RecordError, read_metrics
from tests.conftest import SHRINK, TINY, compose_train, random_images
from tests.hostile import cli, one_line

SEEDS = (0, 1, 2, 3)


@pytest.fixture(scope="module")
def toy():
    return random_images(64, 32)


def _cfgs():
    out = []
    for seed in SEEDS:
        cfg = compose_train([*SHRINK, "model.width=0.05", f"seed={seed}", "metrics.sample_sets=[train]"])
        OmegaConf.set_struct(cfg, False)
        out.append(cfg)
    return out


def _sabotage(at: int, victim, act):
    def callback(it, rows):
        if it == at:
            act(victim)
    return callback


def _into_a_file(folder):
    shutil.rmtree(folder / "metrics.parquet")
    (folder / "metrics.parquet").write_text("not results\n")


@pytest.mark.parametrize("act,why", [(_into_a_file, "metrics.parquet was replaced while the run wrote it"),
                                     pytest.param(shutil.rmtree, "was removed while the run wrote it (2 rows lost)",
                                                  marks=pytest.mark.slow)])
def test_a_member_whose_folder_is_sabotaged_mid_run_fails_alone(toy, tmp_path, monkeypatch, capsys, act, why):
    dirs = [tmp_path / f"m{s}" for s in SEEDS]
    monkeypatch.setenv(jobs.OUTCOMES_ENV, str(tmp_path / "outcomes"))
    statuses = jobs.run_job(lambda: train_ensemble(_cfgs(), dirs, data=toy, callback=_sabotage(4, dirs[1], act)),
                            dirs, multirun=True)
    assert statuses == ["finished", "failed", "finished", "finished"]
    for d in (dirs[0], dirs[2], dirs[3]):
        frame = read_metrics(d)
        assert frame.iteration.tolist() == [0, 4, 8, 12] and set(frame.status) == {"finished"}
    code = jobs.sweep_summary(tmp_path / "outcomes")
    err = capsys.readouterr().err
    assert code == 1 and "sweep of 4 jobs: 3 finished, 0 diverged, 1 failed" in err
    (failed,) = [ln for ln in err.splitlines() if ln.startswith("  failed:")]
    assert str(dirs[1]) in failed and why in failed
    assert "rows in" not in [ln for ln in err.splitlines() if str(dirs[1]) in ln][0]  # no count of lost rows


@pytest.mark.slow
def test_a_single_run_whose_results_are_removed_mid_run_says_so(toy, tmp_path):
    cfg = _cfgs()[0]
    with pytest.raises(RecordError, match=r"metrics.parquet was removed while the run wrote it \(2 rows lost\)"):
        train(cfg, tmp_path / "r", data=toy, callback=_sabotage(4, tmp_path / "r" / "metrics.parquet", shutil.rmtree))


@pytest.mark.slow
def test_a_member_whose_saved_state_does_not_fit_fails_alone(toy, tmp_path):
    dirs = [tmp_path / f"m{s}" for s in SEEDS]
    cfgs = _cfgs()
    for c in cfgs:
        c.steps = 4
    train_ensemble(cfgs, dirs, data=toy)
    state = torch.load(dirs[2] / "checkpoint.pt", weights_only=True)
    torch.save({**state, "model_state": {"fc1.weight": torch.zeros(3, 3)}}, dirs[2] / "checkpoint.pt")
    res = train_ensemble(_cfgs(), dirs, data=toy)
    assert [r.status for r in res] == ["finished", "finished", "failed", "finished"]
    assert "does not fit this run's network" in res[2].message
    assert [read_metrics(d).iteration.max() for d in dirs] == [12, 12, 4, 12]


@pytest.mark.parametrize("launcher", ["ensemble", pytest.param("basic", marks=pytest.mark.slow)])
def test_a_linked_error_log_in_one_folder_fails_that_job_alone(in_tmp, launcher):
    (in_tmp / "home").mkdir()
    (in_tmp / "S" / "s1").mkdir(parents=True)
    (in_tmp / "S" / "s1" / "error.log").symlink_to(in_tmp / "home" / "victim.txt")
    res = cli(["-m", "train", *TINY, "seed=0,1", f"hydra/launcher={launcher}", "hydra.sweep.dir=S",
               "hydra.sweep.subdir=s${seed}"], in_tmp, timeout=300)
    assert res.returncode == 1, res.stderr[-3000:]
    assert "sweep of 2 jobs: 1 finished, 0 diverged, 1 failed" in res.stderr
    (failed,) = [ln for ln in res.stderr.splitlines() if ln.startswith("  failed:")]
    assert str(in_tmp / "S" / "s1") in failed and "error.log: it is a symbolic link" in failed
    assert read_metrics(in_tmp / "S" / "s0").status.iloc[-1] == "finished"
    assert list((in_tmp / "home").iterdir()) == []


def test_a_killed_sweep_leaves_a_folder_the_next_one_removes(in_tmp):
    proc = subprocess.Popen([sys.executable, "-m", "sharpcomp.cli", "-m", "train", *TINY, "seed=0,1",
                             "hydra.sweep.dir=S"], cwd=in_tmp, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 240
        while not list(in_tmp.glob(".sharpcomp-sweep-*/.lock")) and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    (left,) = in_tmp.glob(".sharpcomp-sweep-*")  # no finally ran: the folder stays, its lock is free
    live = jobs.open_outcomes()  # the next sweep
    try:
        assert not left.exists() and live.is_dir() and os.environ[jobs.OUTCOMES_ENV] == str(live)
        assert jobs.remove_abandoned(in_tmp) == [] and live.is_dir()  # a live sweep's folder is never removed
    finally:
        jobs.close_outcomes(live)
    assert not live.exists() and jobs.OUTCOMES_ENV not in os.environ


def test_empty_outcome_folders_without_a_lock_are_removed_once_old(tmp_path):
    old, new, full = (tmp_path / f".sharpcomp-sweep-{n}" for n in ("old", "new", "full"))
    for folder in (old, new, full):
        folder.mkdir()
    (full / "outcome.json").write_text("{}")
    for folder in (old, full):
        os.utime(folder, (time.time() - 3600, time.time() - 3600))
    assert jobs.remove_abandoned(tmp_path) == [old]
    assert new.is_dir() and full.is_dir()


def test_a_linked_multirun_yaml_refuses_the_sweep_before_any_work(in_tmp):
    """Hydra writes the sweep's config into the sweep folder with a plain open(): a link there is refused."""
    target = in_tmp / "home" / "victim.txt"
    target.parent.mkdir()
    target.write_text("the user's own file\n")
    (in_tmp / "S").mkdir()
    (in_tmp / "S" / "multirun.yaml").symlink_to(target)
    res = cli(["-m", "train", *TINY, "seed=0,1", "hydra.sweep.dir=S"], in_tmp)
    assert res.returncode == 2 and "multirun.yaml is a symbolic link" in one_line(res.stderr)
    assert target.read_text() == "the user's own file\n" and sorted(os.listdir(in_tmp / "S")) == ["multirun.yaml"]
