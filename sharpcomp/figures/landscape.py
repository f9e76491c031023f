"""Drawing loss landscapes (the numbers come from :mod:`sharpcomp.measures.landscape.slices` and
``trajectory``): a 1D profile of loss and accuracy, a 2D contour plot, a 3D surface, the interpolation
between two networks, and the optimisation path on its two principal directions; each grid also as a
CSV. matplotlib ``Figure`` objects without pyplot (no display needed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from sharpcomp.figures.context import replacing_file, replacing_path
from sharpcomp.figures.text import wrap


def _save(fig: Figure, path: Path, formats: tuple[str, ...]) -> list[Path]:
    out = []
    for ext in formats:
        p = path.with_suffix(f".{ext}")
        with replacing_path(p) as tmp:  # a link at p is replaced, never followed
            fig.savefig(tmp, dpi=150, bbox_inches="tight")
        out.append(p)
    return out


def _save_csv(frame: pd.DataFrame, path: Path) -> None:
    with replacing_file(path) as fh:
        frame.to_csv(fh, index=False)


def _title(fig: Figure, text: str, fontsize: float = 10) -> None:
    """The figure's title, wrapped to its width (run folder names break after their commas)."""
    fig.suptitle(wrap(text, fig.get_figwidth() - 0.3, fontsize), fontsize=fontsize)


def profile_figure(x: np.ndarray, curves: dict[str, tuple[np.ndarray, np.ndarray]], xlabel: str, title: str,
                   marks: dict[str, float] | None = None) -> Figure:
    """Loss (left axis, log scale) and accuracy (right axis) along a line; ``curves``: label -> (loss, acc).
    ``marks``: short labels (e.g. A, B) drawn above vertical lines at their positions."""
    fig = Figure(figsize=(6.4, 4.6), layout="constrained")
    ax = fig.add_subplot()
    ax2 = ax.twinx()
    colours = ("tab:blue", "tab:orange", "tab:green", "tab:red")
    for (label, (loss, acc)), c in zip(curves.items(), colours):
        ax.plot(x, loss, color=c, lw=1.8, label=f"{label} loss")
        ax2.plot(x, 100 * np.asarray(acc), color=c, lw=1.2, ls="--", label=f"{label} accuracy")
    ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("loss (solid, log scale)")
    ax2.set_ylabel("accuracy, % (dashed)")
    ax2.set_ylim(0, 100)
    for name, pos in (marks or {}).items():
        ax.axvline(pos, color="0.6", lw=0.8, zorder=0)
        ax.annotate(name, (pos, 1.0), xycoords=("data", "axes fraction"), xytext=(0, 2), textcoords="offset points",
                    ha="center", va="bottom", fontsize=9, fontweight="bold")
    lines = ax.get_legend_handles_labels()[0] + ax2.get_legend_handles_labels()[0]
    labels = ax.get_legend_handles_labels()[1] + ax2.get_legend_handles_labels()[1]
    fig.legend(lines, labels, fontsize=8, loc="outside lower center", ncol=len(curves), frameon=False)
    _title(fig, title)
    return fig


def _loss_contours(a: np.ndarray, b: np.ndarray, loss: np.ndarray, size: tuple[float, float], shrink: float = 1.0):
    """A figure of filled contours of log10 loss over (a, b) (loss[i, j] at (a_i, b_j)) with its colour bar
    (``shrink`` times the axes' slot), its ticks spaced (at most 6 a side, 8 on the bar)."""
    fig = Figure(figsize=size, layout="constrained")
    ax = fig.add_subplot()
    z = np.log10(np.maximum(loss, 1e-12))
    cs = ax.contourf(a, b, z.T, levels=30, cmap="viridis")
    ax.contour(a, b, z.T, levels=15, colors="k", linewidths=0.4, alpha=0.6)
    bar = fig.colorbar(cs, ax=ax, label=r"$\log_{10}$ loss", shrink=shrink)
    bar.locator = MaxNLocator(8)
    bar.update_ticks()
    for axis in (ax.xaxis, ax.yaxis):  # round steps (1, 2, 2.5, 5 x 10^k), at most 6 a side
        axis.set_major_locator(MaxNLocator(6, steps=[1, 2, 2.5, 5, 10]))
    return fig, ax


def contour_figure(a: np.ndarray, b: np.ndarray, loss: np.ndarray, title: str) -> Figure:
    """Filled contours of log10 loss over (a, b), the trained weights marked at the origin."""
    fig, ax = _loss_contours(a, b, loss, (5.8, 5.4), shrink=0.8)  # as tall as the square axes
    ax.plot([0], [0], marker="*", color="red", ms=12, ls="none", label="trained weights")
    ax.set_xlabel(r"$\alpha$ (direction 1, filter-normalised)")
    ax.set_ylabel(r"$\beta$ (direction 2, filter-normalised)")
    ax.set_aspect("equal")
    ax.legend(loc="upper right", fontsize=8)
    _title(fig, title)
    return fig


def surface_figure(a: np.ndarray, b: np.ndarray, loss: np.ndarray, title: str) -> Figure:
    """A 3D surface of the loss over (a, b), coloured by the loss, with its colour bar."""
    fig = Figure(figsize=(6.6, 5.2), layout="constrained")
    ax = fig.add_subplot(projection="3d")
    ga, gb = np.meshgrid(a, b, indexing="ij")
    surf = ax.plot_surface(ga, gb, loss, cmap="viridis", linewidth=0, antialiased=True, rcount=len(a),
                           ccount=len(b), vmin=float(np.min(loss)), vmax=float(np.max(loss)))
    for axis in (ax.xaxis, ax.yaxis, ax.zaxis):
        axis.set_major_locator(MaxNLocator(5))
    ax.set_xlabel(r"$\alpha$")
    ax.set_ylabel(r"$\beta$")
    ax.set_zlabel("loss", labelpad=8)
    ax.view_init(elev=35, azim=-60)
    fig.colorbar(surf, ax=ax, label="loss", shrink=0.6, pad=0.08)
    _title(fig, title)
    return fig


