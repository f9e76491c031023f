"""``sharpcomp measure``: every measure on networks trained elsewhere, without training.

Usage (the syntax every subcommand shares, :mod:`sharpcomp.usage`)::

    sharpcomp measure RUN_FOLDER [RUN_FOLDER ...]                  [options]
    sharpcomp measure run=RUN_FOLDER[,RUN_FOLDER...]               [iterations=all|I,J,...] [options]
    sharpcomp measure model=MODEL [weights=FILE] data=DATA [arg.KEY=VALUE ...] [options]

``run``: sharpcomp run folders (their network, last weights, data and settings), named as arguments or
by ``run=`` (repeatable; a comma separates folders, and a folder whose own name holds commas, as run
folders do, is taken whole); ``iterations``: the weights kept along the runs at these iterations
instead of their last state (``save_every``; ``all``: every kept one), a set of rows per iteration, with
its ``iteration`` and ``lr_now``. ``model``: a built-in (``vgg10``, ``mlp4``, ``vit``), ``timm:NAME``
(``timm.create_model(NAME, num_classes=N)``), ``torchvision:NAME`` (``torchvision.models.NAME(num_classes=N)``)
or a dotted callable (as ``model._target_``); ``arg.KEY=VALUE`` are its keyword arguments (YAML values);
``weights``: a state dict saved by ``torch.save`` (a dict with a ``model_state`` entry, as a sharpcomp
checkpoint, also works); without it the network keeps its seeded initial weights. ``data``: a
``conf/data`` name. Several models: separate them by commas (``model=vgg10,mlp4``; then ``weights``
takes as many files).

Options: ``n`` (samples per set, default 100), ``sample_sets`` (comma list of train, test,
misclassified; default train), ``seed`` (picks the train samples; default 0), ``outputs`` (N, default:
the data's class count for ``model``), ``dtype`` (float32|float64), ``out`` (folder; default
``outputs/measure``; not a training run's folder), ``figure`` (a PNG path: the across-model correlation
of sharpness with MLS and NMLS, over every row in ``out``), ``estimate`` (auto: the matrix-free estimators
with standard errors, ``sharpcomp.measures.study.estimators``, when a sample's Jacobian has over 2e7
entries; exact; always), ``probes`` (estimator probes, default 32), ``metrics.flatness.NAME={...}`` (measures
computed on the train rows, named as in a run's config; a run that recorded a measure of the user's own is
read only when it is named here: a stored config never chooses code).

One row per (model, sample set) is appended to ``out/metrics.parquet`` in the results schema
(``sharpcomp.results.columns``; ``run_id`` is the run's id or ``measure-<label>``; a row measured again
(and iteration) replaces the old one), so ``sharpcomp figures`` and pandas read it like training results.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import torch
import yaml
from torch import nn

from sharpcomp.data.order import train_sample_indices
from sharpcomp.engine.evaluation import evaluate, sample_set
from sharpcomp.engine.loading import MeasureNotNamed, load_run
from sharpcomp.engine.setup import build, load_data
from sharpcomp.figures.scatter import draw_correlation
from sharpcomp.figures.tables import correlation_table
from sharpcomp.losses import make_loss, per_sample_loss
from sharpcomp.measure_names import flatness_options
from sharpcomp.measures.registry import plan
from sharpcomp.measures.sample import Sample
from sharpcomp.measures.study.estimators import choose, estimate_metrics
from sharpcomp.measures.study.metrics import compute_metrics
from sharpcomp.measures.study.network_wide import add_network_wide
from sharpcomp.models import BUILTIN
from sharpcomp.results.kept_weights import KeptError, kept_iterations, parse_iterations
from sharpcomp.results.records import METRICS_FILE, RecordError, atomic_write_parquet, read_metrics, tidy
from sharpcomp.results.run_state import CHECKPOINT_FILE, load_tensors
from sharpcomp.settings import SAMPLE_SETS, ConfigError, defaults, run_identity, settings
from sharpcomp.usage import Option, Syntax, UsageError, check_output_place, choice, choices_list, integer, split_paths

COMMON = {"n": 100, "sample_sets": "train", "seed": 0, "outputs": None, "dtype": "float32",
          "estimate": "auto", "probes": 32,
          "out": "outputs/measure", "figure": None, "data": None, "model": None, "weights": None, "run": None,
          "iterations": None}
FIGURE_COLUMNS = ("sharpness", "mls", "nmls", "G", "local_dim")
SYNTAX = Syntax(
    command="measure",
    summary="Every measure on trained networks, without training: run folders, or any model (built-in, timm, "
            "torchvision, your own) with its weights. One row per (network, sample set) in out/metrics.parquet.",
    folders="[RUN_FOLDER ...]",
    folders_help="sharpcomp run folders (as run=)",
    most=None,
    options=(
        Option("run", "run folders, comma-separated (a folder whose name holds commas is taken whole); "
                      "repeatable", "FOLDER", repeat=True),
        Option("iterations", "with run=: the weights kept at these iterations (save_every), comma-separated, or "
                             "all", "all|I,J,..."),
        Option("model", "vgg10, mlp4, vit, timm:NAME, torchvision:NAME or a dotted callable; comma-separated for "
                        "several", "MODEL"),
        Option("weights", "a torch.save state dict per model (default: the seeded initial weights)", "FILE"),
        Option("data", "a conf/data name (with model=), e.g. cifar10_2class", "DATA"),
        Option("n", "samples per sample set (default 100)", "N"),
        Option("sample_sets", "comma list of train, test, misclassified (default train)", "LIST"),
        Option("seed", "picks the train samples and the model's initial weights (default 0)", "S"),
        Option("outputs", "the model's outputs (default: the data's class count)", "N"),
        Option("dtype", "float32 | float64 (default float32)", "DTYPE"),
        Option("estimate", "auto (estimators above 2e7 Jacobian entries per sample) | exact | always", "HOW"),
        Option("probes", "estimator probes (default 32)", "K"),
        Option("out", "folder of the rows (default outputs/measure; not a training run's folder)", "DIR"),
        Option("figure", "a PNG path: sharpness against MLS, NMLS, G and local dim over every row in out", "PNG"),
    ),
    families=(("arg.", "a keyword argument of model= (a YAML value)"),
              ("metrics.flatness.", "a measure on the train rows, as in a run's config (a YAML entry); a run that "
                                    "recorded a measure of your own is read only when it is named here")),
    examples=("sharpcomp measure outputs/runs/fashion_mnist-mlp4/default",
              "sharpcomp measure run=outputs/runs/a,outputs/runs/b n=100 sample_sets=train,test figure=corr.png",
              "sharpcomp measure model=timm:vit_tiny_patch16_224 arg.img_size=32 weights=vit.pt data=cifar10_2class"),
)


class MeasureError(ValueError):
    """A bad argument or an unusable model; one line for the user."""


def parse(argv: Sequence[str]) -> tuple[dict, dict]:
    """(options, model keyword arguments) from the command line."""
    try:
        argv, flatness = flatness_options(argv)
        parsed = SYNTAX.parse(argv)
    except (UsageError, ValueError) as exc:
        raise MeasureError(str(exc)) from None
    opts = {**COMMON, **{k: v for k, v in parsed.values.items() if k != "run"}, "flatness": flatness}
    runs = [*parsed.folders, *(f for v in parsed.get("run", []) for f in split_paths(v))]
    opts["run"] = runs or None
    args = {k: yaml.safe_load(v) for k, v in parsed.extra.items()}
    if (opts["run"] is None) == (opts["model"] is None):
        raise MeasureError("give either run=FOLDER[,...] (or run folders as arguments) or model=MODEL data=DATA")
    if opts["model"] is not None and opts["data"] is None:
        raise MeasureError("model= needs data= (a conf/data name, e.g. cifar10_2class)")
    if opts["iterations"] is not None and opts["run"] is None:
        raise MeasureError("iterations= picks kept weights of run folders: give run=FOLDER")
    try:
        _check_values(opts, parsed)
    except UsageError as exc:
        raise MeasureError(str(exc)) from None
    return opts, args


def _check_values(opts: dict, parsed) -> None:
    """Options converted and checked in place; UsageError naming the first bad one."""
    opts["estimate"] = choice("estimate", opts["estimate"], ("auto", "exact", "always"))
    opts["n"] = integer(parsed.said("n"), opts["n"], 1)
    opts["seed"] = integer(parsed.said("seed"), opts["seed"])
    opts["probes"] = integer(parsed.said("probes"), opts["probes"], 2)
    opts["sample_sets"] = tuple(choices_list("sample_sets", str(opts["sample_sets"]), SAMPLE_SETS))
    opts["dtype"] = choice("dtype", opts["dtype"], ("float32", "float64"))
    if opts["outputs"] is not None:
        opts["outputs"] = integer(parsed.said("outputs"), opts["outputs"], 1)
    if not opts["out"]:
        raise UsageError("out needs a folder: out=DIR")
    check_output_place(opts["out"], parsed.said("out"))
    out = Path(opts["out"])
    if (out / CHECKPOINT_FILE).exists() or (out / ".hydra").exists() or (out / METRICS_FILE).is_dir():
        raise UsageError(f"{parsed.said('out')} {out} is a training run's folder; its records are the run's own "
                         f"(choose another folder, e.g. out=outputs/measure)")
    if opts["figure"] is not None:
        check_output_place(opts["figure"], parsed.said("figure"))


def model_config(spec: str, args: dict, outputs: int) -> dict:
    """A model config (as ``conf/model``) for a model name."""
    label = spec.replace(":", "-").replace("/", "-")
    if spec.startswith("timm:"):
        return {"name": label, "_target_": "timm.create_model", "model_name": spec[5:], "num_classes": outputs,
                "pretrained": False, **args, "outputs": outputs}
    if spec.startswith("torchvision:"):
        return {"name": label, "_target_": f"torchvision.models.{spec[12:]}", "num_classes": outputs, **args,
                "outputs": outputs}
    if spec in BUILTIN or spec == "vit":
        return {"name": spec, "_target_": f"sharpcomp.models.{spec}", **args, "outputs": outputs}
    return {"name": label.rsplit(".", 1)[-1], "_target_": spec, **args, "outputs": outputs}


def load_weights(model: nn.Module, path: str) -> None:
    """Load the state dict saved in ``path`` (or a checkpoint's ``model_state``) into ``model``; MeasureError if not."""
    if not Path(path).is_file():
        raise MeasureError(f"no weights file '{path}'")
    with open(path, "rb") as f:
        head = f.read(4)
    if not (head.startswith(b"PK") or head[:1] == b"\x80"):  # torch.save's zip archive, or its older pickle
        raise MeasureError(f"cannot read weights '{path}': not a file written by torch.save")
    try:  # a regular file of tensors only: a crafted pickle runs nothing, and the line says what it holds
        state = load_tensors(Path(path), "cpu", "a plain state dict saved by torch.save")
    except ConfigError as exc:
        raise MeasureError(str(exc)) from None
    if isinstance(state, dict) and "model_state" in state:
        state = state["model_state"]
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError, ValueError) as exc:
        raise MeasureError(f"weights '{path}' do not fit the model: {str(exc).splitlines()[0]}") from None


