"""Every command that takes run folders takes every folder sharpcomp writes: names with commas and ``=``
(``data.n_train=500,log_every=2,...,seed=1``) under a path with spaces, given as arguments or as
``run=`` lists, in the key=value and the flag forms."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pytest

from sharpcomp.cli import main
from sharpcomp.results.records import read_metrics
from tests.conftest import TINY

SWEEP = [a for a in TINY if not a.startswith("steps=")] + ["steps=4", "data.n_train=500"]


@pytest.fixture(scope="module")
def folders(tmp_path_factory, data_dir, cache_dir):
    """Two runs of a real sweep, in folders sharpcomp named, under a folder whose name holds a space."""
    root = tmp_path_factory.mktemp("results") / "my results"
    root.mkdir()
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.setenv("SHARPCOMP_DATA", str(data_dir))
        mp.setenv("SHARPCOMP_CACHE", str(cache_dir))
        assert main(["-m", "train", *SWEEP, "seed=0,1"]) == 0
    runs = sorted(p.parent for p in (root / "outputs" / "multirun").rglob("metrics.parquet"))
    assert len(runs) == 2 and all("," in p.name and "=" in p.name and " " in str(p) for p in runs)
    return root, runs


@pytest.fixture
def here(folders, monkeypatch, data_dir, cache_dir):
    root, runs = folders
    monkeypatch.chdir(root)
    monkeypatch.setenv("SHARPCOMP_DATA", str(data_dir))
    monkeypatch.setenv("SHARPCOMP_CACHE", str(cache_dir))
    return root, runs


@pytest.mark.parametrize("form", ["run= list", "arguments", "run= repeated, flag form", "relative, run= list"])
def test_measure_takes_run_folders_with_commas(here, form, capsys):
    root, runs = here
    a, b = map(str, runs)
    if form.startswith("relative"):
        a, b = (os.path.relpath(p, root) for p in runs)
    args = {"run= list": [f"run={a},{b}"], "arguments": [a, b], "relative, run= list": [f"run={a},{b}"],
            "run= repeated, flag form": ["--run", a, f"--run={b}"]}[form]
    out = root / f"measured {form}"
    assert main(["measure", *args, "n=4", f"out={out}"]) == 0, capsys.readouterr().err
    rows = pd.read_parquet(out / "metrics.parquet")
    assert sorted(rows.run_id) == sorted(read_metrics(r).run_id.iloc[0] for r in runs)


def test_reparam_computes_the_measures_named(here, capsys):
    _, runs = here
    assert main(["reparam", str(runs[0]), "measures=hessian_max,worst_case", "n=4", "--alpha", "10"]) == 0
    lines = capsys.readouterr().out.splitlines()
    first = next(i for i, line in enumerate(lines) if line.strip() == "metric") + 1
    table = [line.split()[0] for line in lines[first:next(i for i, ln in enumerate(lines) if ln.startswith("moved:"))]]
    assert table == ["output_change", "loss", "worst_case", "hessian_max"], lines
    assert "moved: worst_case, hessian_max" in lines


def test_landscape_of_one_and_of_two_run_folders(here, capsys):
    root, runs = here
    out = root / "land scape"
    assert main(["landscape", str(runs[0]), "points=3", "n=20", "--out", str(out)]) == 0, capsys.readouterr().err
    assert len(pd.read_csv(out / "landscape_2d.csv")) == 9
    assert main(["landscape", *map(str, runs), "points=3", "n=20", "lo=0", "hi=1", f"out={out}"]) == 0
    assert pd.read_csv(out / "interpolation.csv")["t"].tolist() == [0.0, 0.5, 1.0]


def test_figures_and_runs_read_run_folders(here, capsys):
    root, runs = here
    out = root / "fig ures"
    assert main(["figures", str(runs[0]), str(runs[1]), "only=runs", "formats=png", f"out={out}"]) == 0
    assert "read 2 runs from 2 folders" in capsys.readouterr().out and (out / "runs.png").is_file()
    assert main(["runs", str(runs[1])]) == 0
    assert main(["runs", str(runs[1] / "metrics.parquet"), f"csv={root / 'one run.csv'}"]) == 0
    assert pd.read_csv(root / "one run.csv")["iteration"].tolist() == [4]
    assert main(["runs", "outputs", "--csv", "all runs.csv"]) == 0
    assert len(pd.read_csv(Path("all runs.csv"))) == 2
