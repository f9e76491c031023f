"""The figures stage, from small generated result tables (no training)."""

from __future__ import annotations

import io
import json

import numpy as np
import pandas as pd
import pytest

from sharpcomp.commands import figures as command
from sharpcomp.figures import beyond, catalogue, panels, tables
from sharpcomp.figures.tables import load_results
from sharpcomp.results.records import RunRecorder, read_metrics

GRID = ((0.05, 20), (0.1, 20), (0.2, 20), (0.1, 8), (0.1, 32))
CIFAR = ("cifar10_2class", "vgg10")
FMNIST = ("fashion_mnist", "mlp4")
METRICS = ("sharpness", "G", "log_volume", "mls", "local_dim", "bound_b", "bound_c", "bound_d")



def figs(results):
    """Where figures go without --out: beside the results folder (``<folder>-figures``)."""
    return results.parent / f"{results.name}-figures"

def make_run(root, data, model, lr, batch, seed, *, n_ckpt=6, every=100, sets=("train",), status="finished",
             diverge_at=None, scale="quick", bounds=None, drop=(), extra=None, name=None,
             data_source="synthetic", optim="sgd", flat=(), flat_every=1, width=1.0, settings=None, folder=None):
    """One run's metrics.parquet, written by RunRecorder like a real run. Metric values depend on
    lr, batch, seed and iteration so that lines and correlations are distinct. ``flat``: flatness
    columns on the train rows at every ``flat_every``-th checkpoint and the last (missing between,
    like ``metrics.flatness_every``); a ``<col>_se`` column gets 5% of ``<col>``. ``settings``: the
    nested run settings written as the ``settings`` JSON column (see :func:`settings_of`); sharpness
    scales with ``width``. ``folder``: the run's folder under ``root`` (default: the run id)."""
    bounds = model == "mlp4" if bounds is None else bounds
    run_id = name or f"{data}-{model}-lr{lr}-b{batch}-s{seed}-{scale}-{'-'.join(sets)}-{optim}"
    run_id += f"-w{width:g}" if width != 1.0 else ""
    identity = dict(run_id=run_id, data=data, model=model, lr=lr, batch=batch, seed=seed, loss="mse",
                    width=width, outputs=10, optim=optim, scale=scale, data_source=data_source, device="cpu",
                    versions="{}")
    if settings is not None:
        identity["settings"] = json.dumps(settings, sort_keys=True)
    folder = root / (folder or run_id)
    rec = RunRecorder(folder, identity)
    rng = np.random.default_rng(1000 * seed + int(lr * 100) + batch)
    rows = []
    for k in range(n_ckpt):
        t = k / max(1, n_ckpt - 1)
        dead = diverge_at is not None and k >= diverge_at
        base = dict(iteration=(k + 1) * every, epoch=k * 0.1, wall_time=float(k),
                    train_loss=np.nan if k % 2 else 0.1 * np.exp(-3 * t), train_acc=np.nan,
                    test_loss=np.nan if dead else 0.1 * np.exp(-2 * t) + 0.02 * lr + 0.001 * rng.random(),
                    test_acc=np.nan if dead else 0.7 + 0.2 * t,
                    train_loss_running=np.nan if dead else 0.1 * np.exp(-3 * t) + 0.001 * rng.random())
        for s in sets:
            f = {"train": 1.0, "test": 1.3, "misclassified": 2.0}[s]
            S = width * f * 10 / (lr * batch ** 0.5) * (1 + 0.1 * rng.random())
            G = f * (3 + lr + 0.1 * rng.random())
            mls = 0.5 * np.sqrt(G)
            row = dict(base, sample_set=s, n_samples=20 if s != "misclassified" else 5, sample_loss=0.1 * f,
                       sharpness=S, G=G, log_volume=G - 5, local_dim=1.5 + lr + 0.2 * rng.random(), mls=mls,
                       bound_b=1.5 * mls if bounds else np.nan, bound_c=2 * mls if bounds else np.nan,
                       bound_d=3 * mls if bounds else np.nan,
                       bounds_reason="" if bounds else "first layer is convolutional")
            for col in drop:
                row[col] = np.nan
            if extra:
                row.update({c: v * f for c, v in extra.items()})
            if s == "train" and (k % flat_every == 0 or k == n_ckpt - 1):
                for i, col in enumerate(c for c in flat if not c.endswith("_se")):
                    row[col] = (i + 1) * S * (1 + 0.5 * t)
                    if f"{col}_se" in flat:
                        row[f"{col}_se"] = 0.05 * row[col]
            if dead:
                row.update({c: np.nan for c in METRICS + ("sample_loss",)})
            rows.append(row)
        if dead:
            break
    rec.append(rows, status="diverged" if diverge_at is not None else status)
    return read_metrics(folder)


def settings_of(data, model, lr, batch, seed, *, width=1.0, optim=None, **model_keys):
    """The nested settings of a run as ``settings.run_identity`` writes them (``settings`` column)."""
    return {"data": {"name": data, "classes": None}, "model": {"name": model, "width": width, "outputs": 10,
                                                               **model_keys},
            "lr": lr, "batch": batch, "seed": seed, "loss": "mse", "optim": optim or {"name": "sgd"},
            "log_every": 100, "eval_every": 1,
            "metrics": {"n": 20, "sample_sets": ["train"], "layer": None, "flatness": {"fisher": None}}}


def sweep(root, data_model=CIFAR, grid=GRID, seeds=(0, 1), **kw):
    return pd.concat([make_run(root, *data_model, lr, b, s, **kw) for lr, b in grid for s in seeds],
                     ignore_index=True)


def full_results(root):
    sweep(root, CIFAR)
    sweep(root, FMNIST)
    for s in (0, 1):
        make_run(root, *CIFAR, 0.1, 20, s, sets=("train", "test", "misclassified"))


def lines_of(ax):
    return [line for line in ax.get_lines() if line.get_label() and not line.get_label().startswith("_")]


def visible_axes(fig):
    return [ax for ax in fig.axes if ax.get_visible()]


@pytest.fixture
def fake_save(monkeypatch):
    """Tests about what is drawn and said, not the image files: skip the (slow) rendering.
    test_cli_writes_every_figure_with_its_numbers and test_cli_options_out_formats_only render."""
    from matplotlib.figure import Figure

    def savefig(self, path, **kwargs):
        with open(path, "wb") as fh:
            fh.write(b"image")

    monkeypatch.setattr(Figure, "savefig", savefig)


