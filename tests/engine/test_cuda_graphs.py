"""CUDA-graph steps (sharpcomp.engine.cuda_graphs): when they apply, and (on CUDA only) that a replayed step
equals the eager step -- for a toy step, for one run (PlainStepper) and for an ensemble (EnsembleStepper)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from sharpcomp.engine.cuda_graphs import GraphedStep, graphs_apply
from tests.conftest import random_images

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def test_graphs_apply(capsys):
    assert not graphs_apply(torch.device("cpu"), "auto")
    assert not graphs_apply(torch.device("cuda"), "off")
    assert not graphs_apply(torch.device("cuda"), "auto", "SAM synchronises", "single run")
    assert "single run: no CUDA graph (SAM synchronises); training eagerly" in capsys.readouterr().err
    assert graphs_apply(torch.device("cuda"), "auto")


@cuda
def test_graphed_step_replays_the_eager_step():
    dev = torch.device("cuda")
    x = torch.randn(64, 5, device=dev)
    w = torch.zeros(5, device=dev, requires_grad=True)

    def fn(idx):
        w.grad = None
        loss = (x[idx] @ w - 1).square().mean()
        loss.backward()
        with torch.no_grad():
            w.sub_(0.1 * w.grad)
        return loss.detach()

    ref = w.detach().clone().requires_grad_(True)
    g = GraphedStep(fn, lambda: [w], torch.arange(8, device=dev), lambda: setattr(w, "grad", None))
    assert torch.equal(w.detach(), ref.detach())  # the warm-up steps were undone
    for s in range(4):
        idx = torch.arange(8 * s, 8 * s + 8, device=dev)
        loss = g.step(idx).clone()
        expect = (x[idx] @ ref - 1).square().mean()
        expect.backward()
        with torch.no_grad():
            ref.sub_(0.1 * ref.grad)
        ref.grad = None
        torch.testing.assert_close(loss, expect.detach())
    torch.testing.assert_close(w.detach(), ref.detach())
    with pytest.raises(ValueError, match="shape"):
        g.step(torch.arange(4, device=dev))


def _steppers(k: int, graph: str):
    from sharpcomp.engine.ensemble import EnsembleStepper
    from sharpcomp.engine.setup import build
    from sharpcomp.engine.steppers import PlainStepper
    from sharpcomp.settings import defaults, settings

    dev = torch.device("cuda")
    data = random_images(200, 50, name="toy", device=dev)
    ss = []
    for j in range(k):
        cfg = defaults(model="mlp4", data="fashion_mnist")
        cfg.update(lr=(0.05, 0.1, 0.2)[j % 3], seed=j, device="cuda", cuda_graph=graph, progress=False)
        ss.append(settings(cfg))
    if k == 1:
        return PlainStepper(build(ss[0], data, dev), ss[0], data, 10), data
    members = [SimpleNamespace(settings=s, run=SimpleNamespace(resume=None)) for s in ss]
    return EnsembleStepper(members, data), data


@cuda
@pytest.mark.parametrize("k", [1, 3])
def test_stepper_graph_equals_eager(k):
    eager, data = _steppers(k, "off")
    graph, _ = _steppers(k, "auto")
    gen = torch.Generator().manual_seed(1)
    for _ in range(12):
        idx = torch.stack([torch.randperm(200, generator=gen)[:20] for _ in range(k)]).cuda()
        torch.testing.assert_close(graph.step(idx), eager.step(idx), rtol=1e-5, atol=1e-6)
    assert graph.graphed is not None and eager.graphed is None
    for a, b in zip(graph.models(), eager.models()):
        for p, q in zip(a.parameters(), b.parameters()):
            torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