def _base(opts: dict):
    """The default settings with the chosen data (they give the loss and the data settings)."""
    try:
        return settings(defaults(data=opts["data"]))
    except Exception as exc:
        raise MeasureError(f"unknown data '{opts['data']}': {str(exc).splitlines()[0]}") from None


def _data(opts: dict):
    return load_data(_base(opts), torch.device("cpu"))


def _run_targets(folder: str, iterations: str | None, measures: dict | None) -> list[dict]:
    """A run folder's network at its last saved state, or at each kept iteration of ``iterations``.

    ``measures``: the ``metrics.flatness`` entries the command line names (measures of one's own)."""
    its: list[int | None] = [None]
    if iterations is not None:
        try:
            its = parse_iterations(iterations, kept_iterations(Path(folder)))
        except KeptError as exc:
            raise MeasureError(str(exc)) from None
        if not its:
            raise MeasureError(f"no weights kept in '{folder}' (train it with save_every=N)")
    out, data = [], None
    for it in its:
        try:
            loaded = load_run(folder, data=data, iteration=it, measures=measures)
        except (FileNotFoundError, MeasureNotNamed) as exc:  # a measure of one's own is named here or refused
            raise MeasureError(f"cannot load run '{folder}': {exc}") from None
        except ConfigError as exc:
            if it is None:
                raise
            raise MeasureError(str(exc)) from None
        data = loaded.data
        source = folder if it is None else f"{folder} (weights kept at iteration {it})"
        out.append({"model": loaded.model, "settings": settings(loaded.config), "label": None, "source": source,
                    "data": data, "iteration": it})
    return out


