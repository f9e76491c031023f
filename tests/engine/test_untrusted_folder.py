"""A results folder is untrusted input: nothing in it runs, nothing is written outside it, nothing is lost.

Every case builds the abuse for real -- symbolic links to files the user owns, checkpoints crafted with
``torch.save``, stray folders and files, real ``sharpcomp`` processes -- and checks the outcome: one line,
the user's files untouched, the run's resume point and rows kept. R is a tiny run trained once by a real
process (mlp4 at 1/20 width on Fashion-MNIST, 4 steps, checkpoints at 0, 2, 4); each case works on a copy.
"""

from __future__ import annotations

import os
import re
import resource
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sharpcomp.cli import main
from sharpcomp.results.records import read_metrics
from sharpcomp.results.run_state import FolderLock
from tests.conftest import TINY

VICTIM_TEXT = "the user's own file\n"


def cli(args, cwd, timeout=300, **kw):
    return subprocess.run([sys.executable, "-m", "sharpcomp.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, **kw)


def one_line(stderr: str) -> str:
    """The one line of an error, besides the progress lines of long work (``sharpcomp reparam: [ 3 s] ...``)."""
    lines = [ln for ln in stderr.splitlines() if ln.strip() and not re.match(r"sharpcomp \w+: \[\s*\d+ s\] ", ln)]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    return lines[0]


def victim(root: Path, name: str = "victim.txt") -> Path:
    p = root / "home" / name
    p.parent.mkdir(exist_ok=True)
    p.write_text(VICTIM_TEXT)
    return p


@pytest.fixture
def reference(tiny_run):
    """R, trained once by a real process (``tiny_run``, shared with the other tests of results folders)."""
    return tiny_run


@pytest.fixture
def run(in_tmp, reference) -> Path:
    """A copy of R in the test's own folder (the current folder)."""
    shutil.copytree(reference, in_tmp / "R")
    return in_tmp / "R"


def craft(run_dir: Path, **changes) -> None:
    """Rewrite the run's checkpoint.pt with some fields changed (``config_model`` replaces config.model)."""
    path = run_dir / "checkpoint.pt"
    state = torch.load(path, weights_only=True)
    if "config_model" in changes:
        state["config"]["model"] = changes.pop("config_model")
    state.update(changes)
    torch.save(state, path)


# 1: a stored config never chooses code ---------------------------------------------------------


READERS = {"reparam": ["reparam", "R", "alpha=10", "layer=fc1"], "landscape": ["landscape", "R", "points=2", "n=4"],
           "measure": ["measure", "run=R", "n=2"]}


@pytest.mark.parametrize("attack,command", [
    ("open", "reparam"), pytest.param("copyfile", "reparam", marks=pytest.mark.slow), ("open", "landscape"),
    ("open", "measure")])
def test_no_command_imports_what_a_checkpoint_names(run, in_tmp, attack, command):
    target = victim(in_tmp)
    model = {"open": {"name": "mlp4", "_target_": "builtins.open", "file": str(target), "mode": "w"},
             "copyfile": {"name": "mlp4", "_target_": "shutil.copyfile", "src": str(run / "checkpoint.pt"),
                          "dst": str(target)}}[attack]
    craft(run, config_model=model)
    res = cli(READERS[command], in_tmp)
    assert res.returncode in (1, 2)
    line = one_line(res.stderr)
    assert "a stored config never chooses code" in line and model["_target_"] in line
    assert target.read_text() == VICTIM_TEXT


@pytest.mark.slow
def test_reparam_builds_a_network_the_user_names(run, in_tmp):
    """The same crafted checkpoint is usable when the user names the network on the command line; a built-in
    network's own stored config needs nothing."""
    craft(run, config_model={"name": "mlp4", "_target_": "builtins.open", "file": "x", "mode": "w", "width": 0.05})
    res = cli(["reparam", "R", "alpha=10", "layer=fc1", "probes=0", "model._target_=sharpcomp.models.mlp4"], in_tmp)
    assert res.returncode == 1 and "mlp4() got an unexpected keyword argument" in one_line(res.stderr)
    craft(run, config_model={"name": "mlp4", "width": 0.05})  # the stored target removed: built in by its name
    res = cli(["reparam", "R", "alpha=10", "layer=fc1", "probes=0"], in_tmp)
    assert res.returncode == 0, res.stderr
    assert "moved:" in res.stdout and not (in_tmp / "x").exists()


@pytest.mark.parametrize("model,where", [
    ({"name": "mlp4", "width": 0.05, "act": {"_target_": "os.system", "command": "id"}}, "model.act._target_"),
    ({"name": "mlp4", "width": 0.05, "_args_": ["x"]}, "model._args_"),
    ({"name": "mlp4", "width": "${oc.env:HOME}"}, "model.width"),
    ({"name": "custom", "_target_": "tests.nets.TinyMLP"}, "model._target_ 'tests.nets.TinyMLP'"),
])
def test_stored_configs_that_would_choose_code_are_refused(model, where):
    from sharpcomp.engine.loading import stored_settings
    from sharpcomp.settings import ConfigError

    with pytest.raises(ConfigError, match="never") as exc:
        stored_settings({"model": model, "data": {"name": "fashion_mnist"}})
    assert where in str(exc.value)


def test_stored_data_and_cache_folders_are_this_machines(monkeypatch, tmp_path):
    from sharpcomp.engine.loading import stored_settings

    monkeypatch.setenv("SHARPCOMP_DATA", str(tmp_path / "here"))
    monkeypatch.delenv("SHARPCOMP_CACHE", raising=False)
    s = stored_settings({"model": {"name": "mlp4"}, "data": {"name": "fashion_mnist"},
                         "data_dir": "/elsewhere", "cache_dir": "/elsewhere/cache"})
    assert s.raw["data_dir"] == str(tmp_path / "here") and s.raw["cache_dir"] is None


# 2: nothing is written through a symbolic link --------------------------------------------------


@pytest.mark.parametrize("member", [*(pytest.param(m, marks=pytest.mark.slow) for m in (  # one case in `make test`
    ".sharpcomp.lock", "error.log", "metrics.parquet", ".hydra/overrides.yaml")), "checkpoint.pt"])
def test_a_symlinked_run_folder_member_is_refused_and_its_target_untouched(run, in_tmp, member):
    target = victim(in_tmp)
    link = run / member
    if link.is_dir():
        shutil.rmtree(link)
        target = in_tmp / "home" / "elsewhere"
        target.mkdir()
    elif link.exists():
        link.unlink()
    link.symlink_to(target)
    res = cli(["train", *TINY, "steps=6", "hydra.run.dir=R"], in_tmp)
    assert res.returncode == 2
    assert f"{member} is a symbolic link" in one_line(res.stderr)
    if target.is_dir():
        assert list(target.iterdir()) == []
    else:
        assert target.read_text() == VICTIM_TEXT
    assert link.is_symlink()


@pytest.mark.slow
def test_error_log_is_not_written_through_a_link_the_run_makes_during_training(in_tmp):
    """A link that appears while the run trains (after the start checks): the traceback goes nowhere."""
    target = victim(in_tmp)
    (in_tmp / "linking.py").write_text(LINKING)
    res = cli(["train", *CUSTOM, f"+model.link={target}", "hydra.run.dir=G"], in_tmp)
    assert res.returncode == 1 and "no traceback written" in one_line(res.stderr)
    assert target.read_text() == VICTIM_TEXT and (in_tmp / "G" / "error.log").is_symlink()


LINKING = """
import math
import os

from torch import nn


class LinksThenFails(nn.Module):
    \"\"\"Makes error.log a link to ``link`` while training, then fails.\"\"\"

    def __init__(self, num_outputs, input_shape, link=""):
        super().__init__()
        self.link = link
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), num_outputs))

    def forward(self, x):
        if self.training:
            os.symlink(self.link, "G/error.log")
            raise RuntimeError("this network fails in training")
        return self.net(x)
"""
CUSTOM = [a for a in TINY if not a.startswith("model")] + ["model=custom", "model._target_=linking.LinksThenFails"]


def test_figures_replace_linked_outputs_and_never_follow_them(run, in_tmp):
    out = in_tmp / "R-figures"  # the default output folder of `sharpcomp figures R`
    out.mkdir()
    png, csv = victim(in_tmp, "x.png"), victim(in_tmp, "x.csv")
    (out / "runs.png").symlink_to(png)
    (out / "runs.csv").symlink_to(csv)
    res = cli(["figures", "R", "--only", "runs", "--formats", "png"], in_tmp)
    assert res.returncode == 0, res.stderr
    assert png.read_text() == VICTIM_TEXT and csv.read_text() == VICTIM_TEXT
    assert not (out / "runs.png").is_symlink() and (out / "runs.png").stat().st_size > 1000


def test_a_symlinked_default_figures_folder_is_refused(run, in_tmp):
    (in_tmp / "home").mkdir()
    (in_tmp / "R-figures").symlink_to(in_tmp / "home")
    assert main(["figures", "R", "--only", "runs"]) == 2
    assert list((in_tmp / "home").iterdir()) == []


# 3, 4: something the reader does not understand never costs the resume point ---------------------


@pytest.mark.parametrize("stray", [pytest.param("part-000000005.parquet", marks=pytest.mark.slow), "_status"])
def test_a_stray_folder_among_the_parts_stops_the_run_and_keeps_the_resume_point(run, in_tmp, stray):
    before = (run / "checkpoint.pt").read_bytes()
    path = run / "metrics.parquet" / stray
    if path.exists():
        path.unlink()
    path.mkdir()
    res = cli(["train", *TINY, "steps=6", "hydra.run.dir=R"], in_tmp)
    assert res.returncode == 2
    line = one_line(res.stderr)
    assert f"{path} is not" in line and "restarting" not in line
    assert (run / "checkpoint.pt").read_bytes() == before and path.is_dir()


@pytest.mark.slow
def test_garbage_in_the_status_sidecar_is_rebuilt_from_the_parts(run, in_tmp, reference):
    (run / "metrics.parquet" / "_status").write_bytes(b"\xff\xfe\x00\x9c garbage \x00")
    assert read_metrics(run).status.iloc[-1] == "finished"  # the parts' own status
    res = cli(["train", *TINY, "steps=6", "hydra.run.dir=R"], in_tmp)
    assert res.returncode == 0, res.stderr
    frame = read_metrics(run)
    assert list(frame.iteration) == [0, 2, 4, 6] and set(frame.status) == {"finished"}
    assert (run / "metrics.parquet" / "_status").read_text() == "finished\n"


@pytest.mark.slow
def test_rows_missing_before_the_saved_state_move_the_checkpoint_aside(run, in_tmp):
    before = (run / "checkpoint.pt").read_bytes()
    shutil.rmtree(run / "metrics.parquet")
    res = cli(["train", *TINY, "steps=2", "log_every=2", "hydra.run.dir=R"], in_tmp)
    assert res.returncode == 0 and "restarting the run from iteration 0" in res.stderr
    (kept,) = (run / "set-aside").iterdir()
    assert kept.name.startswith("checkpoint.pt.") and kept.read_bytes() == before
    assert f"moved {run / 'checkpoint.pt'} aside to {kept}" in res.stderr


# 5: every field of a loaded checkpoint is checked before use --------------------------------------


def _limit_memory():  # a check that enumerates the huge iteration dies here instead of taking the machine
    resource.setrlimit(resource.RLIMIT_DATA, (4 * 2**30, 4 * 2**30))


def test_a_huge_saved_iteration_is_refused_with_one_line(run, in_tmp):
    craft(run, iteration=10**15)
    before = (run / "checkpoint.pt").read_bytes()
    res = cli(["train", *TINY, "steps=6", "hydra.run.dir=R"], in_tmp, preexec_fn=_limit_memory)
    assert res.returncode == 2
    assert "iteration must be an integer in [0, 1000000000000], got 1000000000000000" in one_line(res.stderr)
    assert (run / "checkpoint.pt").read_bytes() == before


COVERAGE = """
import pandas as pd
from sharpcomp.results.run_state import RunState

class S:
    log_every = 2

st = RunState.__new__(RunState)
st.settings = S()
frame = pd.DataFrame({"iteration": [0, 2, 4]})
assert st._rows_cover(frame, {"iteration": 4}) and not st._rows_cover(frame, {"iteration": 6})
assert not st._rows_cover(frame, {"iteration": 10**12})
assert st._rows_cover(pd.DataFrame({"iteration": [0, 2, 3]}), {"iteration": 3})  # an end off the schedule
"""


def test_the_coverage_check_counts_without_enumerating(tmp_path):
    """A resume point far beyond the rows (within the allowed range): refused as not covered, at once and
    in little memory (a process with a bounded address space)."""
    res = subprocess.run([sys.executable, "-c", COVERAGE], cwd=tmp_path, capture_output=True, text=True,
                         timeout=120, preexec_fn=_limit_memory)
    assert res.returncode == 0, res.stderr[-2000:]


BAD_FIELDS = [
    ({"iteration": -2}, "iteration must be an integer"),
    ({"iteration": "4"}, "iteration must be an integer"),
    ({"iteration": True}, "iteration must be an integer"),
    ({"run_id": 7}, "run_id must be a non-empty string"),
    ({"wall_time": float("nan")}, "wall_time must be a finite number"),
    ({"status": "owned"}, "unknown status"),
    ({"model_state": {"fc1.weight": [1.0]}}, "model_state must map parameter names to tensors"),
    ({"model_state": {}}, "model_state must map parameter names to tensors"),
    ({"optimizer_state": "x"}, "optimizer_state must be"),
    ({"config": [1]}, "config must be a mapping"),
    ({"running_sum": torch.tensor(float("inf")), "running_count": 1}, "running_sum must be a finite"),
    ({"running_sum": torch.tensor(1.0), "running_count": 10**6}, "running_count must be an integer"),
]


@pytest.mark.parametrize("change,message", BAD_FIELDS, ids=[m for _, m in BAD_FIELDS])
def test_every_checkpoint_field_is_validated(tmp_path, change, message):
    from sharpcomp.results.run_state import read_checkpoint
    from sharpcomp.settings import ConfigError

    state = {"run_id": "r", "iteration": 4, "wall_time": 1.0, "status": "running",
             "model_state": {"w": torch.zeros(2)}, "optimizer_state": {"state": {}, "param_groups": []}, "config": {}}
    torch.save(state, tmp_path / "ok.pt")
    assert read_checkpoint(tmp_path / "ok.pt")["iteration"] == 4
    torch.save({**state, **change}, tmp_path / "bad.pt")
    with pytest.raises(ConfigError, match="refusing to load") as exc:
        read_checkpoint(tmp_path / "bad.pt")
    assert message in str(exc.value)


def test_a_saved_state_that_does_not_fit_the_network_is_refused(run, in_tmp):
    craft(run, model_state={"fc1.weight": torch.zeros(3, 3)})
    res = cli(["train", *TINY, "steps=6", "hydra.run.dir=R"], in_tmp)
    assert res.returncode == 2 and "does not fit this run's network" in one_line(res.stderr)
    assert not (run / "error.log").exists()


# 6: files the program did not write are never deleted ---------------------------------------------


def test_a_foreign_file_in_the_results_is_set_aside_at_compaction(run, in_tmp):
    (run / "metrics.parquet" / "notes.csv").write_text("my notes\n")
    res = cli(["train", *TINY, "steps=6", "hydra.run.dir=R"], in_tmp)
    assert res.returncode == 0, res.stderr
    (kept,) = (run / "set-aside").iterdir()
    assert kept.name.startswith("notes.csv.") and kept.read_text() == "my notes\n"
    assert f"moved {run / 'metrics.parquet' / 'notes.csv'} aside" in res.stderr
    assert list(read_metrics(run).iteration) == [0, 2, 4, 6]


@pytest.mark.parametrize("out", ["R/metrics.parquet", "R/metrics.parquet/figs", "R/.hydra"])
def test_figures_refuse_an_output_folder_inside_a_runs_results(run, in_tmp, out, capsys):
    listing = sorted(os.listdir(run / "metrics.parquet"))
    assert main(["figures", "R", "--out", out]) == 2
    assert "only sharpcomp writes" in one_line(capsys.readouterr().err)
    assert sorted(os.listdir(run / "metrics.parquet")) == listing


# 7, 9: sweeps account for every job ---------------------------------------------------------------


@pytest.mark.slow  # a sweep of real processes
def test_an_ensemble_trains_the_members_whose_folders_are_free(in_tmp):
    (in_tmp / "S" / "s1").mkdir(parents=True)
    held = FolderLock(in_tmp / "S" / "s1")
    held.acquire()
    try:
        res = cli(["-m", "train", *TINY, "seed=0,1,2", "hydra/launcher=ensemble", "hydra.sweep.dir=S",
                   "hydra.sweep.subdir=s${seed}"], in_tmp)
    finally:
        held.release()
    assert res.returncode == 2 and "TypeError" not in res.stderr, res.stderr
    assert "sweep of 3 jobs: 2 finished, 0 diverged, 0 failed, 1 skipped" in res.stderr
    assert f"skipped: {in_tmp / 'S' / 's1'}" in res.stderr
    for s in ("s0", "s2"):
        assert read_metrics(in_tmp / "S" / s).status.iloc[-1] == "finished"
    assert not (in_tmp / "S" / "s1" / "metrics.parquet").exists()


DELETING = """
import math
import os
import shutil

import torch
from torch import nn


class DeletesOutcomes(nn.Module):
    \"\"\"Deletes the sweep's hidden outcome folder (as a cleaning command would), then fails (when ``fail``).\"\"\"

    def __init__(self, num_outputs, input_shape, fail=False):
        super().__init__()
        if torch.empty(0).device.type != "meta":  # not the build check before data loads: the job itself
            shutil.rmtree(os.environ["SHARPCOMP_OUTCOMES"], ignore_errors=True)
        self.fail = fail
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), num_outputs))

    def forward(self, x):
        if self.fail and self.training:
            raise RuntimeError("this network fails in training")
        return self.net(x)
"""


@pytest.mark.slow  # a sweep of real processes
def test_a_deleted_outcome_folder_does_not_hide_a_failed_job(in_tmp):
    (in_tmp / "deleting.py").write_text(DELETING)
    args = [a for a in TINY if not a.startswith("model")] + ["model=custom", "model._target_=deleting.DeletesOutcomes"]
    res = cli(["-m", "train", *args, "+model.fail=true,false", "hydra.sweep.dir=F",
               "hydra.sweep.subdir=f${model.fail}"], in_tmp)
    assert res.returncode == 1
    assert "sweep of 2 jobs: 1 finished, 0 diverged, 1 failed" in res.stderr
    assert f"failed: {in_tmp / 'F' / 'fTrue'}" in res.stderr


# 10: output errors never fail training -------------------------------------------------------------


@pytest.mark.slow
def test_a_closed_stdout_does_not_fail_the_run(in_tmp):
    proc = subprocess.Popen([sys.executable, "-m", "sharpcomp.cli", "train", *TINY, "hydra.run.dir=P"], cwd=in_tmp,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    proc.stdout.readline()  # `| head -1`: one line read, then the reader goes away
    proc.stdout.close()
    err = proc.stderr.read()
    assert proc.wait(timeout=300) == 0, err
    assert "BrokenPipe" not in err and "Traceback" not in err
    assert set(read_metrics(in_tmp / "P").status) == {"finished"}


# 11, 12: checked at composition, one line ----------------------------------------------------------

def test_appended_keys_that_the_program_reads_stay_allowed():
    from sharpcomp.overrides import check_appended

    check_appended(["+model.depth=3", "+experiment=fig1", "+hydra.job.env_set.X=1", "seed=3"])


# 13: reparam with an extreme alpha ------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("alpha", ["1e308", "1e-300"])
def test_reparam_with_an_extreme_alpha_gives_one_line(run, in_tmp, alpha):
    res = cli(["reparam", "R", f"alpha={alpha}", "layer=fc1", "probes=0"], in_tmp)
    assert res.returncode == 1 and "cannot be computed at alpha=" in one_line(res.stderr)


# 8: a killed joblib worker takes only its own job ---------------------------------------------------

KILLING = """
import math
import os
import signal

import torch
from torch import nn


class KillsItsWorker(nn.Module):
    \"\"\"Kills its own process when built with ``kill`` (as the kernel kills a job out of memory).\"\"\"

    def __init__(self, num_outputs, input_shape, kill=False):
        super().__init__()
        if kill and torch.empty(0).device.type != "meta":  # the job itself, not the build check before data
            os.kill(os.getpid(), signal.SIGKILL)
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), num_outputs))

    def forward(self, x):
        return self.net(x)
"""


@pytest.mark.slow
def test_a_killed_joblib_worker_fails_only_its_job(in_tmp):
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    (in_tmp / "killing.py").write_text(KILLING)
    args = [a for a in TINY if not a.startswith("model")] + ["model=custom", "model._target_=killing.KillsItsWorker"]
    res = cli(["-m", "train", *args, "+model.kill=false,true", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
               "hydra.sweep.dir=K", "hydra.sweep.subdir=k${model.kill}"], in_tmp)
    assert res.returncode == 1 and "TerminatedWorkerError" not in res.stderr, res.stderr
    assert "sweep of 2 jobs: 1 finished, 0 diverged, 1 failed" in res.stderr
    assert f"failed: {in_tmp / 'K' / 'kTrue'}" in res.stderr
    assert read_metrics(in_tmp / "K" / "kFalse").status.iloc[-1] == "finished"
