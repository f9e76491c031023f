"""The runs a ranking compares: each run's last checkpoint, its target, its measures and its place on the grid.

From the rows of a set of runs (``metrics.parquet``, with a column naming each run's folder):

* **the runs**: each run's last ``train`` row. Runs that have not finished (running, failed, diverged) are
  left out, and so are runs trained to a criterion (``stop.*``) that reached the step cap first
  (``stop_reason`` = ``steps``), each with a count;
* **the target**: ``gap`` (the generalisation gap in error, test error - train error = train_acc - test_acc,
  the default), ``test_error`` (1 - test_acc), ``test_loss``, or ``loss_gap`` (test_loss - train_loss), from
  the whole-set evaluation of that last checkpoint;
* **the axes**: the settings (dotted keys of each run's ``settings``) that take two or more values over the
  runs, the seed excepted; settings that always change together are one axis. Runs that differ in the task
  (data set, its classes, the data's source), the model family, the loss, the stopping rule or the measures'
  settings are refused together, with one line naming the setting;
* **the measures**: every numeric column the runs share at their last checkpoint: the declared measures'
  value columns (their family: study, curvature, perturbation, baseline), the whole-set training loss as a
  baseline, and any other numeric column as ``other``. A column some runs lack is left out with a line.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from sharpcomp.figures.keys import ordered, run_keys, value_text
from sharpcomp.figures.tables import SQRT_S
from sharpcomp.measure_index import MEASURES
from sharpcomp.results.columns import (
    CHECKPOINT_COLUMNS,
    FAMILY,
    IDENTITY_COLUMNS,
    SAMPLE_COLUMNS,
    STOP_COLUMNS,
)

TARGETS = {
    "gap": "generalisation gap in error (train_acc - test_acc)",
    "test_error": "test error (1 - test_acc)",
    "test_loss": "test loss",
    "loss_gap": "loss gap (test_loss - train_loss)",
}
# settings every run of one ranking shares: the task, the network family, the loss, the stopping rule and
# how the measures are computed (prefixes end with a dot)
SHARED = ("data.name", "data.dataset", "data.classes", "data.root", "data_source", "model.name", "model._target_",
          "loss", "stop.", "metrics.")
# settings that are not hyperparameters: which run of a configuration it is, when it is logged, its scale
NOT_AXES = ("seed", "log_every", "eval_every", "allow_tf32", "scale", "data.quick_steps", "data.quick_log_every")
# bookkeeping columns that are never a measure (the whole-set training loss is one: a baseline)
NOT_MEASURES = ((set(IDENTITY_COLUMNS) | set(CHECKPOINT_COLUMNS) | set(SAMPLE_COLUMNS) | set(STOP_COLUMNS)
                 | {SQRT_S} | {c for m in MEASURES.values() for c, _, role, _ in m["columns"] if role != "value"})
                - {"train_loss"})


class RankingError(ValueError):
    """Runs that cannot be ranked (together); the message is one line meant for the user."""


@dataclass
class Grid:
    """The runs of a ranking (see the module docstring).

    ``runs``: one row per run (index: the run's name) with its ``seed``, its value on each axis (text) and its
    ``target``; ``values``: the measures (runs x columns); ``families``: each measure's family; ``axes``: each
    axis and its values in order; ``codes``: each run's value index on each axis (runs x axes); ``configs``:
    each run's configuration (its values on every axis) as an integer; ``notes``: what was left out and why.
    """

    runs: pd.DataFrame
    values: pd.DataFrame
    families: dict[str, str]
    axes: dict[str, list[str]]
    codes: np.ndarray
    configs: np.ndarray
    target: str
    notes: list[str] = field(default_factory=list)


def grid_of(frame: pd.DataFrame, target: str = "gap", run: str = "_run") -> Grid:
    """The :class:`Grid` of the runs in ``frame`` (their rows; column ``run`` names each run).

    RankingError (one line) for an unknown target, runs that differ in a shared setting, runs with no setting
    that varies, or no measure the runs share.
    """
    if target not in TARGETS:
        raise RankingError(f"unknown target '{target}' (choose from {', '.join(TARGETS)})")
    last, notes = final_rows(frame, run)
    goal = target_values(last, target)
    if goal.isna().any():
        notes.append(f"left out {int(goal.isna().sum())} runs without a whole-set evaluation at their last checkpoint")
        last, goal = last[goal.notna()], goal[goal.notna()]
    if last.empty:
        raise RankingError("no run to rank: " + ("; ".join(notes) or "no finished run"))
    keys = pd.DataFrame([run_keys(r) for r in last.to_dict("records")], index=last.index)
    check_shared(keys)
    axes, codes = find_axes(keys)
    values, families, left_out = measure_table(last)
    notes += left_out
    runs = pd.DataFrame({name: [values_[c] for c in codes[:, a]] for a, (name, values_) in enumerate(axes.items())},
                        index=last.index)
    runs.insert(0, "seed", keys["seed"] if "seed" in keys else np.nan)
    runs["target"] = goal.to_numpy(dtype=np.float64)
    configs = np.unique(codes, axis=0, return_inverse=True)[1].ravel()
    return Grid(runs, values, families, axes, codes, configs, target, notes)


def final_rows(frame: pd.DataFrame, run: str) -> tuple[pd.DataFrame, list[str]]:
    """Each finished run's last ``train`` row (index: the run), and a line per kind of run left out."""
    rows = frame[frame["sample_set"] == "train"] if "sample_set" in frame.columns else frame
    last = rows.sort_values("iteration", kind="stable").groupby(run, sort=True).tail(1).set_index(run).sort_index()
    notes, total = [], len(last)
    status = last["status"] if "status" in last.columns else pd.Series("finished", index=last.index)
    unfinished = status[status != "finished"]
    if len(unfinished):
        counts = ", ".join(f"{k} {v}" for k, v in unfinished.value_counts().sort_index().items())
        notes.append(f"left out {len(unfinished)} of {total} runs that did not finish ({counts})")
        last = last[status == "finished"]
    if "stop_reason" in last.columns:
        capped = last["stop_reason"] == "steps"
        if capped.any():
            notes.append(f"left out {int(capped.sum())} of {total} runs that reached the step cap before their "
                         f"stopping criterion")
            last = last[~capped]
    if "stop_reason" not in last.columns or last["stop_reason"].isna().all():
        notes.append("the runs have no stopping rule (stop.*): each is ranked at its last checkpoint")
    if "run_id" in last.columns and last["run_id"].duplicated().any():
        twice = last["run_id"].duplicated()
        notes.append(f"left out {int(twice.sum())} runs found twice (the same run_id in two folders)")
        last = last[~twice]
    return last, notes


def target_values(last: pd.DataFrame, target: str) -> pd.Series:
    """The target of each run from its last row (NaN where the whole sets were not evaluated)."""
    col = lambda c: pd.to_numeric(last[c], errors="coerce") if c in last.columns else pd.Series(  # noqa: E731
        np.nan, index=last.index)
    return {"gap": lambda: col("train_acc") - col("test_acc"), "test_error": lambda: 1.0 - col("test_acc"),
            "test_loss": lambda: col("test_loss"), "loss_gap": lambda: col("test_loss") - col("train_loss")}[target]()


def _shared(key: str) -> bool:
    return any(key == s or (s.endswith(".") and key.startswith(s)) for s in SHARED)


def check_shared(keys: pd.DataFrame) -> None:
    """RankingError naming the first shared setting (:data:`SHARED`) the runs differ in."""
    for key in keys.columns:
        if _shared(key):
            values = ordered(keys[key].map(lambda v, k=key: value_text(k, v)))
            if len(values) > 1:
                shown = ", ".join(values[:3]) + (", ..." if len(values) > 3 else "")
                raise RankingError(f"the runs differ in {key} ({shown}): a ranking compares runs of one data set, "
                                   f"model family, loss, stopping rule and measure settings (rank them apart)")


def find_axes(keys: pd.DataFrame) -> tuple[dict[str, list[str]], np.ndarray]:
    """The axes (settings with two or more values; settings that change together as one) and each run's codes."""
    found: dict[tuple, tuple[list[str], pd.Series]] = {}
    for key in keys.columns:
        if _shared(key) or key in NOT_AXES:
            continue
        text = keys[key].map(lambda v, k=key: value_text(k, v))
        if text.nunique() < 2:
            continue
        pattern = tuple(pd.factorize(text)[0])
        names, first = found.setdefault(pattern, ([], text))
        names.append(key)
    if not found:
        raise RankingError(f"no setting varies between the {len(keys)} runs (the seed aside): nothing to rank along; "
                           f"rank a sweep over at least one setting with two values")
    axes, columns = {}, []
    for names, text in found.values():
        values = ordered(text.unique())
        axes["+".join(names)] = values
        columns.append(text.map({v: i for i, v in enumerate(values)}).to_numpy())
    return axes, np.column_stack(columns).astype(np.int64)


def measure_table(last: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, str], list[str]]:
    """The measures every run has at its last checkpoint (runs x columns), their families, and what was left out."""
    values, families, partial = {}, {}, []
    for c in last.columns:
        if c in NOT_MEASURES or c.startswith("_") or not pd.api.types.is_numeric_dtype(last[c]) \
                or pd.api.types.is_bool_dtype(last[c]):
            continue
        v = pd.to_numeric(last[c], errors="coerce").astype(np.float64)
        finite = np.isfinite(v)
        if finite.all():
            values[c] = v
            families[c] = "baseline" if c == "train_loss" else FAMILY.get(c, "other")
        elif finite.any():
            partial.append(c)
    if not values:
        raise RankingError("the runs share no measure at their last checkpoint")
    notes = [f"left out {c}: not computed for {int((~np.isfinite(last[c].astype(float))).sum())} of {len(last)} runs"
             for c in partial]
    return pd.DataFrame(values, index=last.index), families, notes
