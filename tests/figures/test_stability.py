"""The edge-of-stability figures (stability, spectrum) from recorded runs with the curvature columns,
including the list column hessian_density read back from parquet."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from sharpcomp.figures import beyond, stability
from sharpcomp.measures.curvature.hessian_density import histogram
from sharpcomp.results.density_bins import DENSITY_EDGES
from sharpcomp.results.records import RunRecorder, read_metrics
from tests.figures.test_figures import fake_save as fake_save  # the fixture (re-exported)
from tests.figures.test_figures import lines_of, render, run_cli


def record(root, lr, batch, *, n_ckpt=5, every=20, density=True, curvature=True):
    run_id = f"fashion_mnist-mlp4-lr{lr}-b{batch}-s0"
    identity = dict(run_id=run_id, data="fashion_mnist", model="mlp4", lr=lr, batch=batch, seed=0, loss="mse",
                    width=1.0, outputs=10, optim="sgd", scale="quick", data_source="synthetic", device="cpu",
                    versions="{}")
    rec = RunRecorder(root / run_id, identity)
    rows = []
    for k in range(n_ckpt):
        row = dict(iteration=k * every, epoch=0.0, wall_time=float(k), sample_set="train", n_samples=20,
                   sample_loss=0.1, sharpness=1.0, G=1.0, log_volume=0.0, local_dim=1.0, mls=1.0)
        if curvature:
            lam = min(2 / lr, 0.5 * (k + 1))  # sharpening, then capped at 2/eta
            row.update(hessian_max=lam, hessian_top=[lam, lam / 2], batch_sharpness=0.8 * lam,
                       batch_sharpness_se=0.01, nonuniformity=0.1 * (k + 1))
        if density:
            nodes = np.array([-0.01, 1e-6, 0.3, lam if curvature else 1.0])
            row["hessian_density"] = list(histogram(nodes, np.array([0.1, 0.7, 0.15, 0.05])))
        rows.append(row)
    rec.append(rows, status="finished")
    return read_metrics(root / run_id)


def test_list_columns_round_trip_through_parquet(tmp_path):
    f = record(tmp_path, 0.5, 100)
    d = f["hessian_density"].iloc[-1]
    assert len(d) == len(DENSITY_EDGES) - 1 and math.isclose(float(np.sum(d)), 1.0)
    assert list(f["hessian_top"].iloc[-1]) == [2.5, 1.25]  # min(2/eta, 0.5 k) at the 5th checkpoint


def test_stability_figure_lines_and_thresholds(tmp_path):
    frame = pd.concat([record(tmp_path, lr, b) for lr in (0.5, 1.0) for b in (1000, 50)], ignore_index=True)
    fig, lines = stability.stability_figure(frame, "t")
    axes = np.array(fig.axes).reshape(2, 2)
    # per lr: lambda_max and batch sharpness for both batch sizes, and the 2/eta line
    for j, lr in enumerate((0.5, 1.0)):
        top = axes[0, j]
        labels = [ln.get_label() for ln in lines_of(top)]
        assert "2/eta" in labels and sum("lambda_max" in s for s in labels) == 2
        (thr,) = [ln for ln in lines_of(top) if ln.get_label() == "2/eta"]
        assert thr.get_ydata()[0] == 2 / lr
        nu = [ln for ln in lines_of(axes[1, j]) if ln.get_label().startswith("sqrt(B)/eta")]
        assert sorted(ln.get_ydata()[0] for ln in nu) == sorted(math.sqrt(b) / lr for b in (50, 1000))
    got = lines[(lines["lr"] == 1.0) & (lines["batch"] == 50) & (lines["column"] == "hessian_max")]
    assert got["value"].tolist() == [0.5, 1.0, 1.5, 2.0, 2.0]
    render(fig)


def test_spectrum_figure_heat_map(tmp_path):
    frame = pd.concat([record(tmp_path, 0.5, 100), record(tmp_path, 1.0, 100)], ignore_index=True)
    fig, table = stability.spectrum_figure(frame, "t")
    maps = [ax for ax in fig.axes if ax.get_ylabel() == "Hessian eigenvalue"]
    assert len(maps) == 2
    mesh = maps[0].collections[0]
    assert mesh.get_array().shape == (len(DENSITY_EDGES) - 1, 5)  # bins x checkpoints
    assert set(table["run"]) == set(frame["run_id"])
    one = table[(table["iteration"] == 80) & table["run"].str.contains("lr1.0")]
    assert math.isclose(one["mass"].sum(), 1.0)
    assert one.loc[one["mass"].idxmax(), "bin_low"] < 1e-6 < one.loc[one["mass"].idxmax(), "bin_high"]
    render(fig)


@pytest.mark.usefixtures("fake_save")
def test_cli_draws_or_skips(tmp_path, capsys):
    assert {"stability", "spectrum"} <= set(beyond.EXTRA_MAKERS)
    record(tmp_path, 1.0, 1000, density=False)
    rc, out, _ = run_cli(capsys, tmp_path, "--only", "stability,spectrum", "--formats", "png")
    assert rc == 0
    assert any(s.startswith("stability: wrote") for s in out)
    assert any(s.startswith("spectrum: skipped, needs runs with metrics.flatness.hessian_density") for s in out)


def test_the_thresholds_follow_a_learning_rate_schedule(tmp_path):
    """Rows with the rate of each checkpoint (lr_now, here halved every checkpoint): 2/eta and sqrt(B)/eta are
    drawn at each checkpoint's rate; the spectrum's 2/eta line follows it too."""
    f = record(tmp_path, 0.5, 100)
    f["lr_now"] = 0.5 * 0.5 ** (f["iteration"] // 20)
    fig, _ = stability.stability_figure(f, "t")
    top, bottom = fig.axes[0], fig.axes[1]
    (thr,) = [ln for ln in lines_of(top) if ln.get_label() == "2/eta (scheduled)"]
    assert list(thr.get_xdata()) == [0, 20, 40, 60, 80] and list(thr.get_ydata()) == [4.0, 8.0, 16.0, 32.0, 64.0]
    (nu,) = [ln for ln in lines_of(bottom) if ln.get_label().startswith("sqrt(B)/eta")]
    assert list(nu.get_ydata()) == pytest.approx([10 / r for r in f["lr_now"]])
    assert "scheduled" in top.get_title() and not [ln for ln in lines_of(top) if ln.get_label() == "2/eta"]
    spec, _ = stability.spectrum_figure(f, "t")
    (line,) = [ln for ln in spec.axes[0].get_lines() if len(ln.get_xdata()) == 5]
    bins = np.searchsorted(DENSITY_EDGES, 2 / f["lr_now"].to_numpy()) - 1  # each 2/eta within its bin
    y = np.asarray(line.get_ydata(), dtype=float)
    assert ((bins - 0.5 <= y) & (y < bins + 0.5)).all() and len(set(bins)) > 1
    f["lr_now"] = 0.5  # a constant rate: the horizontal line, as before
    fig, _ = stability.stability_figure(f, "t")
    assert [ln for ln in lines_of(fig.axes[0]) if ln.get_label() == "2/eta"]
