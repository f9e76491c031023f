"""sharpcomp.optim.SAM: one step against a hand-computed step (float64)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from sharpcomp.optim import SAM
from tests.problems import MLP_REGRESSION

pytestmark = pytest.mark.usefixtures("one_thread")


def loss_at(model, flat, x, y):
    """Loss of ``model`` with its parameters replaced by ``flat`` (a function of flat alone)."""
    params, i = [], 0
    for p in model.parameters():
        params.append(flat[i:i + p.numel()].view_as(p))
        i += p.numel()
    w1, b1, w2, b2 = params
    out = F.linear(torch.relu(F.linear(x, w1, b1)), w2, b2)
    return F.mse_loss(out, y)


def grad_at(model, flat, x, y):
    flat = flat.detach().requires_grad_(True)
    return torch.autograd.grad(loss_at(model, flat, x, y), flat)[0]


def closure_for(model, opt, x, y, calls):
    def closure():
        opt.zero_grad()
        loss = F.mse_loss(model(x), y)
        loss.backward()
        calls.append(float(loss.detach()))
        return loss
    return closure


@pytest.mark.parametrize("adaptive", [False, True])
def test_one_sam_step_by_hand(adaptive):
    model, _, x, y = MLP_REGRESSION.make()
    lr, rho = 0.1, 0.05
    theta = torch.cat([p.detach().reshape(-1) for p in model.parameters()]).clone()
    g = grad_at(model, theta, x, y)
    if adaptive:
        t = theta.abs()
        e = rho * t**2 * g / (t * g).norm()
    else:
        e = rho * g / g.norm()
    g_sam = grad_at(model, theta + e, x, y)
    expected = theta - lr * g_sam
    loss0 = float(loss_at(model, theta, x, y))

    opt = SAM(model.parameters(), lr=lr, rho=rho, adaptive=adaptive)
    calls = []
    loss = opt.step(closure_for(model, opt, x, y, calls))
    after = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    torch.testing.assert_close(after, expected, rtol=1e-10, atol=1e-12)
    assert abs(float(loss.detach()) - loss0) < 1e-14 and len(calls) == 2
    assert calls[1] > calls[0]  # the second evaluation is at the (ascent) perturbed point
    grads = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
    torch.testing.assert_close(grads, g_sam, rtol=1e-10, atol=1e-12)


def test_rho_zero_is_plain_sgd_and_bad_arguments():
    model, _, x, y = MLP_REGRESSION.variant(seed=1).make()
    twin = MLP_REGRESSION.variant(seed=1).make().model
    sam = SAM(model.parameters(), lr=0.2, rho=0.0)
    sgd = torch.optim.SGD(twin.parameters(), lr=0.2)
    for _ in range(3):
        sam.step(closure_for(model, sam, x, y, []))
        sgd.step(closure_for(twin, sgd, x, y, []))
    for a, b in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-13, atol=1e-15)
    with pytest.raises(RuntimeError, match="closure"):
        sam.step()
    with pytest.raises(ValueError):
        SAM(model.parameters(), lr=0.0)
    with pytest.raises(ValueError):
        SAM(model.parameters(), lr=0.1, rho=-1.0)
