"""How a measure declares itself: once, in its own module, as plain data.

A measure module holds the maths (its docstring), the pure function a notebook calls, and one
:class:`Measure` named ``MEASURE``. Everything else follows from that declaration:

* the config: ``metrics.flatness.<name>`` is null (off), ``{}`` (on, defaults) or a mapping of the
  fields of its :attr:`Measure.settings` dataclass, checked once, at composition, into an instance of
  that dataclass (:func:`configure`) that the run keeps;
* the records: the :class:`Column` s it writes, with their kind and role (a value, the standard error of
  a value, or a diagnostic), on the rows its :attr:`Measure.cadence` says;
* ``sharpcomp reparam``: a row per value column whose verdict under the ReLU rescaling is known
  (:attr:`Measure.reparam`, ``"moves"`` or ``"stays"``);
* the figures and the ranking: the value columns, their standard errors and the measure's family;
* the public API and the docs' table of measures.

The measure's name is its config key, its module's name and its first column's name. Nothing here
imports torch: :mod:`sharpcomp.measures.registry` collects the declarations and
``sharpcomp/measure_index.py`` holds them as plain data for the modules that must not import torch.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

# When a measure is computed: at every checkpoint on every sample set (the study's metrics), at every
# ``metrics.flatness_every``-th checkpoint on the train row (switched on under ``metrics.flatness``), or
# only on request (``sharpcomp measure``, ``sharpcomp reparam``, a notebook).
CADENCES = ("checkpoint", "flatness", "request")
# What a measure looks at: the study's compression and sharpness, the curvature of the loss, the loss under
# weight perturbations, or a simple baseline (norms, distances, the loss itself).
FAMILIES = ("study", "curvature", "perturbation", "baseline")
# A column is a value (a quantity figures draw and rankings rank), the standard error of a value, or a
# diagnostic (an iteration count, a residual, a by-product).
ROLES = ("value", "se", "diagnostic")
KINDS = ("float", "int", "list", "text")
VERDICTS = ("moves", "stays")


@dataclass(frozen=True)
class Result:
    """What a measure's function returns: its value and, by name, what it computed on the way."""

    value: float
    details: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Estimate(Result):
    """A stochastic measure's result: its Monte-Carlo mean, standard error and number of samples.

    ``se`` is NaN from a single sample; an Estimate unpacks as ``value, se``.
    """

    se: float = math.nan
    samples: int = 0

    def __iter__(self):
        return iter((self.value, self.se))


@dataclass(frozen=True)
class Column:
    """A column a measure writes: its name, kind and role.

    ``of``: for a standard error or a diagnostic, the value column it belongs to.
    """

    name: str
    kind: str = "float"
    role: str = "value"
    of: str | None = None
    doc: str = ""


def setting(default: Any, *, kind: type | None = None, above: float | None = None, at_least: float | None = None,
            choices: tuple | None = None, nullable: bool = False, doc: str = "") -> Any:
    """A field of a measure's settings dataclass: its default and what a value must be.

    ``kind`` (int, float, bool or str) defaults to the default's type; ``above``/``at_least``: a strict or
    inclusive lower bound; ``choices``: the allowed texts; a null value is allowed where the default is
    null or ``nullable`` is set (null switches that part off or means "the run's own value").
    """
    kind = kind or type(default)
    if default is None and kind is type(None):
        raise TypeError("a setting with a null default needs its kind")
    meta = {"kind": kind, "above": above, "at_least": at_least, "choices": choices,
            "nullable": nullable or default is None, "doc": doc}
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class NoSettings:
    """The settings of a measure that has none."""


