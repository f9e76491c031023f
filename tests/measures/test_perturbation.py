"""Average-case, Auto-PGD and Keskar sharpness against plain Monte-Carlo loops, exhaustive searches and
closed forms on tiny float64 networks."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from sharpcomp.measures.linalg import apgd
from sharpcomp.measures.perturbation import average as average_case
from sharpcomp.measures.perturbation import keskar, worst_case
from tests import problems
from tests.measures.test_flatness import dense_hessian
from tests.problems import mse, sq_loss
from tests.reference import flat_theta

DT = torch.float64
pytestmark = pytest.mark.usefixtures("one_thread")


# ---- average case -------------------------------------------------------------------------------------

@pytest.mark.parametrize("adaptive", [False, True])
def test_average_case_is_half_sigma_squared_trace_on_a_quadratic(adaptive):
    """MSE of a linear model is quadratic in theta: E L(theta + delta) - L = 1/2 sum_i var_i H_ii exactly."""
    model, _, x, y = problems.LINEAR_MODEL.make()
    H = dense_hessian(model, x, y)
    sigma = 0.3 if adaptive else 0.05
    var = (sigma * flat_theta(model)) ** 2 if adaptive else torch.full((H.shape[0],), sigma**2, dtype=DT)
    exact = float(0.5 * (var * H.diagonal()).sum())
    r = average_case.average_sharpness(model, mse, [(x, y)], sigma, draws=400, adaptive=adaptive,
                                       generator=torch.Generator().manual_seed(0))
    assert r.se > 0 and abs(r.value - exact) < 4 * r.se
    assert abs(r.value - exact) < 0.2 * exact  # and the error bar is informative


def test_average_case_matches_a_plain_monte_carlo_loop():
    model, _, x, y = problems.CNN_MAXPOOL.make()
    batches = [(x[:3], y[:3]), (x[3:], y[3:])]
    sigma, draws = 0.1, 60
    r = average_case.average_sharpness(model, mse, batches, sigma, draws=draws,
                                       generator=torch.Generator().manual_seed(5))
    # an independent loop: deepcopy, add noise with its own generator, plain forward passes
    import copy
    gen = torch.Generator().manual_seed(11)
    means, variances = [], []
    for bx, by in batches:
        base = float(mse(model(bx), by).detach())
        incs = []
        for _ in range(draws):
            noisy = copy.deepcopy(model)
            with torch.no_grad():
                for p in noisy.parameters():
                    p.add_(sigma * torch.randn(p.shape, generator=gen, dtype=DT))
            incs.append(float(mse(noisy(bx), by).detach()) - base)
        t = torch.tensor(incs, dtype=DT)
        means.append(float(t.mean()))
        variances.append(float(t.var()))
    ref = sum(means) / 2
    ref_se = math.sqrt(sum(variances) / draws) / 2
    assert abs(r.value - ref) < 4 * math.hypot(r.se, ref_se)
    # the same generator state reproduces the value exactly, and the model is untouched
    again = average_case.average_sharpness(model, mse, batches, sigma, draws=draws,
                                           generator=torch.Generator().manual_seed(5))
    assert again.value == r.value and again.se == r.se
    assert math.isfinite(r.details["err"])


def test_average_case_pairs_cancel_the_gradient_term():
    """On a loss linear in theta every antithetic pair's increase is 0 exactly (up to round-off), so the
    estimate and its error bar are 0, where independent draws would scatter by sigma ||g||; the per-draw
    increases come in +/- pairs of that size."""
    model, linear_loss, x, y = problems.LINEAR_SUM_LOSS.make()  # L is affine in the weights
    r = average_case.average_sharpness(model, linear_loss, [(x, y)], 0.5, draws=9,
                                       generator=torch.Generator().manual_seed(0))
    assert r.samples == 5 and r.details["per_draw"].shape == (10,)
    scale = float(r.details["per_draw"].abs().max())
    assert scale > 0.1  # each draw moves the loss by about sigma ||g||
    assert abs(r.value) < 1e-14 * scale and r.se < 1e-14 * scale
    assert torch.allclose(r.details["per_draw"][0::2], -r.details["per_draw"][1::2], rtol=0, atol=1e-14 * scale)


# ---- Auto-PGD -----------------------------------------------------------------------------------------

def grid_max(model, x, y, rho, p, n=801):
    """Exhaustive search over an n x n grid of the ball around (w1, w2): the max loss increase."""
    w1, w2 = float(model[0].weight.detach()), float(model[2].weight.detach())
    a = torch.linspace(-rho, rho, n, dtype=DT)
    d1, d2 = torch.meshgrid(a, a, indexing="ij")
    inside = (d1**2 + d2**2 <= rho**2 + 1e-15) if p == "l2" else torch.ones_like(d1, dtype=torch.bool)
    out = (w2 + d2)[..., None] * torch.tanh((w1 + d1)[..., None] * x[:, 0])
    loss = ((out - y[:, 0]) ** 2).mean(-1)
    base = float(((w2 * torch.tanh(w1 * x[:, 0]) - y[:, 0]) ** 2).mean())
    best = float(loss[inside].max())
    if p == "l2":  # and the circle itself, densely
        t = torch.linspace(0, 2 * math.pi, 20001, dtype=DT)
        c1, c2 = rho * torch.cos(t), rho * torch.sin(t)
        edge = (((w2 + c2)[:, None] * torch.tanh((w1 + c1)[:, None] * x[:, 0]) - y[:, 0]) ** 2).mean(-1)
        best = max(best, float(edge.max()))
    return best - base


@pytest.mark.parametrize("p", ["l2", "linf"])
@pytest.mark.parametrize("rho", [0.3, 1.0])
def test_apgd_finds_the_exhaustive_maximum_on_two_parameters(p, rho):
    model, _, x, y = problems.TANH_TWO_WEIGHTS.make()
    ref = grid_max(model, x, y, rho, p)
    r = worst_case.worst_case_sharpness(model, sq_loss, [(x, y)], rho, steps=100, algorithm="apgd", norm=p,
                                        restarts=3, generator=torch.Generator().manual_seed(0))
    assert r.value <= ref + 1e-6 * rho**2 + 1e-9  # a point of the ball cannot beat the search by more
    assert r.value >= ref - 1e-4 * max(ref, 1e-6)  # and Auto-PGD reaches the maximum


def test_apgd_checkpoints_and_projection():
    # p_j = 0.22, 0.41, 0.57, 0.70, 0.80, 0.87, 0.93, 0.99 (Croce & Hein 2020); ceil(p_j N) in floating
    # point as the reference implementation computes it (0.57 * 100 rounds up to 58)
    assert apgd.checkpoints(100) == [22, 41, 58, 70, 80, 87, 93, 99]
    w = apgd.checkpoints(200)
    assert w[0] == 44 and all(b > a for a, b in zip(w, w[1:])) and w[-1] <= 200
    v = [torch.tensor([3.0, 4.0])]
    assert torch.allclose(apgd.project(v, 1.0, "l2")[0], torch.tensor([0.6, 0.8]))
    assert torch.equal(apgd.project(v, 1.0, "linf")[0], torch.tensor([1.0, 1.0]))
    start = apgd.random_point([torch.zeros(50, dtype=DT)], 0.5, "l2", torch.Generator().manual_seed(0))
    assert float(start[0].norm()) <= 0.5


@pytest.mark.parametrize("adaptive", [False, True])
def test_apgd_finds_at_least_the_normalised_ascent(adaptive):
    for problem in (problems.MLP_CLASSIFICATION, problems.CNN_MAXPOOL):
        model, _, x, y = problem.make()
        before = [p.detach().clone() for p in model.parameters()]
        rho = 0.5 if adaptive else 0.1
        base = worst_case.worst_case_sharpness(model, mse, [(x, y)], rho, steps=5, adaptive=adaptive)
        r = worst_case.worst_case_sharpness(model, mse, [(x, y)], rho, steps=50, adaptive=adaptive,
                                            algorithm="apgd", restarts=2, generator=torch.Generator().manual_seed(0))
        assert r.value >= base.value - 1e-12
        assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    with pytest.raises(ValueError, match="l2 only"):
        worst_case.worst_case_sharpness(model, mse, [(x, y)], 0.1, norm="linf")


# ---- Keskar -------------------------------------------------------------------------------------------

def test_keskar_matches_the_best_corner_of_the_box_on_a_convex_loss():
    """MSE of a linear model is convex in theta, so the maximum over the box is at one of its 2^n corners."""
    model, _, x, y = problems.LINEAR_SIX_PARAMETERS.make()  # 6 parameters, 64 corners
    eps = 0.05
    th = flat_theta(model)
    half = eps * (th.abs() + 1)

    def loss_at(vec):
        w, b = vec[:4].view(2, 2), vec[4:]
        return float(mse(x @ w.T + b, y))

    l0 = loss_at(th)
    best = max(loss_at(th + half * torch.tensor(s, dtype=DT)) for s in itertools.product((-1.0, 1.0), repeat=6))
    r = keskar.keskar_sharpness(model, mse, x, y, eps=eps, steps=60, restarts=4,
                                generator=torch.Generator().manual_seed(0))
    assert r.details["increase"] == pytest.approx(best - l0, rel=1e-9)
    assert r.value == pytest.approx(100 * (best - l0) / (1 + l0), rel=1e-9)
    assert torch.equal(flat_theta(model), th)


def test_keskar_box_scales_with_the_weights():
    """Scaling a weight entry changes its box; the increase stays inside the first-order bound."""
    model, _, x, y = problems.MLP_CLASSIFICATION.make()
    eps = 1e-3
    r = keskar.keskar_sharpness(model, mse, x, y, eps=eps, steps=20)
    th = flat_theta(model).requires_grad_(True)
    from tests.measures.test_flatness import dense_grad
    g = dense_grad(model, x, y)
    first_order = float((eps * (th.detach().abs() + 1) * g.abs()).sum())
    assert 0.9 * first_order <= r.details["increase"] <= 1.1 * first_order


# ---- settings and the trainer's entry point -------------------------------------------------------------

def test_settings_of_the_new_measures_are_checked():
    from sharpcomp.measures import registry

    ok = registry.plan({"worst_case": {"algorithm": "apgd", "norm": "linf", "m": 4}, "average": {
        "sigma": None}, "keskar": {}, "pacbayes": {}, "contrastive": {"kind": "trace"}, "regret_kl": {}})
    assert ok.settings("worst_case").restarts == 1 and ok.settings("average").sigma is None
    assert registry.measures()["worst_case"].defaults()["algorithm"] == "ascent"  # old results keep their meaning
    bad = [({"worst_case": {"norm": "linf"}}, "needs algorithm apgd"),
           ({"adaptive": {"algorithm": "pgd"}}, "must be one of ascent, apgd"),
           ({"contrastive": {"kind": "frobenius"}}, "must be one of"),
           ({"average": {"draws": 1}}, "must be > 1"), ({"average": {"draws": 3}}, "two antithetic pairs"),
           ({"keskar": {"eps": 0}}, "must be > 0"),
           ({"regret_kl": {"damping": -1}}, "must be >= 0"), ({"worst_case": {"m": 0}}, "must be > 0")]
    for settings, msg in bad:
        with pytest.raises(ValueError, match=msg):
            registry.plan(settings)


def test_extra_metrics_new_columns_and_m_sharpness():
    from sharpcomp.measures import registry
    from sharpcomp.measures.perturbation.worst_case import m_groups

    model = problems.CNN_MAXPOOL.make().model
    torch.manual_seed(0)
    x, y = torch.randn(24, 1, 8, 8, dtype=DT), torch.randint(0, 2, (24,))
    settings = {"average": {"draws": 5, "batch_size": 12}, "keskar": {"steps": 3}, "pacbayes": {"iterations": 4},
                "contrastive": {"batches": 2, "batch_size": 6}, "regret_kl": {"batches": 3, "batch_size": 4},
                "worst_case": {"algorithm": "apgd", "steps": 4, "batches": 2, "batch_size": 8, "m": 4}}
    out = registry.compute_measures(model, mse, x, y, settings, torch.Generator().manual_seed(0))
    assert {"average", "average_se", "average_adaptive", "keskar", "pacbayes_sigma", "pacbayes_mag_orig",
            "contrastive", "regret_kl", "regret_kl_damping", "worst_case"} <= set(out)
    assert out == registry.compute_measures(model, mse, x, y, settings, torch.Generator().manual_seed(0))
    # m-sharpness: the mean over groups of m samples of each group's own maximum
    groups = m_groups([(x[:8], y[:8]), (x[8:16], y[8:16])], 4)
    assert [len(g[0]) for g in groups] == [4, 4, 4, 4] and torch.equal(groups[1][0], x[4:8])
