"""Text that a reader can read: every text artist of a drawn figure, measured by matplotlib itself.

:func:`text_problems` renders a figure and takes the window extent of each visible, non-empty text
artist -- the suptitle and figure texts, each axes' titles, axis labels and the tick labels it draws
(major and minor, 2D and 3D axes, colour bars included), legend texts and titles, annotations -- and
lists every pair whose boxes overlap and every box that leaves the figure. Figures drawn with a layout
engine are laid out by this draw, exactly as ``savefig`` lays them out.
"""

from __future__ import annotations

import itertools

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.text import Text
from matplotlib.transforms import Bbox

# Boxes may touch: an overlap counts when it is over half a pixel both ways (at 100 dpi).
SLACK = 0.5
DPI = 100


def _drawn_tick_labels(axis) -> list[Text]:
    """The tick labels ``axis`` draws: visible labels of ticks inside its view interval."""
    lo, hi = sorted(axis.get_view_interval())
    span = abs(hi - lo) or 1.0
    out = []
    for tick in (*axis.get_major_ticks(), *axis.get_minor_ticks()):
        loc = tick.get_loc()
        if loc is None or not lo - 1e-9 * span <= loc <= hi + 1e-9 * span:
            continue
        out += [t for t in (tick.label1, tick.label2) if t.get_visible()]
    return out


def _axes_texts(ax) -> list[tuple[str, Text]]:
    if not ax.get_visible():
        return []
    texts = [("title", t) for t in (ax.title, ax._left_title, ax._right_title)]
    axes = [ax.xaxis, ax.yaxis] + ([ax.zaxis] if hasattr(ax, "zaxis") else [])
    for axis in axes:
        texts.append(("axis label", axis.label))
        texts += [("tick label", t) for t in _drawn_tick_labels(axis)]
        if axis.offsetText.get_visible():
            texts.append(("axis offset", axis.offsetText))
    texts += [("text", t) for t in ax.texts]
    legend = ax.get_legend()
    if legend is not None:
        texts += _legend_texts(legend)
    return texts


def _legend_texts(legend) -> list[tuple[str, Text]]:
    if not legend.get_visible():
        return []
    return [("legend", t) for t in legend.get_texts()] + [("legend title", legend.get_title())]


def text_artists(fig: Figure) -> list[tuple[str, Text]]:
    """(kind, artist) for every text of ``fig`` that is drawn with some text."""
    texts = [("suptitle", fig._suptitle)] if fig._suptitle is not None else []
    texts += [("figure text", t) for t in fig.texts if t is not fig._suptitle]
    for legend in fig.legends:
        texts += _legend_texts(legend)
    for ax in fig.axes:
        texts += _axes_texts(ax)
    return [(kind, t) for kind, t in texts if t is not None and t.get_visible() and t.get_text().strip()]


def render(fig: Figure):
    """Draw ``fig`` as ``savefig`` does (layout engine included), at :data:`DPI`; its renderer."""
    fig.set_dpi(DPI)
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return canvas.get_renderer()


def text_boxes(fig: Figure) -> list[tuple[str, str, Bbox]]:
    """(kind, text, window extent in pixels) of every drawn text; the figure is rendered first."""
    renderer = render(fig)
    return [(kind, t.get_text(), t.get_window_extent(renderer)) for kind, t in text_artists(fig)]


def _overlap(a: Bbox, b: Bbox) -> bool:
    w = min(a.x1, b.x1) - max(a.x0, b.x0)
    h = min(a.y1, b.y1) - max(a.y0, b.y0)
    return w > SLACK and h > SLACK


def text_problems(fig: Figure) -> list[str]:
    """Every pair of overlapping texts and every text outside the figure, as readable lines."""
    boxes = text_boxes(fig)
    width, height = fig.bbox.width, fig.bbox.height
    problems = [f"{kind} {text!r} leaves the figure ({box.x0:.0f}..{box.x1:.0f} x {box.y0:.0f}..{box.y1:.0f} "
                f"in {width:.0f} x {height:.0f})"
                for kind, text, box in boxes
                if box.x0 < -SLACK or box.y0 < -SLACK or box.x1 > width + SLACK or box.y1 > height + SLACK]
    for (k1, t1, b1), (k2, t2, b2) in itertools.combinations(boxes, 2):
        if _overlap(b1, b2):
            problems.append(f"{k1} {t1!r} overlaps {k2} {t2!r}")
    return problems


def assert_readable(fig: Figure, what: str = "figure") -> None:
    """No two texts of ``fig`` overlap and none leaves it."""
    problems = text_problems(fig)
    assert not problems, f"{what}: " + "; ".join(problems[:12]) + (
        f" (and {len(problems) - 12} more)" if len(problems) > 12 else "")
