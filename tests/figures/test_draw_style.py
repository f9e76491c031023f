"""Figures to a journal's standard: runs that differ only in the seed share their setting's colour (styles
tell seeds apart), scatter-matrix histograms have edged bars and a rug, the r label sits in the emptiest
corner, an accuracy axis is not squashed by the first checkpoints, fonts are readable."""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from sharpcomp.figures import draw, scatter


def test_runs_differing_in_seed_share_the_settings_colour():
    groups = [f"lr {lr}, batch 20, seed {s}" for lr in (0.05, 0.1, 0.2) for s in range(5)] + ["lr 0.1, batch 8, seed 0"]
    styles = ["-", "--", "-.", ":", (0, (6, 2, 1, 2, 1, 2))]
    colors, looks = draw._group_looks(groups, "run", styles)
    assert len(set(colors.values())) == 4  # one per setting, none reused across learning rates
    for lr, c in (("0.05", "C0"), ("0.1", "C1"), ("0.2", "C2")):
        runs = [g for g in groups if g.startswith(f"lr {lr}, batch 20")]
        assert {colors[g] for g in runs} == {c} and len({str(looks[g]) for g in runs}) == 5
    # groups that are not run labels keep one colour each
    colors, _ = draw._group_looks(["0.05", "0.1"], "lr", styles)
    assert colors == {"0.05": "C0", "0.1": "C1"}


def test_r_label_goes_to_the_emptiest_corner():
    x = np.array([0.0, 0.1, 0.2, 0.9, 1.0])
    y = np.array([1.0, 0.95, 0.9, 0.1, 0.0])  # points along the top-left / bottom-right diagonal
    assert scatter._free_corner(x, y)[2:] in (("right", "top"), ("left", "bottom"))
    assert scatter._free_corner(x, -y)[2:] in (("left", "top"), ("right", "bottom"))


def test_histograms_have_edges_and_fonts_are_readable():
    summary = pd.DataFrame({"a": [1.0, 2.0, 2.5, 4.0], "b": [2.0, 1.0, 3.0, 4.0], "lr": [0.1, 0.1, 0.2, 0.2]})
    pearson = pd.DataFrame([{"x": "a", "y": "b", "r": 0.6, "p": 0.4, "n": 4}])
    fig = scatter.draw_correlation(summary, ["a", "b"], pearson, color_by=("lr",))
    hist = fig.sharpcomp_axes[0][0]
    assert hist.patches and all(p.get_linewidth() > 0 and p.get_edgecolor()[3] > 0 for p in hist.patches)
    ticks = [t for ax in (fig.sharpcomp_axes[1][0], fig.sharpcomp_axes[1][1]) for t in ax.get_xticklabels()]
    assert min(t.get_fontsize() for t in ticks) >= 8
    assert fig.sharpcomp_axes[1][0].get_xlabel() and fig.sharpcomp_axes[1][0].xaxis.label.get_fontsize() >= 9


def test_accuracy_axis_spans_the_late_values():
    ax = Figure().subplots()
    it = np.arange(0, 1100, 100.0)
    line = pd.DataFrame({"iteration": it, "mean": np.r_[0.5, 0.8, np.linspace(0.94, 0.96, 9)]})
    ax.plot(line.iteration, line["mean"])
    draw._accuracy_limits(ax, [line])
    lo, hi = ax.get_ylim()
    assert 0.92 < lo < 0.94 and 0.96 < hi <= 0.97
    assert any("below the axis" in t.get_text() for t in ax.texts)