def run_cli(capsys, *args):
    rc = command.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out.splitlines(), err.splitlines()


# ---------------------------------------------------------------------------------------------
# the command line


def render(fig) -> bytes:
    """Draw a figure for real (what savefig does), small and fast."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=40)
    data = buf.getvalue()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000
    return data


def test_cli_writes_every_figure_with_its_numbers(tmp_path, capsys, fake_save):
    """Every figure's files and numbers. Rendering is faked here to keep the suite fast; each kind
    of figure is rendered for real below (test_cli_options_out_formats_only writes real PNG and PDF
    through the command line; the figure-function tests render theirs)."""
    res = tmp_path / "outputs"
    full_results(res)
    rc, out, err = run_cli(capsys, res)
    assert rc == 0, err
    assert err == []
    figdir = figs(res)  # default: <first dir>-figures, beside it
    for fig_id in catalogue.FIGURE_IDS:
        assert any(line.startswith(f"{fig_id}: wrote") for line in out), (fig_id, out)
        for ext in ("png", "pdf", "csv"):
            path = figdir / f"{fig_id}.{ext}"
            assert path.exists() and path.stat().st_size > 0, path
        extra = "_pearson" if fig_id in ("figD5", "figD6") else "_runs"
        assert (figdir / f"{fig_id}{extra}.csv").stat().st_size > 0
    # per-run points of figD5 and their Pearson table agree with scipy on the same numbers
    from scipy import stats

    points = pd.read_csv(figdir / "figD5.csv")
    assert len(points) == 10 and set(zip(points.lr, points.batch)) == set(GRID)
    pearson = pd.read_csv(figdir / "figD5_pearson.csv")
    assert set(pearson.columns) >= {"x", "y", "n", "r", "p"}
    k = len(panels.CORRELATION_COLUMNS)
    assert len(pearson) == k * (k - 1) // 2
    for _, row in pearson.iterrows():
        ref = stats.pearsonr(points[row.x], points[row.y])
        assert row.r == pytest.approx(ref.statistic, abs=1e-9)
        assert row.p == pytest.approx(ref.pvalue, rel=1e-6, abs=1e-12)
    # figD6 adds the bounds
    d6 = pd.read_csv(figdir / "figD6_pearson.csv")
    assert {"bound_c", "bound_d"} <= set(d6.x) | set(d6.y)
    # the trend CSV is the drawn mean over seeds
    lines = pd.read_csv(figdir / "fig1.csv")
    g = lines[(lines.column == "G") & (lines.lr == 0.2) & (lines.iteration == 300)]
    frame = load_results([res])[0]
    rows = frame[(frame.lr == 0.2) & (frame.batch == 20) & (frame.iteration == 300)
                 & (frame.sample_set == "train") & (frame.model == "vgg10")]
    rows = rows[~rows.run_id.str.contains("misclassified")]
    assert g["mean"].item() == pytest.approx(rows.G.mean())
    assert g["n_runs"].item() == 2
    # beyond the study: an overview per (data, model) pair; no flatness measures and no SAM runs here
    for name in ("runs-cifar10_2class-vgg10", "runs-fashion_mnist-mlp4"):
        assert (figdir / f"{name}.png").exists() and (figdir / f"{name}_runs.csv").exists()
        assert len(set(pd.read_csv(figdir / f"{name}.csv")["run"])) == 10  # the duplicate runs used once
    assert any(line.startswith("flatness: skipped, needs runs with flatness measures") for line in out)
    assert any(line.startswith("sam_vs_sgd: skipped, needs runs that differ only in optim") for line in out)


def test_cli_options_out_formats_only(tmp_path, capsys):
    res = tmp_path / "r"
    sweep(res, CIFAR, grid=GRID[:3], seeds=(0,), n_ckpt=3)
    out_dir = tmp_path / "figs"
    rc, out, _ = run_cli(capsys, res, "--out", out_dir, "--formats", "png,pdf", "--only", "fig1,fig2",
                         "--last-fraction", "0.5", "--band", "std")
    assert rc == 0
    assert sorted(p.name for p in out_dir.iterdir()) == ["fig1.csv", "fig1.pdf", "fig1.png", "fig1_runs.csv"]
    assert (out_dir / "fig1.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out_dir / "fig1.pdf").read_bytes()[:5] == b"%PDF-"
    assert any(line.startswith("fig2: skipped, needs vgg10/cifar10_2class runs at lr 0.1 with >= 2 batch sizes")
               for line in out), out
    assert not any(line.startswith("figD5") for line in out)
    runs = pd.read_csv(out_dir / "fig1_runs.csv")
    assert (runs.summary_checkpoints == 2).all()  # ceil(0.5 * 3)


@pytest.mark.parametrize("args, text", [
    (["--last-fraction", "0"], "--last-fraction"),
    (["--formats", "gif"], "--formats"),
    (["--only", "fig9"], "unknown figure id"),
])
def test_cli_bad_options_one_error_line(tmp_path, capsys, args, text):
    sweep(tmp_path, CIFAR, grid=GRID[:1], seeds=(0,), n_ckpt=2)
    rc, out, err = run_cli(capsys, tmp_path, *args)
    assert rc == 2  # bad input: the usage-error status of every subcommand
    assert len(err) == 1 and err[0].startswith("sharpcomp figures: error: ") and text in err[0]


def test_empty_folder_is_one_error_line(tmp_path, capsys):
    rc, out, err = run_cli(capsys, tmp_path)
    assert rc != 0
    assert len(err) == 1 and err[0].startswith("sharpcomp figures: error:") and "metrics.parquet" in err[0]
    rc, out, err = run_cli(capsys, tmp_path / "missing")
    assert rc != 0 and len(err) == 1 and "no such folder" in err[0]


def test_unreadable_parquet_is_one_error_line(tmp_path, capsys):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "metrics.parquet").write_bytes(b"not a parquet file")
    rc, out, err = run_cli(capsys, tmp_path)
    assert rc != 0
    assert len(err) == 1 and "no readable results" in err[0] and "Traceback" not in err[0]
    assert not (figs(tmp_path)).exists()


def test_unreadable_file_among_good_ones_is_skipped(tmp_path, capsys, fake_save):
    sweep(tmp_path, CIFAR, grid=GRID[:3], seeds=(0,), n_ckpt=3)
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "metrics.parquet").write_bytes(b"PAR1 garbage")
    rc, out, err = run_cli(capsys, tmp_path, "--only", "fig1", "--formats", "png")
    assert rc == 0 and err == []
    assert any(line.startswith("skipped ") and "broken" in line for line in out)
    assert (figs(tmp_path) / "fig1.png").stat().st_size > 0


def test_partial_results_drawn_with_skip_lines(tmp_path, capsys, fake_save):
    """A running sweep, a diverged run, a missing metric and a missing sample set."""
    res = tmp_path / "r"
    make_run(res, *CIFAR, 0.05, 20, 0, drop=("local_dim",))
    make_run(res, *CIFAR, 0.1, 20, 0, drop=("local_dim",))
    make_run(res, *CIFAR, 0.2, 20, 0, diverge_at=3, drop=("local_dim",))
    make_run(res, *CIFAR, 0.1, 8, 0, n_ckpt=3, status="running", drop=("local_dim",))
    make_run(res, *CIFAR, 0.1, 20, 1, sets=("train", "test"), drop=("local_dim",))  # no misclassified
    rc, out, err = run_cli(capsys, res, "--formats", "png")
    assert rc == 0 and err == []
    text = "\n".join(out)
    assert "fig1: wrote" in text
    assert "fig1: panel local_dim skipped: no values" in text
    assert "diverged at iteration 400; drawn up to iteration 300" in text
    assert "fig2: skipped" not in text and "fig2: wrote" in text  # batch 8 (running) and 20
    assert "fig2: 1 run still running" in text
    assert "fig3: wrote" in text and "fig3: no misclassified sample set" in text
    assert "figD5: " in text and "diverged at iteration 400; left out" in text
    assert "running run(s) behind iteration 600 left out" in text
    assert "figD5: column local_dim skipped" in text
    assert "figD4: skipped, needs mlp4/fashion_mnist" in text
    assert "figE7: skipped" in text and "figE8: skipped" in text
    assert text.splitlines()[-1].endswith("figures written to " + str(figs(res)))
    assert (figs(res) / "figD5.png").exists()  # 4 runs: lr 0.05, 0.1 (x2), and seed 1 at 0.1/20
    # the diverged run's finite part is in the trend numbers; its NaN row is not
    lines = pd.read_csv(figs(res) / "fig1.csv")
    assert lines[(lines.lr == 0.2) & (lines.column == "G")].iteration.max() == 300


def test_no_figure_possible_is_not_an_error(tmp_path, capsys, fake_save):
    make_run(tmp_path, *CIFAR, 0.05, 20, 0, n_ckpt=2, sets=("test",))  # no train sample set: no overview
    rc, out, err = run_cli(capsys, tmp_path, "--formats", "png")
    assert rc == 0 and err == []
    assert out[-1].startswith("no figures written")
    assert len([line for line in out if ": skipped," in line]) == len(command.ALL_FIGURE_IDS)


def test_experiments_are_never_mixed_and_duplicates_used_once(tmp_path, capsys, fake_save):
    sweep(tmp_path, CIFAR, grid=GRID[:3], seeds=(0,), n_ckpt=3, scale="quick")
    sweep(tmp_path, CIFAR, grid=GRID[:2], seeds=(0,), n_ckpt=3, scale="paper")
    make_run(tmp_path, *CIFAR, 0.05, 20, 0, n_ckpt=2, name="again")  # same setting, less far
    rc, out, _ = run_cli(capsys, tmp_path, "--only", "fig1", "--formats", "png")
    assert rc == 0
    names = sorted(p.name for p in (figs(tmp_path)).glob("*.png"))
    assert names == ["fig1-scale-paper.png", "fig1-scale-quick.png"]
    assert any("found twice" in line and "again" in line for line in out)
    runs = pd.read_csv(figs(tmp_path) / "fig1-scale-quick_runs.csv")
    assert len(runs) == 3 and "again" not in set(runs.run_id)


def test_data_source_folder_does_not_split_a_figure(tmp_path, capsys, fake_save):
    make_run(tmp_path, *CIFAR, 0.05, 20, 0, n_ckpt=2, data_source="torchvision CIFAR10 (/data)")
    make_run(tmp_path, *CIFAR, 0.1, 20, 0, n_ckpt=2, data_source="torchvision CIFAR10 (downloaded)")
    make_run(tmp_path, *CIFAR, 0.2, 20, 0, n_ckpt=2, data_source="CIFAR-10 JPEG image folder (/data/x)")
    rc, out, _ = run_cli(capsys, tmp_path, "--only", "fig1", "--formats", "png")
    assert rc == 0
    names = sorted(p.name for p in (figs(tmp_path)).glob("*.png"))
    assert names == ["fig1-data_source-torchvision_CIFAR10.png"]  # JPEG copy: one lr only, skipped
    assert any(line.startswith("fig1-data_source-CIFAR-10_JPEG_image_folder: skipped") for line in out)


# ---------------------------------------------------------------------------------------------
# the figure functions


def test_trend_figure_panels_lines_and_labels(tmp_path):
    frame = sweep(tmp_path, CIFAR, grid=GRID[:3], seeds=(0, 1, 2))
    fig = panels.trend_figure(frame, by="lr")
    axes = visible_axes(fig)
    assert len(axes) == 6
    labels = [ax.get_ylabel() for ax in axes]
    assert "train loss" in labels[0] and "test accuracy" in labels[1]
    for ax, eq in zip(axes[2:], ("Eq. 3", "Eq. 10", "Eq. 6", "Eq. 14")):
        assert eq in ax.get_ylabel()
    assert r"\sqrt{S}" in labels[2]
    for ax in axes:
        assert ax.get_xlabel() == "iteration"
        assert len(lines_of(ax)) == 3  # one per lr
        assert len(ax.collections) == 3  # a band each (3 seeds)
    assert axes[0].get_yscale() == "log"
    legend = [t.get_text() for t in axes[0].get_legend().get_texts()]
    assert legend == ["lr 0.05 (3 runs)", "lr 0.1 (3 runs)", "lr 0.2 (3 runs)"]
    # the sqrt(S) line is the mean over seeds of sqrt(sharpness), the band their min and max
    line = lines_of(axes[2])[1]
    x, y = line.get_data()
    sel = frame[(frame.lr == 0.1) & (frame.iteration == x[2])]
    assert y[2] == pytest.approx(np.sqrt(sel.sharpness).mean())
    render(fig)
    table = tables.trend_lines(frame, "lr", ["sqrt_sharpness"])
    row = table[(table.lr == 0.1) & (table.iteration == x[2])]
    assert row["min"].item() == pytest.approx(np.sqrt(sel.sharpness).min())
    assert row["max"].item() == pytest.approx(np.sqrt(sel.sharpness).max())


def test_trend_figure_by_batch_and_custom_panels(tmp_path):
    frame = sweep(tmp_path, FMNIST, grid=((0.1, 8), (0.1, 20), (0.1, 32)), seeds=(0,),
                  extra={"fisher_rao": 2.0})
    fig = panels.trend_figure(frame, by="batch", panels=["G", "fisher_rao", ("mls", "bound_d")], band="none")
    axes = visible_axes(fig)
    assert len(axes) == 3
    assert [len(lines_of(ax)) for ax in axes] == [3, 3, 6]
    assert axes[1].get_ylabel() == "fisher_rao"  # a column added later is drawn like the others
    assert all(len(ax.collections) == 0 for ax in axes)


def test_sample_set_figure(tmp_path):
    frame = pd.concat([make_run(tmp_path, *CIFAR, 0.1, 20, s, sets=("train", "test", "misclassified"))
                       for s in (0, 1)])
    fig = panels.sample_set_figure(frame)
    axes = visible_axes(fig)
    assert len(axes) == 6
    assert "train loss" in axes[0].get_ylabel() and "test loss" in axes[1].get_ylabel()
    assert len(lines_of(axes[0])) == 1  # train loss does not depend on the sample set
    assert [line.get_label() for line in lines_of(axes[1])] == [
        "test loss, whole set", "sample loss, test sample set", "sample loss, misclassified test points"]
    for ax in axes[2:]:
        names = [line.get_label() for line in lines_of(ax)]
        assert names == ["train sample set", "test sample set", "misclassified test points"]
    # misclassified G is larger in the generated data: check the line is that set's mean
    x, y = lines_of(axes[4])[2].get_data()
    sel = frame[(frame.sample_set == "misclassified") & (frame.iteration == x[0])]
    assert y[0] == pytest.approx(sel.G.mean())
    render(fig)


def test_bound_figure(tmp_path):
    frame = pd.concat([make_run(tmp_path, *FMNIST, 0.1, 20, s) for s in (0, 1)])
    fig = panels.bound_figure(frame)
    (ax,) = visible_axes(fig)
    assert ax.get_yscale() == "log"
    assert "Eq. 13" in ax.get_ylabel() and "Eq. 28" in ax.get_ylabel()
    names = [line.get_label() for line in lines_of(ax)]
    assert names == ["MLS (Eq. 13)", "bound b (Eq. 28)", "bound c (Eq. 28)", "bound d (Eq. 28)"]
    means = [line.get_ydata().mean() for line in lines_of(ax)]
    assert means == sorted(means)  # mls <= b <= c <= d
    render(fig)


def test_run_summary_is_mean_over_last_fraction(tmp_path):
    frame = make_run(tmp_path, *CIFAR, 0.1, 20, 0, n_ckpt=10)
    summary = tables.run_summary(frame, last_fraction=0.2)
    assert len(summary) == 1
    row = summary.iloc[0]
    last = frame[frame.iteration >= 900]
    assert row.summary_from_iteration == 900 and row.summary_checkpoints == 2
    assert row.G == pytest.approx(last.G.mean())
    assert row.sqrt_sharpness == pytest.approx(np.sqrt(last.sharpness).mean())
    # whole-set train_loss is logged every other checkpoint here: the mean skips the gaps
    assert row.train_loss == pytest.approx(last.train_loss.dropna().mean())
    one = tables.run_summary(frame, last_fraction=0.01)
    assert one.iloc[0].summary_checkpoints == 1 and one.iloc[0].G == pytest.approx(frame.G.iloc[-1])
    with pytest.raises(ValueError):
        tables.run_summary(frame, last_fraction=0)


def test_correlation_table_matches_numpy_and_scipy(tmp_path):
    from scipy import stats

    rng = np.random.default_rng(0)
    summary = pd.DataFrame({"a": rng.normal(size=12), "b": rng.normal(size=12), "c": rng.normal(size=12)})
    summary["b"] += summary["a"]
    summary.loc[3, "c"] = np.nan  # a missing value drops that run from its pairs only
    table = tables.correlation_table(summary, ["a", "b", "c"])
    assert list(zip(table.x, table.y)) == [("a", "b"), ("a", "c"), ("b", "c")]
    for _, row in table.iterrows():
        ok = summary[[row.x, row.y]].dropna()
        assert row.n == len(ok)
        assert row.r == pytest.approx(np.corrcoef(ok[row.x], ok[row.y])[0, 1], abs=1e-12)
        ref = stats.pearsonr(ok[row.x], ok[row.y])
        assert row.r == pytest.approx(ref.statistic, abs=1e-12)
        assert row.p == pytest.approx(ref.pvalue, rel=1e-9)
    # too few points or a constant column: no r
    small = tables.correlation_table(summary.head(2), ["a", "b"])
    assert np.isnan(small.r.item()) and small.n.item() == 2
    const = tables.correlation_table(summary.assign(b=1.0), ["a", "b"])
    assert np.isnan(const.r.item())


def test_correlation_figure_scatter_matrix(tmp_path):
    frame = sweep(tmp_path, FMNIST, seeds=(0, 1))
    summary = tables.run_summary(frame)
    assert len(summary) == 10
    cols = list(panels.CORRELATION_COLUMNS) + ["bound_c", "bound_d"]
    fig = panels.correlation_figure(summary, cols)
    k = len(cols)
    grid = fig.sharpcomp_axes
    assert len(grid) == k and all(len(row) == k for row in grid)
    table = tables.correlation_table(summary, cols)
    for i in range(k):
        for j in range(k):
            ax = grid[i][j]
            if j > i:
                assert ax is None  # upper triangle: text only
                continue
            if i == j:
                assert len(ax.patches) > 0  # histogram
                continue
            assert sum(len(c.get_offsets()) for c in ax.collections) == 10  # one point per run
            r = table[((table.x == cols[i]) & (table.y == cols[j])) | ((table.x == cols[j]) & (table.y == cols[i]))]
            assert f"r = {r.r.item():.2f}" in [t.get_text() for t in ax.texts]
    assert grid[k - 1][0].get_xlabel().startswith("local dim") and "Eq. 14" in grid[k - 1][0].get_xlabel()
    assert "Eq. 3" in grid[1][0].get_ylabel()
    upper = [t.get_text() for t in fig.texts]
    assert sum(t.startswith("r = ") for t in upper) == k * (k - 1) // 2
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert len(legend) == 5 and "lr 0.1, batch 8" in legend
    render(fig)


# ---------------------------------------------------------------------------------------------
# beyond the study: flatness measures, SAM against SGD, the overview of whatever runs exist

FLAT = ("hessian_trace", "hessian_trace_se", "quotient_trace", "quotient_trace_se", "worst_case",
        "grad_disagreement")


def test_flatness_figure_sparse_columns_error_bars_and_grouping(tmp_path):
    frame = sweep(tmp_path, CIFAR, grid=((0.05, 20), (0.1, 20)), seeds=(0, 1), n_ckpt=5, flat=FLAT, flat_every=2)
    fig = panels.flatness_figure(frame)
    axes = visible_axes(fig)
    # sqrt(S), Tr H, Tr(PHP), worst-case sharpness, gradient disagreement: the measures that exist
    assert [ax.get_ylabel().replace("\n", " ") for ax in axes] == [  # long labels wrap to the panel
        r"$\sqrt{S}$, sharpness (Eq. 3)", "Tr(PHP), quotient Hessian trace",
        "Tr H, Hessian trace", r"worst-case $\epsilon$-sharpness",
        r"gradient disagreement E$\|g_2\|(1 - \cos(g_1, g_2))$"]
    assert all(len(lines_of(ax)) == 2 for ax in axes)  # one line per lr (the only thing that varies)
    assert [line.get_label() for line in lines_of(axes[1])] == ["lr 0.05 (2 runs)", "lr 0.1 (2 runs)"]
    assert len(lines_of(axes[0])[0].get_xdata()) == 5  # sqrt(S): every checkpoint
    for ax in axes[1:]:
        for line in lines_of(ax):
            x, y = line.get_data()
            assert list(x) == [100, 300, 500] and np.isfinite(y).all()  # the NaN checkpoints skipped, connected
            assert line.get_marker() == "o"
    # Tr H (the third panel): the mean over seeds with Hutchinson error bars sqrt(se_0^2 + se_1^2) / 2
    (bars,) = [c for c in axes[2].containers if c.has_yerr][:1]
    segs = bars.lines[2][0].get_segments()
    sel = frame[(frame.lr == 0.05) & (frame.iteration == 300) & (frame.sample_set == "train")]
    y = lines_of(axes[2])[0].get_ydata()[1]
    assert y == pytest.approx(sel.hessian_trace.mean())
    half = (segs[1][1][1] - segs[1][0][1]) / 2
    assert half == pytest.approx(np.sqrt((sel.hessian_trace_se ** 2).sum()) / 2)
    assert len([c for c in axes[3].containers if c.has_yerr]) == 0  # no standard error: no bars
    render(fig)


def test_flatness_figure_lines_per_optimiser_or_combination(tmp_path):
    runs = [make_run(tmp_path, *FMNIST, 0.1, 20, 0, n_ckpt=3, optim=o, flat=("fisher_trace",)) for o in ("sgd", "sam")]
    fig = panels.flatness_figure(pd.concat(runs))
    axes = visible_axes(fig)
    assert len(axes) == 2 and "Fisher" in axes[1].get_ylabel()
    assert [line.get_label() for line in lines_of(axes[1])] == ["optim sam (1 run)", "optim sgd (1 run)"]
    runs.append(make_run(tmp_path, *FMNIST, 0.05, 20, 0, n_ckpt=3, flat=("fisher_trace",)))
    fig = panels.flatness_figure(pd.concat(runs))
    assert [line.get_label() for line in lines_of(visible_axes(fig)[1])] == [
        "optim sam, lr 0.1 (1 run)", "optim sgd, lr 0.05 (1 run)", "optim sgd, lr 0.1 (1 run)"]


def test_run_summary_flatness_columns_use_their_own_cadence(tmp_path):
    frame = make_run(tmp_path, *CIFAR, 0.1, 20, 0, n_ckpt=10, flat=("hessian_trace",), flat_every=3, status="running")
    frame = frame[frame.iteration <= 800]  # flatness at iterations 100, 400, 700; the window is 700-800
    row = tables.run_summary(frame, last_fraction=0.2).iloc[0]
    assert row.summary_from_iteration == 700
    assert row.hessian_trace == pytest.approx(frame.loc[frame.iteration == 700, "hessian_trace"].item())
    row = tables.run_summary(frame.iloc[:-1], last_fraction=0.1).iloc[0]  # window 700 only (through 700)
    assert row.hessian_trace == pytest.approx(frame.loc[frame.iteration == 700, "hessian_trace"].item())
    row = tables.run_summary(frame[frame.iteration <= 600], last_fraction=0.2).iloc[0]  # window 500-600: none
    assert row.hessian_trace == pytest.approx(frame.loc[frame.iteration == 400, "hessian_trace"].item())


def test_cli_flatness_sam_and_correlation_extra_columns(tmp_path, capsys, fake_save):
    res = tmp_path / "r"
    sweep(res, CIFAR, grid=GRID[:3], seeds=(0,), n_ckpt=4, flat=FLAT, flat_every=2)
    rc, out, err = run_cli(capsys, res, "--only", "figD5,flatness,sam_vs_sgd,runs", "--formats", "png")
    assert rc == 0 and err == []
    figdir = figs(res)
    pearson = pd.read_csv(figdir / "figD5_pearson.csv")
    extra = {"hessian_trace", "quotient_trace", "worst_case", "grad_disagreement"}
    assert extra <= set(pearson.x) | set(pearson.y)
    assert not {"hessian_trace_se", "fisher_trace"} & (set(pearson.x) | set(pearson.y))
    k = len(panels.CORRELATION_COLUMNS) + len(extra)
    assert len(pearson) == k * (k - 1) // 2
    points = pd.read_csv(figdir / "figD5.csv")
    assert {"hessian_trace", "hessian_trace_se"} <= set(points.columns)
    assert any(line.startswith("flatness: wrote") and "one line per lr" in line for line in out)
    lines = pd.read_csv(figdir / "flatness.csv")
    tr = lines[(lines.column == "hessian_trace") & (lines.lr == 0.1)]
    assert list(tr.iteration) == [100, 300, 400] and tr.se.notna().all()
    assert any(line.startswith("sam_vs_sgd: skipped") for line in out)
    # a SAM run at an SGD run's setting: sam_vs_sgd; figD5 splits by optimiser (figD5-optim-sgd, 3 runs);
    # one SGD run without flatness measures: the correlation drops them, with a line
    make_run(res, *CIFAR, 0.1, 20, 0, n_ckpt=4, optim="sam", flat=FLAT, flat_every=2)
    make_run(res, *CIFAR, 0.1, 8, 0, n_ckpt=4)
    rc, out, err = run_cli(capsys, res, "--only", "figD5,flatness,sam_vs_sgd", "--formats", "png")
    assert rc == 0 and err == []
    assert "figD5-optim-sgd: column hessian_trace left out: values in 3 of 4 runs only" in out
    pearson = pd.read_csv(figdir / "figD5-optim-sgd_pearson.csv")
    assert "hessian_trace" not in set(pearson.x) | set(pearson.y)
    assert any(line.startswith("flatness: wrote") and "one line per optim, lr" in line for line in out)
    sam = pd.read_csv(figdir / "sam_vs_sgd.csv")
    assert set(sam.optim) == {"sam", "sgd"} and set(sam.column) == set(panels.TREND_PANELS)
    assert any(line.startswith("sam_vs_sgd: wrote") and "optim sam, sgd" in line for line in out)


def test_sam_vs_sgd_trend_panels(tmp_path):
    frame = pd.concat([make_run(tmp_path, *CIFAR, 0.1, 20, s, n_ckpt=3, optim=o)
                       for o in ("sgd", "sam") for s in (0, 1)])
    fig = panels.trend_figure(frame, by="optim")
    axes = visible_axes(fig)
    assert len(axes) == 6
    assert all([line.get_label() for line in lines_of(ax)] == ["optim sam (2 runs)", "optim sgd (2 runs)"]
               for ax in axes)


def test_runs_overview_figure_one_line_per_run_and_cap(tmp_path):
    frame = pd.concat([make_run(tmp_path, *CIFAR, lr, 20, s, n_ckpt=3) for lr in (0.1, 0.05) for s in (0, 1)]
                      + [make_run(tmp_path, *CIFAR, 0.1, 20, 0, n_ckpt=3, scale="demo")])
    fig = panels.runs_figure(frame)
    axes = visible_axes(fig)
    assert len(axes) == 6 and "train loss" in axes[0].get_ylabel() and "Eq. 14" in axes[5].get_ylabel()
    names = ["lr 0.1, batch 20, seed 0, scale demo",  # by experiment (what differs is named), lr, batch, seed
             "lr 0.05, batch 20, seed 0, scale quick", "lr 0.05, batch 20, seed 1, scale quick",
             "lr 0.1, batch 20, seed 0, scale quick", "lr 0.1, batch 20, seed 1, scale quick"]
    for ax in axes:
        assert [line.get_label() for line in lines_of(ax)] == names
        assert len(ax.collections) == 0  # one run per line: no band
    fig = panels.runs_figure(frame, cap=2)
    assert len(lines_of(visible_axes(fig)[0])) == 2


def test_cli_single_demo_run_gets_an_overview(tmp_path, capsys, monkeypatch):
    demo = tmp_path / "outputs" / "runs" / "cifar10_2class-vgg10" / "scale=demo"
    make_run(demo, *CIFAR, 0.1, 20, 0, n_ckpt=3, scale="demo", name="2024-01-01_00-00-00")
    rc, out, err = run_cli(capsys, demo)
    assert rc == 0 and err == []
    for ext in ("png", "pdf", "csv"):
        assert (figs(demo) / f"runs.{ext}").stat().st_size > 0
    assert (figs(demo) / "runs.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert any(line.startswith("runs: wrote") for line in out)
    assert out[-1] == f"1 figure written to {figs(demo)}"
    assert not any("could not be drawn" in line for line in out), out  # every other figure: a skip line
    # more runs than the cap: said so, and all are in the per-run CSV
    for s in (1, 2):
        make_run(demo, *CIFAR, 0.1, 20, s, n_ckpt=2, scale="demo")
    monkeypatch.setattr(beyond, "RUNS_CAP", 2)
    rc, out, _ = run_cli(capsys, demo, "--only", "runs", "--formats", "png")
    assert any(line.startswith("runs: capped at 2 lines: drew the first 2 of 3 runs") for line in out)
    assert len(pd.read_csv(figs(demo) / "runs_runs.csv")) == 3
    assert len(set(pd.read_csv(figs(demo) / "runs.csv")["run"])) == 2


# ---------------------------------------------------------------------------------------------
# results paths, the output folder


def test_run_column_is_relative_to_the_results_folder(tmp_path, capsys, fake_save):
    """Figure CSVs name runs relative to the folder given, never by an absolute local path."""
    res = tmp_path / "outputs"
    sweep(res / "multirun" / "a", FMNIST, grid=GRID[:3], seeds=(0,), n_ckpt=3)
    rc, out, err = run_cli(capsys, res, "--only", "figE8,figD6", "--formats", "png")
    assert rc == 0 and err == []
    for csv in ("figE8_runs.csv", "figD6.csv"):
        runs = pd.read_csv(figs(res) / csv)["_run"]
        assert sorted(runs) == sorted(f"multirun/a/fashion_mnist-mlp4-lr{lr}-b{b}-s0-quick-train-sgd"
                                      for lr, b in GRID[:3])
        assert not any(str(tmp_path) in r or r.startswith("/") for r in runs)
    # several folders: each run under its folder's name; a run folder given itself: its name
    other = tmp_path / "elsewhere" / "run7"
    make_run(other.parent, *FMNIST, 0.1, 8, 0, n_ckpt=3, name="run7")
    rc, out, err = run_cli(capsys, res / "multirun", other, "--out", tmp_path / "f", "--only", "runs",
                           "--formats", "png")
    assert rc == 0 and err == []
    runs = set(pd.read_csv(tmp_path / "f" / "runs_runs.csv")["_run"])
    assert "run7/run7" not in runs and "run7" in runs
    assert "multirun/a/fashion_mnist-mlp4-lr0.1-b20-s0-quick-train-sgd" in runs
    frame, _ = load_results([other])
    assert set(frame["_run"]) == {"run7"}


@pytest.mark.parametrize("where", ["proc", "file"])
def test_unwritable_out_is_one_error_line_exit_2(tmp_path, capsys, where):
    sweep(tmp_path / "r", FMNIST, grid=GRID[:3], seeds=(0,), n_ckpt=2)
    out = "/proc/sharpcomp_figures" if where == "proc" else tmp_path / "afile"
    if where == "file":
        out.write_text("keep me")
    rc, lines, err = run_cli(capsys, tmp_path / "r", "--out", out, "--formats", "png")
    assert rc == 2
    assert len(err) == 1 and err[0].startswith("sharpcomp figures: error:") and str(out) in err[0]
    assert ("is a file" if where == "file" else "cannot write figures") in err[0]
    assert not any(": wrote" in line for line in lines)
    if where == "file":
        assert out.read_text() == "keep me"


# ---------------------------------------------------------------------------------------------
# figures over any swept config key (--by KEY)


@pytest.fixture
def saved(monkeypatch):
    """Like fake_save, and keeps each saved figure (by file name) to look at what was drawn."""
    from matplotlib.figure import Figure

    figs = {}

    def savefig(self, path, **kwargs):
        figs[path.name] = self
        with open(path, "wb") as fh:
            fh.write(b"image")

    monkeypatch.setattr(Figure, "savefig", savefig)
    return figs


def width_sweep(root, widths=(0.5, 1.0, 2.0), lrs=(0.1,), seeds=(0, 1), **kw):
    return pd.concat([make_run(root, *FMNIST, lr, 20, s, width=w, n_ckpt=3,
                               settings=settings_of(*FMNIST, lr, 20, s, width=w), **kw)
                      for w in widths for lr in lrs for s in seeds], ignore_index=True)


def test_by_width_one_line_per_value_in_one_figure(tmp_path, capsys, saved):
    res = tmp_path / "r"
    frame = width_sweep(res)
    rc, out, err = run_cli(capsys, res, "--by", "model.width", "--only", "sweep,figE8", "--formats", "png")
    assert rc == 0 and err == []
    figdir = figs(res)
    assert sorted(p.name for p in figdir.glob("sweep*.csv")) == ["sweep-model.width.csv",
                                                                 "sweep-model.width_runs.csv"]
    text = "\n".join(out)
    assert "sweep-model.width: wrote" in text and "6 runs; model.width 0.5, 1, 2; seeds 0, 1" in text
    lines = pd.read_csv(figdir / "sweep-model.width.csv")
    assert sorted(set(lines["model.width"])) == [0.5, 1.0, 2.0]
    assert (lines["n_runs"] == 2).all()
    g = lines[(lines.column == "sqrt_sharpness") & (lines["model.width"] == 2.0) & (lines.iteration == 200)]
    rows = frame[(frame.width == 2.0) & (frame.iteration == 200)]
    assert g["mean"].item() == pytest.approx(np.sqrt(rows.sharpness).mean())
    runs = pd.read_csv(figdir / "sweep-model.width_runs.csv")
    assert sorted(runs["model.width"]) == [0.5, 0.5, 1, 1, 2, 2]
    axes = visible_axes(saved["sweep-model.width.png"])
    assert [line.get_label() for line in lines_of(axes[2])] == [
        "model.width 0.5 (2 runs)", "model.width 1 (2 runs)", "model.width 2 (2 runs)"]
    # the study's figures still keep widths apart (width is part of their experiment)
    assert any(line.startswith("figE8-width-0.5: skipped") for line in out)


def test_by_key_splits_by_the_other_keys_and_colours_correlations(tmp_path, capsys, saved):
    res = tmp_path / "r"
    width_sweep(res, widths=(0.5, 2.0), lrs=(0.05, 0.1))
    rc, out, err = run_cli(capsys, res, "--by", "width", "--only", "sweep,sweep_correlation", "--formats", "png")
    assert rc == 0 and err == []
    figdir = figs(res)
    for lr in (0.05, 0.1):  # lr differs: one trend figure per lr, one line per width in each
        lines = pd.read_csv(figdir / f"sweep-model.width-lr-{lr:g}.csv")
        assert sorted(set(lines["model.width"])) == [0.5, 2.0] and (lines["n_runs"] == 2).all()
    points = pd.read_csv(figdir / "sweep_correlation-model.width.csv")  # correlations pool lr and batch
    assert len(points) == 8 and sorted(points["model.width"]) == [0.5] * 4 + [2.0] * 4
    fig = saved["sweep_correlation-model.width.png"]
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["model.width 0.5", "model.width 2"]
    grid = fig.sharpcomp_axes
    colours = {tuple(c) for c in grid[1][0].collections[0].get_facecolors()}
    assert len(colours) == 2


def test_by_nested_key_only_in_settings_and_missing_values(tmp_path, capsys, saved):
    """A key only the settings JSON names (model.depth; optim.rho of SAM runs, none for SGD runs):
    runs that differ only in it are distinct runs, not one found twice."""
    res = tmp_path / "r"
    for depth in (2, 4, 8):
        make_run(res, *FMNIST, 0.1, 20, 0, n_ckpt=3, name=f"d{depth}",
                 settings=settings_of(*FMNIST, 0.1, 20, 0, depth=depth))
    rc, out, err = run_cli(capsys, res, "--by", "model.depth", "--only", "sweep", "--formats", "png")
    assert rc == 0 and err == [] and not any("found twice" in line for line in out)
    lines = pd.read_csv(figs(res) / "sweep-model.depth.csv")
    assert sorted(set(lines["model.depth"])) == [2, 4, 8] and (lines["n_runs"] == 1).all()
    res2 = tmp_path / "r2"
    for rho in (None, 0.05, 0.1):
        optim = {"name": "sgd"} if rho is None else {"name": "sam", "rho": rho}
        make_run(res2, *FMNIST, 0.1, 20, 0, n_ckpt=3, name=f"rho{rho}",
                 settings=settings_of(*FMNIST, 0.1, 20, 0, optim=optim))
    rc, out, err = run_cli(capsys, res2, "--by", "optim.rho", "--only", "sweep", "--formats", "png")
    assert rc == 0 and err == []
    # optim.name differs with rho here (sgd has none): it splits, so the SAM runs are one figure
    lines = pd.read_csv(figs(res2) / "sweep-optim.rho-optim.name-sam.csv")
    assert sorted(set(lines["optim.rho"])) == [0.05, 0.1]
    assert any(line.startswith("sweep-optim.rho-optim.name-sgd: skipped, needs >= 2 values of optim.rho "
                               "(found optim.rho none only)") for line in out)


def test_by_key_falls_back_to_identity_columns_of_older_files(tmp_path, capsys, saved):
    res = tmp_path / "r"
    for w in (0.5, 1.0):
        for s in (0, 1):
            make_run(res, *CIFAR, 0.1, 20, s, width=w, n_ckpt=3)  # no settings column
    rc, out, err = run_cli(capsys, res, "--by", "model.width", "--only", "sweep", "--formats", "png")
    assert rc == 0 and err == []
    lines = pd.read_csv(figs(res) / "sweep-model.width.csv")
    assert sorted(set(lines["model.width"])) == [0.5, 1.0] and (lines["n_runs"] == 2).all()


def test_by_unknown_key_is_one_error_line_exit_2(tmp_path, capsys):
    width_sweep(tmp_path / "r", widths=(1.0,), seeds=(0,))
    rc, out, err = run_cli(capsys, tmp_path / "r", "--by", "model.widht")
    assert rc == 2
    assert len(err) == 1 and "unknown key 'model.widht'" in err[0] and "model.width" in err[0]
    assert not (tmp_path / "r" / "figures").exists()


def test_without_by_the_sweep_figures_say_what_they_need(tmp_path, capsys, fake_save):
    width_sweep(tmp_path, widths=(0.5, 1.0), seeds=(0,))
    rc, out, err = run_cli(capsys, tmp_path, "--only", "sweep,sweep_correlation", "--formats", "png")
    assert rc == 0 and err == []
    assert [line for line in out if "skipped" in line] == [
        "sweep: skipped, needs --by KEY (a swept config key, e.g. --by model.width)",
        "sweep_correlation: skipped, needs --by KEY (a swept config key, e.g. --by model.width)"]


def test_settings_flattened_to_dotted_keys():
    from sharpcomp.figures import keys as keys

    flat = keys.flatten(settings_of(*FMNIST, 0.1, 20, 3, width=2.0, optim={"name": "sam", "rho": 0.05}))
    assert flat["model.width"] == 2.0 and flat["optim.rho"] == 0.05 and flat["seed"] == 3
    assert flat["metrics.sample_sets"] == '["train"]' and flat["metrics.layer"] is None
    assert flat["metrics.flatness.fisher"] is None and "metrics" not in flat
    row = {"width": 0.5, "lr": 0.2, "data": "mnist", "settings": None}
    assert keys.run_keys(row) == {"model.width": 0.5, "lr": 0.2, "data.name": "mnist"}
    assert keys.ordered(["10", "2", "none", "0.5", "b", "a"]) == ["0.5", "2", "10", "a", "b", "none"]


def test_an_optimiser_setting_a_run_leaves_out_is_its_neutral_value():
    """A run's identity leaves weight decay 0 out (its id predates the setting): a sweep over weight decay
    labels it 0, not none; a setting without a neutral value stays none."""
    from sharpcomp.figures import keys as keys
    from sharpcomp.optim import NEUTRAL

    assert {k: v for k, v in NEUTRAL.items() if k != "base"} == {k[len("optim."):]: v
                                                                 for k, v in keys.LEFT_OUT_AT.items()}
    assert keys.value_text("optim.weight_decay", None) == keys.value_text("optim.weight_decay", 0.0) == "0"
    assert keys.value_text("optim.nesterov", None) == "False" and keys.value_text("optim.rho", None) == "none"


def test_published_figure_csvs_hold_no_absolute_paths():
    """The CSVs beside the committed figures name runs relative to the results folder."""
    from pathlib import Path

    files = sorted((Path(__file__).resolve().parents[2] / "docs" / "figures").rglob("*.csv"))
    assert len(files) >= 15
    runs = 0
    for path in files:
        frame = pd.read_csv(path)
        for col in ("_run", "run", "data_source"):
            values = frame[col].astype(str) if col in frame else pd.Series([], dtype=str)
            assert not values.str.contains(r"(?:^|\()/", regex=True).any(), (path.name, col)
        runs += len(frame["_run"]) if "_run" in frame else 0
        if "_run" in frame:
            assert frame["_run"].str.match(r"(multirun|runs)/").all(), path.name  # as under outputs/
    assert runs == 65  # the per-run tables of seven figures (15 + 15 + 15 vgg10 rows, 2 + 6 + 6 + 6 mlp4)


def test_by_model_name_draws_both_models_in_one_figure(tmp_path, capsys, fake_save):
    for s in (0, 1):
        make_run(tmp_path, *CIFAR, 0.1, 20, s, n_ckpt=3)
        make_run(tmp_path, "cifar10_2class", "mlp4", 0.1, 20, s, n_ckpt=3)
    rc, out, err = run_cli(capsys, tmp_path, "--by", "model", "--only", "sweep", "--formats", "png")
    assert rc == 0 and err == []
    lines = pd.read_csv(figs(tmp_path) / "sweep-model.name.csv")
    assert set(lines["model.name"]) == {"mlp4", "vgg10"} and (lines["n_runs"] == 2).all()


def test_own_network_sweep_grouped_without_by_titles_from_settings(tmp_path, capsys, saved):
    """Without --by, a sweep of one's own networks is grouped by the key that differs; titles give the
    steps run (not the scale's name) and the class subset of the data; figures go beside the results."""
    res = tmp_path / "r"
    for lr in (0.05, 0.1):
        for s in (0, 1):
            st = settings_of("cifar10", "custom", lr, 20, s)
            st["data"]["classes"] = [0, 1]
            make_run(res, "cifar10", "custom", lr, 20, s, n_ckpt=3, settings=st)
    rc, out, err = run_cli(capsys, res, "--only", "sweep,sweep_correlation", "--formats", "png")
    assert rc == 0 and err == []
    assert "sweep: grouped by lr, the key that differs between the runs (--by KEY chooses another)" in out
    assert not (res / "figures").exists() and (figs(res) / "sweep-lr.csv").exists()
    fig = saved["sweep-lr.png"]
    title = fig._suptitle.get_text()
    assert "custom on cifar10 classes 0,1" in title and "300 steps" in title and "scale quick" not in title
    # the study's networks keep needing --by
    res2 = tmp_path / "s"
    sweep(res2, grid=GRID[:2], seeds=(0,), n_ckpt=3)
    rc, out, err = run_cli(capsys, res2, "--only", "sweep", "--formats", "png")
    assert rc == 0 and any(line.startswith("sweep: skipped, needs --by KEY") for line in out)
