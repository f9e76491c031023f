"""What the command line refuses, with one line and nothing written: Hydra's rerun flag in every form, a
planted or linked sibling folder, a run refused by its folder (it leaves the folder's ``.hydra`` as it was),
outputs inside a run's records, and the usage errors that used to end in a traceback or an unclear line.
Every case is built for real: a run trained by sharpcomp, links, pickles, locks held by this process."""

from __future__ import annotations

import os
import pickle
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from sharpcomp.cli import main
from sharpcomp.results.run_state import FolderLock
from tests.conftest import TINY

T = [*TINY, "data.n_train=500"]
PARENT = Path("outputs") / "runs" / "fashion_mnist-mlp4"


def one_line(capsys) -> str:
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and "Traceback" not in err[0], err
    return err[0]


def tree(folder: Path) -> dict:
    """Every path under ``folder`` with its inode and modification time: what a write would change (the folder
    lock aside: taking it writes the holder's pid)."""
    return {str(p.relative_to(folder)): (p.lstat().st_ino, p.lstat().st_mtime_ns) for p in sorted(folder.rglob("*"))
            if p.name != ".sharpcomp.lock"}


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data_dir, cache_dir) -> Path:
    """R: a tiny run trained once by sharpcomp (checkpoints at 0, 2, 4)."""
    root = tmp_path_factory.mktemp("trained")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.setenv("SHARPCOMP_DATA", str(data_dir))
        mp.setenv("SHARPCOMP_CACHE", str(cache_dir))
        assert main(["train", *T, "hydra.run.dir=R"]) == 0
    return root / "R"


@pytest.fixture
def run(in_tmp, trained) -> Path:
    shutil.copytree(trained, in_tmp / "R", symlinks=True)
    return in_tmp / "R"


# ---------------------------------------------------------------------------------------------
# Hydra's rerun flag


