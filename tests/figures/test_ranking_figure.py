"""The ranking's figures draw what the table holds: one row per measure in the order given, each coefficient at
its value, families coloured, a panel per coefficient and per axis."""

from __future__ import annotations

import numpy as np
from matplotlib.collections import PathCollection
from matplotlib.colors import to_hex

from sharpcomp.analysis.grid import grid_of
from sharpcomp.analysis.protocol import rank
from sharpcomp.analysis.report import order
from sharpcomp.figures.ranking import FAMILY_COLORS, draw_ranking, draw_ranking_axes
from tests.analysis.sweeps import sweep


def _points(ax) -> dict[str, tuple[float, str]]:
    """Each labelled row's dot (the first one drawn at that row): its x and colour."""
    labels = [t.get_text() for t in ax.get_yticklabels()]
    out: dict[int, tuple[float, str]] = {}
    for dots in (c for c in ax.collections if isinstance(c, PathCollection)):
        colors = dots.get_facecolors()
        for k, (x, y) in enumerate(np.asarray(dots.get_offsets())):
            out.setdefault(int(round(y)), (float(x), to_hex(colors[min(k, len(colors) - 1)])))
    return {labels[i]: v for i, v in out.items()}


def test_the_figures_hold_the_tables_values():
    ranking = rank(grid_of(sweep(seeds=2)), boot=50)
    names = order(ranking)
    fig = draw_ranking(ranking.table, names, "title")
    axes = fig.axes
    assert [a.get_title() for a in axes] == ["Kendall's tau", "granulated Kendall Psi",
                                            "conditional mutual information", "sign error"]
    assert [t.get_text() for t in axes[0].get_yticklabels()] == names and names[0] == "planted"
    tau = _points(axes[0])
    assert tau["planted"] == (1.0, to_hex(FAMILY_COLORS["other"]))
    assert tau["sharpness"][1] == to_hex(FAMILY_COLORS["study"])
    assert tau["sharpness"][0] == ranking.value("sharpness", "kendall")
    per_axis = draw_ranking_axes(ranking.table, names, list(ranking.grid.axes), "title")
    titles = [a.get_title() for a in per_axis.axes]
    assert titles == ["psi along lr", "psi along batch", "psi along model.width", "sign error along lr",
                      "sign error along batch", "sign error along model.width"]
    assert _points(per_axis.axes[0])["planted"][0] == 1.0
