"""scripts/paper_plan.py: the study's runs counted from conf/experiment (no training, no data)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "paper_plan.py"


@pytest.fixture(scope="module")
def pp():
    spec = importlib.util.spec_from_file_location("paper_plan", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


def test_split_values(pp):
    assert pp.split_values("0.05,0.1,0.2") == ["0.05", "0.1", "0.2"]
    assert pp.split_values(20) == ["20"]
    assert pp.split_values("[train,test,misclassified]") == ["[train,test,misclassified]"]
    assert pp.split_values("'a,b',c") == ["'a,b'", "c"]


def test_experiment_runs(pp):
    fig1 = pp.experiment_runs("fig1")
    assert len(fig1) == 15 and {(r.data, r.model) for r in fig1} == {("cifar10_2class", "vgg10")}
    assert {(r.get("lr"), r.get("seed")) for r in fig1} == {(lr, str(s)) for lr in ("0.05", "0.1", "0.2")
                                                             for s in range(5)}
    assert [r.sample_sets for r in pp.experiment_runs("fig3")] == [3] * 5
    assert {r.batch for r in pp.experiment_runs("figE7")} == {8, 20, 32}
    assert pp.scale_steps("paper", "cifar10_2class") == (500000, 200)
    assert pp.scale_steps("quick", "fashion_mnist") == (50000, 1000)


def test_plan_counts_shared_runs_once(pp):
    plans = {p.name: p for p in pp.plan(pp.ORDER)}
    runs = {n: (p.runs, p.new, sorted(g.k for g in p.groups)) for n, p in plans.items()}
    assert runs == {
        "figE8": (15, 15, [15]), "figD4": (5, 0, []), "figE7": (15, 10, [5, 5]), "figD6": (12, 0, []),
        "figD6_batch": (8, 0, []), "fig1": (15, 15, [15]), "fig2": (15, 10, [5, 5]), "fig3": (5, 5, [5]),
        "figD5": (12, 0, []), "figD5_batch": (8, 0, []),
    }
    assert plans["fig1"].checkpoints == 2501
    assert sorted(g.batch for g in plans["fig2"].groups) == [8, 32]
    # another order: the shared runs are counted where they first occur
    first = {p.name: p.new for p in pp.plan(["figD5", "fig1"])}
    assert first == {"figD5": 12, "fig1": 3}
    assert [len(p) for p in pp.split_group(list(range(40)), 32)] == [20, 20]


def test_project(pp):
    plans = pp.plan(["fig1", "figD5", "fig3"])
    rows = pp.project(plans, lambda g: pp.Cost(0.001 * g.k, 0.5 * g.sample_sets, g.k == 15))
    secs = {r["experiment"]: (r["seconds"], r["measured"]) for r in rows}
    assert secs["fig1"] == (pytest.approx(500000 * 0.015 + 2501 * 0.5), True)
    assert secs["figD5"] == (0.0, False)
    assert secs["fig3"] == (pytest.approx(500000 * 0.005 + 2501 * 1.5), False)
    assert pp.all_experiments()[:2] == ["figE8", "figD4"] and len(pp.all_experiments()) == 10


def test_compose_without_hydra_matches_hydra(pp):
    pytest.importorskip("hydra")
    from sharpcomp.settings import defaults

    for model, data in (("vgg10", "cifar10_2class"), ("mlp4", "fashion_mnist")):
        assert pp.compose_yaml(model, data) == defaults(model=model, data=data)
