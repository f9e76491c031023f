"""Reading and shaping result tables for the figures stage (see ``sharpcomp.figures``).

Everything here works on the tidy rows of ``metrics.parquet`` (one row per checkpoint and sample
set) and returns plain pandas objects; nothing draws.
"""

from __future__ import annotations

import math
import os
import re
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.special import stdtr  # lighter than importing scipy.stats

from sharpcomp.results.columns import (
    CHECKPOINT_COLUMNS,
    FLATNESS_COLUMNS,
    IDENTITY_COLUMNS,
    METRIC_COLUMNS,
    NETWORK_WIDE_COLUMNS,
    NETWORK_WIDE_REASON,
    SAMPLE_COLUMNS,
    measure_values,
)
from sharpcomp.results.records import METRICS_FILE, RecordError, read_metrics

# Internal key of one run: its folder (run_id alone may repeat across sweeps).
RUN = "_run"
_PREPARED = "sharpcomp_figures_prepared"
# Derived column: figures plot sqrt(S) (docs/science.md).
SQRT_S = "sqrt_sharpness"
# Where a quantity was -inf (a log volume with a zero eigenvalue among those kept): ``prepare`` turns
# infinities into missing values and keeps, for a column that had -inf, a marker column of this prefix;
# trend lines count those runs (``n_neg_inf``) so that a figure can mark them.
NEG_INF = "_neg_inf:"
# Identity fields that say which run of an experiment this is.
SETTING_COLUMNS = ("data", "model", "lr", "batch", "seed")
# Identity fields that make two runs different experiments (a figure never mixes them): every
# identity column but the setting, the run's name, where it ran and its status -- today scale, loss,
# width, outputs, optim and data_source, and any identity column records.py adds later. With
# SETTING_COLUMNS they define duplicates (the same run found twice).
VARIANT_COLUMNS = tuple(
    c for c in IDENTITY_COLUMNS if c not in SETTING_COLUMNS + ("run_id", "device", "versions", "settings", "status")
)
# Columns that are per run or per row bookkeeping, never a quantity to average.
NOT_QUANTITIES = set(IDENTITY_COLUMNS) | {RUN, "iteration", "sample_set", "bounds_reason", "n_samples",
                                          NETWORK_WIDE_REASON}


def find_result_files(dirs: Sequence[Path]) -> list[Path]:
    """Every ``metrics.parquet`` under ``dirs`` (recursively), each once: a folder of parts (its part
    files are not runs) or a single file of older results."""
    return list(_result_files(dirs))


def _result_files(dirs: Sequence[Path]) -> dict[Path, str]:
    """Every ``metrics.parquet`` under ``dirs`` (each once, the first folder that holds it wins), with
    its run's name (see :func:`run_name`; with several folders, prefixed by the folder's name)."""
    dirs = [Path(d) for d in dirs]
    labels = _folder_labels(dirs)
    found: dict[Path, str] = {}
    for d, label in zip(dirs, labels):
        paths = [d] if d.name == METRICS_FILE and os.path.lexists(d) else sorted(d.rglob(METRICS_FILE))
        # the folders resolved, the results file itself as found: a link or FIFO there is refused when read
        for p in (p.parent.resolve() / p.name for p in paths):
            rel = _relative(p.parent, d)
            name = (rel or label) if len(dirs) == 1 else "/".join(x for x in (label, rel) if x)
            found.setdefault(p, name)
    return found


def run_name(run_dir: Path, root: Path) -> str:
    """A run's folder as figures write it (the ``_run`` column): relative to the results folder
    ``root`` it was found under, or that folder's own name when the run is the folder itself; never
    an absolute local path (the CSVs beside published figures must not leak the author's layout)."""
    return _relative(run_dir, root) or _folder_labels([root])[0]


