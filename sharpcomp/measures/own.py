"""Measures of the user's own: a declaration in the user's module, loaded by the ``_target_`` its
``metrics.flatness`` entry names or by the entry point an installed package declares
(:mod:`sharpcomp.measure_names`), and held to the rules a built-in measure follows.

A measure of one's own is declared as a built-in one is (``docs/measures.md``): a
:class:`~sharpcomp.measures.declaration.Measure` whose ``compute(sample, settings)`` returns its columns.
It is switched on under ``metrics.flatness``, computed at that cadence on the train row, and recorded,
reparametrised and drawn like a built-in measure. Loading it checks that

* the entry names a ``Measure`` (or a module whose ``MEASURE`` is one) whose name is the entry's key;
* it is computed at the ``flatness`` cadence and switched on under ``metrics.flatness``;
* its columns are none of the columns sharpcomp writes (the results schema and every built-in measure's
  columns, their earlier names included).

Each refusal is a ValueError with one line naming the entry.
"""

from __future__ import annotations

import types
from collections.abc import Mapping
from importlib.metadata import entry_points
from typing import Any

from sharpcomp.measure_index import MEASURES
from sharpcomp.measure_names import ENTRY_POINT_GROUP, TARGET, check_own, own_target
from sharpcomp.measures.declaration import Measure
from sharpcomp.models import ModelError, locate
from sharpcomp.results.columns import COLUMNS, MEASURE_ERRORS

# columns only sharpcomp writes: the schema, every built-in measure's (and their earlier names)
RESERVED = frozenset(
    {*COLUMNS, MEASURE_ERRORS, "sqrt_sharpness",
     *(c[0] for m in MEASURES.values() for c in m["columns"]),
     *(old for m in MEASURES.values() for old in m["column_aliases"])})


def load(key: str, value: Any) -> tuple[Measure, Any]:
    """The declaration that ``metrics.flatness.<key>`` = ``value`` names, and the entry's settings.

    ``value``: a mapping with ``_target_`` (the rest are the settings), or, for an installed package's
    measure, the entry itself (``{}``, true or a mapping of settings). ValueError (one line) otherwise.
    """
    target = own_target(value)
    if target is not None:
        check_own(key, value)
        try:
            found = locate(target, f"metrics.flatness.{key}.{TARGET}")
        except ModelError as exc:
            raise ValueError(str(exc)) from None
        settings = {k: v for k, v in value.items() if k != TARGET}
        return checked(key, found, target), settings
    return checked(key, _entry_point(key), f"entry point {key}"), value


def _entry_point(key: str) -> Any:
    """What the installed entry point ``key`` of the group ``sharpcomp.measures`` names."""
    found = [ep for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.name == key]
    if not found:
        raise ValueError(f"unknown metrics.flatness key '{key}'")
    try:
        return found[0].load()
    except Exception as exc:  # the package's module fails on import
        why = (str(exc).strip().splitlines() or [""])[0]
        raise ValueError(f"metrics.flatness.{key}: cannot load the entry point {found[0].value} "
                         f"({type(exc).__name__}: {why})") from None


def checked(key: str, found: Any, where: str) -> Measure:
    """``found`` (a Measure, or a module holding ``MEASURE``) as the declaration of ``metrics.flatness.<key>``."""
    if isinstance(found, types.ModuleType):
        found = getattr(found, "MEASURE", None)
    if not isinstance(found, Measure):
        raise ValueError(f"metrics.flatness.{key}: {where} is not a measure's declaration "
                         f"(sharpcomp.Measure, or a module whose MEASURE is one), got {type(found).__name__}")
    if found.name != key:
        raise ValueError(f"metrics.flatness.{key}: {where} declares the measure '{found.name}'; "
                         f"a measure is switched on under its own name (metrics.flatness.{found.name})")
    if found.cadence != "flatness" or found.config != "metrics.flatness":
        raise ValueError(f"metrics.flatness.{key}: a measure of one's own is computed at the flatness cadence "
                         f"(cadence='flatness', config='metrics.flatness'), got cadence={found.cadence!r}")
    taken = [c.name for c in found.columns if c.name in RESERVED]
    if taken:
        raise ValueError(f"metrics.flatness.{key}: column '{taken[0]}' is one sharpcomp writes; "
                         f"name the measure's columns after the measure (e.g. {key}, {key}_se)")
    return found


def check_distinct(entries: Mapping[str, Measure]) -> None:
    """ValueError (one line) when two measures of one's own write a column of the same name."""
    seen: dict[str, str] = {}
    for name, m in entries.items():
        for c in m.columns:
            if c.name in seen:
                raise ValueError(f"metrics.flatness.{name} and metrics.flatness.{seen[c.name]} both write "
                                 f"the column '{c.name}'")
            seen[c.name] = name
