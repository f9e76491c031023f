"""The rescaling symmetry found on the traced graph of any network: residual additions couple units across
blocks, an eval-mode BatchNorm's (gamma, beta) are a producer and its input breaks the symmetry; every
rescaling found leaves f unchanged (brute force, float64), and the tangents are annihilated by the
Jacobian; the projector tests of tests/measures/test_flatness.py cover the quotient algebra."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from sharpcomp.measures.linalg import param_space
from sharpcomp.measures.symmetry import orbits as symmetry
from sharpcomp.measures.symmetry.graph import Group, TraceError, analyse
from sharpcomp.models import build_model
from tests.nets import SmallResNet
from tests.problems import RESIDUAL

DT = torch.float64


def rescaled(model, groups, gen):
    """A copy of ``model`` with every group's unit j scaled by its own a_j in (0.2, 5): rows (and biases,
    BatchNorm's gamma and beta) of the producers times a_j, input columns of the consumers divided by a_j."""
    out = copy.deepcopy(model)
    mods = dict(out.named_modules())
    with torch.no_grad():
        for g in groups:
            a = torch.exp(torch.empty(g.units, dtype=DT).uniform_(-1.6, 1.6, generator=gen))
            for name in g.producers:
                for p in mods[name].parameters(recurse=False):
                    p.mul_(a.reshape(-1, *[1] * (p.dim() - 1)))
            for name, block in g.consumers:
                w = mods[name].weight
                w.view(w.shape[0], g.units, -1).div_(a[None, :, None])
                assert w.view(w.shape[0], g.units, -1).shape[2] == block
    return out


def test_groups_of_a_residual_network():
    groups, unknown = analyse(RESIDUAL.model())
    assert unknown == []
    assert groups == [
        Group(3, ("stem.1", "blocks.0.bn2", "blocks.1.bn2"), (("blocks.0.conv1", 9), ("blocks.1.conv1", 9), ("fc", 4))),
        Group(3, ("blocks.0.bn1",), (("blocks.0.conv2", 9),)),
        Group(3, ("blocks.1.bn1",), (("blocks.1.conv2", 9),)),
    ]


@pytest.mark.parametrize("make", [RESIDUAL.variant(depth=1).model, RESIDUAL.model,
                                  lambda: build_model("vgg10", width=0.25, seed=0).to(DT).eval()])
def test_every_rescaling_found_leaves_f_unchanged(make):
    model = make()
    shape = (2, 8, 8) if isinstance(model, SmallResNet) else (3, 32, 32)
    x = torch.rand(5, *shape, dtype=DT)
    groups, _ = analyse(model)
    assert groups
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        f = model(x)
        for _ in range(3):
            g = rescaled(model, groups, gen)
            assert not all(torch.equal(p, q) for p, q in zip(model.parameters(), g.parameters()))
            assert (g(x) - f).abs().max() <= 1e-6 * f.abs().max()


def test_a_convolution_before_batchnorm_is_not_rescalable_in_eval_mode():
    """The decision in the module docstring: scaling the stem convolution's channel (and dividing what reads
    the BatchNorm's output) changes f, because the running mean is not scaled with it."""
    model = RESIDUAL.variant(depth=1).model()
    x = torch.rand(4, 2, 8, 8, dtype=DT)
    fake = [Group(3, ("stem.0",), (("blocks.0.conv1", 9), ("fc", 4)))]
    with torch.no_grad():
        moved = rescaled(model, fake, torch.Generator().manual_seed(0))(x) - model(x)
    assert moved.abs().max() > 1e-3


def test_tangents_of_a_residual_network_are_annihilated_by_the_jacobian():
    model = RESIDUAL.model()
    x = torch.rand(3, 2, 8, 8, dtype=DT)
    V = symmetry.SymmetryTangents(model)
    assert V.r == 9
    vd = V.dense()
    params = list(model.parameters())

    def f(*ps):
        return torch.func.functional_call(model, dict(zip([n for n, _ in model.named_parameters()], ps)), (x,))

    n_out = f(*params).numel()
    jac = torch.cat([j.reshape(n_out, -1) for j in torch.autograd.functional.jacobian(f, tuple(params))], dim=1)
    assert (jac @ vd).abs().max() < 1e-10 * max(1.0, float(jac.abs().max()))
    torch.testing.assert_close(V.gram(), vd.T @ vd, rtol=1e-12, atol=1e-12)
    c = torch.randn(V.r, dtype=DT)
    torch.testing.assert_close(param_space.flat(V.matvec(c)), vd @ c)
    d = [torch.randn_like(p) for p in params]
    torch.testing.assert_close(V.rmatvec(d), vd.T @ param_space.flat(d))
    g = [torch.randn_like(p) for p in params]  # Mq = V^T (D g), D_j = +-1 where v_j = D_j theta
    signs = torch.sign(vd) * torch.sign(param_space.flat(params))[:, None]
    want = vd.T @ (signs * param_space.flat(g)[:, None])
    torch.testing.assert_close(V.gram_like(g), want, rtol=1e-12, atol=1e-12)
    proj = symmetry.quotient_projector(model, ridge=0.0)
    pv = param_space.flat(proj(V.matvec(c)))
    assert pv.abs().max() < 1e-10 * vd.abs().max()


def test_untraceable_networks_are_one_line():
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(2, 2)

        def forward(self, x):
            return self.fc(x) if x.sum() > 0 else x

    with pytest.raises(TraceError, match="Branchy cannot be traced by torch.fx") as err:
        analyse(Branchy())
    assert "\n" not in str(err.value)
    groups, unknown = analyse(nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.LayerNorm(3), nn.Linear(3, 1)))
    assert groups == [] and unknown == ["2 (LayerNorm)"]


@pytest.mark.slow
def test_quotient_trace_and_reparam_on_a_residual_network_run(in_tmp, monkeypatch, capsys):
    import math

    from sharpcomp.cli import main
    from sharpcomp.results.records import read_metrics
    from tests.conftest import REPO, TINY

    monkeypatch.syspath_prepend(str(REPO))
    data = [a for a in TINY if not a.startswith("model")]
    args = ["train", *data, "model=custom", "model._target_=tests.nets.SmallResNet", "+model.width=2",
            "metrics.flatness.quotient_trace={probes:2,n:8}"]
    assert main(args) == 0, capsys.readouterr().err
    (run,) = [p.parent for p in (in_tmp / "outputs").rglob("checkpoint.pt")]
    rows = read_metrics(run)
    train_rows = rows[rows.sample_set == "train"]
    assert train_rows.quotient_trace.notna().all() and train_rows.quotient_trace_gap.map(math.isfinite).all()
    capsys.readouterr()
    # a stored config never chooses code: the user names their own network again
    assert main(["reparam", str(run), "alpha=3", "probes=2", "model._target_=tests.nets.SmallResNet"]) == 0, \
        capsys.readouterr().err
    out = capsys.readouterr().out
    assert "layer fc" not in out and "rescaled by alpha=3" in out and "unchanged:" in out
