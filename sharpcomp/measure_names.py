"""The names ``metrics.flatness`` may hold, known without importing any measure's code.

An entry of ``metrics.flatness`` switches on

* a **built-in** measure, by its name or an earlier one (``sharpcomp/measure_index.py``);
* a measure of **the user's own**, named by ``_target_``, a dotted path to its declaration (a
  :class:`~sharpcomp.measures.declaration.Measure`, or a module whose ``MEASURE`` is one), with its
  settings beside it: ``metrics.flatness.mine={_target_: mypkg.measures.MEASURE, scale: 2}``;
* a measure an installed package declares as an entry point of the group ``sharpcomp.measures``
  (``mine = mypkg.measures:MEASURE``), by the entry point's name: ``metrics.flatness.mine={}``.

Only the structure is checked here: the settings read it without importing the measures, and the
registry (:mod:`sharpcomp.measures.registry`) loads the code and checks the values when a run or a
tracker starts. Entry points are read from the installed packages' metadata; nothing is imported.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from importlib.metadata import entry_points

import yaml

from sharpcomp.measure_index import MEASURES

ENTRY_POINT_GROUP = "sharpcomp.measures"
TARGET = "_target_"
_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
_DOTTED = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)+")


def builtin_names() -> dict[str, str]:
    """Each name and earlier name of a built-in ``metrics.flatness`` measure -> its name."""
    return {alias: name for name, m in MEASURES.items() for alias in (name, *m["aliases"])
            if m["key"].startswith("metrics.flatness.")}


def plugin_names() -> tuple[str, ...]:
    """The names of the measures installed packages declare (entry-point group ``sharpcomp.measures``)."""
    return tuple(sorted({ep.name for ep in entry_points(group=ENTRY_POINT_GROUP)}))


def own_target(value) -> str | None:
    """The ``_target_`` of a ``metrics.flatness`` entry that names a measure of the user's own, else None."""
    if isinstance(value, Mapping) and TARGET in value:
        return value[TARGET]
    return None


def check_own(key: str, value) -> None:
    """ValueError (one line) unless ``metrics.flatness.<key>`` = ``value`` is a well-formed entry of a
    measure of the user's own: a name that is no built-in measure's, and a dotted ``_target_``."""
    target = own_target(value)
    where = f"metrics.flatness.{shown_key(key)}"
    if not valid_name(key):
        raise ValueError(f"{where}: a measure's name is a letter followed by letters, digits or _")
    if key in builtin_names():
        raise ValueError(f"{where} is a built-in measure; its entry takes no {TARGET}")
    if not isinstance(target, str) or not _DOTTED.fullmatch(target):
        raise ValueError(f"{where}.{TARGET} must be a dotted path to a measure's declaration "
                         f"(e.g. mypkg.measures.MEASURE), got {target!r:.80}")


def valid_name(key) -> bool:
    """Whether ``key`` can name a measure (a letter, then letters, digits or _)."""
    return isinstance(key, str) and _NAME.fullmatch(key) is not None


def is_switched_on(value) -> bool:
    """Whether a ``metrics.flatness`` entry switches its measure on."""
    return value is not None and value is not False


def own_measures(flatness: Mapping | None) -> dict[str, str]:
    """The switched-on entries of ``flatness`` that are not built-in: name -> what names their code
    (the ``_target_``, or ``entry point <name>`` for an installed package's measure)."""
    known = builtin_names()
    out = {}
    for key, value in (flatness or {}).items():
        if key in known or not is_switched_on(value):
            continue
        target = own_target(value)
        out[key] = shown(target) if target is not None else f"entry point {key}"
    return out


def shown_key(key) -> str:
    """A measure's key as a line may show it (one read from a file is never echoed unless it is a name)."""
    return key if valid_name(key) and len(key) <= 100 else "<not a name>"


def shown(target) -> str:
    """A ``_target_`` read from a file, as a line may show it: a dotted path, else a placeholder (what a
    results folder holds is never echoed as it is)."""
    return target if isinstance(target, str) and _DOTTED.fullmatch(target) and len(target) <= 200 \
        else "mypkg.measures.MEASURE"


def command_line_text(key: str, value) -> str:
    """How the entry ``metrics.flatness.<key>`` = ``value`` of a measure of one's own is written on a command
    line (its ``_target_`` alone; its settings are the user's to add)."""
    target = own_target(value)
    return f"'metrics.flatness.{key}={{{TARGET}: {shown(target)}}}'" if target is not None else \
        f"'metrics.flatness.{key}={{}}'"


def flatness_options(args) -> tuple[list[str], dict]:
    """A command line's ``metrics.flatness.<name>=...`` arguments as entries by name, and its other arguments.

    ValueError (one line) for a value that is not YAML.
    """
    rest, entries = [], {}
    for arg in args:
        named = flatness_option(arg)
        if named is None:
            rest.append(arg)
        else:
            entries[named[0]] = named[1]
    return rest, entries


def flatness_option(arg: str) -> tuple[str, object] | None:
    """``metrics.flatness.<name>=<YAML value>`` on a command line (``sharpcomp reparam``, ``measure``) as
    (name, entry); None for any other argument. ValueError (one line) for a value that is not YAML."""
    match = re.fullmatch(r"\+?metrics\.flatness\.(\w+)=(.*)", arg, re.S)
    if match is None:
        return None
    try:
        return match[1], yaml.safe_load(match[2]) if match[2].strip() else {}
    except yaml.YAMLError as exc:
        raise ValueError(f"metrics.flatness.{match[1]}: not a YAML value ({str(exc).splitlines()[0]})") from None
