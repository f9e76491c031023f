"""What every figure maker shares: the figure specification, the drawing context (results, output
folder, formats) and the helpers that select, split and describe runs."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from sharpcomp.figures.keys import key_table, resolve
from sharpcomp.figures.tables import (
    RUN,
    VARIANT_COLUMNS,
    dedupe_runs,
    describe,
    fmt,
    same,
    variant_value,
)
from sharpcomp.results.own_files import creation_mode
from sharpcomp.results.stored_text import settings_json


@dataclass(frozen=True)
class FigureSpec:
    id: str
    kind: str                     # trend | samples | bounds | correlation
    data: str
    model: str
    fixed: dict = field(default_factory=dict)
    by: str | None = None
    expected: tuple = ()          # the study's values of `by` (trend) or (lr, batch) settings (correlation)
    columns: tuple = ()
    what: str = ""


STUDY_MODELS = ("vgg10", "mlp4")
NOT_SWEPT = ("seed", "data_source", "scale")  # keys that never group a sweep by themselves


def auto_by(keys: pd.DataFrame, info: pd.DataFrame) -> str | None:
    """The key a sweep of one's own networks differs in (the first of lr, batch, then by name), when the
    runs hold a model other than the study's; None otherwise."""
    if "model" not in info or set(map(str, info["model"].dropna())) <= set(STUDY_MODELS) or len(keys) < 2:
        return None
    differ = [c for c in keys.columns if c not in (RUN, *NOT_SWEPT)
              and keys[c].astype(str).nunique(dropna=False) > 1]
    for key in ("lr", "batch", *sorted(differ)):
        if key in differ:
            return key
    return None


@contextlib.contextmanager
def replacing_file(path: Path):
    """A binary file handle whose content replaces ``path`` when the block ends: written beside it and
    renamed, so a symbolic link at ``path`` is replaced, never followed out of the folder."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, creation_mode())  # as open() makes it under the umask (mkstemp alone makes 0600)
        with os.fdopen(fd, "wb") as fh:
            yield fh
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def replacing_path(path: Path):
    """A path of the same name in a new hidden folder beside ``path``; what is written there replaces
    ``path`` when the block ends (renamed in: a link at ``path`` is replaced, never followed)."""
    folder = Path(tempfile.mkdtemp(prefix=".figure-", dir=path.parent))
    try:
        yield folder / path.name
        os.replace(folder / path.name, path)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


class Context:
    def __init__(self, frame, info, out: Path, formats, last_fraction, band, by=None):
        self.frame, self.info, self.out = frame, info, out
        self.formats, self.last_fraction, self.band = formats, last_fraction, band
        self.written = 0
        self.keys = key_table(info)  # every run's config keys (``--by``)
        self.by = None if by is None else resolve(by, self.keys)  # KeyError: no run has it
        if self.by is None:
            self.by = auto_by(self.keys, info)
            if self.by is not None:
                self.say("sweep", f"grouped by {self.by}, the key that differs between the runs "
                                  f"(--by KEY chooses another)")

    def say(self, fig_id: str, text: str) -> None:
        print(f"{fig_id}: {text}", flush=True)

    def save(self, name: str, fig: Figure, tables: dict[str, pd.DataFrame]) -> list[str]:
        self.out.mkdir(parents=True, exist_ok=True)
        names = []
        for ext in self.formats:
            path = self.out / f"{name}.{ext}"
            with warnings.catch_warnings(), replacing_path(path) as tmp:
                warnings.simplefilter("ignore")
                fig.savefig(tmp, dpi=150)
            # the layout is settled by the first format; the others reuse it (layout is costly)
            fig.set_layout_engine("none")
            names.append(path.name)
        for suffix, table in tables.items():
            path = self.out / f"{name}{suffix}.csv"
            with replacing_file(path) as fh:
                table.drop(columns=[c for c in ("versions",) if c in table.columns]).to_csv(fh, index=False)
            names.append(path.name)
        self.written += 1
        return names


def say_dupes(ctx: Context, fig_id: str, dupes: list[str]) -> None:
    if len(dupes) == 1:
        ctx.say(fig_id, dupes[0])
    elif dupes:
        ctx.say(fig_id, f"{len(dupes)} runs found twice (same setting, e.g. from two sweeps); used the "
                        "furthest of each (see the CSV's _run column)")


def where(spec: FigureSpec) -> str:
    text = f"{spec.model}/{spec.data} runs"
    if spec.fixed:
        text += " at " + ", ".join(f"{k} {fmt(v)}" for k, v in spec.fixed.items())
    return text


def dedupe(ctx: Context, fig_id: str, sel: pd.DataFrame) -> pd.DataFrame:
    """One run per setting (the furthest), saying which were found twice."""
    sel, dupes = dedupe_runs(sel)
    say_dupes(ctx, fig_id, dupes)
    return sel


def candidates(ctx: Context, spec: FigureSpec, need_sets=("train",)) -> pd.DataFrame:
    """The deduplicated runs of ``spec``'s data, model and fixed settings that have ``need_sets``."""
    info = ctx.info
    sel = info[(info["data"].astype(str) == spec.data) & (info["model"].astype(str) == spec.model)]
    # masks as bool: an empty object-dtype mask would select (no) columns instead of rows
    for key, value in spec.fixed.items():
        sel = sel[sel[key].apply(lambda v, value=value: same(v, value)).astype(bool)]
    sel = sel[sel["sample_sets"].apply(lambda s: any(x in s for x in need_sets)).astype(bool)]
    return dedupe(ctx, spec.id, sel)


