"""`sharpcomp landscape`: files written for one run and for a pair; bad input is one line, exit 2."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from sharpcomp.cli import main as cli_main
from sharpcomp.commands import landscape as landscape_command
from tests import problems
from tests.problems import mse


class _Data:
    def __init__(self):
        g = torch.Generator().manual_seed(0)
        self.train_x, self.train_y = torch.randn(30, 1, 8, 8, generator=g), torch.randint(0, 2, (30,), generator=g)
        self.test_x, self.test_y = torch.randn(20, 1, 8, 8, generator=g), torch.randint(0, 2, (20,), generator=g)


class _Settings:
    raw = {"model": {"name": "tiny"}, "data": {"name": "synthetic"}, "loss": "mse"}


class _Run:
    """What :func:`sharpcomp.engine.loading.load_run` gives, for a tiny network on random data."""

    def __init__(self, model):
        self.model, self.loss_fn, self.data, self.settings = model, mse, _Data(), _Settings()


@pytest.fixture
def runs(tmp_path, monkeypatch):
    def load_run(path, data=None):
        if not (path / "checkpoint.pt").exists():
            raise FileNotFoundError(f"no checkpoint at {path / 'checkpoint.pt'}")
        model = problems.CNN_MAXPOOL.variant(seed=0 if path.name == "a" else 1).make(torch.float32).model
        return _Run(model.eval())

    monkeypatch.setattr(landscape_command, "load_run", load_run)
    monkeypatch.setattr(landscape_command, "run_settings", lambda path: _Settings())
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "checkpoint.pt").write_bytes(b"")
    return tmp_path


def test_one_run_writes_grids_and_figures(runs, capsys):
    out = runs / "fig"
    assert cli_main(["landscape", str(runs / "a"), "points=5", "n=12", f"out={out}", "chunk=4", "batch=5"]) == 0
    for f in ("landscape_2d.csv", "landscape_1d.csv", "landscape_contour.png", "landscape_surface.png",
              "landscape_1d.png"):
        assert (out / f).stat().st_size > 0
    grid = pd.read_csv(out / "landscape_2d.csv")
    assert len(grid) == 25 and set(grid.columns) == {"alpha", "beta", "loss", "acc"}
    assert grid["acc"].between(0, 1).all() and (grid["loss"] > 0).all()
    assert "wrote" in capsys.readouterr().out


def test_a_pair_writes_the_interpolation(runs):
    out = runs / "pair"
    assert cli_main(["landscape", str(runs / "a"), str(runs / "b"), "points=5", "n=10", f"out={out}"]) == 0
    df = pd.read_csv(out / "interpolation.csv")
    assert df["t"].tolist() == [-0.5, 0.0, 0.5, 1.0, 1.5]
    assert {"train_loss", "train_acc", "test_loss", "test_acc"} <= set(df.columns)
    assert (out / "interpolation.png").stat().st_size > 0


@pytest.mark.parametrize("args,msg", [
    (["points=1"], "points must be >= 2"), (["span=-1"], "span must be"), (["colour=red"], "unknown option"),
    (["--fast"], "unknown flag"), (["points=x"], "points must be an integer"), (["lo=2", "hi=1"], "lo must be"),
])
def test_bad_input_is_one_line_exit_2(runs, capsys, args, msg):
    assert cli_main(["landscape", str(runs / "a"), *args]) == 2
    err = capsys.readouterr().err
    assert msg in err and len(err.strip().splitlines()) == 1


def test_missing_run_and_checkpoint(runs, tmp_path, capsys):
    assert cli_main(["landscape", str(tmp_path / "nope")]) == 2
    (tmp_path / "empty").mkdir()
    assert cli_main(["landscape", str(tmp_path / "empty")]) == 1
    assert cli_main(["landscape"]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 3