def _targets(opts: dict, args: dict) -> list[dict]:
    """One entry per network: model, its settings, data, sample inputs by set, identity columns."""
    out = []
    if opts["run"] is not None:
        for folder in opts["run"]:
            if not Path(folder).is_dir():
                raise MeasureError(f"no run folder '{folder}'")
            out += _run_targets(folder, opts["iterations"], opts["flatness"])
        return out
    specs = str(opts["model"]).split(",")
    weights = split_paths(str(opts["weights"])) if opts["weights"] else [None] * len(specs)
    if len(weights) != len(specs):
        raise MeasureError(f"{len(specs)} models but {len(weights)} weights files")
    base = _base(opts)
    data = _data(opts)
    n_out = int(opts["outputs"]) if opts["outputs"] else data.num_classes
    for spec, w in zip(specs, weights):
        raw = {**base.raw, "model": model_config(spec, args, n_out), "seed": opts["seed"]}
        try:
            s = settings(raw)
            model = build(s, data, torch.device("cpu"))
        except (ConfigError, ValueError) as exc:
            raise MeasureError(str(exc).splitlines()[0]) from None
        if w:
            load_weights(model, w)
        out.append({"model": model.eval(), "settings": s, "label": spec, "source": w or "initial weights",
                    "data": data})
    return out


