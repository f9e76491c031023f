"""Sweeps made up for the ranking's tests: the last two checkpoints' rows of each run of a grid, as training writes
them (identity columns, the ``settings`` JSON, whole-set evaluations, measures, stop columns)."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pandas as pd

AXES = {"lr": (0.05, 0.1, 0.2), "batch": (16, 64), "model.width": (0.5, 1.0)}


def _nest(flat: dict) -> dict:
    out: dict = {}
    for key, value in flat.items():
        node = out
        *head, last = key.split(".")
        for h in head:
            node = node.setdefault(h, {})
        node[last] = value
    return out


def sweep(seeds: int = 2, axes: dict | None = None, noise: float = 0.01, seed: int = 0, **fixed) -> pd.DataFrame:
    """Rows of a made-up sweep over ``axes`` with ``seeds`` seeds: run ``r<k>`` (column ``_run``), its target
    the gap train_acc - test_acc; measures ``planted`` (= the gap), ``noise`` (random), ``sharpness`` (the gap
    plus noise), ``G`` (random) and ``sharpness_se`` (a standard error, never ranked). ``fixed``: settings shared
    by every run (dotted keys), over the defaults below."""
    rng = np.random.default_rng(seed)
    axes = AXES if axes is None else axes
    base = {"data.name": "fashion_mnist", "data.dataset": "fashion_mnist", "model.name": "mlp4", "loss": "mse",
            "optim.name": "sgd", "stop.train_loss": 0.01, "log_every": 100, **fixed}
    rows = []
    for k, (values, s) in enumerate(itertools.product(itertools.product(*axes.values()), range(seeds))):
        hyper = dict(zip(axes, values))
        gap = 0.02 * sum(axes[a].index(v) for a, v in hyper.items()) + rng.normal(0, noise)
        settings = _nest({**base, **hyper, "seed": s})
        row = {"_run": f"r{k:03d}", "run_id": f"id{k}", "sample_set": "train", "status": "finished",
               "settings": json.dumps(settings, sort_keys=True), "lr": hyper.get("lr", 0.1),
               "batch": hyper.get("batch", 20), "seed": s, "model": "mlp4", "data": "fashion_mnist",
               "train_acc": 0.99, "test_acc": 0.99 - gap, "train_loss": 0.01 - 0.001 * rng.random(),
               "test_loss": 0.05 + gap, "planted": gap, "noise": rng.normal(), "sharpness": gap + rng.normal(0, noise),
               "sharpness_se": 0.1, "G": rng.normal()}
        rows.append({**row, "iteration": 0, "train_loss": 0.1, "planted": 0.0})
        rows.append({**row, "iteration": 500, "stop_reason": "train_loss", "stop_iteration": 500})
    return pd.DataFrame(rows)


def write_runs(root: Path, frame: pd.DataFrame) -> list[Path]:
    """Each run of ``frame`` as a run folder ``root/<run>/metrics.parquet`` (a single file, as older results)."""
    folders = []
    for run, rows in frame.groupby("_run"):
        folder = Path(root) / str(run)
        folder.mkdir(parents=True, exist_ok=True)
        rows.drop(columns="_run").to_parquet(folder / "metrics.parquet", index=False)
        folders.append(folder)
    return folders
