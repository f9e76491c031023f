"""Results are never lost, mixed up or executed: safe loading, ownership, gaps, locking,
settings checked before any work, one-line errors, and sweeps that report their failed jobs.

Cases 1, 2, 3, 5 and 9 use real processes: a real crafted pickle, real concurrent commands, a real
deleted file. T is the issue's tiny Fashion-MNIST run (mlp4 at 1/10 width)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from sharpcomp.cli import main
from sharpcomp.results.records import read_metrics
from sharpcomp.results.run_names import NAME_MAX
from sharpcomp.results.run_names import literal_name as run_name
from sharpcomp.results.run_state import FolderLock

T = ["data=fashion_mnist", "model=mlp4", "model.width=0.1", "steps=60", "log_every=20", "metrics.n=8",
     "progress=false"]


def cli(args, cwd, env=None, timeout=600):
    return subprocess.run([sys.executable, "-m", "sharpcomp.cli", *args], cwd=cwd, env={**os.environ, **(env or {})},
                          capture_output=True, text=True, timeout=timeout)


def one_line(stderr: str) -> str:
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    return lines[0]


def rows(run_dir) -> pd.DataFrame:
    return read_metrics(run_dir).drop(columns="wall_time")


@pytest.fixture(scope="module")
def reference(tmp_path_factory, data_dir, cache_dir):
    """T run once, uninterrupted, by a real process: the rows every repaired run must end with."""
    root = tmp_path_factory.mktemp("reference")
    env = {"SHARPCOMP_DATA": str(data_dir), "SHARPCOMP_CACHE": str(cache_dir)}
    res = cli(["train", *T, "hydra.run.dir=A"], root, env)
    assert res.returncode == 0, res.stderr
    return root / "A"


# 1 -------------------------------------------------------------------------------------------


def test_a_crafted_checkpoint_is_refused_and_runs_nothing(in_tmp):
    marker = in_tmp / "PWNED"
    payload = f"open({str(marker)!r}, 'w').write('x')"
    code = (
        "import torch\n"
        "class Evil:\n"
        f"    def __reduce__(self): return (eval, ({payload!r},))\n"
        "torch.save({'run_id': 'x', 'iteration': 0, 'model_state': Evil()}, 'R/checkpoint.pt')\n"
    )
    (in_tmp / "R").mkdir()
    subprocess.run([sys.executable, "-c", code], cwd=in_tmp, check=True)
    res = cli(["train", *T, "hydra.run.dir=R"], in_tmp)
    assert res.returncode == 2 and "refusing to load" in one_line(res.stderr) and "nothing in it was run" in res.stderr
    rep = cli(["reparam", "R"], in_tmp)
    assert rep.returncode != 0 and "refusing to load" in rep.stderr and "Traceback" not in rep.stderr
    assert not marker.exists()


# 2 -------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_rows_of_another_run_are_kept_and_the_run_refuses(in_tmp, reference):
    (in_tmp / "B").mkdir()
    shutil.copytree(reference / "metrics.parquet", in_tmp / "B" / "metrics.parquet") if (
        reference / "metrics.parquet").is_dir() else shutil.copy(reference / "metrics.parquet", in_tmp / "B")
    before = rows(in_tmp / "B")
    res = cli(["train", *T, "seed=1", "hydra.run.dir=B"], in_tmp)
    assert res.returncode == 2 and "holds rows of another run" in one_line(res.stderr)
    pd.testing.assert_frame_equal(rows(in_tmp / "B"), before)


# 3, 4 ----------------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_deleted_results_file_restarts_the_run_without_a_hole(in_tmp, reference):
    res = cli(["train", *T, "steps=40", "hydra.run.dir=C"], in_tmp)
    assert res.returncode == 0, res.stderr
    shutil.rmtree(in_tmp / "C" / "metrics.parquet", ignore_errors=True)
    (in_tmp / "C" / "metrics.parquet").unlink(missing_ok=True)
    res = cli(["train", *T, "hydra.run.dir=C"], in_tmp)
    assert res.returncode == 0 and "restarting the run from iteration 0" in res.stderr
    pd.testing.assert_frame_equal(rows(in_tmp / "C"), rows(reference))


@pytest.mark.slow
def test_a_copied_run_without_results_is_not_stuck(in_tmp, reference):
    shutil.copytree(reference, in_tmp / "D")
    shutil.rmtree(in_tmp / "D" / "metrics.parquet", ignore_errors=True)
    (in_tmp / "D" / "metrics.parquet").unlink(missing_ok=True)
    for _ in range(2):  # and the next rerun is an ordinary finished run
        res = cli(["train", *T, "hydra.run.dir=D"], in_tmp)
        assert res.returncode == 0, res.stderr
    pd.testing.assert_frame_equal(rows(in_tmp / "D"), rows(reference))


# 5 -------------------------------------------------------------------------------------------


def test_a_second_writer_gets_one_line_and_exit_2(in_tmp, reference):
    long_run = ["train", *T, "steps=3000", "log_every=1000", "hydra.run.dir=L"]
    first = subprocess.Popen([sys.executable, "-m", "sharpcomp.cli", *long_run], cwd=in_tmp,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        lock = in_tmp / "L" / ".sharpcomp.lock"
        deadline = time.time() + 120
        while time.time() < deadline and not (lock.exists() and lock.read_text().strip()):
            time.sleep(0.05)
        second = cli(long_run, in_tmp)
        assert second.returncode == 2
        want = f"sharpcomp train: error: run folder {in_tmp / 'L'} is in use by pid {first.pid}"
        assert one_line(second.stderr) == want
    finally:
        first.kill()
        first.wait()
    # the OS released the dead process's lock: the folder can be opened again
    FolderLock(in_tmp / "L").acquire()


@pytest.mark.slow
def test_a_sweep_skips_a_folder_in_use_and_runs_the_others(in_tmp):
    sweep = ["-m", "train", *T, "seed=0,1", "hydra.sweep.dir=S", "hydra.sweep.subdir=s${seed}"]
    (in_tmp / "S" / "s1").mkdir(parents=True)
    held = FolderLock(in_tmp / "S" / "s1")
    held.acquire()  # this test process holds job 2's folder
    try:
        res = cli(sweep, in_tmp)
    finally:
        held.release()
    assert res.returncode == 2
    assert f"job skipped: run folder {in_tmp / 'S' / 's1'} is in use by pid {os.getpid()}" in res.stderr
    assert "sweep of 2 jobs: 1 finished, 0 diverged, 0 failed, 1 skipped" in res.stderr
    assert read_metrics(in_tmp / "S" / "s0").status.iloc[-1] == "finished"


# 7, 8 ----------------------------------------------------------------------------------------

EARLY = [
    (["metrics.layer=nosuchlayer"], "metrics.layer 'nosuchlayer' is not a layer of mlp4"),
    (["metrics.log_volume_rank=0"], "metrics.log_volume_rank must be > 0"),
    (["threads=-1"], "threads must be > 0"),
    (["threads=abc"], "threads must be an integer"),
    (["metrics.chunk_size=0"], "metrics.chunk_size must be > 0"),
    (["metrics.chunk_size=-1"], "metrics.chunk_size must be > 0"),
    (["optim=sam", "optim.rho=-1"], "optim.rho must be >= 0"),
    (["deterministic=maybe"], "deterministic must be true or false"),
    (["hydra/launcher=nosuch"], "unknown hydra/launcher 'nosuch' (choose from basic, ensemble"),
    (["hydra.run.dir=/proc/sc_out"], "cannot write to output folder /proc/sc_out"),
    (["allow_tf32=sometimes"], "allow_tf32 must be true or false or null"),
    (["cuda_graph=always"], "unknown cuda_graph 'always'"),
    (["resume_every=-5"], "resume_every must be >= 0"),
    (["metrics.flatness.fisher={n:abc}"], "metrics.flatness.fisher_trace.n must be an integer"),
    (["metrics.flatness.worst_case={rho:-1}"], "metrics.flatness.worst_case.rho must be >= 0"),
    (["metrics.flatness.fisher={m:3}"], "unknown setting metrics.flatness.fisher_trace.m"),
    # out-of-range values and keys no part of the program reads
    (["batch=1e9"], "batch size 1000000000 is larger than the training set (60000 samples)"),
    (["seed=1180591620717411303424"], "seed must be an integer between -2**62 and 2**62"),
    (["device=mps"], "unknown device 'mps'"),
    (["device=meta"], "unknown device 'meta'"),
    (["device=xla"], "unknown device 'xla'"),
    (["+unknown=1"], "unknown option '+unknown': no part of sharpcomp reads it"),
    (["+metric.n=5"], "unknown option '+metric.n': no part of sharpcomp reads it"),
    (["+metrics.nn=5"], "unknown option '+metrics.nn'"),
    (["+data.nosuch=1"], "unknown option '+data.nosuch'"),
]


@pytest.mark.parametrize("extra,message", EARLY, ids=[e[0][-1] for e in EARLY])
def test_settings_are_checked_before_any_work(extra, message, capsys, in_tmp, monkeypatch):
    monkeypatch.setenv("SHARPCOMP_DATA", str(in_tmp / "no-data-here"))  # loading data would fail differently
    monkeypatch.setenv("SHARPCOMP_CACHE", str(in_tmp / "no-cache-here"))
    assert main(["train", *T, *extra]) == 2
    err = capsys.readouterr().err
    assert one_line(err).startswith("sharpcomp train: error: ") and message in err
    assert not (in_tmp / "outputs").exists()


@pytest.mark.slow
def test_long_folder_names_are_shortened_deterministically(in_tmp):
    long = "scale_name=" + "a" * 300
    name = run_name(long)
    assert len(name.encode()) <= NAME_MAX and name == run_name(long) and name != run_name(long + "1")
    assert run_name("lr=0.1,seed=1") == "lr=0.1,seed=1" and run_name("") == "default"
    res = cli(["-m", "train", *T, "steps=2", "log_every=2", long], in_tmp)
    assert res.returncode == 0, res.stderr
    (job,) = [p.parent for p in (in_tmp / "outputs" / "multirun").rglob(".hydra")]
    assert len(job.name.encode()) <= NAME_MAX and long in (job / ".hydra" / "overrides.yaml").read_text()


# 9 -------------------------------------------------------------------------------------------


FAILING = """
import math

