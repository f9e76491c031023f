"""Every measure's declaration, and everything that must agree with it: the config defaults, the results
schema, the reparametrisation table, the public API, the docs' table and the plain-data index."""

from __future__ import annotations

import copy
import dataclasses
import math

import pandas as pd
import pytest
import torch
from torch import nn

import sharpcomp
from sharpcomp import measure_index
from sharpcomp.measures import publish, registry
from sharpcomp.measures.declaration import Estimate, Measure
from sharpcomp.measures.symmetry.reparam import chosen_measures
from sharpcomp.results import columns, records
from sharpcomp.settings import ConfigError, defaults, run_identity, settings
from tests.reference import mse

MEASURES = registry.measures()


def test_the_generated_files_are_current():
    """measure_index.json, conf/train.yaml's metrics.flatness block and docs/measures.md's table are what
    ``python -m sharpcomp.measures.publish`` writes from the declarations."""
    assert publish.stale() == []
    assert measure_index.MEASURES == {name: publish.entry(m) for name, m in MEASURES.items()}


@pytest.mark.parametrize("name", list(MEASURES))
def test_a_declaration_is_one_name_from_module_to_column(name):
    m = MEASURES[name]
    assert isinstance(m, Measure) and m.name == name
    assert registry.BUILT_IN[list(MEASURES).index(name)].rsplit(".", 1)[1] == name  # its module's name
    if m.config == "metrics.flatness":
        first = m.columns[0].name
        assert first == name or first.startswith(name + "_"), first
        assert m.key == f"metrics.flatness.{name}"
    assert m.summary and m.family and m.function is not None
    for f in dataclasses.fields(m.settings):
        assert f.metadata.get("doc"), f"{name}.{f.name} has no doc"
    if m.stochastic:  # a stochastic scalar comes with its standard error
        for c in (c for c in m.columns if c.role == "value" and c.kind == "float"):
            assert m.se_of(c.name), f"{name}: {c.name} has no standard error column"


def test_config_defaults_agree_with_the_declarations():
    cfg = defaults()
    flat = cfg["metrics"]["flatness"]
    assert list(flat) == list(registry.switchable()) and all(v is None for v in flat.values())
    study = MEASURES["metrics"].defaults()
    assert {k: cfg["metrics"][k] for k in study} == study
    assert cfg["metrics"]["network_wide"] is True


def test_columns_agree_with_the_declarations():
    declared = [c.name for m in registry.switchable().values() for c in m.columns]
    assert list(columns.FLATNESS_COLUMNS) == declared
    assert set(columns.METRIC_COLUMNS) | set(columns.NETWORK_WIDE_COLUMNS) <= set(columns.COLUMNS)
    assert records.COLUMNS == columns.COLUMNS
    values = {c.name: m.family for m in MEASURES.values() for c in m.columns if c.role == "value"}
    assert columns.FAMILY == values
    assert set(columns.FLATNESS_SE) <= set(columns.FLATNESS_MEASURES)


def test_reparam_lists_every_measure_with_a_verdict():
    assert [m.name for m in chosen_measures()] == [n for n, m in MEASURES.items() if m.reparam]
    assert [m.name for m in chosen_measures(["keskar", "metrics"])] == ["metrics", "keskar"]
    with pytest.raises(ValueError, match="unknown measure 'hessian_density'"):
        chosen_measures(["hessian_density"])  # no verdict is declared for the spectral density


def test_the_public_api_names_every_measure():
    for m in MEASURES.values():
        assert m.function.__name__ in sharpcomp.__all__
        assert getattr(sharpcomp, m.function.__name__) is m.function


def test_the_docs_table_lists_every_measure():
    text = publish.DOCS.read_text()
    for name, m in MEASURES.items():
        assert f"| `{name}` | {m.family} | `{m.key}`" in text


def _small(m: Measure) -> dict:
    """A measure's settings, shrunk to run in milliseconds on a tiny network."""
    small = {"n": 16, "batches": 2, "batch_size": 8, "probes": 3, "steps": 2, "draws": 4, "max_iter": 10,
             "iterations": 3, "cg_iterations": 5}
    return {k: small[k] for k in m.defaults() if k in small}


@pytest.mark.parametrize("name", list(registry.switchable()))
def test_each_measure_writes_exactly_its_declared_columns(name):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 6), nn.ReLU(), nn.Linear(6, 3)).double()
    x, y = torch.randn(32, 5, dtype=torch.float64), torch.randint(0, 3, (32,))
    m = MEASURES[name]
    start = copy.deepcopy(model)  # the network at initialisation, for the measures relative to it
    out = registry.compute_measures(model, mse, x, y, {name: _small(m)}, torch.Generator().manual_seed(0),
                                    batch_size=8, initial=start)
    declared = [c.name for c in m.columns]
    assert set(out) <= set(declared) and set(m.values) <= set(out)
    for c in m.columns:
        if c.name in out and c.kind == "float":
            assert isinstance(out[c.name], float)


def test_earlier_keys_name_the_same_measures_and_keep_run_ids():
    """A measure's earlier config key switches it on, under the same run id as its name does, and the
    ids of runs with every measure off are those they always had."""
    base = defaults(model="mlp4", data="fashion_mnist")
    new = {**base, "metrics": {**base["metrics"], "flatness": {**base["metrics"]["flatness"],
                                                               "worst_case_adaptive": {"rho": 0.3}}}}
    old_keys = {"quotient_trace": None, "worst_case": None, "adaptive": {"rho": 0.3}, "quotient_worst": None,
                "disagreement": None, "fisher": None}  # a config stored before the measures had their names
    old = {**base, "metrics": {**base["metrics"], "flatness": old_keys}}
    assert run_identity(new)["run_id"] == run_identity(old)["run_id"]
    ids = run_identity(base)["settings"]["metrics"]["flatness"]
    assert ids == {"quotient_trace": None, "worst_case": None, "adaptive": None, "quotient_worst": None,
                   "disagreement": None, "fisher": None}
    assert settings(old).metrics.flatness["worst_case_adaptive"] == {"rho": 0.3}
    twice = {**base, "metrics": {**base["metrics"], "flatness": {"adaptive": {}, "worst_case_adaptive": {}}}}
    with pytest.raises(ConfigError, match="set twice"):
        settings(twice)


def test_old_column_names_read_under_the_new_ones(tmp_path):
    """A results file written with a measure's earlier column names reads under its names now, merged
    with rows a resumed run wrote under the new ones."""
    old = pd.DataFrame({"run_id": ["r", "r"], "iteration": [0, 10], "sample_set": ["train", "train"],
                        "sharpness_worst": [0.5, math.nan], "worst_case": [math.nan, 0.7],
                        "sharpness_adaptive_rel": [0.1, 0.2]})
    old.to_parquet(tmp_path / "metrics.parquet")
    frame = records.read_metrics(tmp_path / "metrics.parquet")
    assert frame["worst_case"].tolist() == [0.5, 0.7]
    assert frame["worst_case_adaptive_rel"].tolist() == [0.1, 0.2]
    assert "sharpness_worst" not in frame.columns


def test_results_are_values_results_or_estimates():
    """A measure's function returns a float, a Result, or (stochastic) an Estimate that unpacks as (value, se)."""
    e = Estimate(1.5, se=0.25, samples=4)
    value, se = e
    assert (value, se) == (1.5, 0.25) and e.details == {}
