"""The metric engine against brute-force float64 references (tests/reference.py), the bound chain,
the rescaling invariances, Hutchinson's trace, and the engine's bookkeeping (chunks, state)."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from torch import nn

import sharpcomp.measures.study._layer_rules as layers
import sharpcomp.measures.study.metrics as metrics
from sharpcomp.measures.curvature.quotient_trace import hessian_trace
from sharpcomp.measures.study.metrics import METRIC_NAMES, compute_metrics
from tests import problems
from tests.reference import dense_hessian_trace, reference_metrics

GEOMETRY = ("G", "log_volume", "mls", "local_dim")
BOUNDS = ("bound_b", "bound_c", "bound_d")


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: conftest's one-thread fixture


def rel_err(a, b):
    return abs(a - b) / max(abs(b), 1e-300)


def assert_close_to_reference(res, ref, names, tol):
    for name in names:
        assert rel_err(res[name], ref[name]) <= tol, (name, res[name], ref[name])
    for name in ("sharpness", *GEOMETRY):
        np.testing.assert_allclose(res["per_sample"][name], ref["per_sample"][name], rtol=tol, atol=0)


MLP, CNN = problems.MLP_EVAL, problems.CNN_PADDED_EVAL  # float32, eval mode, inputs U[0.1, 1.1)
CASES = {  # problem, layer, rank, first-layer weight (for bounds)
    "mlp": (MLP, None, None, "fc1.weight"),
    "mlp_middle": (MLP, "fc2", 4, "fc1.weight"),
    "cnn": (CNN, None, None, None),
    "cnn_middle": (CNN, "pool2", 6, None),
}


@pytest.fixture(scope="module")
def references():
    cases = {name: problem.make() for name, (problem, *_) in CASES.items()}
    return {name: reference_metrics(cases[name].model, cases[name].x, layer=layer, log_volume_rank=rank, first_weight=w)
            for name, (_, layer, rank, w) in CASES.items()}


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-6), (torch.float32, 1e-4)])
def test_matches_brute_force_reference(case, dtype, tol, references):
    problem, layer, rank, first_weight = CASES[case]
    ref = references[case]
    model, _, x, _ = problem.make()
    res = compute_metrics(model, x, layer=layer, log_volume_rank=rank, dtype=dtype, per_sample=True)
    assert set(METRIC_NAMES) <= set(res) and all(isinstance(res[k], float) for k in METRIC_NAMES)
    assert all(np.isfinite(res[k]) for k in ("sharpness", *GEOMETRY))
    if first_weight:
        assert res["bounds_reason"] is None
        assert_close_to_reference(res, ref, METRIC_NAMES, tol)
        np.testing.assert_allclose(res["per_sample"]["grad_W_norm"], ref["per_sample"]["grad_W_norm"], rtol=tol)
    else:
        assert_close_to_reference(res, ref, ("sharpness", *GEOMETRY), tol)
        assert "conv1 is convolutional" in res["bounds_reason"]
        assert all(math.isnan(res[k]) for k in BOUNDS)
        assert np.isnan(res["per_sample"]["grad_W_norm"]).all()


def test_middle_layer_covers_only_upstream_parameters():
    model, _, x, _ = CNN.make()
    res = compute_metrics(model, x, layer="pool2", dtype=torch.float64)
    frozen = copy.deepcopy(model)
    for name in ("fc1", "fc2"):  # downstream of pool2: freezing them changes nothing
        frozen.get_submodule(name).requires_grad_(False)
    assert compute_metrics(frozen, x, layer="pool2", dtype=torch.float64)["sharpness"] == pytest.approx(
        res["sharpness"], rel=1e-12)
    frozen.conv1.requires_grad_(False)  # upstream: its share goes
    assert compute_metrics(frozen, x, layer="pool2", dtype=torch.float64)["sharpness"] < res["sharpness"]
    with pytest.raises(ValueError, match="no module named"):
        compute_metrics(model, x, layer="nope")
    # the representation upstream of W: bounds undefined, S = 0 (no parameter before the flatten)
    case = MLP.make()
    flat = compute_metrics(case.model, case.x, layer="flatten", dtype=torch.float64)
    assert flat["sharpness"] == 0 and flat["mls"] == pytest.approx(1) and flat["local_dim"] == pytest.approx(12)
    assert "does not depend on" in flat["bounds_reason"]


def train(model, x, steps=30, lr=0.1, seed=0):
    y = torch.randn(x.shape[0], model(x).shape[1], generator=torch.Generator().manual_seed(seed))
    for _ in range(steps):  # plain SGD
        grads = torch.autograd.grad(nn.functional.mse_loss(model(x), y), list(model.parameters()))
        with torch.no_grad():
            for p, g in zip(model.parameters(), grads):
                p.sub_(lr * g)
    return model


@pytest.mark.parametrize("trained", [False, True])
def test_bound_chain_on_mlps(trained):
    model, _, x, _ = MLP.variant(shape=(1, 6, 6), widths=(24, 24), outputs=6, n=10).make()
    if trained:
        before = compute_metrics(model, x)
        train(model, x)
        assert compute_metrics(model, x)["sharpness"] != before["sharpness"]
    for layer in (None, "fc2"):
        res = compute_metrics(model, x, layer=layer, dtype=torch.float64)
        assert res["bounds_reason"] is None
        assert 0 < res["mls"] <= res["bound_b"] <= res["bound_c"] <= res["bound_d"], res


def rescale_mlp(model, a):
    model = copy.deepcopy(model).double()
    with torch.no_grad():
        model.fc1.weight.mul_(a)
        model.fc1.bias.mul_(a)
        model.fc2.weight.div_(a)
    return model


def rescale_cnn_channel(model, a, channel=1):
    model = copy.deepcopy(model).double()
    with torch.no_grad():
        model.conv1.weight[channel].mul_(a)
        model.conv1.bias[channel].mul_(a)
        model.conv2.weight[:, channel].div_(a)
    return model


@pytest.mark.parametrize("problem,rescale", [(MLP, rescale_mlp), (CNN, rescale_cnn_channel)], ids=str)
def test_rescaling_invariances(problem, rescale):
    model, _, x, _ = problem.make()
    if problem is CNN:  # a non-zero bias, so that the bias share of S scales too
        with torch.no_grad():
            model.conv1.bias.uniform_(-0.1, 0.1)
    scales = (0.5, 1.0, 2.0, 3.0)
    results = [compute_metrics(rescale(model, a), x, dtype=torch.float64) for a in scales]
    for a, res in zip(scales, results):
        torch.testing.assert_close(rescale(model, a).double()(x.double()), model.double()(x.double()),
                                   rtol=1e-12, atol=1e-12)
        for name in GEOMETRY:
            assert res[name] == pytest.approx(results[1][name], rel=1e-10), (a, name)
    s = [r["sharpness"] for r in results]
    assert len({round(v, 6) for v in s}) == 4  # S does change
    coef = np.linalg.solve([[1 / a**2, a**2, 1] for a in scales[:3]], s[:3])  # S(a) = A/a^2 + a^2 B + C
    assert coef[0] > 0 and coef[1] > 0
    assert coef @ [1 / scales[3] ** 2, scales[3] ** 2, 1] == pytest.approx(s[3], rel=1e-10)


def test_hessian_trace_against_dense_hessian():
    model, half_sq_loss, x, y = problems.TANH_MLP_REGRESSION.make()
    exact = dense_hessian_trace(model, half_sq_loss, x, y)
    est, se = hessian_trace(model, half_sq_loss, x, y, probes=400, generator=torch.Generator().manual_seed(0))
    assert se > 0 and abs(est - exact) <= 4 * se, (est, exact, se)
    again = hessian_trace(model, half_sq_loss, x, y, probes=400, generator=torch.Generator().manual_seed(0))
    assert tuple(again) == (est, se)
    # at an interpolation point Tr H of the loss 1/2 ||f - y||^2 (mean over samples) is the sharpness
    y_fit = model(x).detach()
    exact_fit = dense_hessian_trace(model, half_sq_loss, x, y_fit)
    assert compute_metrics(model, x, dtype=torch.float64)["sharpness"] == pytest.approx(exact_fit, rel=1e-10)
    assert all(p.grad is None for p in model.parameters())
    # a loss linear in the parameters (H = 0, gradients that do not require grad) and an unused parameter
    lin = problems.mlp(torch.float64, (3,), 2, flatten=False)
    lin.register_parameter("unused", nn.Parameter(torch.zeros(2, dtype=torch.float64)))
    est, se = hessian_trace(lin, lambda out, y: out.sum(), x, y, probes=3)
    assert (est, se) == (0.0, 0.0)


def test_chunk_size_and_backward_modes_do_not_change_results(monkeypatch):
    model, _, x, _ = CNN.variant(n=7).make()
    base = compute_metrics(model, x, dtype=torch.float64, per_sample=True)
    runs = [compute_metrics(model, x, dtype=torch.float64, chunk_size=c, per_sample=True) for c in (1, 3, 100)]
    for mode, cot in (("vmap", 3), ("replicate", 3), ("replicate", 16)):
        monkeypatch.setattr(metrics, "BACKWARD_MODE", mode)
        monkeypatch.setattr(metrics, "COTANGENT_CHUNK", cot)
        runs.append(compute_metrics(model, x, dtype=torch.float64, chunk_size=4, per_sample=True))
    for res in runs:
        for name in ("sharpness", *GEOMETRY):
            assert res[name] == pytest.approx(base[name], rel=1e-12)
            np.testing.assert_allclose(res["per_sample"][name], base["per_sample"][name], rtol=1e-12)


def test_per_sample_values_average_to_the_aggregates():
    model, _, x, _ = MLP.variant(n=9).make()
    res = compute_metrics(model, x, dtype=torch.float64, per_sample=True)
    per = res["per_sample"]
    assert all(len(v) == 9 for v in per.values())
    for name in ("sharpness", *GEOMETRY):
        assert np.mean(per[name]) == pytest.approx(res[name], rel=1e-12)
    np.testing.assert_allclose(per["x_norm"], x.double().flatten(1).norm(dim=1).numpy(), rtol=1e-12)
    w2 = float(torch.linalg.matrix_norm(MLP.model().fc1.weight.detach().double(), 2))
    inv_x = np.sqrt(np.mean(per["x_norm"] ** -2.0))
    assert res["bound_b"] == pytest.approx(w2 * np.mean(per["grad_W_norm"] / per["x_norm"]), rel=1e-10)
    assert res["bound_c"] == pytest.approx(w2 * inv_x * np.sqrt(np.mean(per["grad_W_norm"] ** 2)), rel=1e-10)
    assert res["bound_d"] == pytest.approx(w2 * inv_x * np.sqrt(res["sharpness"]), rel=1e-10)
    assert (per["grad_W_norm"] ** 2 <= per["sharpness"]).all()


def test_model_and_inputs_are_left_untouched():
    model, _, x, _ = MLP.make()
    model.fc2.requires_grad_(False)
    model.train()
    model.fc1.weight.grad = torch.ones_like(model.fc1.weight)
    before = copy.deepcopy(model.state_dict())
    x_before = x.clone()
    for dtype in (torch.float32, torch.float64):
        compute_metrics(model, x, dtype=dtype, layer="relu2", per_sample=True)
    assert model.training and all(m.training for m in model.modules())
    assert [p.requires_grad for p in model.parameters()] == [True, True, False, False, True, True]
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert torch.equal(model.fc1.weight.grad, torch.ones_like(model.fc1.weight))
    assert all(p.grad is None for n, p in model.named_parameters() if n != "fc1.weight")
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not model._forward_hooks and not any(m._forward_hooks for m in model.modules())
    assert torch.equal(x, x_before) and not x.requires_grad
    with torch.no_grad():  # callable from inside no_grad
        assert compute_metrics(model, x)["sharpness"] > 0


def test_zero_eigenvalues_give_minus_infinity():
    wide, _, x, _ = problems.TANH_MLP_RANK_DEFICIENT.make()  # rank J_i = 2 < N = 5
    for dtype in (torch.float64, torch.float32):
        res = compute_metrics(wide, x, dtype=dtype, per_sample=True)
        assert res["log_volume"] == -math.inf and (res["per_sample"]["log_volume"] == -math.inf).all()
        assert all(np.isfinite(res[k]) for k in ("G", "mls", "local_dim"))
    top2 = compute_metrics(wide, x, dtype=torch.float64, log_volume_rank=2)
    ref = reference_metrics(wide, x, log_volume_rank=2)
    assert np.isfinite(top2["log_volume"]) and top2["log_volume"] == pytest.approx(ref["log_volume"], rel=1e-8)
    for name in ("G", "mls", "local_dim"):  # N > M: the engine diagonalises J^T J instead of J J^T
        assert top2[name] == pytest.approx(ref[name], rel=1e-10)
    # a ReLU representation: inactive units are exact zero rows of J_i, hence zero eigenvalues
    case = MLP.make()
    relu = compute_metrics(case.model, case.x, layer="relu2", per_sample=True)
    assert relu["log_volume"] == -math.inf
    # a locally constant representation (J_i = 0): mls = local_dim = 0, log_volume = -inf
    dead, _, x, _ = MLP.make()
    with torch.no_grad():
        dead.fc2.bias.fill_(-100.0)
    res = compute_metrics(dead, x, dtype=torch.float64)
    assert (res["G"], res["mls"], res["local_dim"], res["log_volume"]) == (0, 0, 0, -math.inf)


class Scale(nn.Module):
    """A module the engine has no rule for (per-sample gradients by torch.func)."""

    def __init__(self, d):
        super().__init__()
        self.scale = nn.Parameter(torch.linspace(0.5, 1.5, d))

    def forward(self, x):
        return x * self.scale


class Twice(nn.Module):
    """The same Linear called twice (its per-sample gradient is a sum over both calls)."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(6, 6)

    def forward(self, x):
        return self.lin(torch.tanh(self.lin(x)))