def measure_rows(opts: dict, args: dict) -> list[dict]:
    """Every measure of every network on each sample set: the rows (results schema)."""
    dtype = {"float32": torch.float32, "float64": torch.float64}[opts["dtype"]]
    rows = []
    try:
        flatness = plan(opts["flatness"])
    except ValueError as exc:
        raise MeasureError(str(exc)) from None
    for t in _targets(opts, args):
        s, model = t["settings"], t["model"]
        data = t.get("data") or load_data(s, torch.device("cpu"))
        n_out = s.num_outputs(data.num_classes)
        ident = run_identity(s)
        run_id = ident["run_id"] if t["label"] is None else f"measure-{t['label']}-s{s.seed}"
        idx = train_sample_indices(opts["seed"] if t["label"] else s.seed, len(data.train_x), opts["n"])
        test_loss, test_acc, correct = evaluate(model, data.test_x, data.test_y, s.loss)
        base = {"run_id": run_id, "data": s.data["name"], "model": s.model["name"], "seed": s.seed,
                "loss": s.loss, "outputs": n_out, "lr": s.raw.get("lr"), "batch": s.raw.get("batch"),
                "device": "cpu", "settings": json.dumps({"measured": t["source"], **ident["settings"]}, default=str),
                "status": "measured", "test_loss": test_loss, "test_acc": test_acc}
        if t.get("iteration") is not None:
            base.update(iteration=t["iteration"], lr_now=s.lr_at(t["iteration"]))
        for name in opts["sample_sets"]:
            x, y = sample_set(name, data, idx, opts["n"], correct)
            if name != "misclassified" and len(x) < opts["n"]:
                print(f"sharpcomp measure: n={opts['n']} is more than the data holds; the {name} set of {run_id} "
                      f"has {len(x)} samples", file=sys.stderr, flush=True)
            row = {**base, "sample_set": name, "n_samples": len(x)}
            if len(x):
                with torch.no_grad():
                    row["sample_loss"] = float(per_sample_loss(s.loss, model(x), y).mean())
                row.update(_metrics(model, x, dtype, opts))
            if name == "train" and flatness:
                gen = torch.Generator().manual_seed(opts["seed"])
                sample = Sample(model, make_loss(s.loss, n_out), data.train_x, data.train_y, gen, s.batch)
                row.update(flatness.compute(sample))
            rows.append(row)
    return rows


