"""Results do not change: today's code reproduces rows computed before the one-engine refactor
(``tests/pinned_rows.py``, ``tests/fixtures/pinned_rows.json``, written once with commit fe9ed94).

The pinned rows hold bit for bit where they were written, and on the Intel Xeon (AVX-512) where the
spread below was measured, at 2 threads. On another x86 CPU the same float32 kernels sum in another
order, so the rows agree to round-off, not bit for bit. How far they move was measured by running every
case on that Xeon with other kernel orders
(``python -m tests.pinned_rows --spread``: 1, 2 and 3 threads, ``OMP_NUM_THREADS=1``, oneDNN off,
``ATEN_CPU_CAPABILITY=avx2``/``default``, ``MKL_CBWR=AVX2``/``COMPATIBLE``, ``ONEDNN_MAX_CPU_ISA=AVX2``,
and two combinations of these). The largest relative deviation over all of them, per column: bound_b,
bound_c, bound_d 5.9e-7; train_loss_running 1.6e-7; sample_loss, test_loss 1.5e-7; G 1.3e-7; mls 9.6e-8;
local_dim 8.2e-8; train_loss 8.0e-8; sharpness 6.8e-8; log_volume 1.3e-8; the accuracies, run ids,
statuses and the diverging iteration never moved. An AMD EPYC machine gave train_loss 6.8e-8 and sharpness
2.1e-9 away from the pinned values, inside that range.

So every float column is compared with ``RTOL`` = 1e-5, 17 times the largest deviation seen (12 SGD
steps amplify round-off; another CPU family may amplify it more), and still far below what a real change
of results does: the single_mlp4 case with lr 0.1001 instead of 0.1 (a change of 0.1%) moves the losses
by 7e-5 and sharpness, G and the bounds by 6e-3 to 1.5e-2. Accuracies are counts over 1,000 or 300
images, so 1e-5 keeps them exact; strings and integers (run ids, statuses, iterations) are compared
exactly. Comparisons made within one process stay exact: here, the resumed run against the same run
uninterrupted.
"""

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

RTOL = 1e-5  # across machines: 17 x the largest deviation measured (see the module docstring)


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


def assert_rows(got: list[dict], want: list[dict], rtol: float = RTOL) -> None:
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
    assert_rows(frame_rows(read_metrics(tmp_path / name)), pinned[name])


def test_resumed_and_extended_runs(pinned, data, tmp_path):
    def stop_at_8(it, rows):
        if it == 8:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(_cfg(CASES["resumed"]), tmp_path / "resumed", data=data, callback=stop_at_8)
    train(_cfg(CASES["resumed"]), tmp_path / "resumed", data=data)
    resumed = read_metrics(tmp_path / "resumed")
    assert_rows(frame_rows(resumed), pinned["resumed"])
    train(_cfg(CASES["resumed"]), tmp_path / "uninterrupted", data=data)  # same process: bit for bit
    uninterrupted = read_metrics(tmp_path / "uninterrupted")
    assert frame_rows(resumed) == frame_rows(uninterrupted)
    train(_cfg(CASES["extended"] + ["steps=8"]), tmp_path / "extended", data=data)
    train(_cfg(CASES["extended"]), tmp_path / "extended", data=data)
    assert_rows(frame_rows(read_metrics(tmp_path / "extended")), pinned["extended"])


@pytest.mark.parametrize("impl", ["grouped", "vmap"])
def test_ensembles(impl, pinned, data, tmp_path):
    name = f"ensemble_{impl}"
    cfgs = [_cfg(CASES[name] + [f"lr={lr}", f"seed={s}"]) for lr, s in MEMBERS]
    dirs = [tmp_path / f"m{j}" for j in range(len(cfgs))]
    train_ensemble(cfgs, dirs, data=data, impl=impl)
    for d, want in zip(dirs, pinned[name]):
        assert_rows(frame_rows(read_metrics(d)), want)