def _relative(run_dir: Path, root: Path) -> str:
    """``run_dir`` relative to the results folder ``root`` ("" for the folder itself)."""
    root = Path(root).resolve()
    base = root.parent if root.name == METRICS_FILE else root
    run_dir = Path(run_dir).resolve()
    if run_dir == base:
        return ""
    try:
        return run_dir.relative_to(base).as_posix()
    except ValueError:  # reached through a link out of the folder
        return Path(os.path.relpath(run_dir, base)).as_posix()


def _folder_labels(dirs: Sequence[Path]) -> list[str]:
    """One name per results folder (its own name; a repeated name gets a number)."""
    labels: list[str] = []
    for d in dirs:
        d = Path(d).resolve()
        name = (d.parent if d.name == METRICS_FILE else d).name or "results"
        label, k = name, 1
        while label in labels:
            k += 1
            label = f"{name}-{k}"
        labels.append(label)
    return labels


def load_results(dirs: Sequence[Path]) -> tuple[pd.DataFrame, list[str]]:
    """Read every results file under ``dirs``.

    Returns the concatenated rows (with a ``_run`` column naming each run's folder relative to the
    results folder given, see :func:`run_name`; numeric columns coerced, infinities turned into
    missing values and ``sqrt_sharpness`` added) and one note per file that could not be read.
    Raises ``RecordError`` when nothing could be read.
    """
    dirs = [Path(d) for d in dirs]
    missing = [str(d) for d in dirs if not d.exists()]
    if missing:
        raise RecordError(f"no such folder: {', '.join(missing)}")
    files = _result_files(dirs)
    where = ", ".join(str(d) for d in dirs)
    if not files:
        raise RecordError(f"no {METRICS_FILE} files under {where}")
    frames, notes = [], []
    for path, name in files.items():
        try:
            str(path).encode("utf-8")
        except UnicodeEncodeError:  # a folder name that is not text: it cannot be named in a figure's CSV
            shown = os.fsencode(path).decode("utf-8", "backslashreplace")
            notes.append(f"skipped {shown}: its folder name is not valid UTF-8 (rename the folder)")
            continue
        try:
            frame = read_metrics(path)
        except RecordError as exc:
            notes.append(f"skipped {path}: {exc}")
            continue
        if len(frame) == 0:
            notes.append(f"skipped {path}: no rows yet")
            continue
        frame = frame.copy()
        frame[RUN] = name
        frames.append(frame)
    if not frames:
        detail = f"; {notes[0]}" if len(notes) == 1 else f" ({len(notes)} files, none readable)"
        raise RecordError(f"no readable results under {where}{detail}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # all-NA columns in some frames
        frame = pd.concat(frames, ignore_index=True, sort=False)
    return prepare(frame), notes


def prepare(frame: pd.DataFrame) -> pd.DataFrame:
    """Normalise a results table: ``_run`` key, numeric columns, no infinities, ``sqrt_sharpness``.
    A table prepared already (and row subsets of it) is returned as it is."""
    if frame.attrs.get(_PREPARED) and RUN in frame.columns:
        return frame
    frame = frame.copy()
    if RUN not in frame.columns:
        frame[RUN] = frame["run_id"].astype(str) if "run_id" in frame.columns else "run"
    for col in IDENTITY_COLUMNS + ("sample_set",):
        if col not in frame.columns:
            frame[col] = np.nan
    for col in (CHECKPOINT_COLUMNS + SAMPLE_COLUMNS[1:] + METRIC_COLUMNS + NETWORK_WIDE_COLUMNS
                + ("lr", "batch", "seed", "width")):
        if col in frame.columns:
            frame[col] = pd.to_numeric(frame[col], errors="coerce")
        else:
            frame[col] = np.nan
    for col in quantity_columns(frame):
        values = frame[col].to_numpy(dtype="float64", copy=True)
        if (values == -np.inf).any():
            frame[NEG_INF + col] = values == -np.inf
        values[~np.isfinite(values)] = np.nan
        frame[col] = values
    if "sharpness" in frame.columns:
        s = frame["sharpness"].to_numpy(dtype="float64")
        with np.errstate(invalid="ignore"):
            frame[SQRT_S] = np.where(s >= 0, np.sqrt(np.abs(s)), np.nan)
    frame["sample_set"] = frame["sample_set"].astype("string")
    frame.attrs[_PREPARED] = True
    return frame


def quantity_columns(frame: pd.DataFrame) -> list[str]:
    """Numeric columns that hold a per-checkpoint quantity (known or added later)."""
    return [
        c for c in frame.columns
        if c not in NOT_QUANTITIES and c not in ("epoch",) and not str(c).startswith(NEG_INF)
        and pd.api.types.is_numeric_dtype(frame[c])
    ]


def run_info(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per run: identity, status, checkpoints, last iteration and the sample sets it has."""
    frame = prepare(frame)
    groups = frame.groupby(RUN, sort=True)
    info = groups[list(IDENTITY_COLUMNS)].last()
    info["n_checkpoints"] = groups["iteration"].nunique()
    info["last_iteration"] = groups["iteration"].max()
    info["sample_sets"] = groups["sample_set"].agg(lambda v: tuple(sorted(str(x) for x in v.dropna().unique())))
    cols = [c for c in ("train_loss_running", "train_loss", "test_loss", "sample_loss", *METRIC_COLUMNS)
            if c in frame.columns]
    finite = frame[frame[cols].notna().any(axis=1)].groupby(RUN)["iteration"].max()
    info["last_finite_iteration"] = finite.reindex(info.index)
    return info.reset_index()


def same(a, b) -> bool:
    """Equality for identity values: floats compared to 1e-9 relative, missing equals missing."""
    if is_missing(a) and is_missing(b):
        return True
    if is_missing(a) or is_missing(b):
        return False
    if isinstance(a, (int, float, np.number)) and isinstance(b, (int, float, np.number)):
        return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-12)
    return str(a) == str(b)


def is_missing(v) -> bool:
    try:
        return bool(pd.isna(v))
    except (TypeError, ValueError):
        return False


def fmt(v) -> str:
    """Compact text for an identity value (0.1, 20, quick)."""
    if is_missing(v):
        return "?"
    if isinstance(v, (float, np.floating)):
        return f"{float(v):g}"
    return str(v)


def variant_value(col: str, value) -> str:
    """An identity value as it separates experiments. ``data_source`` drops the folder in
    parentheses ("torchvision CIFAR10 (/data)" and "torchvision CIFAR10 (downloaded)" are the same
    pixels; the JPEG image-folder copy is not)."""
    text = fmt(value)
    if col == "data_source":
        text = re.sub(r"\s*\([^)]*\)\s*$", "", text)
    return text


def variant_key(info_row) -> tuple:
    return tuple(variant_value(c, info_row[c]) if c in info_row else "?" for c in VARIANT_COLUMNS)


def dedupe_runs(info: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """Keep one run per setting (the same run found twice, e.g. from two sweeps): the furthest one.
    The same run: equal setting, variant and ``settings`` (every config key) columns."""
    if info.empty:
        return info, []
    key_cols = [c for c in (*SETTING_COLUMNS, *VARIANT_COLUMNS, "settings") if c in info.columns]
    keys = info[key_cols].apply(lambda r: tuple(variant_value(c, v) for c, v in zip(key_cols, r)), axis=1)
    info = info.assign(_key=keys).sort_values(["last_iteration", RUN], ascending=[False, True])
    keep = ~info["_key"].duplicated()
    notes = []
    for _, row in info[~keep].iterrows():
        other = info[keep & (info["_key"] == row["_key"])].iloc[0]
        notes.append(
            f"run {row[RUN]} ({describe(row)}) found twice; used {other[RUN]} "
            f"(iteration {fmt(other['last_iteration'])})"
        )
    return info[keep].drop(columns="_key").sort_values(RUN), notes


def describe(row, fields: Iterable[str] = ("lr", "batch", "seed")) -> str:
    return ", ".join(f"{f} {fmt(row[f])}" for f in fields if f in row)


def checkpoint_table(frame: pd.DataFrame, sample_set: str | None = "train",
                     identity: Sequence[str] = ("lr", "batch", "seed")) -> pd.DataFrame:
    """One row per (run, iteration).

    Whole-set columns (``CHECKPOINT_COLUMNS``) come from any row of that checkpoint (they are the
    same on every sample-set row); sample columns and metric columns come from the rows of
    ``sample_set``. A checkpoint without a row for ``sample_set`` keeps its whole-set columns with
    missing metrics. ``sample_set=None`` keeps only whole-set columns. ``identity``: the run columns
    carried along (e.g. the one a figure groups by).
    """
    keys = [RUN, "iteration"]
    ckpt_cols = [c for c in CHECKPOINT_COLUMNS if c in frame.columns and c != "iteration"]
    per_ckpt = frame.groupby(keys, sort=True)[ckpt_cols].first().reset_index()
    ident = frame.groupby(RUN, sort=True)[[c for c in dict.fromkeys(identity) if c in frame.columns]].last()
    per_ckpt = per_ckpt.join(ident, on=RUN)
    if sample_set is None:
        return per_ckpt
    other = [c for c in quantity_columns(frame) if c not in ckpt_cols]
    other += [c for c in frame.columns if str(c).startswith(NEG_INF)]
    rows = frame[frame["sample_set"] == sample_set]
    metrics = rows.groupby(keys, sort=True)[other + ["n_samples"]].first().reset_index()
    return per_ckpt.merge(metrics, on=keys, how="left")


def summary_window(iterations: np.ndarray, last_fraction: float) -> float:
    """First iteration of the last ``last_fraction`` of a run's checkpoints (at least one)."""
    its = np.sort(np.unique(iterations))
    k = max(1, int(math.ceil(last_fraction * len(its))))
    return float(its[-k])


def run_summary(frame: pd.DataFrame, last_fraction: float = 0.2, sample_set: str = "train") -> pd.DataFrame:
    """One row per run: identity, status, progress and the mean of every quantity over the last
    ``last_fraction`` of the run's checkpoints (those with a row for ``sample_set``; at least one);
    missing values (whole-set evaluations between their cadence, the NaN row of a diverged run) are
    skipped. ``sqrt_sharpness`` is the mean of sqrt(S) over those checkpoints. The flatness measures
    (``FLATNESS_COLUMNS`` and the values of measures of one's own, ``measure_values``: their own cadence)
    are the mean over the last ``last_fraction`` of the checkpoints that have them (at least one), so a
    window between two of their evaluations still has a value.
    """
    if not 0 < last_fraction <= 1:
        raise ValueError(f"last_fraction must be in (0, 1], got {last_fraction}")
    frame = prepare(frame)
    table = checkpoint_table(frame, sample_set, identity=())
    has_set = frame.loc[frame["sample_set"] == sample_set, [RUN, "iteration"]].drop_duplicates()
    table = table.merge(has_set, on=[RUN, "iteration"], how="inner")
    quantities = [c for c in quantity_columns(table) if c != "n_samples"]
    head = [RUN, *IDENTITY_COLUMNS, "n_checkpoints", "last_iteration", "summary_from_iteration",
            "summary_checkpoints"]
    if table.empty:
        return pd.DataFrame(columns=head + quantities)
    groups = table.groupby(RUN, sort=True)["iteration"]
    n = groups.transform("nunique")
    k = np.maximum(1, np.ceil(last_fraction * n - 1e-9)).astype(int)
    rank = groups.rank(method="dense", ascending=False)
    window = table[rank <= k]
    wgroups = window.groupby(RUN, sort=True)
    out = run_info(frame).set_index(RUN)[list(IDENTITY_COLUMNS)]
    out = out.loc[wgroups["iteration"].min().index]
    out["n_checkpoints"] = groups.nunique()
    out["last_iteration"] = groups.max()
    out["summary_from_iteration"] = wgroups["iteration"].min()
    out["summary_checkpoints"] = wgroups["iteration"].nunique()
    means = wgroups[quantities].mean()
    for col in dict.fromkeys(c for c in (*FLATNESS_COLUMNS, *measure_values(table)) if c in quantities):
        means[col] = _own_cadence_mean(table, col, last_fraction).reindex(means.index)
    return pd.concat([out, means], axis=1).reset_index()[head + quantities]


def _own_cadence_mean(table: pd.DataFrame, col: str, last_fraction: float) -> pd.Series:
    """Per run: mean of ``col`` over the last ``last_fraction`` of the checkpoints where it has a value."""
    rows = table.loc[table[col].notna(), [RUN, "iteration", col]]
    if rows.empty:
        return pd.Series(dtype="float64")
    groups = rows.groupby(RUN, sort=True)["iteration"]
    k = np.maximum(1, np.ceil(last_fraction * groups.transform("count") - 1e-9))
    rank = groups.rank(method="first", ascending=False)
    return rows[rank <= k].groupby(RUN, sort=True)[col].mean()


def trend_se(frame: pd.DataFrame, by: str | None, column: str, se_column: str,
             sample_set: str = "train") -> pd.DataFrame:
    """Standard error of the line ``trend_lines`` draws for ``column`` (a mean over runs), from the
    runs' own standard errors ``se_column`` (e.g. Hutchinson's): sqrt(sum se_i^2) / n over the runs
    with a value at that iteration; missing when one of them has no standard error.
    Columns ``by`` (``group`` for ``by=None``), ``iteration``, ``se``."""
    frame = prepare(frame)
    key = "group" if by is None else by
    if column not in frame.columns or se_column not in frame.columns:
        return pd.DataFrame(columns=[key, "iteration", "se"])
    table = checkpoint_table(frame, sample_set, identity=() if by is None else (by,))
    if by is None:
        table["group"] = "all"
    table = table[table[column].notna()]
    if table.empty:
        return pd.DataFrame(columns=[key, "iteration", "se"])
    table = table.assign(_var=table[se_column] ** 2, _bad=table[se_column].isna())
    groups = table.groupby([key, "iteration"], sort=True)
    out = pd.DataFrame({"_sum": groups["_var"].sum(), "_n": groups["_var"].size(), "_bad": groups["_bad"].any()})
    out["se"] = np.where(out["_bad"], np.nan, np.sqrt(out["_sum"]) / out["_n"])
    return out[["se"]].reset_index()


def trend_lines(
    frame: pd.DataFrame,
    by: str | None,
    columns: Sequence[str],
    sample_set: str = "train",
) -> pd.DataFrame:
    """The numbers a trend figure draws: for each value of ``by`` (``lr``, ``batch``,
    ``sample_set``...), each column and each iteration, the mean over runs and the spread.

    Returns a long table with columns ``by, column, iteration, mean, std, min, max, n_runs`` over the runs
    with a finite value, and ``n_neg_inf``, the runs whose value was -inf there (left out of the others)
    (``by=None``: every run in one group, column ``group`` = ``all``).
    With ``by='sample_set'``, whole-set columns (train/test loss and accuracy) do not depend on the
    sample set and get one line with ``by`` value ``all``.
    """
    frame = prepare(frame)
    whole_group = by is None
    if whole_group:
        by = "group"
    out = []
    if by == "sample_set":
        sets = [x for x in ("train", "test", "misclassified") if (frame["sample_set"] == x).any()]
        sets += sorted(set(frame["sample_set"].dropna().astype(str)) - set(sets))
        whole_cols = [c for c in columns if c in CHECKPOINT_COLUMNS]
        other_cols = [c for c in columns if c not in CHECKPOINT_COLUMNS]
        if whole_cols:
            out.append(_aggregate(checkpoint_table(frame, None).assign(group="all"), "group", whole_cols))
        for x in sets if other_cols else ():
            out.append(_aggregate(checkpoint_table(frame, x).assign(group=x), "group", other_cols))
        order = {c: i for i, c in enumerate(columns)}
        out = [o for o in out if len(o)]
        if out:  # panels in the order asked, groups in the order above
            result = pd.concat(out, ignore_index=True)
            out = [result.iloc[np.argsort(result["column"].map(order).to_numpy(), kind="stable")]]
    else:
        table = checkpoint_table(frame, sample_set, identity=() if whole_group else (by,))
        if whole_group:
            table["group"] = "all"
        out = [o for o in [_aggregate(table, by, list(columns))] if len(o)]
    if out:
        result = pd.concat(out, ignore_index=True)
    else:
        result = pd.DataFrame(columns=["group", "column", "iteration", "mean", "std", "min", "max", "n_runs",
                                       "n_neg_inf"])
    result = result.reset_index(drop=True)
    return result if whole_group else result.rename(columns={"group": by})


def _aggregate(table: pd.DataFrame, by: str, columns: list[str]) -> pd.DataFrame:
    """Mean, std (ddof 0), min, max and count over runs, per (group, iteration), for each column, and the
    count of runs at -inf there; long format with rows ordered by column, then group, then iteration;
    lines with no finite value and no -inf dropped."""
    columns = [c for c in columns if c in table.columns]
    if table.empty or not columns:
        return pd.DataFrame()
    markers = {c: NEG_INF + c for c in columns if NEG_INF + c in table.columns}
    table = table.assign(**{m: table[m].fillna(False).astype(int) for m in markers.values()})
    grouped = table.groupby([by, "iteration"], sort=True)
    groups = grouped[columns]
    stats = {"mean": groups.mean(), "std": groups.std(ddof=0), "min": groups.min(), "max": groups.max(),
             "n_runs": groups.count()}
    neg = grouped[list(markers.values())].sum() if markers else None
    parts = []
    for col in columns:
        part = pd.DataFrame({name: s[col] for name, s in stats.items()})
        part["n_neg_inf"] = neg[markers[col]] if col in markers else 0
        part = part[(part["n_runs"] > 0) | (part["n_neg_inf"] > 0)].reset_index()
        part.insert(1, "column", col)
        parts.append(part)
    long = pd.concat(parts, ignore_index=True)
    return long[[by, "column", "iteration", "mean", "std", "min", "max", "n_runs", "n_neg_inf"]]


def pearson(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Pearson r and its two-sided p-value (t test with n - 2 degrees of freedom, as
    ``scipy.stats.pearsonr``); NaN for fewer than 3 points or a constant input."""
    n = len(x)
    if n < 3:
        return np.nan, np.nan
    dx, dy = x - x.mean(), y - y.mean()
    sx, sy = np.sqrt(np.dot(dx, dx)), np.sqrt(np.dot(dy, dy))
    if sx == 0 or sy == 0 or not np.isfinite(sx * sy):
        return np.nan, np.nan
    r = float(np.clip(np.dot(dx / sx, dy / sy), -1.0, 1.0))
    if abs(r) == 1.0:
        return r, 0.0
    t = r * np.sqrt((n - 2) / (1.0 - r * r))
    return r, float(2.0 * stdtr(n - 2, -abs(t)))


def correlation_table(summary: pd.DataFrame, columns: Sequence[str]) -> pd.DataFrame:
    """Pearson r and its two-sided p-value for every pair of ``columns`` over the runs of
    ``summary`` (rows with both values finite). Fewer than 3 points or a constant column: NaN."""
    rows = []
    cols = list(columns)
    for i, a in enumerate(cols):
        for b in cols[i + 1:]:
            x = summary[a].to_numpy(dtype="float64") if a in summary else np.full(len(summary), np.nan)
            y = summary[b].to_numpy(dtype="float64") if b in summary else np.full(len(summary), np.nan)
            ok = np.isfinite(x) & np.isfinite(y)
            n = int(ok.sum())
            r, p = pearson(x[ok], y[ok])
            rows.append({"x": a, "y": b, "n": n, "r": r, "p": p})
    return pd.DataFrame(rows, columns=["x", "y", "n", "r", "p"])