def grid_frame(a: np.ndarray, b: np.ndarray, loss: np.ndarray, acc: np.ndarray) -> pd.DataFrame:
    ga, gb = np.meshgrid(a, b, indexing="ij")
    return pd.DataFrame({"alpha": ga.ravel(), "beta": gb.ravel(), "loss": loss.ravel(), "acc": acc.ravel()})


def write_surface(out: Path, name: str, grid: dict, line: dict, title: str,
                  formats: tuple[str, ...] = ("png",)) -> list[Path]:
    """``<name>_2d.csv``, ``<name>_1d.csv``, ``<name>_contour``, ``<name>_surface`` and ``<name>_1d`` figures."""
    out.mkdir(parents=True, exist_ok=True)
    a, b = grid["a"].numpy(), grid["b"].numpy()
    loss, acc = grid["loss"].numpy(), grid["acc"].numpy()
    written = [out / f"{name}_2d.csv", out / f"{name}_1d.csv"]
    _save_csv(grid_frame(a, b, loss, acc), written[0])
    _save_csv(pd.DataFrame({"alpha": line["a"].numpy(), **{f"{k}_{q}": v[q].numpy()
                                                           for k, v in line["curves"].items()
                                                           for q in ("loss", "acc")}}), written[1])
    written += _save(contour_figure(a, b, loss, title), out / f"{name}_contour", formats)
    written += _save(surface_figure(a, b, loss, title), out / f"{name}_surface", formats)
    curves = {k: (v["loss"].numpy(), v["acc"].numpy()) for k, v in line["curves"].items()}
    written += _save(profile_figure(line["a"].numpy(), curves, r"$\alpha$ (one filter-normalised direction)",
                                    title), out / f"{name}_1d", formats)
    return written


def write_interpolation(out: Path, name: str, result: dict, labels: tuple[str, str], title: str,
                        formats: tuple[str, ...] = ("png",)) -> list[Path]:
    """``<name>.csv`` and the ``<name>`` figure: loss and accuracy along (1 - t) A + t B, the end points marked
    A and B and named (``labels``, e.g. their run folders) under ``title``."""
    out.mkdir(parents=True, exist_ok=True)
    t = result["t"].numpy()
    path = out / f"{name}.csv"
    _save_csv(pd.DataFrame({"t": t, **{f"{k}_{q}": v[q].numpy() for k, v in result["curves"].items()
                                       for q in ("loss", "acc")}}), path)
    curves = {k: (v["loss"].numpy(), v["acc"].numpy()) for k, v in result["curves"].items()}
    fig = profile_figure(t, curves, r"$t$ in $(1-t)\,\theta_A + t\,\theta_B$",
                         f"{title}\nA = {labels[0]}\nB = {labels[1]}", marks={"A": 0.0, "B": 1.0})
    return [path, *_save(fig, out / name, formats)]


def trajectory_figure(a: np.ndarray, b: np.ndarray, loss: np.ndarray, path: pd.DataFrame, explained: tuple,
                      title: str) -> Figure:
    """Filled contours of log10 loss on the plane of the two principal directions, the path on it (markers
    at the kept weights, the first and last labelled by iteration), the variance each direction explains
    on its axis."""
    fig, ax = _loss_contours(a, b, loss, (6.2, 5.6))
    ax.plot(path["pc1"], path["pc2"], color="red", lw=1.4, marker=".", ms=5, label="path (kept weights)")
    for row, where in ((path.iloc[0], "start"), (path.iloc[-1], "end")):
        ax.annotate(f"{where}: it {int(row['iteration'])}", (row["pc1"], row["pc2"]), xytext=(4, 4),
                    textcoords="offset points", fontsize=8, color="white")
    ax.set_xlabel(f"1st principal direction ({100 * explained[0]:.1f} % of variance)")
    ax.set_ylabel(f"2nd principal direction ({100 * explained[1]:.1f} % of variance)")
    ax.legend(loc="upper right", fontsize=8)
    _title(fig, title, 9)
    return fig


def write_trajectory(out: Path, name: str, grid: dict, path: pd.DataFrame, explained: tuple, title: str,
                     formats: tuple[str, ...] = ("png",)) -> list[Path]:
    """``<name>_2d.csv`` (the loss on the plane), ``<name>_path.csv`` (the path: iteration, coordinates,
    loss on the plane, distance off the plane) and the ``<name>`` figure. ``grid``: numpy arrays a, b,
    loss, acc; ``explained``: the two directions' fractions of variance."""
    out.mkdir(parents=True, exist_ok=True)
    written = [out / f"{name}_2d.csv", out / f"{name}_path.csv"]
    _save_csv(grid_frame(grid["a"], grid["b"], grid["loss"], grid["acc"]), written[0])
    _save_csv(path.assign(explained_pc1=explained[0], explained_pc2=explained[1]), written[1])
    fig = trajectory_figure(grid["a"], grid["b"], grid["loss"], path, explained, title)
    return written + _save(fig, out / name, formats)
