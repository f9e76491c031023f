"""Every figure kind, drawn from runs under their long default folder names, can be read: no two texts
overlap and none leaves the figure (matplotlib's own extents, tests/figures/text_layout.py); notes and
legends sit beside the data, not on it; what a figure says matches what it draws."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from matplotlib.colors import to_rgba

from sharpcomp.commands import figures as command
from sharpcomp.figures import beyond, catalogue, context, panels, stability
from sharpcomp.figures import landscape as draw_landscape
from sharpcomp.figures.tables import load_results, run_summary
from sharpcomp.results.density_bins import DENSITY_EDGES
from tests.figures.long_names import curvature_runs, folder_name, neg_inf_log_volume, study_runs
from tests.figures.test_figures import CIFAR, FMNIST, make_run, sweep
from tests.figures.text_layout import assert_readable, render

LONG_A = "batch=8,log_every=100,lr=0.05,metrics.flatness.hessian_max={n:256},seed=3"
LONG_B = "batch=8,log_every=100,lr=0.05,metrics.flatness.hessian_max={n:256},optim=sam,optim.rho=0.05,seed=3"


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    root = tmp_path_factory.mktemp("long-names")
    study_runs(root / "study")
    curvature_runs(root / "eos", lrs=(0.5, 2.0), n_ckpt=11)
    return root


@pytest.fixture(scope="module")
def drawn(results):
    """Every figure ``sharpcomp figures`` draws from the results (the study's runs without and with ``--by
    lr``, the edge-of-stability runs), by name."""
    figs = {}

    def save(self, name, fig, tables):
        figs[name] = fig
        self.written += 1
        return [f"{name}.png"]

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(context.Context, "save", save)
        out = ["--out", str(results / "figs")]
        assert command.main([str(results / "study"), *out]) == 0
        assert command.main([str(results / "study"), *out, "--by", "lr", "--only", "sweep,sweep_correlation"]) == 0
        assert command.main([str(results / "eos"), *out, "--only", "stability,spectrum"]) == 0
    return figs


def test_every_figure_kind_is_drawn_and_readable(drawn):
    kinds = {name.split("-")[0] for name in drawn}
    assert kinds == set(catalogue.FIGURE_IDS) | set(beyond.EXTRA_FIGURE_IDS)
    for name, fig in drawn.items():
        assert_readable(fig, name)


def _landscape_grid(points=11):
    a = torch.linspace(-1, 1, points)
    ga, gb = torch.meshgrid(a, a, indexing="ij")
    loss = 0.05 + ga ** 2 + 0.5 * gb ** 2 + 0.2 * ga * gb
    return a, loss


def test_landscape_figures_are_readable_with_long_run_names(tmp_path, monkeypatch):
    """The contour (title clear of the colour bar, x ticks apart), the surface (with a colour bar), the
    1D profile, the interpolation between two long-named runs (A and B marked, their names wrapped
    under the title) and the path of kept weights on its principal plane."""
    figs = []
    monkeypatch.setattr(draw_landscape, "_save", lambda fig, path, formats: figs.append(fig) or [path])
    a, loss = _landscape_grid()
    grid = {"a": a, "b": a, "loss": loss, "acc": 1 - loss / loss.max()}
    curves = {k: {"a": a, "loss": 0.05 + a ** 2, "acc": 1 - a.abs() / 2} for k in ("train", "test")}
    draw_landscape.write_surface(tmp_path, "landscape", grid, {"a": a, "curves": curves},
                                 f"vgg10 on cifar10_2class, {LONG_A} (2000 train images)")
    t = torch.linspace(-0.5, 1.5, 21)
    result = {"t": t, "curves": {k: {"loss": 0.05 + (t * (1 - t)).abs(), "acc": 0.9 - 0.1 * t.abs()}
                                 for k in ("train", "test")}}
    draw_landscape.write_interpolation(tmp_path, "interpolation", result, (LONG_A, LONG_B),
                                       "vgg10 on cifar10_2class: along (1 - t) A + t B (2000 images each)")
    pcs = np.linspace(-0.8, 0.6, 6)
    path = pd.DataFrame({"iteration": np.arange(6) * 1000, "pc1": pcs, "pc2": pcs ** 2 - 0.3})
    draw_landscape.write_trajectory(tmp_path, "trajectory", {k: v.numpy() for k, v in grid.items()}, path,
                                    (0.71, 0.12), f"vgg10 on cifar10_2class, {LONG_A}: the path of 6 kept weights")
    contour, surface, profile, interpolation, trajectory = figs
    for fig, what in zip(figs, ("contour", "surface", "1d", "interpolation", "trajectory")):
        assert_readable(fig, what)
    assert len(surface.axes) == 2 and surface.axes[1].get_ylabel() == "loss"  # the surface and its colour bar
    assert len(contour.axes) == 2 and "loss" in contour.axes[1].get_ylabel()
    marks = [t.get_text() for t in interpolation.axes[0].texts]
    assert marks == ["A", "B"]
    title = interpolation._suptitle.get_text()
    assert f"A = {LONG_A}" in title.replace("\n", "") and f"B = {LONG_B}" in title.replace("\n", "")


def _boxes_overlap(a, b) -> bool:
    return min(a.x1, b.x1) > max(a.x0, b.x0) and min(a.y1, b.y1) > max(a.y0, b.y0)


def test_stability_legend_shows_the_line_styles_beside_the_panels(tmp_path):
    curvature_runs(tmp_path, lrs=(0.5, 2.0), n_ckpt=6)
    frame, _ = load_results([tmp_path])
    fig, _ = stability.stability_figure(frame, "t")
    renderer = render(fig)
    (legend,) = fig.legends
    styles = {t.get_text(): h.get_linestyle() for t, h in zip(legend.get_texts(), legend.legend_handles)}
    assert styles["batch sharpness (top)"] == "--" and styles["lambda_max (top), non-uniformity (bottom)"] == "-"
    assert styles["2/eta (top), sqrt(B)/eta (bottom, the batch's colour)"] == ":"
    assert legend.handlelength >= 3  # long enough for a dash pattern to show
    box = legend.get_window_extent(renderer)
    assert not any(_boxes_overlap(box, ax.get_window_extent(renderer)) for ax in fig.axes)
    for ax in fig.axes:  # the drawn dashed series are still dashed
        for line in ax.get_lines():
            if line.get_label().startswith("batch sharpness"):
                assert line.get_linestyle() == "--"


def test_spectrum_spans_the_run_with_one_colour_bar_decade_ticks_and_a_visible_threshold(tmp_path):
    curvature_runs(tmp_path, lrs=(0.5, 1.0, 2.0), n_ckpt=6, every=20)
    frame, _ = load_results([tmp_path])
    fig, _ = stability.spectrum_figure(frame, "t")
    maps = [ax for ax in fig.axes if ax.get_ylabel() == "Hessian eigenvalue"]
    assert len(maps) == 6
    assert len(fig.axes) == 7  # six heat maps, one colour bar for them all
    for ax in maps:
        assert ax.get_xlim() == (0.0, 100.0)  # the first and last checkpoints, no interval past the run
        (mesh,) = ax.collections
        assert mesh.norm is maps[0].collections[0].norm  # one colour scale
        labels = [t.get_text() for t in ax.get_yticklabels()]
        assert {"$10^{-3}$", "$10^{-2}$", "$10^{-1}$", "$10^{0}$"} <= set(labels)  # every decade
        (threshold,) = [line for line in ax.get_lines()]
        assert threshold.get_linewidth() >= 1.5 and to_rgba(threshold.get_color()) == to_rgba("red")
    # the 2/eta line of lr 0.5 (4.0) lies between the edges of its bin
    ax = maps[0]
    y = ax.get_lines()[0].get_ydata()[0]
    i = int(np.floor(y + 0.5))
    assert DENSITY_EDGES[i] <= 4.0 < DENSITY_EDGES[i + 1]
    assert "2/eta" in fig.legends[0].get_texts()[0].get_text()
    assert_readable(fig, "spectrum")


def test_accuracy_note_sits_above_the_panel(tmp_path):
    frame = sweep(tmp_path, FMNIST, grid=((0.1, 8), (0.1, 20)), seeds=(0,), n_ckpt=8)
    fig = panels.trend_figure(frame, by="batch")
    renderer = render(fig)
    acc = next(ax for ax in fig.axes if ax.get_ylabel().startswith("test accuracy"))
    (note,) = [t for t in acc.texts if "below the axis" in t.get_text()]
    assert note.get_window_extent(renderer).y0 >= acc.get_window_extent(renderer).y1 - 0.5  # above the data
    assert "down to 0.7" in note.get_text()


def test_negative_infinite_log_volumes_are_marked(tmp_path):
    """A run whose log volume is -inf at two checkpoints: the mean leaves it out, the CSV counts it and
    the panel marks those checkpoints (a triangle on the bottom edge, and a note)."""
    for seed in (0, 1):
        make_run(tmp_path, *FMNIST, 0.1, 20, seed, n_ckpt=4, name=f"r{seed}",
                 folder=folder_name(*FMNIST, 0.1, 20, seed))
    neg_inf_log_volume(tmp_path / folder_name(*FMNIST, 0.1, 20, 1))
    frame, _ = load_results([tmp_path])
    fig, lines, _ = panels.trend(frame, "lr", panels.TREND_PANELS)
    vol = lines[lines["column"] == "log_volume"].set_index("iteration")
    assert vol.loc[[300, 400], "n_neg_inf"].tolist() == [1, 1] and vol.loc[[100, 200], "n_neg_inf"].tolist() == [0, 0]
    assert vol.loc[300, "n_runs"] == 1
    ax = next(ax for ax in fig.axes if ax.get_ylabel().startswith("log volume"))
    (marks,) = [line for line in ax.get_lines() if line.get_marker() == "v"]
    assert list(marks.get_xdata()) == [300, 400]
    assert any("-inf" in t.get_text() for t in ax.texts)
    assert_readable(fig, "trend with -inf")


def test_scatter_matrix_fills_its_width_and_leaves_p_out_below_five_runs(tmp_path):
    frame = sweep(tmp_path, CIFAR, grid=((0.05, 20), (0.1, 20), (0.2, 20)), seeds=(0,), n_ckpt=3)
    summary = run_summary(frame)
    fig = panels.correlation_figure(summary, panels.CORRELATION_COLUMNS, title="t")
    renderer = render(fig)
    content = fig.get_tightbbox(renderer)
    width = fig.get_figwidth()
    assert content.x0 < 0.05 * width and content.x1 > 0.95 * width  # no blank column (inches)
    pairs = [t.get_text() for t in fig.texts if t.get_text().startswith("r = ")]
    assert pairs and all("p = " not in t and "n = 3" in t for t in pairs)
    from sharpcomp.figures.scatter import pair_text  # the upper triangle's text

    assert pair_text(0.5, 0.01, 5) == "r = 0.50\np = 0.01\nn = 5"
    assert_readable(fig, "scatter matrix")


@pytest.mark.parametrize("flat, named, unnamed", [
    (("average", "average_se", "worst_case"), ["average-case sh."], ["Tr H", "Hutchinson"]),
    (("batch_sharpness", "batch_sharpness_se", "hessian_trace", "hessian_trace_se"), ["Tr H", "batch sharpness"],
     ["average"]),
    (("worst_case",), ["no error bars"], ["Tr H", "Hutchinson"]),
])
def test_flatness_title_names_the_error_bars_drawn(tmp_path, flat, named, unnamed):
    frame = pd.concat([make_run(tmp_path, *CIFAR, lr, 20, 0, n_ckpt=3, flat=flat) for lr in (0.05, 0.1)])
    text = panels.error_bar_text(frame)
    assert all(x in text for x in named) and not any(x in text for x in unnamed), text