class Payload:
    """A pickle that would create a file when loaded."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.mark.parametrize("form", [["--experimental-rerun", "P"], ["--experimental-rerun=P"], ["--exp", "P"],
                                  ["--experimental", "P"], ["--e=P"], ["--experimental-re=P"]])
@pytest.mark.parametrize("view", [["--cfg", "job"], ["-c", "job"], ["--info"], []])
def test_the_rerun_flag_is_refused_in_every_form(in_tmp, capsys, form, view):
    (in_tmp / ".hydra").mkdir()
    marker, payload = in_tmp / "ran", in_tmp / ".hydra" / "config.pickle"
    payload.write_bytes(pickle.dumps(Payload(marker)))
    args = [a.replace("P", str(payload)) for a in form]
    assert main(["train", *view, *args]) == 2
    assert "is refused: it loads a pickle" in one_line(capsys) and not marker.exists()
    assert main(["-m", "train", *args, *view]) == 2
    assert "is refused" in one_line(capsys) and not marker.exists()


def test_a_view_of_a_sweep_shows_its_first_job(in_tmp, capsys):
    assert main(["-m", "train", "+experiment=eos", "--cfg", "job"]) == 0
    captured = capsys.readouterr()
    assert "n_train: 1000" in captured.out and "Traceback" not in captured.err
    assert main(["-m", "train", "lr=0.05,0.2", "--cfg", "job"]) == 0
    captured = capsys.readouterr()
    assert "lr: 0.05" in captured.out and "showing the sweep's first job: lr=0.05" in captured.err
    assert main(["train", "--cfg", "job", "--config-dir", str(in_tmp)]) == 2
    assert "unknown flag '--config-dir'" in one_line(capsys)
    assert not (in_tmp / "outputs").exists()


# ---------------------------------------------------------------------------------------------
# planted siblings and refused runs


def _record(folder: Path, overrides: list[str]) -> None:
    """The .hydra files Hydra would write for ``overrides``, into ``folder``."""
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="sharpcomp.conf", version_base="1.3"):
        cfg = compose("train", overrides=overrides, return_hydra_config=True)
    GlobalHydra.instance().clear()
    (folder / ".hydra").mkdir(parents=True)
    OmegaConf.save(OmegaConf.create({k: v for k, v in cfg.items() if k != "hydra"}), folder / ".hydra" / "config.yaml")
    OmegaConf.save(OmegaConf.create({"hydra": {"runtime": {"choices": dict(cfg.hydra.runtime.choices)}}}),
                   folder / ".hydra" / "hydra.yaml")


@pytest.mark.parametrize("planted", ["link", "folder"])
def test_a_planted_sibling_does_not_capture_a_new_run(in_tmp, capsys, planted):
    """``<parent>/aaa_evil`` (a link to a folder outside, or a folder sharpcomp did not make) recording the same
    settings and an empty ``metrics.parquet/``: the run trains in its own folder, nothing is written there."""
    outside = in_tmp / "outside"
    _record(outside, T)
    (outside / "metrics.parquet").mkdir()
    (in_tmp / PARENT).mkdir(parents=True)
    if planted == "link":
        os.symlink(outside, in_tmp / PARENT / "aaa_evil")
    else:
        outside.rename(in_tmp / PARENT / "aaa_evil")
        outside = in_tmp / PARENT / "aaa_evil"
    before = tree(outside)
    assert main(["train", *T]) == 0
    assert tree(outside) == before
    (records,) = (in_tmp / PARENT).glob("*/metrics.parquet/*.parquet")
    assert records.parent.parent.name == "data.n_train=500,log_every=2,metrics.n=4,width=0.05"


def test_a_link_planted_at_the_run_folders_name_is_refused(in_tmp, capsys):
    outside = in_tmp / "outside"
    outside.mkdir()
    (in_tmp / PARENT).mkdir(parents=True)
    os.symlink(outside, in_tmp / PARENT / "data.n_train=500,log_every=2,metrics.n=4,width=0.05")
    assert main(["train", *T]) == 2
    assert "is a symbolic link" in one_line(capsys) and list(outside.iterdir()) == []


def test_a_run_refused_by_its_folder_writes_nothing_there(run, in_tmp, capsys):
    """A folder holding another run, and a folder in use: the refused run leaves ``.hydra`` as it was, so a
    later default-folder run of its settings is not routed into that folder."""
    before = tree(run)
    assert main(["train", *T, "seed=1", "hydra.run.dir=R"]) == 2
    assert "holds another run" in one_line(capsys)
    assert tree(run) == before
    lock = FolderLock(run)
    lock.acquire()
    try:
        assert main(["train", *T, "hydra.run.dir=R"]) == 2
        assert f"in use by pid {os.getpid()}" in one_line(capsys)
    finally:
        lock.release()
    assert tree(run) == before
    shutil.move(run, in_tmp / PARENT / "R")  # among the runs: a later seed=1 run must not find it
    assert main(["train", *T, "seed=1"]) == 0
    assert sorted(p.parent.name for p in (in_tmp / PARENT).glob("*/metrics.parquet")) == \
        ["R", "data.n_train=500,log_every=2,metrics.n=4,seed=1,width=0.05"]


# ---------------------------------------------------------------------------------------------
# outputs inside a run's records


@pytest.mark.parametrize("argv", [
    ["landscape", "R", "points=2", "n=4", "out=R/metrics.parquet/x"],
    ["landscape", "R", "--out", "R/.hydra"],
    ["measure", "run=R", "n=2", "out=R/.hydra/m"],
    ["measure", "run=R", "n=2", "out=R/metrics.parquet"],
    ["measure", "run=R", "n=2", "out=m", "figure=R/metrics.parquet/c.png"],
    ["runs", "R", "csv=R/metrics.parquet/s.csv"],
    ["runs", "R", "--csv", "R/metrics.parquet"],
    ["figures", "R", "out=R/.hydra/f"],
    ["train", *T, "hydra.run.dir=R/metrics.parquet/sub"],
    ["train", *T, "hydra.run.dir=R/.hydra"],
    ["-m", "train", *T, "hydra.sweep.dir=R/metrics.parquet"],
])
def test_no_writer_writes_inside_a_runs_records(run, capsys, argv):
    before = tree(run)
    assert main(argv) == 2
    assert "is inside a run's" in one_line(capsys)
    assert tree(run) == before and len(pd.read_parquet(run / "metrics.parquet")) == 3


# ---------------------------------------------------------------------------------------------
# one line each


@pytest.mark.parametrize("argv,message", [
    (["-m", "train", *T, "hydra/launcher=joblib", "hydra.launcher.n_jobs=0"], "n_jobs must be a non-zero integer"),
    (["-m", "train", *T, "hydra/launcher=joblib", "hydra.launcher.n_jobs=two"], "could not be converted to Integer"),
    (["-m", "train", *T, "hydra/launcher=ensemble", "hydra.launcher.impl=bogus"], "unknown hydra.launcher.impl"),
    (["-m", "train", *T, "hydra/launcher=ensemble", "hydra.launcher.max_members=0"], "max_members must be"),
    (["-m", "train", *T, "hydra/launcher=ensemble", "hydra.launcher.max_members=-3"], "max_members must be"),
    (["train", *T, "data_dir=/nonexistent"], "data_dir /nonexistent is not a folder"),
    (["train", *T, "hydra.run.dir=run-\udcff"], "is not valid UTF-8"),
    (["measure", "model=mlp4", "data=fashion_mnist", "weights=/etc/passwd"], "not a file written by torch.save"),
    (["measure", "run=R", "out=R"], "is a training run's folder"),
    (["runs", "R", "--csv", "/proc/sharpcomp/foo.csv"], "cannot write /proc/sharpcomp/foo.csv"),
    (["runs", "R", "csv=R"], "is a folder; name a file"),
    (["landscape", "R", "R", "lo=-inf"], "lo must be a finite number"),
    (["reparam", "R", "measures=hessian_max,bogus"], "unknown measure 'bogus' (choose from metrics,"),
])
def test_bad_input_is_one_line_exit_2(run, in_tmp, capsys, argv, message):
    assert main(argv) == 2
    assert message in one_line(capsys)
    assert not (in_tmp / "outputs").exists()


def test_a_data_folder_from_the_environment_that_is_not_there(in_tmp, capsys, monkeypatch):
    monkeypatch.setenv("SHARPCOMP_DATA", str(in_tmp / "nowhere"))
    assert main(["train", *T]) == 2
    assert f"data_dir {in_tmp / 'nowhere'} (from SHARPCOMP_DATA) is not a folder" in one_line(capsys)


def test_runs_reads_a_run_named_by_its_records(run, capsys):
    assert main(["runs", "R/metrics.parquet"]) == 0
    assert "finished" in capsys.readouterr().out


def test_weights_in_another_format_say_so(in_tmp, capsys):
    (in_tmp / "w.txt").write_text("root:x:0:0:root:/root:/bin/bash\n")
    torch.save([torch.zeros(2)], in_tmp / "list.pt")
    for weights, message in (("w.txt", "not a file written by torch.save"), ("list.pt", "do not fit the model")):
        assert main(["measure", "model=mlp4", "arg.width=0.05", "data=fashion_mnist", f"weights={weights}", "n=2",
                     "out=m"]) == 2
        assert message in one_line(capsys)