class Tokens(nn.Module):
    """A Linear on a sequence (positions), then a sum over positions."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 5)

    def forward(self, x):
        return torch.tanh(self.lin(x.reshape(x.shape[0], 3, 4))).sum(1)


def zoo():
    torch.manual_seed(0)
    return {
        "conv_groups_stride_dilation": (nn.Sequential(
            nn.Conv2d(2, 4, 3, stride=2, padding=1), nn.Tanh(), nn.Conv2d(4, 6, 3, groups=2, dilation=2, padding=2),
            nn.Tanh(), nn.Flatten(), nn.LazyLinear(3)), (2, 7, 7)),
        "conv_same_reflect": (nn.Sequential(
            nn.Conv2d(2, 3, (2, 3), padding="same", padding_mode="reflect"), nn.Tanh(), nn.Conv2d(3, 3, 2, bias=False),
            nn.Tanh(), nn.Flatten(), nn.LazyLinear(3)), (2, 5, 5)),
        "conv1d": (nn.Sequential(nn.Conv1d(2, 3, 3, padding=1), nn.Tanh(), nn.Conv1d(3, 2, 2, stride=2),
                                 nn.Flatten(), nn.LazyLinear(3)), (2, 8)),
        "functional_and_inplace": (nn.Sequential(nn.Flatten(), nn.Linear(6, 5), nn.ReLU(inplace=True), Scale(5),
                                                 nn.LayerNorm(5), nn.Linear(5, 3)), (6,)),
        "shared_calls": (nn.Sequential(Twice(), nn.Linear(6, 3)), (6,)),
        "tokens": (Tokens(), (12,)),
    }


def test_parameters_shared_between_modules_are_refused():
    model, _, x, _ = MLP.variant(widths=(12, 12)).make()
    model.fc2.weight = model.fc1.weight
    with pytest.raises(NotImplementedError, match="owned by two modules"):
        compute_metrics(model, x)


@pytest.mark.parametrize("strategy", [None, "gram", "materialise"])
def test_layer_zoo_against_reference(strategy, monkeypatch):
    monkeypatch.setattr(layers, "FORCE_STRATEGY", strategy)
    for name, (model, shape) in zoo().items():
        x = problems.inputs(4, shape, uniform=True, offset=0.1, generator=torch.Generator().manual_seed(1))
        model(x)  # materialise lazy layers
        model.eval()
        ref = reference_metrics(model, x)
        res = compute_metrics(model, x, dtype=torch.float64, per_sample=True)
        assert_close_to_reference(res, ref, ("sharpness", *GEOMETRY), 1e-6)
        assert res["bounds_reason"] is not None or name == "functional_and_inplace", name


def test_vgg10_and_mlp4_smoke():
    from sharpcomp.models import build_model

    vgg = build_model("vgg10", num_outputs=3, width=0.25, seed=0).eval()
    res = compute_metrics(vgg, torch.rand(3, 3, 32, 32))
    assert all(np.isfinite(res[k]) for k in ("sharpness", *GEOMETRY)) and res["bounds_reason"]
    mlp4 = build_model("mlp4", num_outputs=3, width=0.05, seed=0).eval()
    res = compute_metrics(mlp4, torch.rand(3, 1, 28, 28), layer="fc2")
    assert res["bounds_reason"] is None and res["mls"] <= res["bound_b"] <= res["bound_c"] <= res["bound_d"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_cpu():
    model, _, x, _ = CNN.make()
    cpu = compute_metrics(model, x, dtype=torch.float64)
    gpu = compute_metrics(copy.deepcopy(model).cuda(), x, dtype=torch.float64)
    for name in ("sharpness", *GEOMETRY):
        assert gpu[name] == pytest.approx(cpu[name], rel=1e-9)
