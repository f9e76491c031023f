"""A shared results tree, as a hostile collaborator may leave it, read and resumed by real ``sharpcomp``
processes: FIFOs, links to devices and 200 GB files where a run's files belong, a YAML bomb in a sibling,
pickles and garbage as weights, runs whose weights are not finite, pairs of runs that do not match, folder
names that are not text; and the permissions of what sharpcomp writes. Every process runs under a time and
memory bound: a regression fails, it never hangs the suite. R is ``tiny_run`` (mlp4 at 1/20 width on
Fashion-MNIST, checkpoints at 0, 2, 4); each case works on a copy."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sharpcomp.results.records import read_metrics
from tests.conftest import TINY
from tests.hostile import ALIAS_BOMB, CLI_MEMORY, VICTIM_TEXT, cli, limit_memory, one_line, replace


@pytest.fixture
def run(in_tmp, tiny_run) -> Path:
    """A copy of R in the test's own folder (the current folder)."""
    shutil.copytree(tiny_run, in_tmp / "R")
    return in_tmp / "R"


def craft(run_dir: Path, **changes) -> None:
    """Rewrite the run's checkpoint.pt with fields changed (``config``: a mapping merged into the config)."""
    path = run_dir / "checkpoint.pt"
    state = torch.load(path, weights_only=True)
    for key, value in changes.pop("config", {}).items():
        state["config"][key] = {**state["config"][key], **value} if isinstance(value, dict) else value
    state.update(changes)
    torch.save(state, path)


# --- what stands where a run's files belong ---------------------------------------------------------------

COMMANDS = {"train": ["train", *TINY, "steps=6", "hydra.run.dir=R"], "reparam": ["reparam", "R", "probes=0"],
            "measure": ["measure", "run=R", "n=2"], "landscape": ["landscape", "R", "points=2", "n=4"]}


@pytest.mark.parametrize("command,what", [("train", "fifo"), *(pytest.param(c, w, marks=pytest.mark.slow) for c, w in (
    ("reparam", "fifo"), ("measure", "fifo"), ("landscape", "fifo"), ("train", "socket"), ("reparam", "sparse")))])
def test_a_checkpoint_that_is_not_a_regular_file_is_one_line(run, in_tmp, command, what):
    replace(run / "checkpoint.pt", what, in_tmp)
    res = cli(COMMANDS[command], in_tmp)
    assert res.returncode in (1, 2)
    line = one_line(res.stderr)
    assert "checkpoint.pt" in line and {"fifo": "is a FIFO", "socket": "not a regular file",
                                        "sparse": "not a plain sharpcomp checkpoint"}[what] in line, line
    assert read_metrics(run).iteration.tolist() == [0, 2, 4]


@pytest.mark.parametrize("what,message", [("fifo", "is a FIFO"), ("zero", "is a symbolic link"),
                                          ("sparse", "it is 200 GB")])
def test_runs_lists_the_other_runs_past_a_hostile_results_file(run, in_tmp, what, message):
    shutil.copytree(run, in_tmp / "tree" / "good")
    replace(in_tmp / "tree" / "bad" / "metrics.parquet", what, in_tmp)
    res = cli(["runs", "tree"], in_tmp, timeout=60)
    assert res.returncode == 0, res.stderr
    assert "good" in res.stdout and "bad" not in res.stdout
    (skip,) = [ln for ln in res.stderr.splitlines() if "skipped" in ln]
    assert "bad" in skip and message in skip


@pytest.mark.slow
@pytest.mark.parametrize("member,what", [("metrics.parquet", "fifo"), (".sharpcomp.lock", "fifo"),
                                         ("metrics.parquet", "sparse")])
def test_train_refuses_a_member_that_is_not_a_file_of_its_own(run, in_tmp, member, what):
    before = (run / "checkpoint.pt").read_bytes()
    replace(run / member, what, in_tmp)
    res = cli(COMMANDS["train"], in_tmp)
    line = one_line(res.stderr)
    assert res.returncode == 2 and member in line
    assert {"fifo": "is a FIFO, not a regular file", "sparse": "it is 200 GB"}[what] in line
    assert (run / "checkpoint.pt").read_bytes() == before


@pytest.mark.slow  # tests/results/test_bounded_reads.py checks the naming itself, in a bounded process
def test_a_yaml_bomb_in_a_sibling_does_not_stop_a_new_run(in_tmp, tiny_run):
    """A default-folder run looks among its siblings for older folders of the same settings: a sibling
    whose recorded config is a 324-byte alias bomb is passed over, and the run trains into its own folder."""
    parent = in_tmp / "outputs" / "runs" / "fashion_mnist-mlp4"
    sibling = parent / "aaa_bomb"
    shutil.copytree(tiny_run, sibling)
    (sibling / ".hydra" / "config.yaml").write_text(ALIAS_BOMB)
    res = cli(["train", *TINY], in_tmp)
    assert res.returncode == 0, res.stderr[-3000:]
    assert read_metrics(parent / "log_every=2,metrics.n=4,width=0.05").status.iloc[-1] == "finished"


# --- what a file holds -------------------------------------------------------------------------------------

PAYLOAD = """
import os, sys, torch
class Payload:
    def __reduce__(self):
        return (os.system, ("touch owned",))
torch.save({"run_id": "x", "iteration": 4, "model_state": Payload()}, sys.argv[1])
"""


