"""Figures from results folders as they come: a folder name that is not text, runs without the columns a
figure needs, bad options -- one line each, the good runs still drawn."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pytest

from sharpcomp.commands.figures import main

BAD_NAME = os.fsdecode(b"run-\xff")  # not valid UTF-8: a surrogate escape in the str


def _write_run(folder: Path, run_id: str) -> None:
    """A minimal results file (older single-file layout) with bounds but no lr or batch columns."""
    folder.mkdir(parents=True, exist_ok=True)
    n = 3
    pd.DataFrame({"run_id": [run_id] * n, "iteration": [0, 1, 2], "sample_set": ["train"] * n,
                  "data": ["fashion_mnist"] * n, "model": ["mlp4"] * n, "mls": [1.0, 2, 3],
                  "bound_b": [1.0, 2, 3], "bound_c": [2.0, 3, 4], "bound_d": [3.0, 4, 5],
                  "train_loss_running": [0.3, 0.2, 0.1]}).to_parquet(folder / "metrics.parquet")


def test_a_folder_name_that_is_not_text_is_skipped_and_the_others_drawn(tmp_path, capsys):
    _write_run(tmp_path / "res" / "good", "a")
    _write_run(tmp_path / "b", "b")
    (tmp_path / "b").rename(tmp_path / "res" / BAD_NAME)  # a copied folder (an archive of another system)
    assert main([str(tmp_path / "res"), "--only", "runs", "--formats", "png", "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "its folder name is not valid UTF-8" in out and "run-\\xff" in out
    assert "read 1 runs" in out and (tmp_path / "out" / "runs.png").exists()


@pytest.mark.parametrize("args,message", [(["--formats", "gif"], "--formats takes png, pdf, svg"),
                                          (["--last-fraction", "2"], "--last-fraction must be in (0, 1]")])
def test_bad_options_exit_2(tmp_path, capsys, args, message):
    _write_run(tmp_path / "res" / "good", "a")
    assert main([str(tmp_path / "res"), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_figd4_without_lr_and_batch_says_why(tmp_path, capsys):
    _write_run(tmp_path / "res" / "good", "a")
    assert main([str(tmp_path / "res"), "--only", "figD4", "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "figD4: skipped, needs mlp4/fashion_mnist runs with bound values" in out
    assert "no run has both lr and batch values" in out and "Error" not in out


def test_a_fifo_or_a_device_link_as_results_is_one_line_and_the_others_are_drawn(tmp_path):
    """In a real process with a time bound: a FIFO would make a reader wait for ever, /dev/zero never ends."""
    from tests.hostile import cli, replace

    _write_run(tmp_path / "res" / "good", "a")
    replace(tmp_path / "res" / "fifo" / "metrics.parquet", "fifo", tmp_path)
    replace(tmp_path / "res" / "zero" / "metrics.parquet", "zero", tmp_path)
    res = cli(["figures", "res", "--only", "runs", "--formats", "png", "--out", "out"], tmp_path, timeout=120)
    assert res.returncode == 0, res.stderr
    skipped = sorted(ln for ln in res.stdout.splitlines() if ln.startswith("skipped"))
    assert len(skipped) == 2 and "is a FIFO" in skipped[0] and "is a symbolic link" in skipped[1], res.stdout
    assert "read 1 runs" in res.stdout and (tmp_path / "out" / "runs.png").exists()
