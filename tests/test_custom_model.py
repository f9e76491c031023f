"""Your own network: any callable through Hydra's ``_target_``, built-ins expressed the same
way, bad models refused in one line; a small residual CNN with BatchNorm trains, logs every column,
resumes exactly, draws, and its metrics (eval mode) match the brute-force float64 reference."""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from sharpcomp.cli import main
from sharpcomp.engine.train import train
from sharpcomp.measures.study.metrics import compute_metrics
from sharpcomp.models import ModelError, build_from_config, build_model, count_parameters, mlp4, vgg10
from sharpcomp.results.records import read_metrics
from tests.conftest import REPO, SHRINK, TINY, compose_train
from tests.nets import SmallResNet
from tests.reference import reference_metrics

TINY_DATA = [a for a in TINY if not a.startswith("model")]
RESNET = ["model=custom", "model._target_=tests.nets.SmallResNet", "+model.width=3", "+model.depth=1"]


def model_cfg(overrides):
    return OmegaConf.to_container(compose_train(overrides).model, resolve=True)


def test_builtins_are_expressed_through_target_with_the_same_weights():
    for name, fn, shape, count in (("vgg10", vgg10, (3, 32, 32), 97_018), ("mlp4", mlp4, (1, 28, 28), 898_510)):
        cfg = model_cfg([f"model={name}"])
        assert cfg["_target_"] == f"sharpcomp.models.{name}"
        model = build_from_config(cfg, 10, shape, seed=3)
        torch.manual_seed(3)
        direct = fn(10, 1.0, shape)
        assert count_parameters(model) == count
        assert all(torch.equal(p, q) for p, q in zip(model.parameters(), direct.parameters()))
        assert all(torch.equal(p, q) for p, q in zip(model.parameters(), build_model(name, seed=3).parameters()))


def test_custom_target_gets_its_arguments_and_the_datas():
    cfg = model_cfg(RESNET)
    assert cfg["outputs"] == "classes"
    model = build_from_config(cfg, 7, (3, 16, 16), seed=0)
    assert isinstance(model, SmallResNet) and model.fc.out_features == 7 and model.stem[0].in_channels == 3
    assert model.fc.in_features == 4 * 3 and len(model.blocks) == 1
    assert model.training  # the shape check ran in eval mode and left the mode as it was
    assert all(torch.equal(b.running_mean, torch.zeros_like(b.running_mean))
               for b in model.modules() if isinstance(b, nn.BatchNorm2d))
    # a callable that does not take the data's arguments gets only its own
    lin = build_from_config({"name": "lin", "_target_": "torch.nn.Sequential", "_args_": [
        {"_target_": "torch.nn.Flatten"}, {"_target_": "torch.nn.Linear", "in_features": 4, "out_features": 2}]},
        2, (1, 2, 2))
    assert lin(torch.ones(5, 1, 2, 2)).shape == (5, 2)
    # a library builder with **kwargs gets only its config's arguments (num_outputs would reach ResNet)
    r18 = build_from_config({"name": "r18", "_target_": "torchvision.models.resnet18", "num_classes": 2,
                             "outputs": "classes"}, 2, (3, 32, 32), seed=0)
    assert r18.fc.out_features == 2


@pytest.mark.parametrize("cfg,message", [
    ({"name": "x", "_target_": "nosuch_pkg.nets.Net"}, "cannot import model._target_ 'nosuch_pkg.nets.Net'"),
    ({"name": "x", "_target_": "torch.nn.NoSuchNet"}, "cannot import model._target_ 'torch.nn.NoSuchNet'"),
    ({"name": "x", "_target_": "tests.nets.not_a_module"}, "returned a dict, not a torch.nn.Module"),
    ({"name": "x", "_target_": "torch.nn.Flatten"}, "gives outputs of shape (1, 784) for one input of shape "
                                                    "(1, 1, 28, 28); the loss needs (1, 10)"),
    ({"name": "x", "_target_": "tests.nets.SmallResNet", "depht": 2}, "unexpected keyword argument 'depht'"),
    ({"name": "x", "_target_": "tests.nets.SmallResNet", "input_shape": [1, 2]}, "model.input_shape comes from"),
    ({"name": "x", "_target_": "tests.nets.SmallResNet", "outputs": 0}, "model.outputs must be a positive integer"),
    ({"name": "x"}, "needs model._target_"),
])
def test_bad_models_are_one_line_errors(cfg, message):
    with pytest.raises(ModelError) as err:
        build_from_config(cfg, 10, (1, 28, 28), seed=0)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_fewer_outputs_than_classes_is_refused():
    with pytest.raises(ModelError, match="model.outputs=2 is fewer than the data's 10 classes"):
        build_from_config(model_cfg(["model=mlp4", "model.outputs=2"]), 2, (1, 28, 28), num_classes=10)


