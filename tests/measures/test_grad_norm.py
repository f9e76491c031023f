"""grad_norm against a dense float64 gradient, and the invariances it has and has not."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch.func import functional_call

from sharpcomp.measures import registry
from sharpcomp.measures.baseline.grad_norm import grad_norm
from sharpcomp.measures.symmetry.reparam import rescale_unit
from tests import problems
from tests.reference import as_dict, flat_theta, mse

MLP = problems.PROBLEMS["mlp_classification"]
CNN = problems.PROBLEMS["cnn_maxpool"]


def dense_grad_norm(model, x, y) -> float:
    """||d L / d theta|| by autograd of the loss as a function of the flat float64 parameter vector."""
    theta = flat_theta(model).detach().requires_grad_(True)
    loss = mse(functional_call(model, as_dict(model, theta), (x,)), y)
    (g,) = torch.autograd.grad(loss, theta)
    return float(g.norm())


@pytest.mark.parametrize("problem", [MLP, CNN])
@pytest.mark.parametrize("chunk", [None, 3])
def test_grad_norm_is_the_norm_of_the_dense_gradient(problem, chunk):
    model, _, x, y = problem.make(torch.float64)
    assert grad_norm(model, mse, x, y, chunk) == pytest.approx(dense_grad_norm(model, x, y), rel=1e-12)


def test_it_is_zero_where_the_loss_is_stationary_and_leaves_the_model_as_it_was():
    model, _, x, _ = MLP.make(torch.float64)
    fitted = model(x).detach()  # the outputs themselves as targets: loss 0, a minimum
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    assert grad_norm(model, lambda out, t: ((out - t) ** 2).sum(1).mean(), x, fitted) == 0.0
    assert model.training and all(p.grad is None for p in model.parameters())
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


def test_unit_permutations_leave_it_and_rescaling_moves_it_as_the_chain_rule_says():
    model, _, x, y = MLP.make(torch.float64)
    base = grad_norm(model, mse, x, y)
    first, second = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)][:2]
    mods = dict(model.named_modules())
    permuted = copy.deepcopy(model)
    pm = dict(permuted.named_modules())
    perm = torch.randperm(mods[first].out_features, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():  # the same function, its hidden units in another order
        pm[first].weight.copy_(mods[first].weight[perm])
        pm[first].bias.copy_(mods[first].bias[perm])
        pm[second].weight.copy_(mods[second].weight[:, perm])
    torch.testing.assert_close(permuted(x), model(x), rtol=1e-14, atol=1e-14)
    assert grad_norm(permuted, mse, x, y) == pytest.approx(base, rel=1e-12)
    alpha = 10.0
    moved = rescale_unit(model, first, alpha, copy_model=True)
    # incoming entries' gradients scale by 1/alpha, outgoing ones by alpha: the exact prediction
    names = [n for n, _ in model.named_parameters()]
    g = torch.autograd.grad(mse(model(x), y), list(model.parameters()))
    sq = {n: float(v.pow(2).sum()) for n, v in zip(names, g)}
    incoming, outgoing = sq[f"{first}.weight"] + sq[f"{first}.bias"], sq[f"{second}.weight"]
    expected = sum(sq.values()) - incoming - outgoing + incoming / alpha**2 + outgoing * alpha**2
    assert grad_norm(moved, mse, x, y) == pytest.approx(math.sqrt(expected), rel=1e-10)
    assert not math.isclose(math.sqrt(expected), base, rel_tol=1e-2)  # and it does move


def test_switched_on_it_writes_its_column_from_a_random_subset():
    model, _, x, y = MLP.make(torch.float64)
    out = registry.compute_measures(model, mse, x, y, {"grad_norm": {"n": 4}}, torch.Generator().manual_seed(0))
    idx = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))[:4]
    assert out == {"grad_norm": pytest.approx(grad_norm(model, mse, x[idx], y[idx]), rel=1e-15)}
    with pytest.raises(ValueError, match="grad_norm.n must be > 0"):
        registry.plan({"grad_norm": {"n": 0}})
