"""A tracked training killed mid-way (SIGKILL) and run again: no row twice, none missing.

The scripts are ``tests/tracking/loops.py`` (a plain loop, a Lightning fit), run as processes and killed: by
themselves at a given iteration between checkpoints, or in the middle of a checkpoint's measures.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from sharpcomp.results.records import read_metrics
from tests.conftest import REPO
from tests.tracking import loops
from tests.tracking.test_same_rows import assert_same_rows

CHECKPOINTS = [0, 4, 8, 12, 14]


def script(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tests.tracking.loops", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=600, env={**os.environ, **(env or {})})


def assert_complete(folder) -> None:
    """Every checkpoint once, each with its three sample sets, and the run finished."""
    rows = read_metrics(folder)
    assert rows.groupby(["iteration", "sample_set"]).size().max() == 1
    assert sorted(set(rows.iteration)) == CHECKPOINTS and len(rows) == 3 * len(CHECKPOINTS)
    assert (rows.status == "finished").all()


@pytest.mark.parametrize("how", [pytest.param("between checkpoints", marks=pytest.mark.slow), "inside a checkpoint"])
def test_a_killed_plain_loop_resumes(tmp_path, how, one_thread):
    folder, flag = tmp_path / "run", tmp_path / "kill"
    extra = ["--killer"]
    if how == "between checkpoints":
        first = script("plain", str(folder), "--kill-at", "6", *extra)
    else:  # the killer measure's 2nd call: the flatness measures of checkpoint 8
        flag.write_text("2")
        first = script("plain", str(folder), *extra, env={"SHARPCOMP_TEST_KILL_FILE": str(flag)})
        assert not flag.exists()
    assert first.returncode == -signal.SIGKILL, first.stderr[-2000:]
    assert sorted(set(read_metrics(folder).iteration)) == [0, 4]
    again = script("plain", str(folder), *extra)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "resumed at iteration 4 (network, optimizer loaded)" in again.stderr
    assert_complete(folder)
    loops.plain_loop(tmp_path / "whole", loops.config(loops.KILLER), loops.data())  # never killed
    assert_same_rows(read_metrics(tmp_path / "whole"), read_metrics(folder))


@pytest.mark.slow
def test_a_killed_lightning_fit_resumes_from_the_trainers_checkpoint(tmp_path):
    """The Trainer checkpoints every 8 steps, the tracker every 4: killed at step 13, the tracker has recorded
    12, the Trainer saved 8; the resumed fit goes on from 8, and the tracker with it."""
    pytest.importorskip("lightning")
    folder, ckpt = tmp_path / "run", tmp_path / "ckpt"
    first = script("lightning", str(folder), "--ckpt", str(ckpt), "--ckpt-every", "8", "--kill-at", "13")
    assert first.returncode == -signal.SIGKILL, first.stderr[-2000:]
    assert sorted(set(read_metrics(folder).iteration)) == [0, 4, 8, 12]
    before = read_metrics(folder)
    again = script("lightning", str(folder), "--ckpt", str(ckpt), "--ckpt-every", "8", "--resume")
    assert again.returncode == 0, again.stderr[-2000:]
    assert "resumed at iteration 8: the records after it are computed again" in again.stderr
    assert_complete(folder)
    kept = read_metrics(folder)
    assert_same_rows(before[before.iteration <= 8], kept[kept.iteration <= 8])
