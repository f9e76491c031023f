"""Network-wide measures (NMLS, NVR, bounds) and exact convolution operator norms against float64
brute force; the bound chain on random and trained networks; a counterexample showing why the S-form
is not a theorem under weight sharing."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from sharpcomp.measures.linalg.operator_norms import conv_operator_norm, frobenius_stand_in, spectral_norm
from sharpcomp.measures.study.metrics import compute_metrics
from sharpcomp.measures.study.network_wide import add_network_wide, network_wide
from sharpcomp.models import vgg10
from sharpcomp.results.columns import NETWORK_WIDE_COLUMNS
from tests import problems
from tests.reference import dense_linear_map, reference_network_wide

pytestmark = pytest.mark.usefixtures("one_thread")
MLP, CNN = problems.MLP_RELU_TANH, problems.CNN_STRIDED_GROUPED  # float32, eval mode


@pytest.mark.parametrize("conv,shape", [
    (nn.Conv2d(2, 3, 3, padding=1), (2, 6, 5)),
    (nn.Conv2d(2, 4, 3, padding=2, stride=2), (2, 7, 7)),
    (nn.Conv2d(4, 4, (3, 2), padding=1, groups=2, dilation=2), (4, 6, 6)),
    (nn.Conv2d(2, 3, 3, padding=1, padding_mode="reflect"), (2, 5, 5)),
    (nn.Conv2d(2, 3, 3, padding="same", padding_mode="circular"), (2, 5, 5)),
    (nn.Conv1d(3, 2, 4, stride=3, padding=1), (3, 11)),
])
def test_conv_operator_norm_is_the_dense_matrix_norm(conv, shape):
    torch.manual_seed(2)
    nn.init.normal_(conv.weight)
    dense = dense_linear_map(lambda u: conv.double()._conv_forward(u, conv.weight, None), shape)
    exact = float(np.linalg.norm(dense, 2))
    assert conv_operator_norm(conv, shape) == pytest.approx(exact, rel=1e-7)
    out = conv(torch.zeros(1, *shape, dtype=torch.float64)).shape[1:]
    assert frobenius_stand_in(conv, tuple(out)) >= exact * (1 - 1e-12)  # the authors' stand-in is an upper bound


@pytest.mark.parametrize("problem", [MLP, CNN], ids=str)
def test_network_wide_matches_brute_force(problem):
    model, _, x, _ = problem.make()
    ref = reference_network_wide(model, x)
    res = compute_metrics(model, x, dtype=torch.float64)
    assert res["sharpness"] == pytest.approx(ref["sharpness"], rel=1e-10)
    add_network_wide(res, model, x, dtype=torch.float64)
    for key in ("nmls", "nvr", "nmls_bound_b", "nmls_bound_w", "nmls_bound", "nmls_bound_authors",
                "sharpness_inv", "nmls_bound_inv"):
        assert res[key] == pytest.approx(ref[key], rel=1e-7), key
    assert set(NETWORK_WIDE_COLUMNS) <= set(res)


@pytest.mark.parametrize("problem,chunk", [(MLP, None), (MLP, 2), (CNN, None), (problems.CNN_INPLACE_RELU, 3)],
                         ids=str)
def test_the_metric_engines_passes_give_the_network_wide_columns(problem, chunk):
    """compute_metrics(network_wide=True) gathers them in its own passes: equal to the brute force and to
    network_wide's separate passes (chunked, and with an in-place ReLU after a convolution)."""
    model, _, x, _ = problem.make()
    # the brute force cannot differentiate through an in-place ReLU; the separate passes can
    ref = None if problem is problems.CNN_INPLACE_RELU else reference_network_wide(model, x)
    shared = compute_metrics(model, x, dtype=torch.float64, chunk_size=chunk, network_wide=True)
    apart = add_network_wide(compute_metrics(model, x, dtype=torch.float64), model, x, dtype=torch.float64)
    for key in ("nmls", "nvr", "nmls_bound_b", "nmls_bound_w", "nmls_bound", "nmls_bound_authors",
                "sharpness_inv", "nmls_bound_inv"):
        assert ref is None or shared[key] == pytest.approx(ref[key], rel=1e-7), key
        assert shared[key] == pytest.approx(apart[key], rel=1e-12), key
    for key in ("bound_b_conv", "bound_c_conv", "network_wide_reason"):
        assert shared[key] == pytest.approx(apart[key], rel=1e-12, nan_ok=True) if key != "network_wide_reason" \
            else shared[key] == apart[key]


