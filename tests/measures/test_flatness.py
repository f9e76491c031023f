"""The flatness measures and their registry against dense float64 references on tiny networks."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.func import functional_call

from sharpcomp.measures import registry
from sharpcomp.measures.curvature import fisher_trace, grad_disagreement, quotient_trace
from sharpcomp.measures.linalg import hutchinson, param_space
from sharpcomp.measures.perturbation import worst_case
from sharpcomp.measures.symmetry import orbits as symmetry
from sharpcomp.models import build_model
from tests import problems
from tests.problems import mse
from tests.reference import as_dict, flat_theta

DT = torch.float64


pytestmark = pytest.mark.usefixtures("one_thread")


MLP, CNN = problems.MLP_CLASSIFICATION, problems.CNN_MAXPOOL
MODELS = [MLP, CNN]


# ---- dense references ------------------------------------------------------------------------------

def dense_loss_fn(model, x, y):
    return lambda th: mse(functional_call(model, as_dict(model, th), (x,)), y)


def dense_hessian(model, x, y):
    return torch.autograd.functional.hessian(dense_loss_fn(model, x, y), flat_theta(model))


def dense_grad(model, x, y):
    th = flat_theta(model).requires_grad_(True)
    return torch.autograd.grad(dense_loss_fn(model, x, y)(th), th)[0]


def dense_param_jacobian(model, x):
    return torch.autograd.functional.jacobian(
        lambda th: functional_call(model, as_dict(model, th), (x,)).reshape(-1), flat_theta(model), vectorize=True)


def dense_projector(model):
    v = symmetry.SymmetryTangents(model).dense()
    return torch.eye(v.shape[0], dtype=DT) - v @ torch.linalg.solve(v.T @ v, v.T), v


def unit_signs(model):
    """D_j as dense +-1/0 vectors, built directly from the layer shapes (independent of flatness)."""
    hidden = symmetry.hidden_layers(model)
    mods = dict(model.named_children())
    offsets, i = {}, 0
    for name, p in model.named_parameters():
        offsets[name] = i
        i += p.numel()
    cols = []
    for hl in hidden.values():
        mod, nxt = mods[hl.name], mods[hl.next_name]
        for j in range(hl.units):
            d = torch.zeros(i, dtype=DT)
            w = torch.zeros_like(mod.weight)
            w[j] = 1
            d[offsets[f"{hl.name}.weight"]:][:w.numel()] = w.reshape(-1)
            d[offsets[f"{hl.name}.bias"] + j] = 1
            wo = torch.zeros_like(nxt.weight)
            wo.view(wo.shape[0], hl.units, -1)[:, j] = -1
            d[offsets[f"{hl.next_name}.weight"]:][:wo.numel()] = wo.reshape(-1)
            cols.append(d)
    return torch.stack(cols, 1)


# ---- structure ----------------------------------------------------------------------------------------

def test_hidden_layers_of_the_study_models():
    vgg = symmetry.hidden_layers(build_model("vgg10", width=0.25, seed=0))
    assert list(vgg) == ["conv1", "conv2", "conv3", "conv4", "conv5", "fc1"]
    assert vgg["conv5"].next_name == "fc1" and vgg["conv5"].block == 4  # 16 channels x 2 x 2
    assert vgg["conv1"].block == 9 and vgg["fc1"].block == 1
    mlp = symmetry.hidden_layers(build_model("mlp4", width=0.02, seed=0))
    assert list(mlp) == ["fc1", "fc2", "fc3"] and mlp["fc3"].next_name == "fc4"
    # a module that is not positively homogeneous breaks the pair
    broken = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
    assert symmetry.hidden_layers(broken) == {}
    with pytest.raises(TypeError):
        symmetry.hidden_layers(nn.Linear(2, 2))


@pytest.mark.parametrize("problem", MODELS, ids=str)
def test_tangents_match_their_definition(problem):
    model, _, x, y = problem.make()
    V, gm = symmetry.symmetry_tangents(model)
    vd = V.dense()
    # support and signs: v_j = D_j * theta exactly
    assert torch.equal(vd, unit_signs(model) * flat_theta(model)[:, None])
    # the Gram matrix formula
    torch.testing.assert_close(gm, vd.T @ vd, rtol=1e-12, atol=1e-12)
    # matvec / rmatvec are V and V^T
    c = torch.randn(V.r, dtype=DT)
    torch.testing.assert_close(param_space.flat(V.matvec(c)), vd @ c)
    d = [torch.randn_like(p) for p in model.parameters()]
    torch.testing.assert_close(V.rmatvec(d), vd.T @ param_space.flat(d))


@pytest.mark.parametrize("problem", MODELS, ids=str)
def test_jacobian_of_f_annihilates_every_tangent(problem):
    model, _, x, _ = problem.make()
    V, _ = symmetry.symmetry_tangents(model)
    vd = V.dense()
    jac = dense_param_jacobian(model, x)
    assert V.r == sum(h.units for h in symmetry.hidden_layers(model).values())
    assert (jac @ vd).abs().max() < 1e-12 * max(1.0, float(jac.abs().max()))
    # so is the loss gradient (L is constant along each orbit): P g = g
    g = dense_grad(model, x, torch.zeros(len(x), dtype=torch.long))
    assert (vd.T @ g).abs().max() < 1e-12 * max(1.0, float(g.abs().max() * vd.abs().max()))
    # hence the quotient version of S equals S: Tr(J P J^T) = Tr(J J^T)
    P, _ = dense_projector(model)
    torch.testing.assert_close(torch.trace(jac @ P @ jac.T), torch.trace(jac @ jac.T), rtol=1e-10, atol=0)


@pytest.mark.parametrize("problem", MODELS, ids=str)
def test_projector_is_symmetric_idempotent_and_kills_the_orbits(problem):
    model = problem.make().model
    proj = symmetry.quotient_projector(model, ridge=0.0)
    n = sum(p.numel() for p in model.parameters())
    eye = torch.eye(n, dtype=DT)
    shapes = [p.shape for p in model.parameters()]

    def unflat(v):
        out, i = [], 0
        for s in shapes:
            k = math.prod(s)
            out.append(v[i:i + k].view(s))
            i += k
        return out

    P = torch.stack([param_space.flat(proj(unflat(eye[i]))) for i in range(n)], 1)
    torch.testing.assert_close(P, P.T, rtol=0, atol=1e-10)
    torch.testing.assert_close(P @ P, P, rtol=0, atol=1e-10)
    Pd, vd = dense_projector(model)
    torch.testing.assert_close(P, Pd, rtol=0, atol=1e-10)
    assert (P @ vd).abs().max() < 1e-10
    # P has rank n - r (the tangents are independent)
    assert round(float(torch.trace(P))) == n - vd.shape[1]


@pytest.mark.parametrize("problem", MODELS, ids=str)
def test_quotient_trace_closed_form_against_dense_hessian(problem):
    model, _, x, y = problem.make()
    H = dense_hessian(model, x, y)
    g = dense_grad(model, x, y)
    P, vd = dense_projector(model)
    D = unit_signs(model)
    # H v_j = -D_j g, the identity behind the closed form
    torch.testing.assert_close(H @ vd, -(D * g[:, None]), rtol=1e-8, atol=1e-10)
    dense_gap = torch.trace(H) - torch.trace(P @ H @ P)
    gap = quotient_trace.quotient_trace_gap(model, mse, x, y, ridge=0.0)
    assert abs(gap - float(dense_gap)) < 1e-9 * max(1.0, abs(float(dense_gap)))
    assert abs(gap) > 1e-6  # not trivially zero on these nets


@pytest.mark.parametrize("problem", MODELS, ids=str)
def test_hutchinson_quotient_trace_agrees_within_its_error(problem):
    model, _, x, y = problem.make()
    H = dense_hessian(model, x, y)
    P, _ = dense_projector(model)
    r = quotient_trace.hutchinson_traces(model, mse, x, y, probes=50, generator=torch.Generator().manual_seed(1))
    assert abs(r.quotient.value - float(torch.trace(P @ H @ P))) < 4 * r.quotient.se
    assert abs(r.full.value - float(torch.trace(H))) < 4 * r.full.se
    closed = quotient_trace.quotient_trace_gap(model, mse, x, y)
    assert abs(r.gap.value - closed) < 4 * r.gap.se
    # same probes for the same generator state; chunked accumulation gives the same estimate
    r5 = quotient_trace.hutchinson_traces(model, mse, x, y, probes=4, generator=torch.Generator().manual_seed(1))
    est, se = quotient_trace.quotient_hessian_trace(model, mse, x, y, probes=4,
                                                    generator=torch.Generator().manual_seed(1))
    assert (est, se) == (r5.quotient.value, r5.quotient.se)
    rc = quotient_trace.hutchinson_traces(model, mse, x, y, probes=4, generator=torch.Generator().manual_seed(1),
                              chunk_size=2)
    assert abs(rc.quotient.value - r5.quotient.value) < 1e-9 * max(1.0, abs(r5.quotient.value))


# Values of commit dac6e64, when metrics.hessian_trace and flatness.hutchinson_traces were two estimators.
PINNED_TRACES = {
    "mlp": ((3.0497824586863302, 1.201947745292891),
            {"quotient": 6.623793792278083, "quotient_se": 1.2647060622911808, "full": 5.440419945573855,
             "full_se": 0.9532467015957554, "gap": -1.1833738467042285, "gap_se": 0.6519969519852131}),
    "cnn": ((1.1150150017150138, 1.2466586710630319),
            {"quotient": 0.8870207469285774, "quotient_se": 1.231651542146115, "full": 0.6089009435165245,
             "full_se": 1.1862197459211015, "gap": -0.27811980341205284, "gap_se": 0.10615854935681945}),
}


@pytest.mark.parametrize("name,problem", [("mlp", MLP), ("cnn", CNN)])
def test_one_hutchinson_estimator_keeps_the_values_of_both_former_ones(name, problem):
    from sharpcomp.measures.curvature.quotient_trace import hessian_trace

    model, _, x, y = problem.make()
    pinned_full, pinned_pair = PINNED_TRACES[name]
    chunk = 2 if name == "cnn" else None
    full = hessian_trace(model, mse, x, y, probes=6, generator=torch.Generator().manual_seed(2))
    pair = quotient_trace.hutchinson_traces(model, mse, x, y, probes=5, generator=torch.Generator().manual_seed(1),
                                chunk_size=chunk)
    assert tuple(full) == pytest.approx(pinned_full, rel=1e-12, abs=1e-14)
    pair = {name: v for k in ("quotient", "full", "gap") for name, v in
            ((k, getattr(pair, k).value), (f"{k}_se", getattr(pair, k).se))}
    assert pair == pytest.approx(pinned_pair, rel=1e-12, abs=1e-14)
    # both are the one estimator: hessian_trace draws its probes from the generator itself,
    # hutchinson_traces from a generator seeded by one draw of it
    params = [p for p in model.parameters()]
    g = torch.autograd.grad(mse(model(x), y), params, create_graph=True)
    values, none = hutchinson.hutchinson(g, params, 6, torch.Generator().manual_seed(2))
    assert none is None and float(values.mean()) == pytest.approx(full.value, rel=1e-14)
    seed = int(torch.randint(0, 2**62, (1,), generator=torch.Generator().manual_seed(1)).item())
    values, projected = hutchinson.hutchinson(g, params, 5, torch.Generator().manual_seed(seed),
                                              symmetry.quotient_projector(model))
    if chunk is None:
        assert float(values.mean()) == pytest.approx(pair["full"], rel=1e-14)
        assert float(projected.mean()) == pytest.approx(pair["quotient"], rel=1e-14)
    assert set(hutchinson.rademacher(params, torch.Generator().manual_seed(0))[0].unique().tolist()) == {-1.0, 1.0}


# ---- worst-case sharpness -----------------------------------------------------------------------------

def trust_region_max(g, H, rho):
    """max_{||d|| <= rho} g.d + d^T H d / 2 for PSD H (global solution: (lam I - H) d = g, ||d|| = rho)."""
    h, U = torch.linalg.eigh(H)
    gb = U.T @ g
    lo = float(h.max()) + 1e-15
    hi = lo + float(g.norm()) / rho + 1.0
    for _ in range(200):
        lam = (lo + hi) / 2
        if float((gb / (lam - h)).norm()) > rho:
            lo = lam
        else:
            hi = lam
    db = gb / (hi - h)
    return float(gb @ db + 0.5 * db @ (h * db))


@pytest.mark.parametrize("adaptive", [False, True])
def test_worst_case_sharpness_matches_the_exact_maximum_on_a_quadratic(adaptive):
    model, _, x, y = problems.LINEAR_MODEL.make()
    H, g = dense_hessian(model, x, y), dense_grad(model, x, y)
    rho = 0.3 if adaptive else 0.5
    if adaptive:
        T = flat_theta(model).abs()
        g, H = T * g, T[:, None] * H * T[None, :]
    exact = trust_region_max(g, H, rho)
    first_order = float(rho * g.norm() + 0.5 * rho**2 * (g @ H @ g) / (g @ g))  # value at rho g / ||g||
    r1 = worst_case.worst_case_sharpness(model, mse, [(x, y)], rho, steps=1, adaptive=adaptive)
    assert abs(r1.value - first_order) < 1e-10
    r = worst_case.worst_case_sharpness(model, mse, [(x, y)], rho, steps=60, adaptive=adaptive)
    assert first_order - 1e-12 <= r.value <= exact + 1e-10
    assert r.value > exact * (1 - 1e-4)
    assert abs(r.details["rel"] - r.value / (1 + r.details["loss"])) < 1e-12


def test_worst_case_sharpness_on_a_relu_net_and_its_quotient_version():
    model, _, x, y = CNN.make()
    before = [p.detach().clone() for p in model.parameters()]
    rho = 0.05
    g = dense_grad(model, x, y)
    H = dense_hessian(model, x, y)
    lam = float(torch.linalg.eigvalsh(H).max())
    r = worst_case.worst_case_sharpness(model, mse, [(x, y), (x[:3], y[:3])], rho, steps=10)
    assert len(r.details["per_batch"]) == 2
    r1 = worst_case.worst_case_sharpness(model, mse, [(x, y)], rho, steps=10)
    th = flat_theta(model)
    along_g = float(dense_loss_fn(model, x, y)(th + rho * g / g.norm()) - dense_loss_fn(model, x, y)(th))
    assert along_g <= r1.value <= rho * float(g.norm()) + 0.5 * rho**2 * lam + 1e-3 * rho**2
    # the quotient ascent stays orthogonal to the orbits
    params = param_space.trainable(model)
    theta = [p.detach().clone() for p in params]
    proj = symmetry.quotient_projector(model)
    _, inc, delta = worst_case._ascent(model, mse, x, y, rho, 10, rho, None, proj, params, theta)
    assert inc > 0 and abs(float(param_space.norm(delta)) - rho) < 1e-9
    assert float(proj.V.rmatvec(delta).abs().max()) < 1e-10
    rq = worst_case.worst_case_sharpness(model, mse, [(x, y)], rho, steps=10, quotient=True)
    assert abs(rq.value - inc) < 1e-12
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    with pytest.raises(ValueError):
        worst_case.worst_case_sharpness(model, mse, [(x, y)], rho, adaptive=True, quotient=True)


# ---- gradient disagreement and Fisher -----------------------------------------------------------------

def test_gradient_disagreement_over_all_ordered_pairs():
    model, _, x, y = CNN.make()
    batches = [(x[i:i + 2], y[i:i + 2]) for i in (0, 1, 3)] + [(x[:1], y[:1])]
    gs = [dense_grad(model, bx, by) for bx, by in batches]
    terms = [gs[b].norm() * (1 - torch.dot(gs[a], gs[b]) / (gs[a].norm() * gs[b].norm()))
             for a in range(4) for b in range(4) if a != b]
    assert len(terms) == 12
    val = grad_disagreement.gradient_disagreement(model, mse, batches)
    assert abs(val - float(torch.stack(terms).mean())) < 1e-12
    assert math.isnan(grad_disagreement.gradient_disagreement(model, mse, batches[:1]))


@pytest.mark.parametrize("chunk", [None, 2])
def test_fisher_trace_is_the_mean_squared_per_sample_gradient(chunk):
    model, _, x, y = CNN.make()
    ref = sum(float(dense_grad(model, x[i:i + 1], y[i:i + 1]).pow(2).sum()) for i in range(len(x))) / len(x)
    assert abs(fisher_trace.fisher_trace(model, mse, x, y, chunk_size=chunk) - ref) < 1e-12 * max(1.0, ref)


# ---- the trainer's entry point ------------------------------------------------------------------------

def test_extra_metrics_columns_leave_the_model_untouched_and_are_reproducible():
    model = CNN.make(torch.float32).model
    torch.manual_seed(0)
    x, y = torch.rand(40, 1, 8, 8), torch.randint(0, 2, (40,))
    model.train()
    model.fc2.weight.grad = torch.ones_like(model.fc2.weight)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    settings = {"quotient_trace": {"probes": 3, "n": 8}, "worst_case": {"steps": 2, "batches": 2, "batch_size": 8},
                "adaptive": {"steps": 2, "batches": 2, "batch_size": 8}, "quotient_worst": None,
                "disagreement": {"batches": 3, "batch_size": 4}, "fisher": {"n": 6}}  # earlier keys still name them
    out = registry.compute_measures(model, mse, x, y, settings, torch.Generator().manual_seed(3))
    assert set(out) == {"quotient_trace", "quotient_trace_se", "hessian_trace", "hessian_trace_se",
                        "quotient_trace_gap", "worst_case", "worst_case_rel", "worst_case_adaptive",
                        "worst_case_adaptive_rel", "grad_disagreement", "fisher_trace"}
    assert all(isinstance(v, float) and math.isfinite(v) for v in out.values())
    assert out["worst_case"] >= 0 and out["fisher_trace"] > 0
    assert model.training
    assert torch.equal(model.fc2.weight.grad, torch.ones_like(model.fc2.weight))
    assert all(p.grad is None for n, p in model.named_parameters() if n != "fc2.weight")
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    again = registry.compute_measures(model, mse, x, y, settings, torch.Generator().manual_seed(3))
    assert again == out
    assert registry.compute_measures(model, mse, x, y, None, None) == {}
    from omegaconf import OmegaConf  # the trainer passes the config node itself
    node = OmegaConf.create({"flatness": {"disagreement": {"batches": 3, "batch_size": 4}, "fisher": None}})
    dc = registry.compute_measures(model, mse, x, y, node.flatness, torch.Generator().manual_seed(3))
    assert set(dc) == {"grad_disagreement"} and math.isfinite(dc["grad_disagreement"])
    every_off = dict.fromkeys(registry.switchable())
    assert registry.compute_measures(model, mse, x, y, every_off, None) == {}
    with pytest.raises(ValueError, match="unknown metrics.flatness key"):
        registry.compute_measures(model, mse, x, y, {"worstcase": {}}, None)
    with pytest.raises(ValueError, match="unknown setting"):
        registry.compute_measures(model, mse, x, y, {"worst_case": {"radius": 1}}, None)
    with pytest.raises(ValueError, match="switched on twice"):
        registry.plan({"worst_case_adaptive": {}, "adaptive": {}})


def test_every_measure_switches_on_with_its_defaults():
    plan = registry.plan({name: {} for name in registry.switchable()})
    assert plan.names == tuple(registry.switchable())
    assert registry.plan({"worst_case": True}).settings("worst_case").rho == 0.05