@pytest.mark.parametrize("args,message", [
    (["model=custom", "model._target_=nosuch_pkg.Net"], "cannot import model._target_ 'nosuch_pkg.Net'"),
    (["model=custom", "model._target_=tests.nets.not_a_module"], "returned a dict, not a torch.nn.Module"),
    (["model=custom", "model._target_=torch.nn.Flatten"], "the loss needs (1, 10)"),
])
def test_cli_bad_model_one_line_exit_2(args, message, capsys, in_tmp, monkeypatch):
    monkeypatch.syspath_prepend(str(REPO))
    with pytest.raises(SystemExit) as ex:
        rc = main(["train", *TINY_DATA, *args])
        raise SystemExit(rc)
    err = capsys.readouterr().err.strip()
    assert ex.value.code == 2 and message in err and len(err.splitlines()) == 1 and "Traceback" not in err


# ---------------------------------------------------------------------------------------------
# the residual CNN through the whole tool


@pytest.fixture
def resnet_cfg(cfg_small):
    shrink = [a for a in SHRINK if not a.startswith("model")]
    cfg = compose_train([*shrink, *RESNET, "steps=8", "log_every=4"])
    OmegaConf.set_struct(cfg, False)
    cfg.data_dir, cfg.cache_dir = cfg_small.data_dir, cfg_small.cache_dir
    return cfg


class Stop(KeyboardInterrupt):
    pass


def _frame(run_dir):
    df = read_metrics(run_dir).drop(columns=["wall_time", "seconds", "versions"], errors="ignore")
    return df.sort_values(["iteration", "sample_set"]).reset_index(drop=True)


def test_resnet_trains_logs_every_column_resumes_exactly_and_draws(resnet_cfg, cfg_small, fmnist_small, tmp_path,
                                                                   capsys):
    ref = train(resnet_cfg, tmp_path / "ref", data=fmnist_small)
    assert ref.status == "finished"
    rows = read_metrics(tmp_path / "ref")
    assert sorted(rows.iteration) == [0, 4, 8] and (rows.model == "custom").all() and (rows.outputs == 10).all()
    train(cfg_small, tmp_path / "mlp", data=fmnist_small)
    mlp_rows = read_metrics(tmp_path / "mlp")
    assert list(rows.columns) == list(mlp_rows.columns)  # every column an mlp4 run logs
    for col in mlp_rows.columns:  # ... filled wherever an mlp4 run fills it (the Eq. 28 bounds aside)
        if mlp_rows[col].notna().all() and not col.startswith("bound"):
            assert rows[col].notna().all(), col
    assert rows.bounds_reason.notna().all()  # a convolutional first layer: no Eq. 28 bounds, said so
    assert np.isfinite(rows[["sharpness", "G", "log_volume", "mls", "local_dim", "train_loss"]].to_numpy()).all()

    def stop_after_4(it, _rows):
        if it == 4:
            raise Stop

    with pytest.raises(Stop):
        train(resnet_cfg, tmp_path / "run", data=fmnist_small, callback=stop_after_4)
    assert sorted(read_metrics(tmp_path / "run").iteration) == [0, 4]
    assert train(resnet_cfg, tmp_path / "run", data=fmnist_small).status == "finished"
    pd.testing.assert_frame_equal(_frame(tmp_path / "ref"), _frame(tmp_path / "run"))

    out = tmp_path / "figs"
    assert main(["figures", str(tmp_path / "ref"), "--out", str(out)]) == 0
    assert any(p.suffix == ".png" for p in out.rglob("*")), capsys.readouterr()


def test_resnet_metrics_in_eval_mode_match_the_float64_reference(one_thread):
    model = build_from_config(model_cfg(RESNET), 3, (2, 6, 6), seed=0)
    with torch.no_grad():  # BatchNorm statistics away from 0 / 1, as after training
        model.train()
        model(torch.randn(32, 2, 6, 6) * 2 + 0.5)
    model.eval()
    before = copy.deepcopy(model.state_dict())
    x = torch.rand(4, 2, 6, 6, dtype=torch.float64)
    ref = reference_metrics(model, x)
    res = compute_metrics(model, x, dtype=torch.float64, per_sample=True)
    for key in ("sharpness", "G", "log_volume", "mls", "local_dim"):
        assert res[key] == pytest.approx(ref[key], rel=1e-6), key
    assert res["sharpness"] > 0 and res["G"] > 0
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # eval statistics untouched


def test_identity_views_give_the_run_ids_recorded_before_the_new_keys():
    """conf/model/{vgg10,mlp4}.yaml gained ``_target_`` and the data configs ``normalize: false``; without
    those keys (identity_view) a run's id is the one pinned on main before (tests/fixtures/pinned_rows.json)."""
    import json

    from sharpcomp import models
    from sharpcomp.data import datasets as data
    from sharpcomp.settings import run_identity
    from tests.pinned_rows import CASES, PINNED

    pinned = json.loads(PINNED.read_text())
    for name in ("single_mlp4", "single_vgg10"):
        cfg = OmegaConf.to_container(compose_train(CASES[name]), resolve=True)
        assert cfg["model"]["_target_"].startswith("sharpcomp.models.") and cfg["data"]["normalize"] is False
        cfg["model"], cfg["data"] = models.identity_view(cfg["model"]), data.identity_view(cfg["data"])
        assert run_identity(cfg)["run_id"] == pinned[name][0]["run_id"]
    custom = {"name": "vgg10", "_target_": "mypkg.Net"}  # another callable under a built-in's name keeps its key
    assert models.identity_view(custom) == custom
    assert data.identity_view({"name": "x", "normalize": True})["normalize"] is True