def test_a_frozen_layer_or_a_middle_layer_falls_back():
    model = MLP.model(torch.float64)
    model[1].weight.requires_grad_(False)  # the engine's pass has no weight gradient there: separate passes
    x = torch.randn(5, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    shared = compute_metrics(model, x, dtype=torch.float64, network_wide=True)
    apart = network_wide(model, x, sharpness=shared["sharpness"], dtype=torch.float64)
    for key in ("nmls", "nvr", "nmls_bound_b", "sharpness_inv"):
        assert shared[key] == apart[key], key  # the very same computation
    middle = compute_metrics(model, x, dtype=torch.float64, layer="3", network_wide=True)
    assert math.isnan(middle["nmls"]) and "network output only" in middle["network_wide_reason"]


def test_float32_agrees_with_float64():
    model, x = CNN.model(), torch.randn(6, 2, 8, 8, generator=torch.Generator().manual_seed(4))
    r32 = network_wide(model, x, sharpness=1.0)
    r64 = network_wide(model, x, sharpness=1.0, dtype=torch.float64)
    for key in ("nmls", "nmls_bound_b", "nmls_bound"):
        assert r32[key] == pytest.approx(r64[key], rel=1e-5), key
    parts = network_wide(model, x, sharpness=1.0, dtype=torch.float64, chunk_size=4)
    assert parts["nmls"] == pytest.approx(r64["nmls"], rel=1e-12)


def chain_holds(res: dict, proven_s_form: bool) -> None:
    tol = 1 + 1e-6
    assert res["nmls"] <= res["nmls_bound_b"] * tol
    assert res["nmls_bound"] <= res["nmls_bound_authors"] * tol
    if proven_s_form:
        assert res["nmls_bound_b"] == pytest.approx(res["nmls_bound_w"], rel=1e-5)
        assert res["nmls_bound_w"] <= res["nmls_bound"] * tol
        assert res["nmls_bound_w"] <= res["nmls_bound_inv"] * tol
        assert res["network_wide_reason"] is None
    else:
        assert "weight sharing" in res["network_wide_reason"]
        assert res["nmls"] <= res["nmls_bound"] * tol  # empirical, on these networks


def train(model: nn.Module, x: torch.Tensor, steps: int = 150) -> nn.Module:
    y = torch.nn.functional.one_hot(torch.arange(len(x)) % model(x[:1]).shape[1]).float()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    model.train()
    for _ in range(steps):
        opt.zero_grad()
        ((model(x) - y) ** 2).mean().backward()
        opt.step()
    return model.eval()


@pytest.mark.parametrize("trained", [False, True])
def test_bound_chain_on_random_and_trained_networks(trained):
    gen = torch.Generator().manual_seed(5)
    for problem, proven in ((MLP, True), (CNN, False)):
        model = problem.model()
        x = torch.randn(16, *problem.shape, generator=gen)
        if trained:
            model = train(model, x)
        res = add_network_wide(compute_metrics(model, x), model, x)
        chain_holds(res, proven)


def test_vgg10_gets_convolutional_first_layer_bounds():
    model = vgg10(10, width=0.25).eval()
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(6))
    res = add_network_wide(compute_metrics(model, x), model, x)
    assert math.isnan(res["bound_b"]) and "convolutional" in res["bounds_reason"]
    assert res["mls"] <= res["bound_b_conv"] * (1 + 1e-6)
    assert res["bound_b_conv"] <= res["bound_c_conv"] * (1 + 1e-9)
    chain_holds(res, proven_s_form=False)
    mlp_res = add_network_wide(compute_metrics(MLP.model(), x[:, 0, 0, :12]), MLP.model(), x[:, 0, 0, :12])
    assert math.isnan(mlp_res["bound_b_conv"])  # a Linear first layer keeps the study's bounds


def test_weight_sharing_breaks_the_s_form_for_a_single_layer():
    """A 1x1 convolution on a constant image read out as z_1 - z_2: d f / d W = 0 but d f / d x != 0."""
    conv = nn.Conv2d(1, 1, 1, bias=False)
    nn.init.constant_(conv.weight, 2.0)

    class Diff(nn.Module):
        def forward(self, z):
            z = z.reshape(z.shape[0], -1)
            return z[:, :1] - z[:, 1:2]

    model = nn.Sequential(conv, Diff()).eval()
    x = torch.ones(1, 1, 1, 2)
    res = network_wide(model, x, sharpness=0.0, dtype=torch.float64)
    assert res["nmls"] == pytest.approx(2 * math.sqrt(2))  # ||w (e_1 - e_2)||
    assert res["nmls_bound_w"] == pytest.approx(0.0, abs=1e-12) and res["nmls_bound"] == 0.0
    assert res["nmls"] <= res["nmls_bound_b"] * (1 + 1e-12)


