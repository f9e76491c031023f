"""``model._target_=X`` on the command line without ``model=custom`` means one's own network: the default
vgg10's keys (width, outputs 10, the label) do not reach X; a network that cannot be built is refused
before any data is loaded and leaves no folder."""

from __future__ import annotations

import pytest
import torch

from sharpcomp.cli import implied_custom, main
from sharpcomp.models import ModelError, build_from_config, check_buildable, foreign_keys
from sharpcomp.results.records import read_metrics
from tests.conftest import REPO, TINY

DATA = [a for a in TINY if not a.startswith("model")]


def test_a_target_without_a_model_choice_implies_custom():
    assert implied_custom(["model._target_=torchvision.models.resnet18", "+model.num_classes=2"]) == [
        "model=custom", "model._target_=torchvision.models.resnet18", "+model.num_classes=2"]
    for kept in (["model=vgg10", "model._target_=a.B"], ["model._target_=sharpcomp.models.vgg10"], ["lr=0.1"],
                 ["+experiment=fig1", "model._target_=a.B"]):
        assert implied_custom(kept) == kept


def test_a_builtins_width_does_not_reach_a_library_network():
    pytest.importorskip("torchvision")
    cfg = {"name": "vgg10", "_target_": "torchvision.models.resnet18", "width": 1.0, "outputs": 2, "num_classes": 2}
    assert foreign_keys(cfg) == ["width"]
    assert build_from_config(cfg, 2, (3, 32, 32), seed=0).fc.out_features == 2
    # a callable that names width gets it
    own = {"name": "vgg10", "_target_": "tests.nets.SmallResNet", "width": 3, "outputs": 10}
    assert foreign_keys(own) == [] and build_from_config(own, 10, (1, 28, 28)).fc.in_features == 12


def test_check_buildable_refuses_bad_arguments_and_shapes_on_the_meta_device():
    with pytest.raises(ModelError, match="unexpected keyword argument 'depht'"):
        check_buildable({"name": "x", "_target_": "tests.nets.SmallResNet", "depht": 2}, 10, (1, 28, 28))
    with pytest.raises(ModelError, match=r"outputs of shape \(1, 784\).*the loss needs \(1, 10\)"):
        check_buildable({"name": "x", "_target_": "torch.nn.Flatten"}, 10, (1, 28, 28))
    model = check_buildable({"name": "x", "_target_": "tests.nets.SmallResNet"}, 10, (1, 28, 28))
    assert next(model.parameters()).device == torch.device("meta")
    assert check_buildable({"name": "x", "_target_": "tests.nets.SmallResNet"}, 10, None) is None


def test_cli_target_without_model_custom_trains_as_custom(in_tmp, monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(REPO))
    rc = main(["train", *DATA, "model._target_=tests.nets.SmallResNet", "+model.width=2"])
    assert rc == 0, capsys.readouterr().err
    runs = list((in_tmp / "outputs" / "runs").iterdir())
    assert [r.name for r in runs] == ["fashion_mnist-custom"]
    rows = read_metrics(next(runs[0].iterdir()))
    assert (rows.model == "custom").all() and sorted(set(rows.iteration)) == [0, 2, 4]


def test_cli_unbuildable_model_refused_before_data_loads_no_folder(in_tmp, monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(REPO))

    def no_loading(*args, **kwargs):
        raise AssertionError("data loaded")

    monkeypatch.setattr("sharpcomp.engine.setup.load_from_config", no_loading)
    rc = main(["train", *DATA, "model._target_=tests.nets.SmallResNet", "+model.depht=2"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "unexpected keyword argument 'depht'" in err and len(err.splitlines()) == 1
    assert not (in_tmp / "outputs").exists()
