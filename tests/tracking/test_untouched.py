"""A checkpoint leaves the training state as it was: modes, parameters, requires_grad, gradients, BatchNorm
statistics and every global random stream; a tracked loop trains exactly as the same loop untracked."""

from __future__ import annotations

import random

import numpy as np
import torch
from torch import nn

from sharpcomp.tracking.tracker import Tracker
from sharpcomp.tracking.untouched import untouched
from tests import problems

MEASURES = {"hessian_max": {"n": 10, "max_iter": 20}, "average": {"draws": 4, "batch_size": 10},
            "batch_sharpness": {"batches": 2, "batch_size": 4}, "grad_norm": {},
            "worst_case": {"batches": 2, "batch_size": 4, "steps": 2},
            "noisy": {"_target_": "tests.own_measures.NOISY"}}  # draws from every global random stream


def state(model: nn.Module) -> dict:
    """Everything of the training state, copied (and the gradient tensors themselves, by identity)."""
    params = list(model.parameters())
    return {
        "modes": [m.training for m in model.modules()],
        "params": [p.detach().clone() for p in params],
        "requires_grad": [p.requires_grad for p in params],
        "grad_ids": [None if p.grad is None else id(p.grad) for p in params],
        "grads": [None if p.grad is None else p.grad.clone() for p in params],
        "buffers": [b.clone() for b in model.buffers()],
        "grad_enabled": torch.is_grad_enabled(),
    }


def streams() -> tuple:
    """The next draws of every global stream (drawn on copies: the streams themselves are put back)."""
    t, n, r = torch.get_rng_state(), np.random.get_state(), random.getstate()
    draws = (torch.rand(4).tolist(), np.random.rand(4).tolist(), [random.random() for _ in range(4)])
    torch.set_rng_state(t)
    np.random.set_state(n)
    random.setstate(r)
    return draws


def assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        if key in ("params", "buffers", "grads"):
            assert len(a[key]) == len(b[key])
            for u, v in zip(a[key], b[key]):
                assert (u is None and v is None) or torch.equal(u, v), key
        else:
            assert a[key] == b[key], key


def mixed_model() -> nn.Module:
    """Conv, BatchNorm (warmed statistics), ReLU, Dropout, Linear in training mode, the Dropout in eval mode
    (modes differ by module), the convolution's bias frozen, gradients present."""
    case = problems.CNN_BATCHNORM_DROPOUT.make()
    model = case.model.train()
    model[3].eval()
    model[0].bias.requires_grad_(False)
    case.loss_fn(model(case.x), case.y).backward()
    return model


def test_untouched_puts_back_whatever_the_block_changes():
    model = mixed_model()
    before, draws = state(model), streams()
    with untouched(model):
        model.train()
        model(torch.randn(8, 1, 6, 6))  # BatchNorm statistics move, dropout draws
        with torch.no_grad():
            for p in model.parameters():
                p.add_(1.0)
                p.requires_grad_(not p.requires_grad)
                if p.grad is not None:
                    p.grad.zero_()
        model[-1].weight.grad = None
        torch.rand(3), np.random.rand(3), random.random()
        torch.set_grad_enabled(False)
    assert_same(state(model), before)
    assert streams() == draws


def test_untouched_puts_back_when_the_block_raises():
    model = mixed_model()
    before = state(model)
    try:
        with untouched(model):
            model.eval()
            next(model.parameters()).data.mul_(3)
            raise RuntimeError("a measure failed")
    except RuntimeError:
        pass
    assert_same(state(model), before)


def augmented_loop(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn, steps: int, tracker=None) -> list:
    """A loop drawing from every global stream (dropout, a random flip by numpy, noise scaled by Python's
    random); with ``tracker``, each checkpoint's state is compared with the state just before it."""
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.05, momentum=0.9)
    seen = []
    for it in range(steps):
        xb = x.flip(-1) if np.random.rand() < 0.5 else x
        xb = xb + random.random() * 0.1 * torch.randn_like(xb)
        opt.zero_grad()
        loss = loss_fn(model(xb), y)
        loss.backward()
        opt.step()
        if tracker is not None:
            before = state(model)
            report = tracker.step(it + 1, loss=loss.detach())
            assert_same(state(model), before)
            seen.append(report is not None)
    return seen


def test_a_tracked_loop_trains_exactly_as_the_untracked_one(tmp_path, one_thread):
    case = problems.CNN_BATCHNORM_DROPOUT.make()
    runs = []
    for tracked in (False, True):
        torch.manual_seed(11), np.random.seed(11), random.seed(11)
        model = mixed_model()
        tracker = None
        if tracked:
            tracker = Tracker(tmp_path / "run", model, case.loss_fn, train_samples=(case.x, case.y),
                              test_samples=(case.x, case.y), steps=6, every=2, batch_size=5, measures=MEASURES,
                              metrics={"n": 6, "sample_sets": ["train", "test", "misclassified"]}, progress=False)
        seen = augmented_loop(model, case.x, case.y, case.loss_fn, 6, tracker)
        if tracker is not None:
            tracker.close()
            assert seen == [False, True, False, True, False, True]
            assert all(r.train_row.get("hessian_max") is not None for r in tracker.reports)
        runs.append((state(model), streams()))
    for run in runs:  # two networks: their gradients are different tensors, with the same values
        del run[0]["grad_ids"]
    assert_same(runs[0][0], runs[1][0])
    assert runs[0][1] == runs[1][1]
