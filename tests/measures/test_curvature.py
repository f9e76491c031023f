"""The curvature-spectrum measures against dense float64 references on an MLP and a CNN with a few
hundred parameters: the Hessian by torch.autograd.functional.hessian, its eigvalsh, the GGN from the
parameter Jacobian, per-sample Hessians for the non-uniformity."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.func import functional_call

from sharpcomp.measures.curvature import batch_sharpness, ggn_max, hessian_max, nonuniformity
from sharpcomp.measures.curvature import hessian_density as spectral_density
from sharpcomp.measures.linalg import hutchpp, lanczos
from sharpcomp.measures.linalg import matvec as curvature_ops
from sharpcomp.results import density_bins
from tests import problems
from tests.problems import mse
from tests.reference import as_dict, flat_theta

DT = torch.float64
pytestmark = pytest.mark.usefixtures("one_thread")


MLP, CNN = problems.MLP_MEDIUM, problems.CNN_MAXPOOL_MEDIUM
MODELS = [MLP, CNN]


def dense_hessian(model, x, y):
    return torch.autograd.functional.hessian(lambda th: mse(functional_call(model, as_dict(model, th), (x,)), y),
                                             flat_theta(model), vectorize=True)


def dense_ggn(model, x, y):
    """J^T Hf J with J the Jacobian of the flattened outputs and Hf the Hessian of the loss in them."""
    jac = torch.autograd.functional.jacobian(
        lambda th: functional_call(model, as_dict(model, th), (x,)).reshape(-1), flat_theta(model), vectorize=True)
    out = model(x).detach()
    hf = torch.autograd.functional.hessian(lambda f: mse(f.view_as(out), y), out.reshape(-1), vectorize=True)
    return jac.T @ hf @ jac


def test_sizes_are_a_few_hundred():
    for problem in MODELS:
        assert 150 <= curvature_ops.dimension(problem.make().model) <= 400


@pytest.mark.parametrize("problem", MODELS, ids=str)
def test_operators_match_dense_matrices(problem):
    model, _, x, y = problem.make()
    h, g = dense_hessian(model, x, y), dense_ggn(model, x, y)
    v = torch.randn(h.shape[0], dtype=DT)
    for chunk in (None, 5):
        torch.testing.assert_close(curvature_ops.hessian_matvec(model, mse, x, y, chunk)(v), h @ v)
        torch.testing.assert_close(curvature_ops.ggn_matvec(model, mse, x, y, chunk)(v), g @ v)
    # H = G + R: G is PSD, and H != G away from interpolation
    assert torch.linalg.eigvalsh(g).min() > -1e-10
    assert (h - g).abs().max() > 1e-6


@pytest.mark.parametrize("problem", MODELS, ids=str)
def test_top_k_to_1e6_relative(problem):
    model, _, x, y = problem.make()
    ev = torch.linalg.eigvalsh(dense_hessian(model, x, y)).flip(0)
    r = hessian_max.hessian_top(model, mse, x, y, k=5, tol=1e-10, max_iter=400,
                                     generator=torch.Generator().manual_seed(0))
    assert r.converged and max(r.residuals) <= 1e-10
    np.testing.assert_allclose(r.values, ev[:5].numpy(), rtol=1e-6)
    assert 5 <= r.iterations <= ev.numel()
    gev = torch.linalg.eigvalsh(dense_ggn(model, x, y)).flip(0)
    rg = ggn_max.ggn_top(model, mse, x, y, k=3, tol=1e-10, max_iter=400,
                                  generator=torch.Generator().manual_seed(1))
    np.testing.assert_allclose(rg.values, gev[:3].numpy(), rtol=1e-6)
    assert math.isclose(ggn_max.ggn_max(model, mse, x, y, tol=1e-10, max_iter=400), float(gev[0]),
                        rel_tol=1e-6)


def test_loose_tolerance_is_honoured_and_cheaper():
    model, _, x, y = MLP.make()
    ev = torch.linalg.eigvalsh(dense_hessian(model, x, y))
    tight = hessian_max.hessian_top(model, mse, x, y, tol=1e-10, max_iter=400)
    loose = hessian_max.hessian_top(model, mse, x, y, tol=1e-2, max_iter=400,
                                         generator=torch.Generator().manual_seed(3))
    assert loose.iterations < tight.iterations and loose.residuals[0] <= 1e-2
    # the residual bounds the error
    assert abs(loose.values[0] - float(ev[-1])) <= loose.residuals[0] * abs(loose.values[0]) + 1e-12
    capped = hessian_max.hessian_top(model, mse, x, y, tol=1e-14, max_iter=3)
    assert capped.iterations == 3 and not capped.converged


def test_lanczos_on_a_known_matrix():
    torch.manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(60, 60, dtype=DT))
    lam = torch.cat([torch.tensor([9.0, 7.0, -8.0], dtype=DT), torch.linspace(-1, 1, 57, dtype=DT)])
    a = q @ torch.diag(lam) @ q.T
    r = lanczos.top_eigenvalues(lambda v: a @ v, 60, k=2, tol=1e-12, max_iter=60,
                                generator=torch.Generator().manual_seed(0))
    np.testing.assert_allclose(r.values, [9.0, 7.0], rtol=1e-10)  # largest algebraic, not largest |.|


@pytest.mark.parametrize("problem", MODELS, ids=str)
def test_batch_sharpness_equals_direct_formula(problem):
    model, _, x, y = problem.make()
    batches = [(x[i:i + 4], y[i:i + 4]) for i in range(0, 16, 4)]
    direct = []
    for xb, yb in batches:
        h = dense_hessian(model, xb, yb)
        th = flat_theta(model).requires_grad_(True)
        g = torch.autograd.grad(mse(functional_call(model, as_dict(model, th), (xb,)), yb), th)[0]
        direct.append(float(g @ h @ g / (g @ g)))
    est, se = batch_sharpness.batch_sharpness(model, mse, batches)
    assert math.isclose(est, float(np.mean(direct)), rel_tol=1e-10)
    assert math.isclose(se, float(np.std(direct, ddof=1) / 2), rel_tol=1e-8)
    # full batch: a Rayleigh quotient, at most lambda_max(H)
    full, _ = batch_sharpness.batch_sharpness(model, mse, [(x, y)])
    assert full <= float(torch.linalg.eigvalsh(dense_hessian(model, x, y))[-1]) + 1e-12


@pytest.mark.parametrize("problem", MODELS, ids=str)
def test_nonuniformity_from_per_sample_hessians(problem):
    model, _, x, y = problem.make()
    x, y = x[:10], y[:10]
    hs = [dense_hessian(model, x[i:i + 1], y[i:i + 1]) for i in range(10)]
    h = sum(hs) / 10
    torch.testing.assert_close(h, dense_hessian(model, x, y))
    var = sum(hi @ hi for hi in hs) / 10 - h @ h
    exact = math.sqrt(float(torch.linalg.eigvalsh(var)[-1]))
    r = nonuniformity.nonuniformity_top(model, mse, x, y, tol=1e-10, max_iter=400,
                                        generator=torch.Generator().manual_seed(0))
    assert math.isclose(math.sqrt(r.values[0]), exact, rel_tol=1e-6)
    assert math.isclose(nonuniformity.nonuniformity(model, mse, x, y, tol=1e-10, max_iter=400), exact,
                        rel_tol=1e-6)


@pytest.mark.parametrize("problem", MODELS, ids=str)
def test_density_moments(problem):
    model, _, x, y = problem.make()
    h = dense_hessian(model, x, y)
    p = h.shape[0]
    d = spectral_density.hessian_density(model, mse, x, y, probes=30, steps=20,
                                         generator=torch.Generator().manual_seed(0))
    assert math.isclose(d.masses.sum(), 1.0, rel_tol=1e-10) and d.masses.shape == (131,)
    for w in d.weights:
        assert math.isclose(w.sum(), 1.0, rel_tol=1e-10)
    m1, m2 = float(torch.trace(h)) / p, float(torch.trace(h @ h)) / p
    assert abs(d.moment1 - m1) <= 4 * d.moment1_se and d.moment1_se < 0.3 * abs(m1) + 1e-12
    assert abs(d.moment2 - m2) <= 4 * d.moment2_se and d.moment2_se < 0.3 * m2
    # with as many steps as parameters the quadrature is the exact spectral measure seen from v
    full = spectral_density.hessian_density(model, mse, x, y, probes=1, steps=p,
                                            generator=torch.Generator().manual_seed(1))
    assert full.nodes[0].max() <= float(torch.linalg.eigvalsh(h)[-1]) * (1 + 1e-8)


def test_density_grid_is_symmetric_and_fixed():
    e = density_bins.DENSITY_EDGES
    np.testing.assert_allclose(e, -e[::-1])
    h = spectral_density.histogram(np.array([-2e4, -3.0, 0.0, 1e-5, 0.5, 2e4]), np.ones(6) / 6)
    assert h.sum() == pytest.approx(1.0) and h[0] == h[-1] == pytest.approx(1 / 6)
    c = density_bins.density_centres()
    assert c[len(c) // 2] == 0.0 and np.all(np.diff(c) > 0)


@pytest.mark.parametrize("problem", MODELS, ids=str)
def test_hutchpp_is_unbiased_with_honest_errors(problem):
    model, _, x, y = problem.make()
    exact = float(torch.trace(dense_hessian(model, x, y)))
    gen = torch.Generator().manual_seed(0)
    runs = [hutchpp.hessian_traces(model, mse, x, y, products=12, generator=gen) for _ in range(30)]
    est = np.array([r.full.value for r in runs])
    se = np.array([r.full.se for r in runs])
    z = (est.mean() - exact) / (est.std(ddof=1) / math.sqrt(len(est)))
    assert abs(z) < 4
    # the reported standard error matches the spread of the estimates (within a factor 2)
    assert 0.5 < np.sqrt(np.mean(se ** 2)) / est.std(ddof=1) < 2.0
    # with as many sketch vectors as parameters the deflation is exact
    p = curvature_ops.dimension(model)
    r = hutchpp.hutchpp(curvature_ops.hessian_matvec(model, mse, x, y), p, 3 * p, gen)
    assert math.isclose(r[0], exact, rel_tol=1e-8)


# ---- switched on under metrics.flatness ------------------------------------------------------------------

def test_settings_are_checked():
    from sharpcomp.measures import registry

    on = registry.plan({"hessian_max": {}, "quotient_trace": {"method": "hutchpp"}})
    assert on.settings("hessian_max").k == 1 and on.settings("quotient_trace").method == "hutchpp"
    for bad, text in (({"hessian_max": {"k": 0}}, "hessian_max.k must be > 0"),
                      ({"ggn_max": {"tol": -1.0}}, "ggn_max.tol must be > 0"),
                      ({"quotient_trace": {"method": "xtrace"}}, "method must be one of hutchinson, hutchpp"),
                      ({"hessian_density": {"bins": 3}}, "unknown setting")):
        with pytest.raises(ValueError, match=text):
            registry.plan(bad)


def test_extra_metrics_columns_equal_the_functions():
    from sharpcomp.measures import registry
    from sharpcomp.measures.sample import fixed_subset

    model, _, x, y = MLP.make()
    on = {"hessian_max": {"k": 2, "n": 20, "tol": 1e-10, "max_iter": 400}, "ggn_max": {"n": 20, "tol": 1e-10},
          "batch_sharpness": {"batches": 3}, "nonuniformity": {"n": 6, "tol": 1e-10, "max_iter": 400},
          "hessian_density": {"n": 20, "steps": 10}}
    out = registry.compute_measures(model, mse, x, y, on, torch.Generator().manual_seed(0), batch_size=8)
    declared = [c.name for name in on for c in registry.measures()[name].columns]
    assert sorted(out) == sorted(declared)
    idx = fixed_subset(len(x), 20)
    assert idx.tolist() == fixed_subset(len(x), 20).tolist()  # the same points at every checkpoint
    ev = torch.linalg.eigvalsh(dense_hessian(model, x[idx], y[idx])).flip(0)
    np.testing.assert_allclose(out["hessian_top"], ev[:2].numpy(), rtol=1e-6)
    assert out["hessian_max"] == out["hessian_top"][0] and out["hessian_max_iterations"] >= 2
    gev = torch.linalg.eigvalsh(dense_ggn(model, x[idx], y[idx]))[-1]
    assert math.isclose(out["ggn_max"], float(gev), rel_tol=1e-6)
    assert len(out["hessian_density"]) == len(density_bins.DENSITY_EDGES) - 1
    assert math.isfinite(out["batch_sharpness"]) and out["batch_sharpness_se"] > 0  # 3 batches of the run's 8
    assert out["nonuniformity"] > 0


def test_new_measures_switched_off_keep_run_ids():
    from sharpcomp.settings import defaults, run_identity

    cfg = defaults(model="mlp4", data="fashion_mnist")
    old = json_copy(cfg)
    for key in ("hessian_max", "ggn_max", "batch_sharpness", "nonuniformity", "hessian_density"):
        old["metrics"]["flatness"].pop(key, None)
    assert run_identity(cfg)["run_id"] == run_identity(old)["run_id"]
    cfg["metrics"]["flatness"]["hessian_max"] = {}
    assert run_identity(cfg)["run_id"] != run_identity(old)["run_id"]


def json_copy(d):
    import json

    return json.loads(json.dumps(d))
