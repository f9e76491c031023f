"""sharpcomp.optim: SAM's step against hand-computed steps (float64), over plain SGD, momentum SGD with
weight decay and AdamW; its state and resume; the optimiser configs and classes it refuses."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from sharpcomp.optim import (
    SAM,
    OptimError,
    build_optimizer,
    check_optim_config,
    check_optimizer,
    identity_view,
)
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


# ---------------------------------------------------------------------------------------------
# SAM over a base optimiser


def _flat(model):
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def test_sam_over_momentum_sgd_with_weight_decay_by_hand():
    """Two steps: the base (heavy ball, coupled weight decay) steps with the gradient at the perturbed point."""
    model, _, x, y = MLP_REGRESSION.make()
    lr, rho, mu, wd = 0.1, 0.05, 0.9, 0.01
    theta, buf = _flat(model).clone(), None
    for _ in range(2):
        g = grad_at(model, theta, x, y)
        g_sam = grad_at(model, theta + rho * g / g.norm(), x, y) + wd * theta
        buf = g_sam if buf is None else mu * buf + g_sam
        theta = theta - lr * buf
    opt = SAM(model.parameters(), lr=lr, rho=rho, base=torch.optim.SGD, momentum=mu, weight_decay=wd)
    for _ in range(2):
        opt.step(closure_for(model, opt, x, y, []))
    torch.testing.assert_close(_flat(model), theta, rtol=1e-10, atol=1e-12)


def test_sam_over_adamw_by_hand():
    model, _, x, y = MLP_REGRESSION.make()
    lr, rho, (b1, b2), eps, wd = 0.01, 0.05, (0.9, 0.999), 1e-8, 0.1
    theta = _flat(model).clone()
    m = v = torch.zeros_like(theta)
    for t in range(1, 4):
        g = grad_at(model, theta, x, y)
        g_sam = grad_at(model, theta + rho * g / g.norm(), x, y)
        theta = theta * (1 - lr * wd)
        m, v = b1 * m + (1 - b1) * g_sam, b2 * v + (1 - b2) * g_sam**2
        theta = theta - lr * (m / (1 - b1**t)) / ((v / (1 - b2**t)).sqrt() + eps)
    opt = SAM(model.parameters(), lr=lr, rho=rho, base=torch.optim.AdamW, betas=(b1, b2), eps=eps, weight_decay=wd)
    for _ in range(3):
        opt.step(closure_for(model, opt, x, y, []))
    torch.testing.assert_close(_flat(model), theta, rtol=1e-9, atol=1e-12)


def test_sam_state_holds_the_base_state_and_resumes_exactly():
    """Three steps, then a fresh SAM loaded from the state dict: two more steps equal five uninterrupted."""
    def make():
        model, _, x, y = MLP_REGRESSION.variant(seed=2).make()
        return model, x, y, SAM(model.parameters(), lr=0.05, rho=0.05, base=torch.optim.SGD, momentum=0.9)

    model, x, y, opt = make()
    for _ in range(5):
        opt.step(closure_for(model, opt, x, y, []))
    again, x, y, first = make()
    for _ in range(3):
        first.step(closure_for(again, first, x, y, []))
    state = first.state_dict()
    assert len(state["state"]) == len(list(again.parameters()))  # momentum buffers saved
    resumed = SAM(again.parameters(), lr=0.05, rho=0.05, base=torch.optim.SGD, momentum=0.9)
    resumed.load_state_dict(state)
    for _ in range(2):
        resumed.step(closure_for(again, resumed, x, y, []))
    assert torch.equal(_flat(again), _flat(model))


def test_a_saved_state_of_plain_sam_loads():
    """A state dict of SAM with the plain SGD step (param groups of lr, rho, adaptive only) resumes."""
    model, _, x, y = MLP_REGRESSION.make()
    opt = SAM(model.parameters(), lr=0.1, rho=0.05)
    state = opt.state_dict()
    state["param_groups"] = [{k: g[k] for k in ("lr", "rho", "adaptive", "params")} for g in state["param_groups"]]
    opt.load_state_dict(state)
    opt.step(closure_for(model, opt, x, y, []))
    assert opt.param_groups[0]["momentum"] == 0 and opt.base.param_groups is opt.param_groups


# ---------------------------------------------------------------------------------------------
# configs


BAD_CONFIGS = [
    ({"name": "rmsprop"}, "unknown optimizer 'rmsprop'"),
    ({"name": "sgd", "momentum": 1.0}, "optim.momentum must be in [0, 1), got optim.momentum=1.0"),
    ({"name": "sgd", "momentum": -0.1}, "optim.momentum must be in [0, 1)"),
    ({"name": "sgd", "weight_decay": -1e-4}, "optim.weight_decay must be >= 0, got optim.weight_decay=-0.0001"),
    ({"name": "sgd", "nesterov": True, "momentum": 0.0}, "optim.nesterov=true needs optim.momentum > 0"),
    ({"name": "sgd", "betas": [0.9, 0.99]}, "optim=sgd has no setting 'optim.betas'"),
    ({"name": "adamw", "betas": [0.9, 1.0]}, "optim.betas must be in [0, 1), got optim.betas=1.0"),
    ({"name": "adam", "betas": [0.9]}, "optim.betas must be two numbers"),
    ({"name": "adam", "eps": 0.0}, "optim.eps must be > 0, got optim.eps=0.0"),
    ({"name": "sgd", "lr": 0.1}, "the learning rate is lr="),
    ({"name": "sam", "rho": 0.05, "adaptive": False, "base": "lion"}, "unknown optim.base 'lion'"),
    ({"name": "sam", "rho": 0.05, "adaptive": False, "base": "sgd", "betas": [0.9, 0.9]},
     "optim=sam with base sgd has no setting 'optim.betas'"),
    ({"name": "sam", "rho": 0.05, "adaptive": False, "base": "sgd", "_target_": "torch.optim.RMSprop"},
     "add optim.base=custom"),
    ({"name": "sam", "rho": 0.05, "adaptive": False, "base": "custom", "_target_": None}, "needs optim._target_"),
    ({"name": "custom", "_target_": "???"}, "optim=custom needs optim._target_"),
]


@pytest.mark.parametrize("config,message", BAD_CONFIGS)
def test_bad_optimizer_configs_one_line(config, message):
    with pytest.raises(OptimError) as err:
        check_optim_config(config)
    assert message in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("target,message", [
    ("collections.OrderedDict", r"is not an optimiser \(a torch.optim.Optimizer subclass\), it is the class"),
    ("math.sqrt", "is not an optimiser"),
    ("sharpcomp.optim.SAM", "use optim=sam"),
    ("nowhere.Optimizer", "cannot import optim._target_ 'nowhere.Optimizer'"),
])
def test_a_target_that_is_not_an_optimizer_class_is_refused(target, message):
    with pytest.raises(OptimError, match=message):
        check_optimizer({"name": "custom", "_target_": target}, 0.1)


def test_a_custom_optimizer_gets_its_arguments_and_refuses_bad_ones():
    opt = build_optimizer({"name": "custom", "_target_": "torch.optim.RMSprop", "alpha": 0.5},
                          [torch.zeros(2, requires_grad=True)], 0.01)
    assert type(opt) is torch.optim.RMSprop and opt.param_groups[0]["alpha"] == 0.5
    with pytest.raises(OptimError, match=r"torch.optim.RMSprop\(lr=0.01, colour='red'\) failed: TypeError"):
        check_optimizer({"name": "custom", "_target_": "torch.optim.RMSprop", "colour": "red"}, 0.01)
    sam = build_optimizer({"name": "sam", "rho": 0.1, "adaptive": True, "base": "custom",
                           "_target_": "torch.optim.RMSprop", "alpha": 0.5}, [torch.zeros(2, requires_grad=True)], 0.01)
    assert type(sam.base) is torch.optim.RMSprop and sam.param_groups[0]["alpha"] == 0.5


def test_identity_view_leaves_out_neutral_settings():
    assert identity_view({"name": "sgd", "momentum": 0, "nesterov": False, "weight_decay": 0.0}) == {"name": "sgd"}
    assert identity_view({"name": "sam", "rho": 0.05, "adaptive": False, "base": "sgd", "momentum": None}) == {
        "name": "sam", "rho": 0.05, "adaptive": False}
    assert identity_view({"name": "sgd", "momentum": 0.9, "weight_decay": 5e-4}) == {
        "name": "sgd", "momentum": 0.9, "weight_decay": 5e-4}
    assert identity_view({"name": "adamw", "betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": 0.01})["weight_decay"] \
        == 0.01