@pytest.mark.parametrize("command", ["reparam", pytest.param("weights", marks=pytest.mark.slow)])
def test_a_pickle_payload_is_one_whole_line_without_advice_to_run_it(run, in_tmp, command):
    subprocess.run([sys.executable, "-c", PAYLOAD, str(run / "checkpoint.pt")], check=True, timeout=120)
    args = COMMANDS["reparam"] if command == "reparam" else [
        "measure", "model=mlp4", "arg.width=0.05", "data=fashion_mnist", "weights=R/checkpoint.pt", "n=2"]
    res = cli(args, in_tmp)
    line = one_line(res.stderr)
    assert res.returncode in (1, 2) and "it holds a pickled posix.system, which would run code" in line, line
    assert "weights_only" not in line and line.endswith("nothing in it was run")
    assert not (in_tmp / "owned").exists()


@pytest.mark.parametrize("command", ["reparam", pytest.param("landscape", marks=pytest.mark.slow)])
def test_weights_that_are_not_finite_are_named_not_blamed_on_alpha(run, in_tmp, command):
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    state["model_state"]["fc1.weight"][0, 0] = float("nan")
    craft(run, model_state=state["model_state"])
    res = cli(COMMANDS[command], in_tmp)
    line = one_line(res.stderr)
    assert res.returncode == 2 and "holds weights that are not finite (fc1.weight)" in line and "alpha" not in line


@pytest.mark.parametrize("change,message", [
    ({"config": {"loss": "ce"}}, "loss: 'mse' in A, 'ce' in B"),
    pytest.param({"config": {"data": {"classes": [0, 1, 2]}}}, "data.classes: None in A, [0, 1, 2] in B",
                 marks=pytest.mark.slow)])
def test_landscape_refuses_a_pair_of_runs_that_differ(run, in_tmp, change, message):
    shutil.copytree(run, in_tmp / "B")
    craft(in_tmp / "B", **change)
    res = cli(["landscape", "R", "B", "points=2", "n=4"], in_tmp)
    line = one_line(res.stderr)
    assert res.returncode == 2 and f"the two runs need the same network, data and loss ({message})" in line


@pytest.mark.slow
def test_landscape_of_a_run_whose_name_holds_escapes(run, in_tmp):
    """The name goes into the figures' titles and the lines printed: escaped, and the PNGs are drawn."""
    name = "R\x1b]0;owned\x07\u202e"
    run.rename(in_tmp / name)
    res = cli(["landscape", name, "points=2", "n=4"], in_tmp)
    assert res.returncode == 0, res.stderr
    out = in_tmp / f"{name}-landscape"
    assert {p.name for p in out.iterdir()} >= {"landscape_2d.csv", "landscape_1d.png", "landscape_contour.png"}
    assert "R\\x1b]0;owned\\x07\\u202e" in res.stdout and "\x1b" not in res.stdout + res.stderr


# --- files collaborators can read -------------------------------------------------------------------------


def _modes(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): stat.S_IMODE(p.lstat().st_mode) for p in folder.rglob("*")
            if p.is_file() and not p.is_symlink()}


@pytest.mark.parametrize("mask", [0o022, *(pytest.param(m, marks=pytest.mark.slow) for m in (0o002, 0o077))])
def test_every_file_of_a_run_has_the_permissions_the_umask_allows(in_tmp, mask):
    """Checkpoint, parts, status, Hydra's files, the lock, error.log, metrics.csv and the figures' CSVs."""
    def umask_and_memory():
        os.umask(mask)
        limit_memory(CLI_MEMORY)()

    res = subprocess.run([sys.executable, "-m", "sharpcomp.cli", "train", *TINY, "logger=csv", "hydra.run.dir=R"],
                         cwd=in_tmp, capture_output=True, text=True, timeout=300, preexec_fn=umask_and_memory)
    assert res.returncode == 0, res.stderr
    res = subprocess.run([sys.executable, "-m", "sharpcomp.cli", "figures", "R", "--only", "runs", "--formats", "png"],
                         cwd=in_tmp, capture_output=True, text=True, timeout=300, preexec_fn=umask_and_memory)
    assert res.returncode == 0, res.stderr
    modes = {**_modes(in_tmp / "R"), **{f"figures/{k}": v for k, v in _modes(in_tmp / "R-figures").items()}}
    assert {"checkpoint.pt", "metrics.parquet/_status", "metrics.parquet/part-000000000.parquet", ".hydra/config.yaml",
            ".sharpcomp.lock", "metrics.csv", "figures/runs.csv", "figures/runs.png"} <= set(modes)
    assert {k: oct(v) for k, v in modes.items() if v != 0o666 & ~mask} == {}


def test_a_planted_link_at_a_write_probe_is_never_followed(in_tmp):
    """The checks that a folder is writable once wrote a probe at a name of the process id: links planted
    at every such name now stay untouched."""
    from sharpcomp.engine.setup import check_writable

    (in_tmp / "home").mkdir()
    (in_tmp / "home" / "victim.txt").write_text(VICTIM_TEXT)
    run_dir = in_tmp / "P"
    run_dir.mkdir()
    for name in (f".write-test-{os.getpid()}", f".sharpcomp-write-test-{os.getpid()}"):
        (run_dir / name).symlink_to(in_tmp / "home" / "victim.txt")
    check_writable(run_dir)
    from sharpcomp.overrides import check_writable as check_output_writable

    check_output_writable(str(run_dir))
    assert (in_tmp / "home" / "victim.txt").read_text() == VICTIM_TEXT