@dataclass(frozen=True)
class Measure:
    """One measure's declaration (see the module docstring).

    ``compute(sample, settings)`` returns the measure's columns (name -> value) at one checkpoint, where
    ``sample`` is a :class:`sharpcomp.measures.sample.Sample` (the network, its loss, the points to draw from
    and the random generator) and ``settings`` an instance of ``settings``. ``check(settings)`` returns a
    one-line complaint about a combination of settings, or None. ``id_key``: the config key under which its
    settings enter run ids (its first key, so that run ids survive a rename); ``in_every_id``: its null
    entry is part of every run id. ``aliases`` and ``column_aliases``: earlier names of its config key and
    columns, still accepted and read. ``earlier_defaults``: the defaults that settings had before they
    changed, for rows that recorded the measure without naming every setting (a run keeps computing its
    measures as its rows were computed: ``sharpcomp.engine.kept_measures``). ``reparam_settings``: the
    settings ``sharpcomp reparam`` uses (tight tolerances, so that only a real change counts as moved).
    ``symmetry``: it needs the rescaling-symmetry analysis of the network (checked before a run starts).
    ``function``: the pure function a notebook calls
    (part of the public API, ``sharpcomp.<name>``).
    """

    name: str
    family: str
    summary: str
    columns: tuple[Column, ...]
    compute: Callable[..., Mapping[str, Any]]
    settings: type = NoSettings
    cadence: str = "flatness"
    stochastic: bool = False
    reparam: Mapping[str, str] = field(default_factory=dict)
    reparam_settings: Mapping[str, Any] = field(default_factory=dict)
    aliases: tuple[str, ...] = ()
    column_aliases: Mapping[str, str] = field(default_factory=dict)
    earlier_defaults: Mapping[str, Any] = field(default_factory=dict)
    id_key: str | None = None
    in_every_id: bool = False
    check: Callable[[Any], str | None] | None = None
    config: str = "metrics.flatness"
    symmetry: bool = False
    function: Callable | None = None

    def __post_init__(self):
        if self.cadence not in CADENCES or self.family not in FAMILIES:
            raise ValueError(f"measure {self.name}: cadence must be one of {CADENCES}, family one of {FAMILIES}")
        names = [c.name for c in self.columns]
        if len(set(names)) != len(names) or not names:
            raise ValueError(f"measure {self.name}: columns must be named once each")
        for c in self.columns:
            if c.role not in ROLES or c.kind not in KINDS or (c.role != "value" and c.of not in names):
                raise ValueError(f"measure {self.name}: column {c.name} has a bad role, kind or owner")
        bad = {k: v for k, v in self.reparam.items() if k not in names or v not in VERDICTS}
        if bad:
            raise ValueError(f"measure {self.name}: reparam verdicts {bad} name no column or no verdict")

    @property
    def key(self) -> str:
        """The dotted config key that switches it on and sets it."""
        return f"{self.config}.{self.name}" if self.config == "metrics.flatness" else self.config

    @property
    def values(self) -> tuple[str, ...]:
        """Its value columns (the quantities figures draw and rankings rank)."""
        return tuple(c.name for c in self.columns if c.role == "value")

    def se_of(self, column: str) -> str | None:
        """The column holding the standard error of value column ``column``, if it has one."""
        return next((c.name for c in self.columns if c.role == "se" and c.of == column), None)

    def defaults(self) -> dict[str, Any]:
        """Its settings' defaults, by name."""
        return {f.name: f.default for f in dataclasses.fields(self.settings)}


def configure(measure: Measure, value: Any) -> Any:
    """``value`` (a config entry: a mapping, ``{}``, true) checked into ``measure.settings``.

    ValueError with one line naming the key for an unknown setting, a value of the wrong kind or range,
    or a combination the measure refuses.
    """
    where = measure.key
    if value is True:
        value = {}
    if not isinstance(value, Mapping):
        raise ValueError(f"{where} must be a mapping, true or null, got {value!r}")
    fields = {f.name: f for f in dataclasses.fields(measure.settings)}
    for k in value:
        if k not in fields:
            raise ValueError(f"unknown setting {where}.{k} (known: {', '.join(fields) or 'none'})")
    checked = {k: _checked(f"{where}.{k}", v, fields[k]) for k, v in value.items()}
    settings = measure.settings(**checked)
    complaint = measure.check(settings) if measure.check is not None else None
    if complaint:
        raise ValueError(f"{where}: {complaint}")
    return settings


def _checked(where: str, v: Any, f: dataclasses.Field) -> Any:
    meta = f.metadata
    kind = meta.get("kind")
    if kind is None:
        return v
    if v is None and meta["nullable"]:
        return None
    if meta["choices"] is not None:
        if v not in meta["choices"]:
            raise ValueError(f"{where} must be one of {', '.join(map(str, meta['choices']))}, got {v!r}")
        return v
    if kind is bool:
        if not isinstance(v, bool):
            raise ValueError(f"{where} must be true or false, got {v!r}")
        return v
    if kind is str:
        if not isinstance(v, str):
            raise ValueError(f"{where} must be a text, got {v!r}")
        return v
    if isinstance(v, bool) or not isinstance(v, (int, float)) or (kind is int and v != int(v)):
        raise ValueError(f"{where} must be {'an integer' if kind is int else 'a number'}, got {v!r}")
    if not math.isfinite(v):
        raise ValueError(f"{where} must be finite, got {v!r}")
    low, strict = (meta["above"], True) if meta["above"] is not None else (meta["at_least"], False)
    if low is not None and not (v > low if strict else v >= low):
        raise ValueError(f"{where} must be {'>' if strict else '>='} {low}, got {v!r}")
    return kind(v)