from torch import nn


class TrainFails(nn.Module):
    \"\"\"A small network whose training step raises (when ``fail``): a real failure inside a run.\"\"\"

    def __init__(self, num_outputs, input_shape, fail=False):
        super().__init__()
        self.fail = fail
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), num_outputs))

    def forward(self, x):
        if self.fail and self.training:
            raise RuntimeError("this network fails in training")
        return self.net(x)
"""
CUSTOM = [a for a in T if not a.startswith("model")] + ["model=custom", "model._target_=failing.TrainFails"]


def test_a_sweep_with_a_failed_job_reports_it_and_exits_non_zero(in_tmp):
    (in_tmp / "failing.py").write_text(FAILING)
    res = cli(["-m", "train", *CUSTOM, "+model.fail=false,true", "hydra.sweep.dir=F",
               "hydra.sweep.subdir=f${model.fail}"], in_tmp)
    assert res.returncode == 1
    assert "sweep of 2 jobs: 1 finished, 0 diverged, 1 failed" in res.stderr
    assert f"failed: {in_tmp / 'F' / 'fTrue'}" in res.stderr
    assert "this network fails in training" in (in_tmp / "F" / "fTrue" / "error.log").read_text()
    assert set(read_metrics(in_tmp / "F" / "fTrue").status) == {"failed"}
    assert read_metrics(in_tmp / "F" / "fFalse").status.iloc[-1] == "finished"


def test_a_single_failed_run_exits_1_with_one_line(in_tmp):
    (in_tmp / "failing.py").write_text(FAILING)
    res = cli(["train", *CUSTOM, "+model.fail=true", "hydra.run.dir=G"], in_tmp)
    assert res.returncode == 1 and "traceback in" in one_line(res.stderr)
    assert set(read_metrics(Path(in_tmp) / "G").status) == {"failed"}


# resume points less often than rows --------------------------------------------------------


def test_resume_points_written_less_often_still_resume_exactly(cfg_small, fmnist_small, tmp_path):
    from sharpcomp.engine.train import train
    from sharpcomp.results.run_state import CHECKPOINT_FILE, read_checkpoint

    train(cfg_small, tmp_path / "ref", data=fmnist_small)
    cfg_small.resume_every = 3600  # only the end, a divergence or an interrupt write checkpoint.pt
    seen = []

    def stop_at_8(it, rows):
        seen.append((tmp_path / "run" / CHECKPOINT_FILE).exists())
        if it == 8:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(cfg_small, tmp_path / "run", data=fmnist_small, callback=stop_at_8)
    assert seen == [False, False, False]  # rows at 0, 4 and 8, no resume point written yet
    assert read_checkpoint(tmp_path / "run" / CHECKPOINT_FILE)["iteration"] == 8  # written on the way out
    train(cfg_small, tmp_path / "run", data=fmnist_small)
    pd.testing.assert_frame_equal(rows(tmp_path / "ref"), rows(tmp_path / "run"))
