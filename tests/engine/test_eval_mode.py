"""A checkpoint measures the network in eval mode and leaves no trace on training: whole-set evaluation,
chunk sizing and every metric read BatchNorm's running statistics without updating them (no dropout),
and the steps after a checkpoint run in training mode again."""

from __future__ import annotations

import copy

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from sharpcomp.data.datasets import Dataset
from sharpcomp.engine import evaluation
from sharpcomp.engine.evaluation import evaluate
from sharpcomp.engine.train import train
from sharpcomp.measures.study.metrics import compute_metrics
from sharpcomp.models import build_from_config, samples_per_chunk
from sharpcomp.results.run_state import CHECKPOINT_FILE, read_checkpoint
from tests.conftest import compose_train, random_images
from tests.nets import SmallResNet
from tests.problems import CNN_BATCHNORM_DROPOUT

RESNET = ["data=fashion_mnist", "model=custom", "model._target_=tests.nets.SmallResNet", "+model.width=3",
          "+model.depth=1", "metrics.n=6", "progress=false", "batch=16", "steps=12"]


@pytest.fixture(scope="module")
def toy() -> Dataset:
    return random_images(96, 40, side=12)


def _cfg(*extra):
    cfg = compose_train([*RESNET, *extra])
    OmegaConf.set_struct(cfg, False)
    return cfg


def _stats(model: nn.Module) -> dict:
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_batchnorm_statistics_equal_those_of_a_run_with_checkpoints_far_apart(toy, tmp_path, monkeypatch):
    seen = []
    real = evaluation.evaluate

    def spy(model, x, y, loss):
        seen.append(model.training)
        before = _stats(model)
        out = real(model, x, y, loss)
        assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
        assert model.training == seen[-1]  # the mode it came with
        return out

    monkeypatch.setattr("sharpcomp.engine.steppers.evaluate", spy)
    often = train(_cfg("log_every=2"), tmp_path / "often", data=toy)
    rare = train(_cfg("log_every=12"), tmp_path / "rare", data=toy)
    assert often.status == rare.status == "finished" and len(seen) == 2 * (7 + 2)
    a = read_checkpoint(tmp_path / "often" / CHECKPOINT_FILE)["model_state"]
    b = read_checkpoint(tmp_path / "rare" / CHECKPOINT_FILE)["model_state"]
    assert any("running_mean" in k and not torch.equal(v, torch.zeros_like(v)) for k, v in a.items())  # trained
    for k in a:
        assert torch.equal(a[k], b[k]), k  # evaluation left no trace on the training trajectory


def test_training_steps_after_a_checkpoint_run_in_training_mode(toy, tmp_path, monkeypatch):
    modes = []
    orig = SmallResNet.forward

    def forward(self, x):
        modes.append((self.training, x.shape[0]))
        return orig(self, x)

    monkeypatch.setattr(SmallResNet, "forward", forward)
    train(_cfg("log_every=4"), tmp_path / "run", data=toy)
    steps = [t for t, n in modes if n == 16]
    assert len(steps) == 12 and all(steps)
    assert not any(t for t, n in modes if n != 16)  # evaluation, chunk sizing, metrics: eval mode


def test_evaluate_and_metrics_on_a_network_in_training_mode_use_eval_mode(one_thread):
    model, _, x, y = CNN_BATCHNORM_DROPOUT.make()  # running statistics away from 0 / 1, in training mode
    before = _stats(model)
    loss, acc, _ = evaluate(model, x, y, "mse")
    with torch.no_grad():
        ref = model.eval()(x)
    model.train()
    assert loss == pytest.approx(float(((ref - nn.functional.one_hot(y, 4)) ** 2).mean()), rel=1e-6)
    res = compute_metrics(model, x[:3])
    ref_metrics = compute_metrics(copy.deepcopy(model).eval(), x[:3])
    assert res["G"] == ref_metrics["G"] and res["sharpness"] == ref_metrics["sharpness"]
    assert model.training and all(m.training for m in model.modules())
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


def test_chunk_sizing_of_a_library_resnet_in_training_mode():
    """torchvision's resnet18 on 32x32 images ends in 1x1 maps: one sample in training mode is no batch
    for BatchNorm (ValueError before); the probe runs in eval mode and changes nothing."""
    pytest.importorskip("torchvision")
    model = build_from_config({"name": "r18", "_target_": "torchvision.models.resnet18", "num_classes": 2,
                               "outputs": "classes"}, 2, (3, 32, 32), seed=0)
    assert model.training
    before = _stats(model)
    assert samples_per_chunk(model, torch.rand(1, 3, 32, 32)) >= 1
    assert model.training and all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


def test_metrics_n_over_the_data_is_said_once(toy, tmp_path, capsys):
    cfg = _cfg("steps=2", "log_every=2", "metrics.n=500", "metrics.sample_sets=[train,test]")
    train(cfg, tmp_path / "run", data=toy)
    err = capsys.readouterr().err
    line = "metrics.n=500 is more than the data holds; sample sets cut to train 96, test 40 samples"
    assert err.count(line) == 1
    train(_cfg("steps=2", "log_every=2", "metrics.n=4"), tmp_path / "fits", data=toy)
    assert "more than the data holds" not in capsys.readouterr().err
