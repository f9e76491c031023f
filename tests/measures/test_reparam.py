"""sharpcomp.measures.symmetry.reparam: the rescaling, its invariances, the law S(alpha) = a/alpha^2 + alpha^2 b + c,
the table and the ``sharpcomp reparam`` command."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn
from torch.func import functional_call

from sharpcomp.commands import reparam as reparam_command
from sharpcomp.measures.study.metrics import compute_metrics
from sharpcomp.measures.symmetry.reparam import reparam_table, rescale_unit
from tests import problems
from tests.problems import mse

DT = torch.float64


pytestmark = pytest.mark.usefixtures("one_thread")


MLP, CNN = problems.MLP_3_CLASSES, problems.CNN_MAXPOOL_3_CLASSES


CASES = [(MLP, "fc1"), (MLP, "fc2"), (CNN, "conv1"), (CNN, "conv2"), (CNN, "fc1")]


def input_jacobians(model, x):
    return torch.stack([torch.autograd.functional.jacobian(lambda v: model(v[None])[0], xi).reshape(-1, xi.numel())
                        for xi in x])


@pytest.mark.parametrize("problem,layer", CASES, ids=str)
def test_rescaling_keeps_f_and_the_representation_metrics(problem, layer):
    model, _, x, _ = problem.make()
    f0, j0 = model(x).detach(), input_jacobians(model, x)
    m0 = compute_metrics(model, x, dtype=DT)
    moved = rescale_unit(model, layer, 7.0, copy_model=True)
    assert moved is not model
    torch.testing.assert_close(moved(x), f0, rtol=1e-12, atol=1e-13)
    torch.testing.assert_close(input_jacobians(moved, x), j0, rtol=1e-11, atol=1e-13)
    m1 = compute_metrics(moved, x, dtype=DT)
    for k in ("G", "log_volume", "mls", "local_dim"):
        assert m1[k] == pytest.approx(m0[k], rel=1e-10, abs=1e-13), k
    assert m1["sharpness"] != pytest.approx(m0["sharpness"], rel=1e-3)
    # the original is untouched; in place returns the same object
    torch.testing.assert_close(model(x), f0, rtol=0, atol=0)
    assert rescale_unit(model, layer, 2.0) is model


def param_jacobian_parts(model, x, layer, units=None):
    """sum ||d f / d theta||^2 / n over the rescaled units' incoming entries (a), outgoing entries (b),
    and the rest (c), from a dense Jacobian and masks built from the layer shapes."""
    names = [n for n, _ in model.named_parameters()]
    theta = torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    def f(th):
        d, i = {}, 0
        for n, p in model.named_parameters():
            d[n] = th[i:i + p.numel()].view_as(p)
            i += p.numel()
        return functional_call(model, d, (x,)).reshape(-1)

    jac = torch.autograd.functional.jacobian(f, theta)
    mods = dict(model.named_children())
    keys = [n for n, m in model.named_children() if isinstance(m, (nn.Linear, nn.Conv2d))]
    nxt = keys[keys.index(layer) + 1]
    n_units = mods[layer].weight.shape[0]
    sel = torch.zeros(n_units, dtype=torch.bool)
    sel[list(range(n_units)) if units is None else units] = True
    masks_in, masks_out = [], []
    for n in names:
        p = dict(model.named_parameters())[n]
        mi, mo = torch.zeros_like(p, dtype=torch.bool), torch.zeros_like(p, dtype=torch.bool)
        if n in (f"{layer}.weight", f"{layer}.bias"):
            mi[sel] = True
        if n == f"{nxt}.weight":
            mo.view(p.shape[0], n_units, -1)[:, sel] = True
        masks_in.append(mi.reshape(-1))
        masks_out.append(mo.reshape(-1))
    mi, mo = torch.cat(masks_in), torch.cat(masks_out)
    sq = jac.pow(2).sum(0) / x.shape[0]
    return float(sq[mi].sum()), float(sq[mo].sum()), float(sq[~mi & ~mo].sum())


@pytest.mark.parametrize("problem,layer,units", [(MLP, "fc2", None), (CNN, "conv2", [0, 2]), (CNN, "fc1", None)],
                         ids=str)
def test_sharpness_follows_the_reparametrisation_law(problem, layer, units):
    model, _, x, _ = problem.make()
    a, b, c = param_jacobian_parts(model, x, layer, units)
    assert a > 0 and b > 0
    assert compute_metrics(model, x, dtype=DT)["sharpness"] == pytest.approx(a + b + c, rel=1e-10)
    for alpha in (0.1, 0.5, 3.0, 10.0):
        s = compute_metrics(rescale_unit(model, layer, alpha, units, copy_model=True), x, dtype=DT)["sharpness"]
        assert s == pytest.approx(a / alpha**2 + alpha**2 * b + c, rel=1e-9), alpha


def test_rescale_unit_rejects_bad_input():
    model = CNN.make().model
    with pytest.raises(ValueError, match="unknown layer 'fc9'.*conv1, conv2, fc1"):
        rescale_unit(model, "fc9", 2.0)
    with pytest.raises(ValueError, match="no rescaling symmetry"):
        rescale_unit(model, "fc2", 2.0)
    for alpha in (0.0, -1.0, math.nan, math.inf, "x"):
        with pytest.raises(ValueError, match="alpha"):
            rescale_unit(model, "fc1", alpha)
    with pytest.raises(ValueError, match="unit 4 out of range"):
        rescale_unit(model, "fc1", 2.0, units=[0, 4])


def test_reparam_table_marks_what_moved():
    model, _, x, y = CNN.make()
    model = model.float()  # the table works on a float64 copy of whatever it gets
    before = {k: v.clone() for k, v in model.state_dict().items()}
    df = reparam_table(model, x.float(), y, mse, "conv2", 10.0, probes=4)
    assert list(df.columns) == ["before", "after", "rel_change", "moved", "expected"]
    invariant = ["output_change", "loss", "G", "log_volume", "mls", "local_dim", "worst_case_adaptive"]
    moving = ["sharpness", "hessian_trace", "quotient_trace", "worst_case", "fisher_trace", "grad_disagreement",
              "hessian_max", "ggn_max", "batch_sharpness", "nonuniformity"]
    assert not df.loc[invariant, "moved"].any(), df
    assert df.loc[moving, "moved"].all(), df
    # the debate's measures: the adaptive average and the Fisher-ball regret stay, the rest move
    assert not df.loc[["average_adaptive", "regret_kl"], "moved"].any(), df
    assert df.loc[["average", "keskar", "contrastive"], "moved"].all(), df
    # conv1 acts on the raw input: its Eq. 28 analogues are rows, finite, and a deeper rescaling leaves them
    assert df.loc[["bound_b_conv", "bound_c_conv"], "before"].notna().all(), df
    assert not df.loc[["bound_b_conv", "bound_c_conv"], "moved"].any(), df
    # every row as its measure's declaration expects
    defined = df[np.isfinite(df["before"].astype(float))]
    assert (defined["moved"] == (defined["expected"] == "moves")).all(), defined
    assert df.loc["sharpness", "rel_change"] == pytest.approx(
        (df.loc["sharpness", "after"] - df.loc["sharpness", "before"]) / df.loc["sharpness", "before"])
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    same = reparam_table(model, x.float(), y, mse, "conv2", 1.0, probes=0)
    assert not same["moved"].any() and "hessian_trace" not in same.index


# ---- the command ---------------------------------------------------------------------------------------

@pytest.fixture
def fake_run(tmp_path, monkeypatch):
    model, _, x, y = MLP.make()
    cfg = {"model": {"name": "tiny", "width": 1.0, "outputs": 3}, "metrics": {"n": 7, "log_volume_rank": None}}

    def load_run(run_dir, target=None):
        if not (run_dir / "checkpoint.pt").exists():
            raise FileNotFoundError(f"no checkpoint at {run_dir / 'checkpoint.pt'}")
        return SimpleNamespace(model=model.float(), config=cfg, sample_x=x.float(), sample_y=y, loss_fn=mse)

    monkeypatch.setattr(reparam_command, "load_run", load_run)
    (tmp_path / "checkpoint.pt").write_bytes(b"")
    return tmp_path


def test_main_prints_the_table(fake_run, capsys):
    assert reparam_command.main([str(fake_run), "alpha=10", "layer=fc1", "probes=3"]) == 0
    out = capsys.readouterr().out
    assert "layer fc1 (all units) rescaled by alpha=10" in out
    assert "sharpness" in out and "moved:" in out and "unchanged:" in out
    unchanged = [line for line in out.splitlines() if line.startswith("unchanged:")][0]
    assert "G" in unchanged and "local_dim" in unchanged
    # default layer: the last hidden one; `reparam` as first word is accepted
    assert reparam_command.main(["reparam", str(fake_run), "units=0,2", "probes=0"]) == 0
    assert "layer fc2 (units 0,2)" in capsys.readouterr().out


def test_main_n_takes_the_first_sample_points_and_shows_progress(fake_run, capsys):
    assert reparam_command.main([str(fake_run), "layer=fc1", "probes=0", "n=3"]) == 0
    captured = capsys.readouterr()
    assert ", 3 train sample points, float64" in captured.out
    stages = [line for line in captured.err.splitlines() if line.startswith("sharpcomp reparam: [")]
    assert any(line.endswith("before: metrics") for line in stages)
    assert any(line.endswith("after: hessian_max") for line in stages)


@pytest.mark.parametrize("args,msg", [
    (["{run}/missing"], "no run directory"),
    (["{run}", "layer=fc9"], "unknown layer 'fc9'"),
    (["{run}", "layer=fc3"], "no rescaling symmetry"),
    (["{run}", "alpha=0"], "alpha must be a positive number"),
    (["{run}", "alpha=-2"], "alpha must be a positive number"),
    (["{run}", "alpha=ten"], "alpha must be a positive number"),
    (["{run}", "beta=1"], "unknown option 'beta'"),
    (["{run}", "n=0"], "n must be >= 1"),
    (["{run}", "n=all"], "n must be an integer"),
    (["{run}", "units=0,9", "layer=fc1"], "unit 9 out of range"),
    ([], "missing RUN_DIR"),
])
def test_main_bad_input_is_one_line_without_traceback(fake_run, capsys, args, msg):
    rc = reparam_command.main([a.format(run=fake_run) for a in args])
    err = capsys.readouterr().err
    assert rc != 0 and msg in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_main_without_checkpoint(tmp_path, capsys):
    rc = reparam_command.main([str(tmp_path)])  # the real load_run: an empty folder has no checkpoint
    err = capsys.readouterr().err
    assert rc != 0 and "cannot load run" in err and len(err.strip().splitlines()) == 1


def test_main_accepts_hydra_run_folders_with_equals_signs(fake_run, tmp_path, capsys):
    hydra_named = tmp_path / "lr=0.1,seed=0"
    hydra_named.mkdir()
    (hydra_named / "checkpoint.pt").write_bytes(b"")
    assert reparam_command.main([str(hydra_named), "alpha=10", "layer=fc1", "probes=3"]) == 0
    assert "unchanged" in capsys.readouterr().out


def test_column_names_come_from_one_schema():
    """reparam's rows, the measures' columns and the metric names are the declarations' names."""
    from sharpcomp.measures import registry
    from sharpcomp.measures.study import metrics
    from sharpcomp.results import columns, records

    assert metrics.METRIC_NAMES == records.METRIC_COLUMNS == columns.METRIC_COLUMNS
    assert "settings" in columns.IDENTITY_COLUMNS
    model, _, x, y = MLP.make()
    df = reparam_table(model, x, y, mse, "fc1", 2.0, probes=2)
    declared = {c: v for m in registry.measures().values() for c, v in m.reparam.items()}
    assert set(df.index) - {"output_change", "loss"} == set(declared)
    assert (df["expected"].drop(["output_change", "loss"]) == pd.Series(declared)).all()
    every = dict.fromkeys(registry.switchable(), {})  # every measure on, default settings
    out = registry.compute_measures(model, mse, x, y, every, torch.Generator().manual_seed(0),
                                    initial=MLP.model())  # the network at initialisation (dist_init)
    assert set(out) == set(columns.FLATNESS_COLUMNS)
    assert set(columns.FLATNESS_MEASURES) | set(columns.FLATNESS_SE.values()) <= set(out)


@pytest.mark.parametrize("units", [None, [0, 2]])
def test_invariant_sharpness_does_not_move_while_s_and_nmls_do(units):
    """Rescaling every unit of a layer: S and NMLS move, sharpness_inv (sum_l ||W_l||^2 S_l) does not;
    rescaling some units only moves it too (it is invariant to layer-wise rescaling only)."""
    model, _, x, y = MLP.make()
    df = reparam_table(model, x, y, mse, "fc1", 3.0, units=units, probes=2)
    assert not df.loc["output_change", "moved"] and not df.loc["mls", "moved"]
    assert df.loc["sharpness", "moved"] and df.loc["nmls", "moved"]
    assert df.loc["sharpness_inv", "moved"] == (units is not None)
    if units is None:
        assert df.loc["sharpness_inv", "after"] == pytest.approx(df.loc["sharpness_inv", "before"], rel=1e-10)
