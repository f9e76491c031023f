"""The baselines the ranking compares against (param_norm, dist_init, grad_noise), each against a dense float64
brute force: plain autograd on the flat parameter vector, every minibatch enumerated."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch.func import functional_call

from sharpcomp.measures import registry
from sharpcomp.measures.baseline.dist_init import dist_init
from sharpcomp.measures.baseline.grad_noise import grad_noise
from sharpcomp.measures.baseline.param_norm import param_norm
from sharpcomp.measures.symmetry.reparam import rescale_unit
from tests import problems
from tests.reference import as_dict, flat_theta

MLP = problems.PROBLEMS["mlp_classification"]
CNN = problems.PROBLEMS["cnn_maxpool"]


def per_sample_gradients(model, loss_fn, x, y) -> torch.Tensor:
    """(n, P): the gradient of the loss at each point, by autograd of the flat float64 parameter vector."""
    theta = flat_theta(model).detach()
    rows = []
    for i in range(len(x)):
        t = theta.clone().requires_grad_(True)
        loss = loss_fn(functional_call(model, as_dict(model, t), (x[i:i + 1],)), y[i:i + 1])
        rows.append(torch.autograd.grad(loss, t)[0])
    return torch.stack(rows)


def minibatch_noise(per_sample: torch.Tensor, b: int) -> float:
    """tr Cov(g_B) for B uniform without replacement: (n - b) / (b (n - 1)) * (1/n) sum_i ||g_i - g||^2."""
    n = len(per_sample)
    spread = (per_sample - per_sample.mean(0)).pow(2).sum(1).mean()
    return float(spread) * (n - b) / (b * (n - 1))


# ---- param_norm, dist_init --------------------------------------------------------------------------------


@pytest.mark.parametrize("problem", [MLP, CNN])
def test_param_norm_is_the_norm_of_the_flat_parameter_vector(problem):
    model = problem.model()
    assert param_norm(model) == pytest.approx(float(flat_theta(model).norm()), rel=1e-14)
    frozen = next(model.parameters())
    frozen.requires_grad_(False)  # only trainable parameters count
    rest = torch.cat([p.detach().reshape(-1) for p in model.parameters() if p.requires_grad])
    assert param_norm(model) == pytest.approx(float(rest.norm()), rel=1e-14)


def test_param_norm_moves_under_the_rescaling_as_the_weights_do():
    model = MLP.model()
    alpha, mods = 10.0, dict(model.named_modules())
    moved = rescale_unit(model, "fc1", alpha, copy_model=True)
    sq = lambda *ps: sum(float(p.detach().pow(2).sum()) for p in ps)  # noqa: E731
    incoming, outgoing = sq(mods["fc1"].weight, mods["fc1"].bias), sq(mods["fc2"].weight)
    expected = sq(*model.parameters()) + incoming * (alpha**2 - 1) + outgoing * (alpha**-2 - 1)
    assert param_norm(moved) == pytest.approx(math.sqrt(expected), rel=1e-12)


def test_dist_init_is_the_distance_of_the_flat_parameter_vectors():
    start, now = MLP.model(), MLP.variant(seed=7).model()
    assert dist_init(now, start) == pytest.approx(float((flat_theta(now) - flat_theta(start)).norm()), rel=1e-14)
    assert dist_init(start, MLP.model()) == 0.0  # the same seed builds the same network
    with pytest.raises(ValueError, match="does not have this network's parameters"):
        dist_init(now, CNN.model())


def test_dist_init_is_switched_on_with_its_initial_network_and_refused_without():
    model, loss_fn, x, y = MLP.make()
    start = MLP.variant(seed=3).model()
    out = registry.compute_measures(model, loss_fn, x, y, {"dist_init": {}, "param_norm": {}}, initial=start)
    assert out == {"param_norm": pytest.approx(float(flat_theta(model).norm()), rel=1e-14),
                   "dist_init": pytest.approx(float((flat_theta(model) - flat_theta(start)).norm()), rel=1e-14)}
    with pytest.raises(ValueError, match="dist_init needs the network at initialisation"):
        registry.compute_measures(model, loss_fn, x, y, {"dist_init": {}})


# ---- grad_noise -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("b", [1, 2, 3, 5])
def test_the_reference_formula_is_the_mean_over_every_minibatch(b):
    """The closed form the tests compare with, against all C(n, b) minibatches of the dense gradients."""
    model, loss_fn, x, y = MLP.make()
    per = per_sample_gradients(model, loss_fn, x, y)
    g = per.mean(0)
    subsets = list(itertools.combinations(range(len(x)), b))
    exact = sum(float((per[list(s)].mean(0) - g).pow(2).sum()) for s in subsets) / len(subsets)
    assert minibatch_noise(per, b) == pytest.approx(exact, rel=1e-12)


@pytest.mark.parametrize("problem", [MLP, CNN])
def test_each_draw_is_the_dense_squared_distance_of_its_minibatch_gradient(problem):
    model, loss_fn, x, y = problem.make()
    b, k = 2, 5
    est = grad_noise(model, loss_fn, x, y, b, k, torch.Generator().manual_seed(4), chunk_size=2)
    per = per_sample_gradients(model, loss_fn, x, y)
    g, gen = per.mean(0), torch.Generator().manual_seed(4)
    d = torch.tensor([float((per[torch.randperm(len(x), generator=gen)[:b]].mean(0) - g).pow(2).sum())
                      for _ in range(k)], dtype=torch.float64)
    assert est.value == pytest.approx(float(d.mean()), rel=1e-10)
    assert est.se == pytest.approx(float(d.std() / math.sqrt(k)), rel=1e-8) and est.samples == k


def test_grad_noise_is_unbiased_and_its_standard_error_is_calibrated(one_thread):
    model, loss_fn, x, y = MLP.make()
    exact = minibatch_noise(per_sample_gradients(model, loss_fn, x, y), 2)
    big = grad_noise(model, loss_fn, x, y, 2, 3000, torch.Generator().manual_seed(0))
    assert abs(big.value - exact) < 4 * big.se and big.se < 0.05 * exact  # unbiased, to a tight error
    small = [grad_noise(model, loss_fn, x, y, 2, 10, torch.Generator().manual_seed(s)) for s in range(300)]
    spread = float(torch.tensor([e.value for e in small], dtype=torch.float64).std())
    typical_se = math.sqrt(sum(e.se**2 for e in small) / len(small))
    assert typical_se == pytest.approx(spread, rel=0.2)  # the reported error is the estimates' real spread


def test_a_full_batch_has_no_noise_and_the_setting_reaches_the_measure():
    model, loss_fn, x, y = MLP.make()
    assert grad_noise(model, loss_fn, x, y, len(x), 4, torch.Generator().manual_seed(0)).value == pytest.approx(
        0.0, abs=1e-25)
    out = registry.compute_measures(model, loss_fn, x, y, {"grad_noise": {"batches": 6}},
                                    torch.Generator().manual_seed(2), batch_size=3)
    direct = grad_noise(model, loss_fn, x, y, 3, 6, torch.Generator().manual_seed(2))
    assert out == {"grad_noise": pytest.approx(direct.value, rel=1e-15), "grad_noise_se": pytest.approx(direct.se)}
    with pytest.raises(ValueError, match="grad_noise.batches must be > 1"):
        registry.plan({"grad_noise": {"batches": 1}})
