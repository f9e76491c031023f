"""Run folders are named by what a person would call the run, canonically: writing a default explicitly, or
another spelling of a number, names the same folder; ``steps`` names none (a larger one extends the run);
folders named before still resume, and only a real folder holding the run's own results is taken over."""

from __future__ import annotations

import os
import time

import pandas as pd
import pytest
import torch
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf

from sharpcomp.cli import main
from sharpcomp.results.run_names import canonical_value, register_resolvers
from sharpcomp.settings import compose as compose_train
from sharpcomp.settings import plain, run_identity
from tests.conftest import TINY


def _dir(overrides, key="hydra.run.dir"):
    register_resolvers()
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="sharpcomp.conf", version_base="1.3"):
        cfg = compose("train", overrides=overrides, return_hydra_config=True)
        HydraConfig.instance().set_config(cfg)
        out = str(OmegaConf.select(cfg, key)), cfg
    GlobalHydra.instance().clear()
    return out


def _name(overrides, key="hydra.run.dir"):
    return _dir(overrides, key)[0].rsplit("/", 1)[-1]


def _run_id(overrides) -> str:
    return run_identity(plain(compose_train(overrides)))["run_id"]


def test_equal_settings_one_name():
    assert {_name(o) for o in (["lr=0.1"], ["lr=1e-1"], [], ["batch=20", "seed=0"])} == {"default"}
    assert _dir(["seed=1", "lr=5e-2"])[0].endswith("/cifar10_2class-vgg10/lr=0.05,seed=1")
    assert _dir(["scale=demo", "progress=false"])[0].endswith("/scale=demo")
    # values keep their type: an integer is written as one, and an integer and a float are different runs
    assert _name(["lr=1"]) == "lr=1" and _name(["lr=1.0"]) == "lr=1.0"
    assert _run_id(["lr=1"]) != _run_id(["lr=1.0"])
    assert _name(["model=mlp4", "model.width=4"]) == "width=4"
    assert [canonical_value(v) for v in (1, 4.0, 1e-5, 0.05, [0, 1], None, True, {"k": 3, "a": 0.5})] == \
        ["1", "4.0", "1e-05", "0.05", "[0,1]", "null", "true", "{a:0.5,k:3}"]


def test_steps_names_no_folder_and_enters_no_run_id():
    """A larger ``steps`` extends the run in its own folder: it names none and is not part of the run id."""
    assert _name(["steps=100", "seed=1"]) == _name(["steps=200", "seed=1"]) == "seed=1"
    assert _name(["scale=demo", "steps=3000"]) == "scale=demo"
    assert _name(["steps=7"]) == "default"
    assert _run_id(["steps=100", "seed=1"]) == _run_id(["steps=200", "seed=1"]) != _run_id(["steps=100"])
    # what only says how a run executes names nothing either
    assert _name(["resume_every=60", "compile=true", "cuda_graph=off", "metrics.chunk_size=8"]) == "default"


def test_names_a_person_can_read():
    eos = _name(["+experiment=eos", "lr=0.5"])
    assert eos == "eos,lr=0.5"
    assert _name(["+experiment=eos", "lr=0.5", "batch=50"], "hydra.sweep.subdir") == "eos,batch=50,lr=0.5"
    assert _name(["+experiment=fig3", "seed=1"], "hydra.sweep.subdir") == "fig3,seed=1"
    # an experiment that only chooses data, model and swept values adds no word: runs experiments share, once
    assert _name(["+experiment=fig1", "seed=1", "lr=0.05"], "hydra.sweep.subdir") == "lr=0.05,seed=1"
    path, _ = _dir(["model=custom", "model._target_=tests.nets.SmallResNet", "model.name=smallresnet",
                    "+model.depth=2", "+model.width=4"])
    assert path.endswith("/cifar10_2class-smallresnet/tests.nets.SmallResNet,depth=2,width=4")
    # a model key that is also a top-level setting keeps its prefix: names stay one-to-one
    assert _name(["model=mlp4", "+model.seed=3", "seed=2"]) == "model.seed=3,seed=2"
    assert _name(["data=fashion_mnist", "model=mlp4", "data.classes=[3,5]", "metrics.n=20"]) == \
        "data.classes=[3,5],metrics.n=20"


