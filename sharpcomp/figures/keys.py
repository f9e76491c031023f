"""Config keys of runs, for figures over any swept key (``sharpcomp figures --by model.width``).

A run's records carry ``settings``: the JSON (sorted keys) of the nested settings that define it,
``{"data": {...}, "model": {...}, "lr", "batch", "seed", "loss", "optim": {...}, "log_every",
"eval_every", "metrics": {...}}``. Here it is flattened to dotted keys (``model.width``,
``metrics.layer``, ``optim.rho``, ``lr``). Files written before that column existed fall back to the
flat identity columns (``width``, ``lr``, ...), which name fewer keys.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping

import pandas as pd

from sharpcomp.figures.tables import RUN, is_missing, variant_value
from sharpcomp.results.stored_text import settings_json

# dotted key -> the flat identity column that holds the same setting (files without ``settings``)
FLAT_COLUMNS = {
    "data.name": "data", "model.name": "model", "model.width": "width", "model.outputs": "outputs",
    "optim.name": "optim", "lr": "lr", "batch": "batch", "seed": "seed", "loss": "loss",
}
# identity columns that are not settings yet separate experiments (kept under their own names)
OTHER_COLUMNS = ("scale", "data_source")
# short names accepted for a key: the flat column names (``width`` is ``model.width``)
ALIASES = {flat: dotted for dotted, flat in FLAT_COLUMNS.items() if flat != dotted}
# a key a run does not have (e.g. ``optim.rho`` of an SGD run), or a null setting
NONE = "none"
# settings a run's identity leaves out at the value that changes nothing (``sharpcomp.optim.identity_view``;
# a test holds them against ``sharpcomp.optim.NEUTRAL``): a run without one had it at that value
LEFT_OUT_AT = {"optim.momentum": 0.0, "optim.nesterov": False, "optim.weight_decay": 0.0}


def flatten(settings: Mapping, prefix: str = "") -> dict[str, object]:
    """Nested settings as ``{dotted key: value}``; lists and empty mappings become JSON text."""
    out: dict[str, object] = {}
    for k, v in settings.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and v:
            out.update(flatten(v, key + "."))
        elif isinstance(v, (list, tuple, Mapping)):
            out[key] = json.dumps(v, sort_keys=True)
        else:
            out[key] = v
    return out


def run_keys(row: Mapping) -> dict[str, object]:
    """One run's settings as dotted keys: the flat identity columns, then (where the run has it) the
    ``settings`` JSON, which names every setting and wins."""
    keys = {dotted: row[flat] for dotted, flat in FLAT_COLUMNS.items() if flat in row and not is_missing(row[flat])}
    keys.update({c: row[c] for c in OTHER_COLUMNS if c in row and not is_missing(row[c])})
    settings = settings_json(row.get("settings"))  # bounded: a results file's settings may be anything
    if settings is not None:
        keys.update(flatten(settings))
    return keys


def key_table(info: pd.DataFrame) -> pd.DataFrame:
    """One row per run of ``info`` (column ``_run``), one column per dotted key any run has."""
    rows = [{RUN: run, **run_keys(row)} for run, row in zip(info[RUN], info.to_dict("records"))]
    return pd.DataFrame(rows, columns=list(dict.fromkeys(k for r in rows for k in r)) or [RUN])


def resolve(key: str, table: pd.DataFrame) -> str:
    """The column of ``table`` that ``key`` names (a dotted key, or a flat alias such as ``width``);
    ``KeyError`` with one line naming the keys there are when no run has it."""
    name = key.strip()
    for candidate in (name, ALIASES.get(name)):
        if candidate and candidate != RUN and candidate in table.columns:
            return candidate
    known = sorted(c for c in table.columns if c != RUN)
    raise KeyError(f"unknown key {key!r} for --by: no run has it (keys: {', '.join(known) or 'none'})")


def value_text(key: str, value) -> str:
    """A key's value as it labels a line ("0.5", "sam", "none" where a run has no such setting; an optimiser
    setting left out of a run's identity at its neutral value is that value, e.g. weight decay 0)."""
    if is_missing(value):
        return variant_value(key, LEFT_OUT_AT[key]) if key in LEFT_OUT_AT else NONE
    return variant_value(key, value)


def ordered(values: Iterable[str]) -> list[str]:
    """Values as ``value_text`` writes them: numbers ascending, then the rest by name."""
    def rank(text: str):
        try:
            number = float(text)
        except ValueError:
            return (1, 0.0, text)
        return (0, number, text) if math.isfinite(number) else (1, 0.0, text)

    return sorted(dict.fromkeys(values), key=rank)

