"""The landscape command (``sharpcomp landscape``): loss-landscape figures of trained runs.

    sharpcomp landscape RUN [points=41] [span=1.0] [n=2000] [seed=0] [out=DIR] [chunk=41] [batch=500]
    sharpcomp landscape RUN_A RUN_B [points=41] [lo=-0.5] [hi=1.5] [n=2000] [out=DIR] ...
    sharpcomp landscape RUN directions=pca [iterations=all] [points=41] [margin=0.25] [n=2000] [out=DIR] ...

One run: the loss and accuracy on a points x points grid of [-span, span]^2 along two filter-normalised
random directions around the run's last checkpoint (on n training images), a 1D profile along the first
direction (n training and n test images): ``landscape_2d.csv``, ``landscape_1d.csv``,
``landscape_contour.png``, ``landscape_surface.png``, ``landscape_1d.png`` in DIR (default RUN-landscape,
beside the run folder). Two runs (the same network and data): the loss and accuracy along (1 - t) A + t B
for t in [lo, hi], on n training and n test images: ``interpolation.csv`` and ``interpolation.png``
(default RUN_A-landscape). ``directions=pca`` (a run trained with ``save_every``): the weights kept
along the run (``iterations``: all, or a comma list) on their top two principal directions, the loss
on that plane around the last of them (a box around the path, widened by ``margin`` of its width on every
side), the path drawn on it, each axis with the fraction of variance its direction explains:
``trajectory_2d.csv``, ``trajectory_path.csv``, ``trajectory.png``.
The subsets are the first n images of a permutation drawn from ``seed``; the directions come from ``seed``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import torch

from sharpcomp.engine.loading import load_run, nonfinite_weights, run_settings
from sharpcomp.figures import landscape as draw
from sharpcomp.measures.landscape import slices as landscape
from sharpcomp.measures.landscape import trajectory
from sharpcomp.measures.landscape.trajectory import flatten
from sharpcomp.results.kept_weights import KeptError, kept_iterations, parse_iterations, read_weights
from sharpcomp.settings import ConfigError, Settings
from sharpcomp.terminal import shown
from sharpcomp.usage import EXIT_USAGE, Option, Syntax, UsageError, check_output_place, integer, number, report

T_MAX = 100.0  # |lo|, |hi| and span: farther out, weights of 100 times their size (the losses overflow first)
SYNTAX = Syntax(
    command="landscape", folders="RUN [RUN_B]", most=2,
    folders_help="one run folder (its landscape) or two (their interpolation)",
    summary="The loss landscape of a run around its last checkpoint (a 2D grid along two filter-normalised "
            "random directions, and a 1D profile), or the path (1 - t) A + t B between two runs of the same "
            "network and data, or (directions=pca) the path of a run's kept weights on their top two principal "
            "directions. CSVs and PNGs in out=DIR (default RUN-landscape, beside the run).",
    options=(
        Option("points", "grid points per axis (default 41; >= 2)", "P"),
        Option("span", f"one run: the grid covers [-span, span]^2 (default 1.0; at most {T_MAX:g})", "S"),
        Option("lo", f"two runs: t from lo (default -0.5; within +-{T_MAX:g})", "T"),
        Option("hi", f"two runs: t to hi (default 1.5; above lo, within +-{T_MAX:g})", "T"),
        Option("n", "training (and test) images the losses are computed on (default 2000)", "N"),
        Option("seed", "seed of the directions and of the image subsets (default 0)", "S"),
        Option("out", "output folder (default RUN-landscape, beside the run folder)", "DIR"),
        Option("chunk", "grid points evaluated at once (default 41)", "K"),
        Option("batch", "images per forward pass (default 500)", "B"),
        Option("directions", "random (default: filter-normalised random directions) or pca (the kept weights' "
                             "top two principal directions; a run trained with save_every)", "random|pca"),
        Option("iterations", "directions=pca: the kept iterations drawn (default all; at least 3)", "all|I,J,..."),
        Option("margin", "directions=pca: the grid reaches this fraction of the path's width beyond it on every "
                         "side (default 0.25)", "M"),
    ),
    examples=("sharpcomp landscape outputs/runs/fashion_mnist-mlp4/default points=21",
              "sharpcomp landscape RUN_A RUN_B lo=-1 hi=2 out=interp",
              "sharpcomp landscape RUN directions=pca points=21"),
)


def _parse(argv: Sequence[str]) -> tuple[list[str], dict]:
    """The run folders and the checked options; UsageError for a bad command line."""
    parsed = SYNTAX.parse(argv)
    runs, given, opts = parsed.folders, parsed.values, {}
    if not 1 <= len(runs) <= 2:
        raise UsageError("give one run folder (a landscape) or two (their interpolation)")
    for k in ("points", "n", "chunk", "batch", "seed"):
        if k in given:
            opts[k] = integer(parsed.said(k), given[k], None if k == "seed" else 2 if k == "points" else 1)
    if "span" in given:
        opts["span"] = number(parsed.said("span"), given["span"], 0, above=True)
        if opts["span"] > T_MAX:
            raise UsageError(f"span must be <= {T_MAX:g}, got {opts['span']:g}")
    for k in ("lo", "hi"):
        if k in given:
            opts[k] = number(parsed.said(k), given[k], -T_MAX, T_MAX)
    if not opts.get("lo", -0.5) < opts.get("hi", 1.5):
        raise UsageError("lo must be below hi")
    if "out" in given:
        if not given["out"]:
            raise UsageError("out needs a folder: out=DIR")
        check_output_place(given["out"], parsed.said("out"))
        opts["out"] = given["out"]
    return runs, {**opts, **_trajectory_options(parsed, len(runs))}


def _trajectory_options(parsed, runs: int) -> dict:
    """``directions``, ``iterations`` and ``margin``, checked."""
    given, opts = parsed.values, {}
    if "directions" in given:
        if given["directions"] not in ("random", "pca"):
            raise UsageError(f"{parsed.said('directions')} must be random or pca, got '{given['directions']}'")
        opts["directions"] = given["directions"]
    if opts.get("directions") == "pca" and runs != 1:
        raise UsageError("directions=pca draws the path of one run: give one run folder")
    if "margin" in given:
        opts["margin"] = number(parsed.said("margin"), given["margin"], 0)
    if "iterations" in given:
        opts["iterations"] = given["iterations"]
    return opts


def _subset(x: torch.Tensor, y: torch.Tensor, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    idx = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed))[:n]
    return x[idx], y[idx]


def _out(runs: list[Path], o: dict) -> Path:
    out = Path(o["out"]) if "out" in o else runs[0].with_name(f"{runs[0].name}-landscape")  # beside the run
    if "out" not in o and out.is_symlink():  # the default folder is never followed elsewhere
        raise UsageError(f"the output folder {out} is a symbolic link; name a folder with out=DIR")
    return out


def _trajectory(run_dir: Path, o: dict) -> list[Path]:
    """``directions=pca``: the kept weights on their two principal directions, over the loss there."""
    kept = kept_iterations(run_dir)
    try:
        its = sorted(set(parse_iterations(o.get("iterations", "all"), kept)))
    except KeptError as exc:
        raise UsageError(str(exc)) from None
    if len(its) < 3:
        raise UsageError(f"directions=pca needs at least 3 kept weights, {run_dir} has {len(kept)} "
                         f"(train it with save_every=N)")
    run = load_run(run_dir, iteration=its[-1])
    names = [n for n, _ in run.model.named_parameters()]
    try:
        path = torch.stack([flatten(read_weights(run_dir, it, run.run_id), names) for it in its])
    except KeyError as exc:
        raise UsageError(f"kept weights in {run_dir} lack parameter {exc} of the network") from None
    except KeptError as exc:  # a crafted, linked or foreign file among the kept weights
        raise ConfigError(str(exc)) from None
    plane = trajectory.pca_plane(path)
    del path
    n, s = o.get("n", 2000), run.settings
    x, y = _subset(run.data.train_x, run.data.train_y, n, o.get("seed", 0))
    surf = trajectory.trajectory_surface(run.model, run.loss_fn, x, y, plane, o.get("points", 41),
                                         o.get("margin", 0.25), o.get("chunk", 41), o.get("batch", 500))
    frame = pd.DataFrame({"iteration": its, "pc1": plane.coords[:, 0].numpy(), "pc2": plane.coords[:, 1].numpy(),
                          "loss_on_plane": surf["path_loss"].numpy(), "off_plane": plane.off_plane.numpy()})
    grid = {k: surf[k].numpy() for k in ("a", "b", "loss", "acc")}
    title = (f"{s.raw['model']['name']} on {s.raw['data']['name']}, {run_dir.name}: {len(its)} kept weights, "
             f"iterations {its[0]}..{its[-1]} ({len(x)} train images)")
    explained = tuple(float(e) for e in plane.explained)
    return draw.write_trajectory(_out([run_dir], o), "trajectory", grid, frame, explained, title)


def differences(a: Settings, b: Settings) -> str:
    """What keeps two runs from one interpolation (their network, data or loss differ), or ""."""
    for key in ("model", "data", "loss"):
        va, vb = a.raw[key], b.raw[key]
        if isinstance(va, dict) and isinstance(vb, dict):
            va, vb = ({k: v for k, v in d.items() if k != "root"} for d in (va, vb))  # where, not what
            diff = next((k for k in sorted(set(va) | set(vb), key=str) if va.get(k) != vb.get(k)), None)
            if diff is not None:
                return f"{key}.{diff}: {va.get(diff)!r} in A, {vb.get(diff)!r} in B"
        elif va != vb:
            return f"{key}: {va!r} in A, {vb!r} in B"
    return ""


def finite(model, run: Path):
    """``model`` when every weight is finite; UsageError otherwise (a diverged run has no landscape)."""
    bad = nonfinite_weights(model)
    if bad:
        raise UsageError(f"run {run} holds weights that are not finite ({bad[0]}); a diverged run has no "
                         f"landscape")
    return model


def _run(runs: list[Path], o: dict) -> list[Path]:
    if o.get("directions") == "pca":
        return _trajectory(runs[0], o)
    n, seed, points = o.get("n", 2000), o.get("seed", 0), o.get("points", 41)
    kw = {"chunk": o.get("chunk", 41), "batch_size": o.get("batch", 500)}
    run = load_run(runs[0])
    model, loss_fn, data, s = finite(run.model, runs[0]), run.loss_fn, run.data, run.settings
    train = _subset(data.train_x, data.train_y, n, seed)
    test = _subset(data.test_x, data.test_y, n, seed)
    out = _out(runs, o)
    name = shown(f"{s.raw['model']['name']} on {s.raw['data']['name']}")
    if len(runs) == 1:
        span = o.get("span", 1.0)
        grid = landscape.surface_2d(model, loss_fn, *train, points, span, torch.Generator().manual_seed(seed), **kw)
        curves = {}
        for label, (x, y) in (("train", train), ("test", test)):
            curves[label] = landscape.line_1d(model, loss_fn, x, y, points, span,
                                              torch.Generator().manual_seed(seed), **kw)
        line = {"a": curves["train"]["a"], "curves": curves}
        return draw.write_surface(out, "landscape", grid, line, f"{name}, {shown(runs[0].name)} ({n} train images)")
    differ = differences(s, run_settings(runs[1]))  # before B's network is built on A's data
    if differ:
        raise UsageError(f"the two runs need the same network, data and loss ({differ})")
    model_b = finite(load_run(runs[1], data=data).model, runs[1])
    lo, hi = o.get("lo", -0.5), o.get("hi", 1.5)
    curves = {label: landscape.interpolation(model, model_b, loss_fn, x, y, points, lo, hi, **kw)
              for label, (x, y) in (("train", train), ("test", test))}
    labels = (shown(runs[0].name), shown(runs[1].name))  # names that are not text, or hold escapes
    return draw.write_interpolation(out, "interpolation", {"t": curves["train"]["t"], "curves": curves}, labels,
                                    f"{name}: along (1 - t) A + t B ({n} images each)")


@SYNTAX.entry_point
def main(argv: list[str]) -> int:
    """``sharpcomp landscape RUN [RUN_B] [key=value ...]``: write the figures; 0 on success."""

    def err(msg: str, code: int = EXIT_USAGE) -> int:
        return report("landscape", msg, code)

    try:
        runs, opts = _parse(argv)
    except UsageError as exc:
        return err(str(exc))
    paths = [Path(os.path.abspath(r)) for r in runs]  # named by their folders (``.`` too)
    for p in paths:
        if not p.is_dir():
            return err(f"no run directory '{p}'")
    try:
        written = _run(paths, opts)
    except UsageError as exc:
        return err(str(exc))
    except FileNotFoundError as exc:
        return err(f"cannot load run: {exc}", 1)
    except ConfigError as exc:  # a refused checkpoint or stored config
        return err(f"cannot load run: {exc}", 1)
    except Exception as exc:  # a broken checkpoint, missing data: one line, no traceback
        return err(f"{type(exc).__name__}: {exc}", 1)
    for p in written:
        print(f"wrote {p}")
    return 0