def test_a_config_group_of_ones_own_is_compared_with_its_own_defaults(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "conf" / "model").mkdir(parents=True)
    (tmp_path / "conf" / "model" / "smallresnet.yaml").write_text(
        "name: smallresnet\n_target_: tests.nets.SmallResNet\nwidth: 8\ndepth: 2\noutputs: classes\n")
    own = ["hydra.searchpath=[file://conf]", "model=smallresnet", "data=cifar10"]
    assert _dir(own)[0] == "outputs/runs/cifar10-smallresnet/default"
    assert _name([*own, "model.width=4", "lr=0.05"]) == "lr=0.05,width=4"


# ---------------------------------------------------------------------------------------------
# folders named before, and folders sharpcomp did not make


def _checkpoint(folder, run_id: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    torch.save({"run_id": run_id, "iteration": 4, "wall_time": 1.0, "status": "finished",
                "model_state": {"w": torch.zeros(2)}, "optimizer_state": {}, "config": {}}, folder / "checkpoint.pt")


def _record(folder, cfg) -> None:
    """The .hydra files Hydra writes, for the composed ``cfg``."""
    (folder / ".hydra").mkdir(parents=True, exist_ok=True)
    OmegaConf.save(OmegaConf.create({k: v for k, v in cfg.items() if k != "hydra"}), folder / ".hydra" / "config.yaml")
    OmegaConf.save(OmegaConf.create({"hydra": {"runtime": {"choices": dict(cfg.hydra.runtime.choices)}}}),
                   folder / ".hydra" / "hydra.yaml")


@pytest.fixture
def parent(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "outputs" / "runs" / "cifar10_2class-vgg10"
    folder.mkdir(parents=True)
    return folder


def test_folders_named_before_are_found_when_they_hold_the_run(parent):
    literal = parent / "lr=0.1,steps=4"  # the command line's own name, as folders were once named
    _checkpoint(literal, _run_id(["lr=0.1", "steps=4"]))
    assert _dir(["lr=0.1", "steps=4"])[0] == "outputs/runs/cifar10_2class-vgg10/lr=0.1,steps=4"
    _checkpoint(literal, "another-run")  # the literal name holding another run is not this run's
    assert _dir(["lr=0.1", "steps=4"])[0] == "outputs/runs/cifar10_2class-vgg10/default"
    # a folder of another command line (an earlier name, with steps) whose recorded settings are the same:
    # any steps finds it, and extends it
    _, cfg = _dir(["batch=20", "steps=6"])
    old = parent / "batch=20,steps=6"
    _record(old, cfg)
    _checkpoint(old, _run_id(["steps=6"]))
    assert _dir(["steps=6"])[0].endswith("/batch=20,steps=6")
    assert _dir(["steps=12"])[0].endswith("/batch=20,steps=6")
    assert _dir(["seed=1", "steps=6"])[0].endswith("/seed=1")
    # records (parts of this run) are results too, without a checkpoint
    (old / "checkpoint.pt").unlink()
    (old / "metrics.parquet").mkdir()
    part = old / "metrics.parquet" / "part-000000000.parquet"
    pd.DataFrame({"run_id": [_run_id([])], "iteration": [0]}).to_parquet(part)
    assert _dir(["steps=8"])[0].endswith("/batch=20,steps=6")


def _planted(parent, where, cfg, results: str):
    where.mkdir(parents=True)
    _record(where, cfg)
    if results == "empty parts folder":
        (where / "metrics.parquet").mkdir()
    elif results == "another run's checkpoint":
        _checkpoint(where, "cifar10_2class-vgg10-lr0.1-b20-s0-00000000")
    elif results == "a part of another run":
        (where / "metrics.parquet").mkdir()
        pd.DataFrame({"run_id": ["other"], "iteration": [0]}).to_parquet(where / "metrics.parquet" / "part-0.parquet")
    elif results == "a checkpoint that is not one":
        (where / "checkpoint.pt").write_bytes(b"not a checkpoint")


@pytest.mark.parametrize("results", ["empty parts folder", "another run's checkpoint", "a part of another run",
                                     "a checkpoint that is not one"])
@pytest.mark.parametrize("kind", ["link to a folder outside", "folder it did not make"])
def test_a_planted_sibling_never_captures_a_new_run(parent, tmp_path, kind, results):
    """A sibling recording the same settings is taken over only when it is a real folder holding the run's
    own results; a link is never followed (it would send the run's writes outside)."""
    _, cfg = _dir(["seed=3"])
    if kind.startswith("link"):
        _planted(parent, tmp_path / "outside", cfg, results)
        os.symlink(tmp_path / "outside", parent / "aaa_evil")
    else:
        _planted(parent, parent / "aaa_evil", cfg, results)
    assert _dir(["seed=3"])[0].endswith("/cifar10_2class-vgg10/seed=3")


def test_a_linked_sibling_holding_the_run_is_not_followed_either(parent, tmp_path):
    _, cfg = _dir(["seed=3"])
    _planted(parent, tmp_path / "outside", cfg, "none")
    _checkpoint(tmp_path / "outside", _run_id(["seed=3"]))
    os.symlink(tmp_path / "outside", parent / "aaa_evil")
    assert _dir(["seed=3"])[0].endswith("/seed=3")
    (parent / "aaa_evil").unlink()
    (tmp_path / "outside").rename(parent / "aaa_real")  # the same folder, inside the parent: taken over
    assert _dir(["seed=3"])[0].endswith("/aaa_real")


BOMB = "a: &a [x,x,x,x,x,x,x,x,x]\n" + "".join(
    f"{c}: &{c} [*{p},*{p},*{p},*{p},*{p},*{p},*{p},*{p},*{p}]\n" for p, c in zip("abcdefgh", "bcdefghi"))


@pytest.mark.parametrize("config", ["fifo", "alias bomb", "resolver", "not yaml", "link"])
def test_recorded_settings_are_read_bounded(parent, tmp_path, config):
    """A sibling's .hydra/config.yaml is read only as a small regular file of plain YAML: a FIFO does not
    hang, an alias bomb does not expand, an interpolation other than a reference to a key is not resolved."""
    _, cfg = _dir(["seed=3"])
    sibling = parent / "aaa"
    _planted(parent, sibling, cfg, "none")
    _checkpoint(sibling, _run_id(["seed=3"]))
    path = sibling / ".hydra" / "config.yaml"
    good = path.read_text()
    path.unlink()
    if config == "fifo":
        os.mkfifo(path)
    elif config == "alias bomb":
        path.write_text(good + BOMB)
    elif config == "resolver":
        path.write_text(good.replace("seed: 3", "seed: ${oc.decode:'3'}"))  # resolves to 3
    elif config == "not yaml":
        path.write_bytes(b"\xff\xfe{{{")
    else:
        (tmp_path / "elsewhere.yaml").write_text(good)
        os.symlink(tmp_path / "elsewhere.yaml", path)
    start = time.monotonic()
    assert _dir(["seed=3"])[0].endswith("/seed=3")
    assert time.monotonic() - start < 30


@pytest.mark.slow
def test_cli_writing_a_default_resumes_the_same_folder(in_tmp, capsys):
    assert main(["train", *TINY]) == 0
    assert main(["train", *TINY, "lr=0.1", "batch=20"]) == 0
    runs = [p.parent for p in (in_tmp / "outputs").rglob("metrics.parquet")]
    assert len(runs) == 1 and runs[0].name == "log_every=2,metrics.n=4,width=0.05"