def variants(sel: pd.DataFrame, fig_id: str) -> list[tuple[str, pd.DataFrame]]:
    """Split runs into experiments that differ in VARIANT_COLUMNS; name each figure."""
    return split_runs(sel, fig_id, VARIANT_COLUMNS, by_value=())


def status_notes(ctx: Context, name: str, runs: pd.DataFrame, drawn: bool = True) -> None:
    running = 0
    for _, row in runs.iterrows():
        status = str(row["status"])
        if status in ("diverged", "failed"):
            if not drawn:
                end = "left out"
            elif pd.isna(row["last_finite_iteration"]):
                end = "no finite values to draw"
            else:
                end = f"drawn up to iteration {fmt(row['last_finite_iteration'])}"
            ctx.say(name, f"run {row[RUN]} ({describe(row)}) {status} at iteration "
                          f"{fmt(row['last_iteration'])}; {end}")
        elif status == "running":
            running += 1
    if running and drawn:
        ctx.say(name, f"{running} run{'s' if running > 1 else ''} still running; drawn up to their "
                      "latest checkpoint")


def title_for(spec: FigureSpec, runs: pd.DataFrame, extra: str = "") -> str:
    first = runs.iloc[0]
    parts = [f"{spec.id}: {spec.model} on {spec.data}"]
    parts += [f"{k} {fmt(v)}" for k, v in spec.fixed.items()]
    if extra:
        parts.append(extra)
    steps = {int(v) for v in runs["last_iteration"].dropna()} if "last_iteration" in runs else set()
    scale = f"{steps.pop()} steps" if len(steps) == 1 else f"scale {fmt(first['scale'])}"
    parts.append(f"{scale}, loss {fmt(first['loss'])}")
    return ", ".join(parts)


def say_written(ctx, name, files, detail):
    ctx.say(name, f"wrote {ctx.out / files[0]}, {', '.join(files[1:])} ({detail})")


def n_runs(n: int) -> str:
    return f"{n} run{'' if n == 1 else 's'}"


def values_text(values) -> str:
    return ", ".join(fmt(v) for v in values) if len(values) else "none"


def each_variant(ctx: Context, spec: FigureSpec, need: str) -> list[tuple[str, pd.DataFrame]]:
    """``spec``'s runs split into experiments (one figure each), or a skip line when there are none."""
    sel = candidates(ctx, spec)
    if sel.empty:
        ctx.say(spec.id, f"skipped, {need} (found none)")
        return []
    return variants(sel, spec.id)


def set_column(table: pd.DataFrame, column: str, values) -> None:
    """Set ``column`` of ``table`` in place (a new column goes second, after the run)."""
    if column in table.columns:
        table[column] = values
    else:
        table.insert(1, column, values)


def train_runs(ctx: Context) -> pd.DataFrame:
    info = ctx.info
    return info[info["sample_sets"].apply(lambda s: "train" in s).astype(bool)]


def split_runs(sel: pd.DataFrame, fig_id: str, fields: Sequence[str],
           by_value: Sequence[str] = ("data", "model")) -> list[tuple[str, pd.DataFrame]]:
    """Split runs by ``fields``; one figure per distinct value, named by the fields that differ
    (those in ``by_value`` by their value, others as ``field-value``; a missing field reads "?")."""
    if sel.empty:
        return []
    keys = sel.apply(lambda r: tuple(variant_value(c, r[c]) if c in r else "?" for c in fields), axis=1)
    distinct = list(dict.fromkeys(keys.tolist()))
    if len(distinct) == 1:
        return [(fig_id, sel)]
    differ = [i for i in range(len(fields)) if len({k[i] for k in distinct}) > 1]
    out = []
    for k in sorted(distinct):
        suffix = "-".join(k[i] if fields[i] in by_value else f"{fields[i]}-{k[i]}" for i in differ)
        out.append((f"{fig_id}-{re.sub(r'[^A-Za-z0-9_.=-]+', '_', suffix).strip('_')}", sel[keys == k]))
    return out


def common_text(runs: pd.DataFrame, fields=("scale", "loss")) -> str:
    """The ``fields`` that all ``runs`` share, as text ("300 steps, loss mse"): the scale is written as the
    steps the runs actually reached (a scale's name says nothing of ``steps=300`` written beside it)."""
    parts = []
    for f in fields:
        if f == "scale" and "last_iteration" in runs:
            steps = {int(v) for v in runs["last_iteration"].dropna()}
            if len(steps) == 1:
                parts.append(f"{steps.pop()} steps")
            continue
        if len({variant_value(f, v) for v in runs[f]}) == 1:
            parts.append(f"{f} {variant_value(f, runs[f].iloc[0])}")
    return ", ".join(parts)


def _data_text(row) -> str:
    """The data's name, with its class subset when the name does not say it (cifar10 classes 3,5)."""
    name = fmt(row["data"])
    data = (settings_json(row.get("settings")) or {}).get("data")
    classes = data.get("classes") if isinstance(data, dict) else None
    if not isinstance(classes, list):
        classes = None
    return f"{name} classes {','.join(map(str, classes))}" if classes and "class" not in name else name


def pair_text(runs: pd.DataFrame) -> str:
    models = sorted({fmt(v) for v in runs["model"]})
    datas = sorted({_data_text(r) for r in runs.to_dict("records")})
    return f"{'/'.join(models)} on {'/'.join(datas)}"
