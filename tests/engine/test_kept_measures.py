"""A run's measures keep the settings they started with: rows record every switched-on measure's settings
in full, and a run whose rows were computed at a measure's earlier defaults (``{}`` written before the
defaults changed) is extended with those, not with today's: its new rows equal those of a run that asked
for the earlier settings explicitly, and one line says so."""

from __future__ import annotations

import dataclasses
import json
import shutil

import pandas as pd
import pytest
import torch
from omegaconf import OmegaConf

from sharpcomp.engine.train import train
from sharpcomp.measures.registry import measures
from sharpcomp.results.records import RunRecorder, read_metrics
from sharpcomp.settings import run_identity
from tests.conftest import SHRINK, compose_train, random_images

MEASURE = "keskar"  # its default n changed (1000 to 256); a set of 300 points tells one from the other


@pytest.fixture(scope="module")
def toy():
    return random_images(300, 32)


def _cfg(entry: str, steps: int):
    cfg = compose_train([*SHRINK, "model.width=0.05", f"steps={steps}", f"metrics.flatness.{MEASURE}={entry}"])
    OmegaConf.set_struct(cfg, False)
    return cfg


def _as_written_before(run_dir, run_id: str) -> None:
    """Make a run computed at the measure's earlier settings look as a run switched on with ``{}`` under the
    earlier defaults looks: its rows (written before rows named every setting) say ``{}``, and its run id,
    in the rows and the resume point, is that of ``{}``."""
    frame = read_metrics(run_dir)
    settings = json.loads(frame["settings"].iloc[0])
    settings["metrics"]["flatness"][MEASURE] = {}
    frame["settings"] = json.dumps(settings, sort_keys=True)
    frame["run_id"] = run_id
    state = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    torch.save({**state, "run_id": run_id}, run_dir / "checkpoint.pt")
    shutil.rmtree(run_dir / "metrics.parquet")
    ident = [c for c in frame.columns if c in ("run_id", "data", "model", "lr", "batch", "seed", "loss", "width",
                                              "outputs", "optim", "scale", "data_source", "device", "versions",
                                              "settings")]
    RunRecorder(run_dir, frame.iloc[0][ident].to_dict()).append(
        frame.drop(columns=[*ident, "status"]).to_dict("records"), status="running")


def test_rows_record_every_setting_of_a_measure_switched_on_with_defaults(toy, tmp_path):
    train(_cfg("{}", 4), tmp_path / "run", data=toy)
    recorded = json.loads(read_metrics(tmp_path / "run")["settings"].iloc[-1])["metrics"]["flatness"][MEASURE]
    assert recorded == dataclasses.asdict(measures()[MEASURE].settings())


def test_a_run_computed_at_the_earlier_defaults_keeps_them(toy, tmp_path, capsys):
    earlier = dict(measures()[MEASURE].earlier_defaults)
    assert earlier and earlier != {k: measures()[MEASURE].defaults()[k] for k in earlier}
    old, explicit = tmp_path / "old", tmp_path / "explicit"
    as_written = json.dumps(earlier).replace('"', "")  # {n: 1000}
    train(_cfg(as_written, 8), old, data=toy)
    _as_written_before(old, run_identity(_cfg("{}", 8))["run_id"])
    # the same run, extended: 8 -> 12 steps, under the same run id (the config as written: {})
    result = train(_cfg("{}", 12), old, data=toy)
    assert result.status == "finished"
    err = capsys.readouterr().err
    (line,) = [x for x in err.splitlines() if "keeps the settings its rows were computed with" in x]
    assert f"metrics.flatness.{MEASURE}" in line and "n=" in line
    rows = read_metrics(old)
    assert rows["run_id"].nunique() == 1 and rows["run_id"].iloc[0] == run_identity(_cfg("{}", 12))["run_id"]
    assert json.loads(rows["settings"].iloc[-1])["metrics"]["flatness"][MEASURE]["n"] == earlier["n"]
    # a run that asks for the earlier settings explicitly computes the same numbers at every checkpoint
    train(_cfg(as_written, 12), explicit, data=toy)
    a = rows.sort_values("iteration")[["iteration", MEASURE]].reset_index(drop=True)
    b = read_metrics(explicit).sort_values("iteration")[["iteration", MEASURE]].reset_index(drop=True)
    pd.testing.assert_frame_equal(a, b)
    # ... and not those of today's defaults
    train(_cfg("{}", 12), tmp_path / "today", data=toy)
    today = read_metrics(tmp_path / "today").sort_values("iteration")[MEASURE].to_numpy()
    assert (today != a[MEASURE].to_numpy()).all()
