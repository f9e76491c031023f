"""The schema of a run's results: the names of the columns of ``metrics.parquet``.

A row of ``metrics.parquet`` is one checkpoint and one sample set. Its bookkeeping columns are named here;
its measure columns come from the measures' declarations (``sharpcomp/measure_index.py``, generated from
them), so records, figures and rankings name a measure's columns as the measure itself does.
"""

from __future__ import annotations

import pandas as pd

from sharpcomp.measure_index import MEASURES

# Identity of a run: constant over its rows. ``settings`` is the JSON of every setting that defines
# the run (any swept config key); ``status`` is rewritten with each append.
IDENTITY_COLUMNS = (
    "run_id", "data", "model", "lr", "batch", "seed", "loss", "width", "outputs", "optim", "scale",
    "data_source", "device", "versions", "settings", "status",
)
# Per-checkpoint bookkeeping and whole-set evaluations.
CHECKPOINT_COLUMNS = (
    "iteration", "epoch", "wall_time", "train_loss", "train_acc", "test_loss", "test_acc",
    "train_loss_running",
)
# Which points the metric columns were computed on, how many, and the loss over those points.
SAMPLE_COLUMNS = ("sample_set", "n_samples", "sample_loss")
# On the rows of the last checkpoint of a run trained to a criterion (``stop.*``): the criterion it reached
# (``train_loss``, ``running_loss``, ``train_error``; ``steps`` when the step cap came first) and where.
STOP_COLUMNS = ("stop_reason", "stop_iteration")


def _columns(name: str, role: str | None = None, kind: str | None = None) -> tuple[str, ...]:
    return tuple(c for c, k, r, _ in MEASURES[name]["columns"] if (role is None or r == role) and
                 (kind is None or k == kind))


# The study's metric columns, in the paper's order; why bound columns are missing (e.g. a convolutional
# first layer), empty when they are present.
METRIC_COLUMNS = _columns("metrics", "value")
REASON_COLUMNS = ("bounds_reason",)
# Network-wide compression (NMLS, NVR) and its bounds, on every row; which of its bounds are proven for
# the network, or why they are missing.
NETWORK_WIDE_COLUMNS = _columns("network_wide", kind="float")
NETWORK_WIDE_REASON = "network_wide_reason"
# Standard errors of the matrix-free estimates of the study's metrics (``sharpcomp measure`` on large
# networks): in rows computed by them only.
ESTIMATE_COLUMNS = tuple(c for c in _columns("metrics") if c not in METRIC_COLUMNS + REASON_COLUMNS)
# Every column a results file has, in order (the measures switched on under metrics.flatness come after).
COLUMNS = (IDENTITY_COLUMNS + CHECKPOINT_COLUMNS + SAMPLE_COLUMNS + METRIC_COLUMNS + REASON_COLUMNS
           + NETWORK_WIDE_COLUMNS + (NETWORK_WIDE_REASON,))

# The measures switched on under ``metrics.flatness``, on the ``train`` rows at their own cadence.
FLATNESS = tuple(name for name, m in MEASURES.items() if m["cadence"] == "flatness")
# Their columns, and their scalar values in the order figures draw them.
FLATNESS_COLUMNS = tuple(c for name in FLATNESS for c in _columns(name))
FLATNESS_MEASURES = tuple(c for name in FLATNESS for c in _columns(name, "value", "float"))
# The standard error of a value (value column -> its column).
SE_COLUMNS = {of: c for m in MEASURES.values() for c, _, role, of in m["columns"] if role == "se"}
FLATNESS_SE = {c: se for c, se in SE_COLUMNS.items() if c in FLATNESS_MEASURES}
# Columns holding a list per row (the top-k Hessian eigenvalues, the spectral density's bin masses).
LIST_COLUMNS = tuple(c for m in MEASURES.values() for c, kind, _, _ in m["columns"] if kind == "list")
# The family of each value column (study, curvature, perturbation, baseline).
FAMILY = {c: m["family"] for m in MEASURES.values() for c, _, role, _ in m["columns"] if role == "value"}
# Earlier names of measure columns -> the names they have now.
RENAMED = {old: new for m in MEASURES.values() for old, new in m["column_aliases"].items()}


def current_names(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with measure columns written under an earlier name read under the name they have now (the
    two merged where a resumed run wrote both)."""
    old = [c for c in RENAMED if c in frame.columns]
    if not old:
        return frame
    frame = frame.copy()
    for c in old:
        new = RENAMED[c]
        frame[new] = frame[c] if new not in frame.columns else frame[new].where(frame[new].notna(), frame[c])
    return frame.drop(columns=old)