def _metrics(model: nn.Module, x: torch.Tensor, dtype: torch.dtype, opts: dict) -> dict:
    """The exact engine and the network-wide columns, or (``estimate=always``, or ``auto`` above the
    cost threshold) the matrix-free estimators with standard errors."""
    how = opts["estimate"] if opts["estimate"] != "auto" else choose(model, x)
    if how in ("always", "estimate"):
        gen = torch.Generator().manual_seed(opts["seed"])
        return estimate_metrics(model.to(dtype), x.to(dtype), probes=opts["probes"], generator=gen)
    res = compute_metrics(model, x, dtype=dtype)
    return add_network_wide(res, model, x, dtype=dtype)


def write_rows(rows: list[dict], out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    path = out / "metrics.parquet"
    frame = tidy(pd.DataFrame(rows))
    if path.exists() or path.is_symlink():
        old = read_metrics(path)  # a regular file (or folder) of results only; a link is refused

        def key(f: pd.DataFrame) -> list[tuple]:
            its = f["iteration"] if "iteration" in f else pd.Series([None] * len(f))
            return list(zip(f.run_id, f.sample_set, its.fillna(-1).astype(int)))

        keys = set(key(frame))
        old = old[[k not in keys for k in key(old)]]
        frame = tidy(pd.concat([old, frame], ignore_index=True))
    atomic_write_parquet(path, frame)
    return path


def draw_figure(path: Path, target: Path) -> None:
    """The across-model correlation of sharpness with MLS, NMLS, G and local dimensionality (one point
    per (model, sample set) row of ``path``)."""
    frame = read_metrics(path)
    cols = [c for c in FIGURE_COLUMNS if c in frame and frame[c].notna().sum() >= 3]
    if len(frame) < 3 or "sharpness" not in cols:
        raise MeasureError(f"the correlation figure needs at least 3 measured rows, {path} has {len(frame)}")
    summary = frame.assign(_run=frame.run_id + "/" + frame.sample_set).reset_index(drop=True)
    fig = draw_correlation(summary, cols, correlation_table(summary, cols), color_by=("model", "sample_set"),
                           title="across models: sharpness against compression")
    target.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(target, dpi=120)


@SYNTAX.entry_point
def main(argv: list[str]) -> int:
    try:
        opts, args = parse(argv)
        rows = measure_rows(opts, args)
        path = write_rows(rows, Path(opts["out"]))
        for r in rows:
            vals = ", ".join(f"{k}={r[k]:.4g}" for k in ("sharpness", "mls", "nmls", "nmls_bound")
                             if isinstance(r.get(k), float) and math.isfinite(r[k]))
            at = f", iteration {r['iteration']}" if r.get("iteration") is not None else ""
            print(f"{r['run_id']} [{r['sample_set']}{at}, n={r['n_samples']}]: {vals}")
        print(f"{len(rows)} rows -> {path}")
        if opts["figure"]:
            draw_figure(path, Path(opts["figure"]))
            print(f"figure -> {opts['figure']}")
    except (MeasureError, RecordError) as exc:
        print(f"sharpcomp measure: error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # a broken checkpoint, missing data: one line, no traceback
        print(f"sharpcomp measure: error: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}",
              file=sys.stderr)
        return 1
    return 0