def test_middle_layer_representation_and_no_layers():
    model, x = MLP.model(), torch.randn(3, 12)
    res = add_network_wide(compute_metrics(model, x, layer="3"), model, x, layer="3")
    assert all(math.isnan(res[c]) for c in NETWORK_WIDE_COLUMNS) and res["network_wide_reason"]
    flat = network_wide(nn.Sequential(nn.Tanh()), x)
    assert math.isnan(flat["nmls"]) and "no Linear" in flat["network_wide_reason"]


def test_linear_operator_norm():
    w = torch.randn(5, 3, generator=torch.Generator().manual_seed(7))
    assert spectral_norm(w) == pytest.approx(float(np.linalg.norm(w.numpy().astype(np.float64), 2)), rel=1e-6)


@pytest.mark.parametrize("model_args,shape", [
    (["model=mlp4", "model.width=0.05"], (1, 28, 28)),
    (["model=vgg10", "model.width=0.25"], (3, 32, 32)),
])
def test_training_rows_carry_the_network_wide_columns_and_the_chain_holds(model_args, shape, tmp_path):
    from sharpcomp.data.datasets import Dataset
    from sharpcomp.engine.train import train
    from sharpcomp.results.records import read_metrics
    from tests.conftest import compose_train

    gen = torch.Generator().manual_seed(8)
    ys = torch.arange(48) % 2
    xs = torch.randn(48, *shape, generator=gen) + ys.view(-1, 1, 1, 1).float()
    data = Dataset("synthetic", xs[:32], ys[:32], xs[32:], ys[32:], 2, "synthetic")
    cfg = compose_train([*model_args, "steps=4", "log_every=2", "metrics.n=4", "progress=false", "batch=8",
                         "lr=0.05", "metrics.sample_sets=[train,test]"])
    train(cfg, tmp_path / "run", data=data)
    df = read_metrics(tmp_path / "run")
    assert len(df) == 6
    for col in ("nmls", "nvr", "nmls_bound", "nmls_bound_b", "nmls_bound_authors", "sharpness_inv"):
        assert df[col].notna().all(), col
    assert (df.nmls <= df.nmls_bound_b * (1 + 1e-5)).all()
    assert (df.nmls <= df.nmls_bound * (1 + 1e-5)).all()
    if model_args[0] == "model=mlp4":
        assert (df.nmls_bound_w <= df.nmls_bound * (1 + 1e-5)).all() and df.network_wide_reason.isna().all()
        assert df.bound_b_conv.isna().all()
    else:
        assert (df.mls <= df.bound_b_conv * (1 + 1e-5)).all() and (df.bound_b_conv <= df.bound_c_conv * 1.00001).all()


@pytest.mark.parametrize("shape", [(5, 3), (80, 120), (300, 90)])
def test_spectral_norm_small_and_large(shape):
    w = torch.randn(*shape, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    assert spectral_norm(w) == pytest.approx(float(np.linalg.norm(w.numpy(), 2)), rel=1e-9)


def test_spectral_norm_reuses_a_result_only_for_equal_values():
    """A repeated ||W||_2 of the same values comes from the store; any change of W, in place (also through
    ``.data``, which autograd's version counter does not see) or by a new tensor, is solved again, and
    never from a stored copy that aliases W."""
    from sharpcomp.measures.linalg import operator_norms as conv_norm

    conv_norm.clear_caches()
    w = nn.Parameter(torch.randn(90, 120, generator=torch.Generator().manual_seed(3), dtype=torch.float64))
    first = spectral_norm(w)
    assert first == pytest.approx(float(np.linalg.norm(w.detach().numpy(), 2)), rel=1e-9)
    assert spectral_norm(w) == first and len(conv_norm._NORMS) == 1  # from the store
    with torch.no_grad():
        w.data[0].mul_(3.0)  # no version bump
    moved = float(np.linalg.norm(w.detach().numpy(), 2))
    assert spectral_norm(w) == pytest.approx(moved, rel=1e-9) and moved > 1.05 * first
    with torch.no_grad():
        w.mul_(0.5)
    assert spectral_norm(w) == pytest.approx(moved / 2, rel=1e-9)
    assert spectral_norm(w.detach().float()) == pytest.approx(moved / 2, rel=1e-6)  # another dtype: a new entry
    for kept, *_ in conv_norm._NORMS:
        assert kept.data_ptr() != w.data_ptr()
