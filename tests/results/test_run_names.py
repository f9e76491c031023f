"""Run folders are named by the settings that differ from the defaults, canonically: writing a default
explicitly, or another spelling of a number, names the same folder; folders named before still resume."""

from __future__ import annotations

import pytest
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf

from sharpcomp.cli import main
from sharpcomp.results.run_names import canonical_value, register_resolvers
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


def test_equal_settings_one_name():
    names = {_dir(o)[0].rsplit("/", 1)[1] for o in (["lr=0.1"], ["lr=1e-1"], [], ["batch=20", "seed=0"])}
    assert names == {"default"}
    assert _dir(["seed=1", "lr=5e-2"])[0].endswith("/cifar10_2class-vgg10/lr=0.05,seed=1")
    assert _dir(["lr=1", "model.width=1"])[0].endswith("/lr=1.0")
    assert _dir(["+experiment=fig3", "seed=1"], "hydra.sweep.subdir")[0] == \
        "metrics.sample_sets=[train,test,misclassified],seed=1"
    assert _dir(["scale=demo", "progress=false"])[0].endswith("/scale=demo")
    assert [canonical_value(v, d) for v, d in ((1, 0.5), (1e-5, None), (3, 2), ([0, 1], None), (None, 1))] == \
        ["1.0", "1e-05", "3", "[0,1]", "null"]


def test_folders_named_before_are_found(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    parent = tmp_path / "outputs" / "runs" / "cifar10_2class-vgg10"
    literal = parent / "lr=0.1,steps=4"  # today's name of `lr=0.1 steps=4`
    literal.mkdir(parents=True)
    (literal / "metrics.parquet").mkdir()
    assert _dir(["lr=0.1", "steps=4"])[0] == "outputs/runs/cifar10_2class-vgg10/lr=0.1,steps=4"
    # a folder of another command line whose recorded settings are the same
    _, cfg = _dir(["batch=20", "steps=6"])
    old = parent / "batch=20,steps=6"
    (old / ".hydra").mkdir(parents=True)
    (old / "checkpoint.pt").write_bytes(b"")
    plain = {k: v for k, v in cfg.items() if k != "hydra"}
    OmegaConf.save(OmegaConf.create(plain), old / ".hydra" / "config.yaml")
    OmegaConf.save(OmegaConf.create({"hydra": {"runtime": {"choices": dict(cfg.hydra.runtime.choices)}}}),
                   old / ".hydra" / "hydra.yaml")
    assert _dir(["steps=6"])[0].endswith("/batch=20,steps=6")
    assert _dir(["steps=7"])[0].endswith("/steps=7")


@pytest.mark.slow
def test_cli_writing_a_default_resumes_the_same_folder(in_tmp, capsys):
    assert main(["train", *TINY]) == 0
    assert main(["train", *TINY, "lr=0.1", "batch=20"]) == 0
    runs = [p.parent for p in (in_tmp / "outputs").rglob("metrics.parquet")]
    assert len(runs) == 1 and runs[0].name == "log_every=2,metrics.n=4,model.width=0.05,steps=4"
