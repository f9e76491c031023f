"""Loss landscapes: filter normalisation, the vmapped grid against one forward pass per point, interpolation."""

from __future__ import annotations

import copy

import pytest
import torch

from sharpcomp.measures.landscape import slices as landscape
from tests import problems
from tests.problems import mse

pytestmark = pytest.mark.usefixtures("one_thread")


def test_filter_normalised_direction():
    model = problems.CNN_BATCHNORM_EVAL.make().model
    base = landscape.parameters(model)
    d = landscape.filter_normalized_direction(base, torch.Generator().manual_seed(0))
    for name, p in base.items():
        if p.dim() <= 1:  # biases and BatchNorm parameters: not perturbed
            assert torch.equal(d[name], torch.zeros_like(p))
        else:
            dn = d[name].reshape(p.shape[0], -1).norm(dim=1)
            torch.testing.assert_close(dn, p.reshape(p.shape[0], -1).norm(dim=1))


@pytest.mark.parametrize("problem", [problems.MLP_CLASSIFICATION, problems.CNN_MAXPOOL, problems.CNN_BATCHNORM_EVAL],
                         ids=str)
def test_vmapped_grid_equals_one_forward_pass_per_point(problem):
    model, _, x, y = problem.make()
    before = copy.deepcopy(model.state_dict())
    gen = torch.Generator().manual_seed(1)
    r = landscape.surface_2d(model, mse, x, y, points=5, span=0.8, generator=gen, chunk=7, batch_size=4)
    gen = torch.Generator().manual_seed(1)
    base = landscape.parameters(model)
    d1 = landscape.filter_normalized_direction(base, gen)
    d2 = landscape.filter_normalized_direction(base, gen)
    ga, gb = torch.meshgrid(r["a"], r["b"], indexing="ij")
    coef = torch.stack([ga.reshape(-1), gb.reshape(-1)], 1)
    loss, acc = landscape.loop_reference(model, mse, x, y, base, [d1, d2], coef)
    torch.testing.assert_close(r["loss"].reshape(-1), loss, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(r["acc"].reshape(-1), acc, rtol=0, atol=1e-12)
    centre = r["loss"][2, 2]
    assert float(centre) == pytest.approx(float(mse(model(x), y)), rel=1e-12)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


def test_interpolation_hits_both_networks():
    a, _, x, y = problems.CNN_MAXPOOL.make()
    b = problems.CNN_MAXPOOL.variant(seed=1).make().model
    r = landscape.interpolation(a, b, mse, x, y, points=5, lo=-0.5, hi=1.5, chunk=2, batch_size=3)
    assert r["t"].tolist() == [-0.5, 0.0, 0.5, 1.0, 1.5]
    assert float(r["loss"][1]) == pytest.approx(float(mse(a(x), y)), rel=1e-12)
    assert float(r["loss"][3]) == pytest.approx(float(mse(b(x), y)), rel=1e-12)
    mid = copy.deepcopy(a)
    with torch.no_grad():
        for p, q in zip(mid.parameters(), b.parameters()):
            p.mul_(0.5).add_(0.5 * q)
    assert float(r["loss"][2]) == pytest.approx(float(mse(mid(x), y)), rel=1e-12)
    with pytest.raises(ValueError):
        landscape.interpolation(a, problems.MLP_CLASSIFICATION.model(), mse, x, y)
