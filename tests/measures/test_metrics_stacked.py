"""The stacked metric engine (an ensemble's checkpoint) against the brute-force float64 reference and
against ``compute_metrics`` member by member: every metric, per sample, with unequal sample sets,
middle layers, chunks and the fallback for networks it does not vectorise."""

from __future__ import annotations

import copy
import math
from collections import OrderedDict

import numpy as np
import pytest
import torch
from torch import nn

from sharpcomp.measures.study.metrics import METRIC_NAMES, compute_metrics
from sharpcomp.measures.study.stacked import compute_metrics_stacked, stacked_supported
from sharpcomp.models import ACTIVATION_BUDGET, build_model, samples_per_chunk
from tests.problems import RESIDUAL_MLP
from tests.reference import reference_metrics

PER_SAMPLE = ("sharpness", "G", "log_volume", "mls", "local_dim", "grad_W_norm", "x_norm")


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: conftest's one-thread fixture


def small(name: str, seed: int) -> nn.Sequential:
    """The study's architectures, narrow and on small inputs (same layer types and names)."""
    if name == "vgg10":
        return build_model("vgg10", 4, width=0.25, input_shape=(3, 8, 8), seed=seed).eval()
    return build_model("mlp4", 4, width=0.04, input_shape=(1, 5, 5), seed=seed).eval()


SHAPES = {"vgg10": (3, 8, 8), "mlp4": (1, 5, 5)}


def sample_sets(name: str, sizes=(5, 3, 6)) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    return [torch.rand(n, *SHAPES[name], generator=g) + 0.05 for n in sizes]


def assert_same(got: dict, want: dict, rtol: float) -> None:
    for key in METRIC_NAMES:
        a, b = got[key], want[key]
        if math.isnan(b):
            assert math.isnan(a), key
        else:
            assert a == pytest.approx(b, rel=rtol, abs=0), (key, a, b)
    assert got["bounds_reason"] == want["bounds_reason"]


@pytest.mark.parametrize("name,layer", [("mlp4", None), ("mlp4", "fc2"), ("mlp4", "relu1"), ("vgg10", None),
                                        ("vgg10", "fc1"), ("vgg10", "pool4"), ("vgg10", "relu5")])
def test_matches_member_by_member_float64(name, layer):
    models = [small(name, seed) for seed in (0, 1, 2)]
    xs = sample_sets(name)
    got = compute_metrics_stacked(models, xs, layer=layer, dtype=torch.float64, per_sample=True)
    assert len(got) == 3
    for res, m, x in zip(got, models, xs):
        want = compute_metrics(m, x, layer=layer, dtype=torch.float64, per_sample=True)
        assert_same(res, want, 1e-9)
        for key in PER_SAMPLE:
            assert res["per_sample"][key].shape == (len(x),)
            np.testing.assert_allclose(res["per_sample"][key], want["per_sample"][key], rtol=1e-9, atol=1e-300)


@pytest.mark.parametrize("name", ["mlp4", "vgg10"])
def test_matches_brute_force_reference(name):
    """Independent of ``compute_metrics``: loops over samples and outputs with plain autograd."""
    models = [small(name, seed) for seed in (3, 4)]
    xs = sample_sets(name, sizes=(4, 2))
    got = compute_metrics_stacked(models, xs, dtype=torch.float64, per_sample=True)
    first = "fc1.weight" if name == "mlp4" else None
    for res, m, x in zip(got, models, xs):
        ref = reference_metrics(m, x, first_weight=first)
        for key in ("sharpness", "G", "log_volume", "mls", "local_dim"):
            assert res[key] == pytest.approx(ref[key], rel=1e-9), key
            np.testing.assert_allclose(res["per_sample"][key], ref["per_sample"][key], rtol=1e-9)
        if name == "mlp4":
            for key in ("bound_b", "bound_c", "bound_d"):
                assert res[key] == pytest.approx(ref[key], rel=1e-9), key
            assert res["mls"] <= res["bound_b"] <= res["bound_c"] <= res["bound_d"]
        else:
            assert "convolutional" in res["bounds_reason"]


