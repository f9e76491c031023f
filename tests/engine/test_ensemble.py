"""Vectorised ensembles: the same records and checkpoints as separate runs, divergence, resume, grouping,
and the Hydra launcher end to end (real Fashion-MNIST, tiny mlp4)."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch
from omegaconf import OmegaConf

from sharpcomp.engine.ensemble import StackedSGD, evaluate_stacked, train_ensemble
from sharpcomp.engine.ensemble_groups import check_compatible, group_compatible
from sharpcomp.engine.evaluation import evaluate
from sharpcomp.engine.train import train
from sharpcomp.results.records import read_metrics
from sharpcomp.results.run_state import CHECKPOINT_FILE
from sharpcomp.settings import ConfigError
from tests.conftest import SHRINK, TINY, compose_train

MEMBERS = [(0.1, 0), (0.05, 1), (0.2, 2)]  # (lr, seed)
IDENTICAL = ["run_id", "iteration", "sample_set", "status", "lr", "seed", "batch", "n_samples", "epoch"]


def _cfg(data_dir, cache_dir, lr, seed, extra=()):
    cfg = compose_train([*SHRINK, f"lr={lr}", f"seed={seed}", *extra])
    OmegaConf.set_struct(cfg, False)
    cfg.data_dir, cfg.cache_dir = str(data_dir), str(cache_dir)
    cfg.metrics.sample_sets = ["train", "misclassified"]
    return cfg


@pytest.fixture(scope="module")
def cfgs(data_dir, cache_dir):
    return [_cfg(data_dir, cache_dir, lr, seed) for lr, seed in MEMBERS]


@pytest.fixture(scope="module")
def refs(cfgs, fmnist_small, tmp_path_factory):
    """The members trained one by one with train.train: the records an ensemble must reproduce."""
    torch.set_num_threads(2)
    root = tmp_path_factory.mktemp("separate")
    out = []
    for i, cfg in enumerate(cfgs):
        train(cfg, root / f"run{i}", data=fmnist_small)
        out.append(read_metrics(root / f"run{i}"))
    return out


def assert_same_records(a: pd.DataFrame, b: pd.DataFrame) -> None:
    a, b = a.drop(columns="wall_time"), b.drop(columns="wall_time")
    assert list(a.columns) == list(b.columns)
    pd.testing.assert_frame_equal(a[IDENTICAL], b[IDENTICAL])
    pd.testing.assert_frame_equal(a, b, rtol=1e-5, atol=1e-7)


def test_ensemble_gives_the_records_and_checkpoints_of_separate_runs(cfgs, refs, fmnist_small, tmp_path):
    dirs = [tmp_path / f"m{i}" for i in range(3)]
    res = train_ensemble(cfgs, dirs, data=fmnist_small)
    assert [r.status for r in res] == ["finished"] * 3 and [r.iteration for r in res] == [12] * 3
    assert [r.rows for r in res] == [8] * 3
    for d, ref in zip(dirs, refs):
        assert_same_records(ref, read_metrics(d))
    # the checkpoint has train.py's format: same keys, a plain SGD optimizer state, the member's config
    state = torch.load(dirs[1] / CHECKPOINT_FILE, weights_only=False)
    assert set(state) == {"run_id", "iteration", "wall_time", "status", "model_state", "optimizer_state", "config"}
    assert state["iteration"] == 12 and state["status"] == "finished" and state["config"]["lr"] == 0.05
    assert state["optimizer_state"]["param_groups"][0]["lr"] == 0.05 and state["optimizer_state"]["state"] == {}
    assert all(t.is_contiguous() and t.untyped_storage().nbytes() == t.numel() * t.element_size()
               for t in state["model_state"].values())  # a copy, not a view of the whole stack


def test_sparse_evaluation_and_stacked_metrics_match_separate_runs(data_dir, cache_dir, fmnist_small, tmp_path,
                                                                   monkeypatch):
    """eval_every=2: the misclassified set of a checkpoint without whole-set evaluation comes from a
    stacked test-set evaluation. The checkpoint metrics are the stacked ones (never member by member)."""
    import sharpcomp.measures.study.stacked as stacked

    cfgs = [_cfg(data_dir, cache_dir, lr, seed, ["eval_every=2"]) for lr, seed in MEMBERS]
    for i, cfg in enumerate(cfgs):
        cfg.metrics.sample_sets = ["train", "test", "misclassified"]
        train(cfg, tmp_path / f"run{i}", data=fmnist_small)

    def refuse(*args, **kwargs):
        raise AssertionError("the ensemble fell back to member-by-member metrics")

    monkeypatch.setattr(stacked, "compute_metrics", refuse)
    dirs = [tmp_path / f"m{i}" for i in range(3)]
    train_ensemble(cfgs, dirs, data=fmnist_small)
    for i, d in enumerate(dirs):
        ref, got = read_metrics(tmp_path / f"run{i}"), read_metrics(d)
        assert set(ref.sample_set) == {"train", "test", "misclassified"} and ref.train_acc.isna().any()
        assert_same_records(ref, got)


def test_vectorised_evaluation_matches_evaluate(cfgs, fmnist_small):
    from sharpcomp.models import build_model

    models = [build_model("mlp4", 10, 0.2, input_shape=(1, 28, 28), seed=s) for s in (0, 1)]
    net = StackedSGD(models, [0.1, 0.2], "mse")
    got = evaluate_stacked(net, fmnist_small.test_x, fmnist_small.test_y, "mse", chunk=128)
    for model, (loss, acc, correct) in zip(models, got):
        ref = evaluate(model, fmnist_small.test_x, fmnist_small.test_y, "mse")
        assert loss == pytest.approx(ref[0], rel=1e-6) and acc == ref[1] and torch.equal(correct, ref[2])


def test_a_diverging_member_is_recorded_and_the_others_finish(cfgs, refs, fmnist_small, data_dir, cache_dir,
                                                              tmp_path):
    bad = _cfg(data_dir, cache_dir, 1e6, 3)
    train(bad, tmp_path / "bad_alone", data=fmnist_small)
    dirs = [tmp_path / "m0", tmp_path / "bad", tmp_path / "m2"]
    res = train_ensemble([cfgs[0], bad, cfgs[2]], dirs, data=fmnist_small)
    assert [r.status for r in res] == ["finished", "diverged", "finished"]
    assert_same_records(refs[0], read_metrics(dirs[0]))
    assert_same_records(refs[2], read_metrics(dirs[2]))
    alone, ens = read_metrics(tmp_path / "bad_alone"), read_metrics(dirs[1])
    assert (ens.status == "diverged").all() and math.isnan(ens.train_loss_running.iloc[-1])
    assert list(ens.iteration) == list(alone.iteration) and list(ens.sample_set) == list(alone.sample_set)
    assert torch.load(dirs[1] / CHECKPOINT_FILE, weights_only=False)["status"] == "diverged"
    # a rerun keeps every verdict and changes nothing
    again = train_ensemble([cfgs[0], bad, cfgs[2]], dirs, data=fmnist_small)
    assert [r.status for r in again] == ["finished", "diverged", "finished"]
    assert_same_records(refs[0], read_metrics(dirs[0]))


class Crash(KeyboardInterrupt):
    pass


def test_resume_after_interrupt_either_way(cfgs, refs, fmnist_small, tmp_path):
    def crash_after_4(it, rows):
        assert len(rows) == 3
        if it == 4:
            raise Crash

    dirs = [tmp_path / f"m{i}" for i in range(3)]
    with pytest.raises(Crash):
        train_ensemble(cfgs, dirs, data=fmnist_small, callback=crash_after_4)
    for d in dirs:
        partial = read_metrics(d)
        assert sorted(partial.iteration.unique()) == [0, 4] and (partial.status == "running").all()
    # member 0 resumed alone by train.train, the others by the ensemble: the uninterrupted records
    assert train(cfgs[0], dirs[0], data=fmnist_small).status == "finished"
    res = train_ensemble(cfgs[1:], dirs[1:], data=fmnist_small)
    assert [r.status for r in res] == ["finished"] * 2
    for d, ref in zip(dirs, refs):
        assert_same_records(ref, read_metrics(d))


def test_members_at_different_iterations(cfgs, refs, fmnist_small, tmp_path):
    """One member interrupted at 4 by a single run, one finished, one new: each goes its own way."""
    dirs = [tmp_path / f"m{i}" for i in range(3)]

    def crash_after_4(it, rows):
        if it == 4:
            raise Crash

    with pytest.raises(Crash):
        train(cfgs[0], dirs[0], data=fmnist_small, callback=crash_after_4)
    train(cfgs[1], dirs[1], data=fmnist_small)
    res = train_ensemble(cfgs, dirs, data=fmnist_small)
    assert [r.status for r in res] == ["finished"] * 3
    for d, ref in zip(dirs, refs):
        assert_same_records(ref, read_metrics(d))


def test_incompatible_runs_are_rejected_and_grouped(cfgs, data_dir, cache_dir, tmp_path):
    other_batch = _cfg(data_dir, cache_dir, 0.1, 5, ["batch=8"])
    with pytest.raises(ConfigError, match="must share 'batch'"):
        train_ensemble([cfgs[0], other_batch], [tmp_path / "a", tmp_path / "b"])
    sam = _cfg(data_dir, cache_dir, 0.1, 6, ["optim=sam"])
    with pytest.raises(ConfigError, match="must share 'optim'"):
        check_compatible([cfgs[0], sam])
    with pytest.raises(ConfigError, match="same run twice"):
        train_ensemble([cfgs[0], cfgs[0]], [tmp_path / "a", tmp_path / "b"])
    with pytest.raises(ConfigError, match="share one output folder"):
        train_ensemble(cfgs[:2], [tmp_path / "a", tmp_path / "a"])
    # lr and seed may differ, chunk_size and progress too; anything else splits the groups
    chunked = _cfg(data_dir, cache_dir, 0.3, 7, ["metrics.chunk_size=4", "progress=true"])
    groups, singles = group_compatible([cfgs[0], sam, other_batch, cfgs[1], chunked, cfgs[2]])
    assert groups == [[0, 3, 4, 5]] and singles == [1, 2]
    many = [_cfg(data_dir, cache_dir, 0.1, s) for s in range(7)]
    assert group_compatible(many, max_members=3) == ([[0, 1, 2], [3, 4], [5, 6]], [])
    assert group_compatible(many[:4], max_members=3) == ([[0, 1], [2, 3]], [])


def _two_members(fmnist_small):
    from sharpcomp.models import build_model

    models = [build_model("mlp4", 10, 0.05, input_shape=(1, 28, 28), seed=s) for s in (0, 1)]
    x = fmnist_small.train_x[:32].reshape(2, 16, 1, 28, 28)
    t = torch.nn.functional.one_hot(fmnist_small.train_y[:32].reshape(2, 16), 10).float()
    return models, x, t


def _same_steps(a: StackedSGD, b: StackedSGD, x, t, steps=2):
    for _ in range(steps):
        torch.testing.assert_close(a.step(x, t), b.step(x, t), rtol=1e-5, atol=1e-7)
    for n in a.params:
        torch.testing.assert_close(a.params[n], b.params[n], rtol=1e-5, atol=1e-7)


def test_compile_falls_back_to_eager_with_a_warning(fmnist_small, monkeypatch):
    def broken_compile(fn, **kwargs):
        def run(*args):
            raise RuntimeError("no compiler here")
        return run

    monkeypatch.setattr(torch, "compile", broken_compile)
    models, x, t = _two_members(fmnist_small)
    eager, compiled = StackedSGD(models, [0.1, 0.2], "mse"), StackedSGD(models, [0.1, 0.2], "mse", compile=True)
    with pytest.warns(UserWarning, match="torch.compile failed.*no compiler here"):
        _same_steps(eager, compiled, x, t)
    assert not compiled.compiled


@pytest.mark.slow
def test_compiled_step_trains_the_same(fmnist_small):
    """torch.compile on this CPU (inductor, C++ backend): about 10-30 s of compile time."""
    models, x, t = _two_members(fmnist_small)
    eager, compiled = StackedSGD(models, [0.1, 0.2], "mse"), StackedSGD(models, [0.1, 0.2], "mse", compile=True)
    _same_steps(eager, compiled, x, t)
    assert compiled.compiled


# ---------------------------------------------------------------------------------------------
# the Hydra launcher



def _tree(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if not p.name.startswith(".metrics")
                  and p.name != "multirun.yaml")


def test_launcher_writes_the_folders_of_the_basic_launcher(in_tmp, capsys):
    from sharpcomp.cli import main

    sweep = ["lr=0.05,0.1,0.2", "seed=1"]  # max_members=2: one ensemble of 2 jobs, 1 job alone
    assert main(["-m", "train", *TINY, *sweep, "hydra.sweep.dir=basic"]) == 0
    assert main(["-m", "train", *TINY, *sweep, "hydra.sweep.dir=ens", "hydra/launcher=ensemble",
                 "hydra.launcher.max_members=2"]) == 0
    out = capsys.readouterr().out
    assert out.count("finished:") == 6
    basic, ens = in_tmp / "basic", in_tmp / "ens"
    assert _tree(basic) == _tree(ens) and len(list(ens.rglob("metrics.parquet"))) == 3
    for f in basic.rglob("metrics.parquet"):
        rel = f.relative_to(basic)
        assert_same_records(read_metrics(f), read_metrics(ens / rel))
        for name in ("config.yaml", "overrides.yaml"):
            assert (f.parent / ".hydra" / name).read_text() == (ens / rel).parent.joinpath(".hydra", name).read_text()
    hydra_yaml = next(ens.rglob("hydra.yaml")).read_text()
    assert "EnsembleLauncher" in hydra_yaml and "max_members: 2" in hydra_yaml
    # the same command again: every job is finished, nothing changes
    before = {f: read_metrics(f) for f in ens.rglob("metrics.parquet")}
    assert main(["-m", "train", *TINY, *sweep, "hydra.sweep.dir=ens", "hydra/launcher=ensemble",
                 "hydra.launcher.max_members=2"]) == 0
    for f, frame in before.items():
        pd.testing.assert_frame_equal(frame, read_metrics(f))


@pytest.mark.parametrize("name,shape,loss", [("vgg10", (3, 32, 32), "mse"), ("mlp4", (1, 28, 28), "ce")])
def test_grouped_and_vmap_implementations_agree_with_the_members(name, shape, loss):
    from sharpcomp.models import build_model

    torch.manual_seed(0)
    k, b = 3, 5
    width = 0.25 if name == "vgg10" else 0.05
    models = [build_model(name, 10, width, input_shape=shape, seed=s) for s in range(k)]
    x, y = torch.rand(k, b, *shape), torch.randint(0, 10, (k, b))
    t = y if loss == "ce" else torch.nn.functional.one_hot(y, 10).float()
    grouped, vmapped = (StackedSGD(models, [0.1, 0.2, 0.3], loss, impl=i) for i in ("grouped", "vmap"))
    assert grouped.impl == "grouped" and vmapped.impl == "vmap"
    shared = torch.rand(7, *shape)
    outs = grouped.forward(shared)
    torch.testing.assert_close(outs, vmapped.forward(shared), rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        for j, m in enumerate(models):
            torch.testing.assert_close(outs[j], m(shared), rtol=1e-5, atol=1e-6)
    _same_steps(grouped, vmapped, x, t, steps=3)
    grouped.keep([0, 2])
    vmapped.keep([0, 2])
    _same_steps(grouped, vmapped, x[[0, 2]], t[[0, 2]], steps=1)
