"""PAC-Bayes sigma against a direct scan; contrastive flatness and the KL-ball regret against dense
Hessians and a dense Fisher inverse; the regret's invariance under the ReLU rescaling."""

from __future__ import annotations

import math

import pytest
import torch

from sharpcomp.measures.curvature import contrastive, grad_disagreement
from sharpcomp.measures.perturbation import pacbayes, regret_kl
from sharpcomp.measures.symmetry.reparam import rescale_unit
from tests import problems
from tests.measures.test_flatness import dense_hessian
from tests.problems import mse
from tests.reference import as_dict, flat_theta

DT = torch.float64
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("magnitude", [False, True])
def test_pacbayes_sigma_against_a_direct_scan(magnitude):
    model, _, x, y = problems.MLP_INTERPOLATING.make()
    target, draws, smax = 0.1, 20, 2.0
    r = pacbayes.pacbayes_sigma(model, x, y, target=target, draws=draws, iterations=14, sigma_max=smax,
                                magnitude=magnitude, generator=torch.Generator().manual_seed(4))
    seed = int(torch.randint(0, 2**62, (1,), generator=torch.Generator().manual_seed(4)).item())
    grid = torch.linspace(0, smax, 161, dtype=DT)
    incs = [pacbayes.error_increase(model, x, y, float(s), draws, seed, magnitude) for s in grid]
    first = next(float(s) for s, e in zip(grid, incs) if e > target)  # the scan's first crossing
    assert r.details["lo"] < r.details["hi"] and r.details["hi"] - r.details["lo"] <= smax / 2**14 + 1e-15
    assert pacbayes.error_increase(model, x, y, r.details["lo"], draws, seed, magnitude) <= target
    assert pacbayes.error_increase(model, x, y, r.details["hi"], draws, seed, magnitude) > target
    assert abs(r.value - first) <= 0.05 * first + float(grid[1])
    # the bound values from their formulas
    th = [p.detach() for p in model.parameters()]
    b = pacbayes.pacbayes_bounds(th, 0.1, 0.2, m=1000)
    w = flat_theta(model)
    assert b["pacbayes_flatness"] == pytest.approx(100.0)
    assert b["pacbayes_orig"] == pytest.approx(float(w @ w) / 0.04 + math.log(1000 / 0.1) + 10)
    num = 1e-6 + (0.04 + 1) * float(w @ w) / w.numel()
    mag = 0.25 * float(torch.log(num / (1e-6 + 0.04 * w**2)).sum()) + math.log(1000 / 0.2) + 10
    assert b["pacbayes_mag_orig"] == pytest.approx(mag, rel=1e-12)


@pytest.mark.parametrize("problem", [problems.MLP_CLASSIFICATION, problems.CNN_MAXPOOL], ids=str)
def test_contrastive_flatness_against_dense_hessians(problem):
    model, _, x, y = problem.make()
    batches = [(x[:2], y[:2]), (x[2:4], y[2:4])]
    lam = lambda bx, by: float(torch.linalg.eigvalsh(dense_hessian(model, bx, by)).max())  # noqa: E731
    full = lam(x[:4], y[:4])
    ref = (lam(*batches[0]) + lam(*batches[1])) / 2 / full
    r = contrastive.contrastive_flatness(model, mse, batches)
    assert r.details["full"] == pytest.approx(full, rel=1e-6, abs=1e-9)
    assert r.value == pytest.approx(ref, rel=1e-5)
    # the trace version is exactly 1 for equal batches (sum_b H_B = M H), with the same probes
    t = contrastive.contrastive_flatness(model, mse, batches, kind="trace", probes=5,
                                         generator=torch.Generator().manual_seed(0))
    assert t.value == pytest.approx(1.0, rel=1e-10)


def dense_fisher(model, x, y):
    """J^T H_out J for the mean loss, from a dense output Jacobian and the loss's output Hessian."""
    th = flat_theta(model)
    from torch.func import functional_call
    jac = torch.autograd.functional.jacobian(lambda t: functional_call(model, as_dict(model, t), (x,)), th)
    out = model(x).detach()
    h_out = torch.autograd.functional.hessian(lambda o: mse(o, y), out)
    k = out.numel()
    jac = jac.reshape(k, -1)
    return jac.T @ h_out.reshape(k, k) @ jac


@pytest.mark.parametrize("problem", [problems.MLP_CLASSIFICATION, problems.CNN_MAXPOOL], ids=str)
def test_regret_kl_against_a_dense_fisher_inverse(problem):
    model, _, x, y = problem.make()
    batches = [(x[i::3], y[i::3]) for i in range(3)]
    damping = 1e-3
    F = dense_fisher(model, torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches]))
    from tests.measures.test_flatness import dense_grad
    gs = torch.stack([dense_grad(model, bx, by) for bx, by in batches])
    Finv = torch.linalg.inv(F + damping * torch.eye(F.shape[0], dtype=DT))
    G = gs @ Finv @ gs.T
    terms = [G[b, b].sqrt() - G[a, b] / G[a, a].sqrt() for a in range(3) for b in range(3) if a != b]
    r = regret_kl.regret_kl(model, mse, batches, damping=damping, cg_iterations=500)
    assert r.details["damping"] == damping
    torch.testing.assert_close(r.details["gram"], G, rtol=1e-7, atol=1e-10)
    assert r.value == pytest.approx(float(torch.stack(terms).mean()), rel=1e-7)
    # the Fisher-vector product itself
    v = torch.randn(F.shape[0], dtype=DT)
    mv = regret_kl.fisher_operator(model, mse, torch.cat([b[0] for b in batches]),
                                   torch.cat([b[1] for b in batches]))
    torch.testing.assert_close(mv(v), F @ v, rtol=1e-10, atol=1e-12)


def test_regret_kl_does_not_move_under_rescaling_while_gradient_disagreement_does():
    model, _, x, y = problems.MLP_CLASSIFICATION.make()
    x = torch.cat([x, torch.randn(6, 4, dtype=DT)])
    y = torch.cat([y, torch.tensor([1, 0, 0, 1, 1, 0])])
    batches = [(x[i::3], y[i::3]) for i in range(3)]
    moved = rescale_unit(model, "fc1", 7.0, copy_model=True)
    d0 = grad_disagreement.gradient_disagreement(model, mse, batches)
    d1 = grad_disagreement.gradient_disagreement(moved, mse, batches)
    r0 = regret_kl.regret_kl(model, mse, batches, damping=1e-9, cg_iterations=2000).value
    r1 = regret_kl.regret_kl(moved, mse, batches, damping=1e-9, cg_iterations=2000).value
    assert abs(d1 - d0) > 0.05 * abs(d0)
    assert abs(r1 - r0) < 1e-4 * abs(r0)
