"""Results do not change: today's code reproduces rows computed before the one-engine refactor
(``tests/pinned_rows.py``, ``tests/data/pinned_rows.json``, written once on main fe9ed94)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from omegaconf import OmegaConf

from sharpcomp.engine.ensemble import train_ensemble
from sharpcomp.engine.train import train
from sharpcomp.results.records import read_metrics
from tests.conftest import compose_train
from tests.pinned_rows import CASES, COLUMNS, MEMBERS, PINNED, frame_rows, small_data

# single runs: the same operations in the same order, bit for bit; ensembles: the running loss is
# averaged in float64 now (was float32), which moves it by float32 round-off
TOLERANCE = {"single": 1e-12, "ensemble": 1e-6}


@pytest.fixture(scope="module")
def pinned():
    return json.loads(PINNED.read_text())


@pytest.fixture(scope="module")
def data(data_dir, cache_dir):
    torch.set_num_threads(2)
    return small_data(data_dir, cache_dir)


def _cfg(overrides):
    cfg = compose_train(overrides)
    OmegaConf.set_struct(cfg, False)
    return cfg


def assert_rows(got: list[dict], want: list[dict], rtol: float) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want):
        for c in COLUMNS:
            a, b = g[c], w[c]
            if isinstance(b, float) and isinstance(a, float) and not math.isnan(a):
                assert a == pytest.approx(b, rel=rtol, abs=1e-12), (c, g["iteration"], g["sample_set"])
            else:
                assert a == b, (c, g["iteration"], g["sample_set"])


@pytest.mark.parametrize("name", ["single_mlp4", "single_vgg10", "diverged"])
def test_single_runs(name, pinned, data, tmp_path):
    train(_cfg(CASES[name]), tmp_path / name, data=data)
    assert_rows(frame_rows(read_metrics(tmp_path / name)), pinned[name], TOLERANCE["single"])


def test_resumed_and_extended_runs(pinned, data, tmp_path):
    def stop_at_8(it, rows):
        if it == 8:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(_cfg(CASES["resumed"]), tmp_path / "resumed", data=data, callback=stop_at_8)
    train(_cfg(CASES["resumed"]), tmp_path / "resumed", data=data)
    assert_rows(frame_rows(read_metrics(tmp_path / "resumed")), pinned["resumed"], TOLERANCE["single"])
    train(_cfg(CASES["extended"] + ["steps=8"]), tmp_path / "extended", data=data)
    train(_cfg(CASES["extended"]), tmp_path / "extended", data=data)
    assert_rows(frame_rows(read_metrics(tmp_path / "extended")), pinned["extended"], TOLERANCE["single"])


@pytest.mark.parametrize("impl", ["grouped", "vmap"])
def test_ensembles(impl, pinned, data, tmp_path):
    name = f"ensemble_{impl}"
    cfgs = [_cfg(CASES[name] + [f"lr={lr}", f"seed={s}"]) for lr, s in MEMBERS]
    dirs = [tmp_path / f"m{j}" for j in range(len(cfgs))]
    train_ensemble(cfgs, dirs, data=data, impl=impl)
    for d, want in zip(dirs, pinned[name]):
        assert_rows(frame_rows(read_metrics(d)), want, TOLERANCE["ensemble"])
