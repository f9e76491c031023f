"""``sharpcomp measure``: networks trained and saved by sharpcomp and timm models built without weights
are measured without training; one row per (model, sample set) in the results schema, values equal to
a direct computation; the across-model correlation figure; bad input gets one line and exit 2."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from sharpcomp.cli import main
from sharpcomp.engine.loading import load_run
from sharpcomp.engine.train import train
from sharpcomp.measures.study.metrics import compute_metrics
from sharpcomp.measures.study.network_wide import add_network_wide
from sharpcomp.results.columns import COLUMNS

VIT_ARGS = ["arg.img_size=28", "arg.patch_size=7", "arg.in_chans=1", "arg.depth=1", "arg.embed_dim=16",
            "arg.num_heads=2"]


@pytest.fixture
def two_runs(cfg_small, fmnist_small, tmp_path):
    cfg_small.steps, cfg_small.log_every, cfg_small.metrics.n = 4, 4, 4
    runs = []
    for lr in (0.05, 0.1):
        cfg_small.lr = lr
        train(cfg_small, tmp_path / f"lr{lr}", data=fmnist_small)
        runs.append(tmp_path / f"lr{lr}")
    return runs


def test_measure_saved_runs_and_draw_the_correlation(two_runs, tmp_path, capsys):
    out, fig = tmp_path / "measured", tmp_path / "corr.png"
    code = main(["measure", f"run={two_runs[0]},{two_runs[1]}", "n=4", "sample_sets=train,test",
                 f"out={out}", f"figure={fig}"])
    assert code == 0, capsys.readouterr().err
    df = pd.read_parquet(out / "metrics.parquet")
    assert len(df) == 4 and set(COLUMNS) <= set(df.columns) and (df.status == "measured").all()
    assert fig.is_file() and fig.stat().st_size > 10_000
    loaded = load_run(two_runs[0])
    model, x = loaded.model, loaded.sample_x
    direct = add_network_wide(compute_metrics(model, x), model, x)
    row = df[(df.sample_set == "train") & df.settings.str.contains("lr0.05")].iloc[0]
    for key in ("sharpness", "G", "mls", "bound_d", "nmls", "nmls_bound"):
        assert row[key] == pytest.approx(direct[key], rel=1e-6), key
    # measured again: rows are replaced, not duplicated
    assert main(["measure", f"run={two_runs[0]}", "n=4", f"out={out}"]) == 0
    assert len(pd.read_parquet(out / "metrics.parquet")) == 4


def test_measure_a_timm_model_with_and_without_weights(tmp_path, fmnist_small, monkeypatch, capsys):
    import timm

    from sharpcomp.commands import measure

    monkeypatch.setattr(measure, "_data", lambda opts: fmnist_small, raising=False)
    torch.manual_seed(0)
    net = timm.create_model("vit_tiny_patch16_224", num_classes=10, pretrained=False, img_size=28, patch_size=7,
                            in_chans=1, depth=1, embed_dim=16, num_heads=2).eval()
    torch.save(net.state_dict(), tmp_path / "w.pt")
    out = tmp_path / "m"
    code = main(["measure", "model=timm:vit_tiny_patch16_224", f"weights={tmp_path / 'w.pt'}", "data=fashion_mnist",
                 "n=3", f"out={out}", *VIT_ARGS])
    assert code == 0, capsys.readouterr().err
    row = pd.read_parquet(out / "metrics.parquet").iloc[0]
    assert row.model == "timm-vit_tiny_patch16_224" and row.n_samples == 3
    x = fmnist_small.train_x[measure.train_sample_indices(0, len(fmnist_small.train_x), 3)]
    direct = add_network_wide(compute_metrics(net, x), net, x)
    for key in ("sharpness", "mls", "nmls"):
        assert row[key] == pytest.approx(direct[key], rel=1e-5), key
    assert main(["measure", "model=timm:vit_tiny_patch16_224", "data=fashion_mnist", "n=2", f"out={out}",
                 *VIT_ARGS]) == 0  # no weights: the seeded initial network


@pytest.mark.parametrize("args,message", [
    (["model=mlp4"], "needs data="),
    (["run=/nonexistent/run"], "no run folder"),
    (["model=mlp4", "data=fashion_mnist", "bogus=1"], "unknown option"),
    (["model=mlp4", "data=fashion_mnist", "weights=/nonexistent.pt"], "no weights file"),
    (["model=mlp4", "data=fashion_mnist", "n=0"], "n must be"),
    (["model=mlp4", "run=x"], "either run="),
])
def test_bad_input_is_one_line_and_exit_2(args, message, capsys, fmnist_small, monkeypatch):
    from sharpcomp.commands import measure

    monkeypatch.setattr(measure, "_data", lambda opts: fmnist_small, raising=False)
    assert main(["measure", *args]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_weights_that_do_not_fit(tmp_path, fmnist_small, monkeypatch, capsys):
    from sharpcomp.commands import measure

    monkeypatch.setattr(measure, "_data", lambda opts: fmnist_small, raising=False)
    torch.save({"fc1.weight": torch.zeros(3, 3)}, tmp_path / "bad.pt")
    assert main(["measure", "model=mlp4", "data=fashion_mnist", f"weights={tmp_path / 'bad.pt'}", "n=2",
                 f"out={tmp_path}"]) == 2
    assert "do not fit" in capsys.readouterr().err


def test_measure_with_estimators(tmp_path, fmnist_small, monkeypatch, capsys):
    from sharpcomp.commands import measure

    monkeypatch.setattr(measure, "_data", lambda opts: fmnist_small, raising=False)
    out = tmp_path / "m"
    assert main(["measure", "model=mlp4", "arg.width=0.05", "data=fashion_mnist", "n=3", "estimate=always",
                 "probes=8", f"out={out}"]) == 0, capsys.readouterr().err
    row = pd.read_parquet(out / "metrics.parquet").iloc[0]
    assert row.probes == 8 and row.G_se > 0 and row.sharpness_se > 0 and row.mls > 0
    assert main(["measure", "model=mlp4", "data=fashion_mnist", "estimate=maybe"]) == 2