@pytest.mark.parametrize("name", ["mlp4", "vgg10"])
def test_float32_and_chunks(name, monkeypatch):
    models = [small(name, seed) for seed in (0, 1, 2, 3)]
    xs = sample_sets(name, sizes=(6, 6, 1, 4))
    whole = compute_metrics_stacked(models, xs)
    chunked = compute_metrics_stacked(models, xs, chunk_size=4)
    assert samples_per_chunk(models[0], xs[0][:1], 4) >= 6  # the default here: one chunk
    monkeypatch.setitem(ACTIVATION_BUDGET, "cpu", 1)  # the default on a large network: 1 sample
    assert samples_per_chunk(models[0], xs[0][:1], 4) == 1
    auto = compute_metrics_stacked(models, xs)
    for a, b, c, m, x in zip(whole, chunked, auto, models, xs):
        want = compute_metrics(m, x, dtype=torch.float64)
        assert_same(a, want, 1e-4)
        assert_same(b, a, 1e-5)
        assert_same(c, a, 1e-5)


def test_log_volume_rank_and_models_untouched():
    models = [small("mlp4", seed) for seed in (0, 1)]
    before = [copy.deepcopy(m.state_dict()) for m in models]
    xs = sample_sets("mlp4", sizes=(3, 4))
    got = compute_metrics_stacked(models, xs, log_volume_rank=2, dtype=torch.float64)
    for res, m, x in zip(got, models, xs):
        assert_same(res, compute_metrics(m, x, log_volume_rank=2, dtype=torch.float64), 1e-9)
    for m, state in zip(models, before):
        for key, value in m.state_dict().items():
            assert torch.equal(value, state[key])
        assert all(p.dtype == torch.float32 for p in m.parameters())


def test_members_are_independent():
    """A member's metrics do not depend on which other members share the stack."""
    models = [small("vgg10", seed) for seed in (0, 1, 2)]
    xs = sample_sets("vgg10")
    trio = compute_metrics_stacked(models, xs, dtype=torch.float64)
    pair = compute_metrics_stacked([models[2], models[0]], [xs[2], xs[0]], dtype=torch.float64)
    assert_same(pair[0], trio[2], 1e-12)
    assert_same(pair[1], trio[0], 1e-12)


def test_fallback_for_other_networks():
    res_nets = RESIDUAL_MLP.members(2)
    xs = [torch.rand(3, 6), torch.rand(2, 6)]
    assert "Sequential" in stacked_supported(res_nets)
    for res, m, x in zip(compute_metrics_stacked(res_nets, xs, dtype=torch.float64), res_nets, xs):
        assert_same(res, compute_metrics(m, x, dtype=torch.float64), 0)

    frozen = [small("mlp4", s) for s in (0, 1)]
    frozen[1].fc1.weight.requires_grad_(False)
    assert "frozen" in stacked_supported(frozen)
    mixed = [small("mlp4", 0), build_model("mlp4", 4, width=0.08, input_shape=(1, 5, 5), seed=1).eval()]
    assert "architecture" in stacked_supported(mixed)
    assert "not a child" in stacked_supported(frozen[:1], layer="fc9")
    # a Linear first layer without a Flatten on image inputs: compute_metrics explains the missing bounds
    nets = [nn.Sequential(OrderedDict(fc1=nn.Linear(5, 3), relu=nn.ReLU(), fc2=nn.Linear(3, 2))).eval()
            for _ in range(2)]
    xs = [torch.rand(2, 4, 5), torch.rand(2, 4, 5)]
    assert "raw flattened input" in stacked_supported(nets, inputs=xs[0])
    assert stacked_supported(nets, inputs=torch.rand(2, 5)) is None
    for res, m, x in zip(compute_metrics_stacked(nets, xs, dtype=torch.float64), nets, xs):
        want = compute_metrics(m, x, dtype=torch.float64)
        assert_same(res, want, 0)
        assert "raw flattened input" in res["bounds_reason"]


def test_bad_arguments():
    models = [small("mlp4", 0), small("mlp4", 1)]
    with pytest.raises(ValueError, match="one sample set per model"):
        compute_metrics_stacked(models, sample_sets("mlp4", sizes=(2,)))
    with pytest.raises(ValueError, match="at least one sample"):
        compute_metrics_stacked(models, [torch.rand(2, 1, 5, 5), torch.rand(0, 1, 5, 5)])
    with pytest.raises(ValueError, match="chunk_size"):
        compute_metrics_stacked(models, sample_sets("mlp4", sizes=(2, 2)), chunk_size=0)
