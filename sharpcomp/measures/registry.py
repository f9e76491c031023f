"""Every measure sharpcomp knows, and the one loop that computes the switched-on ones at a checkpoint.

:data:`BUILT_IN` is the table of contents: the module of each built-in measure, in the order a checkpoint
computes them (their random draws come from one generator in this order, so a new measure goes at the
end). Each module declares its measure once (``MEASURE``, :class:`sharpcomp.measures.declaration.Measure`).

* :func:`measures`: name -> declaration, built-in ones first;
* :func:`plan`: a ``metrics.flatness`` mapping checked into a :class:`Plan` (each switched-on measure with
  its settings object), once, before a run starts;
* :meth:`Plan.compute`: the columns of every measure in the plan at one checkpoint;
* :func:`compute_measures`: both in one call, for a notebook.

What is generated from the declarations (the plain-data index for modules that do without torch, the
``metrics.flatness`` block of ``conf/train.yaml``, the docs' table): :mod:`sharpcomp.measures.publish`.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from typing import Any

import torch

from sharpcomp.measures.declaration import Measure, configure
from sharpcomp.measures.linalg.param_space import preserved
from sharpcomp.measures.linalg.precision import exact_float32
from sharpcomp.measures.sample import Sample

BUILT_IN = (
    # every checkpoint, every sample set (the metric engine computes them together)
    "sharpcomp.measures.study.metrics",
    "sharpcomp.measures.study.network_wide",
    # metrics.flatness, in the order a checkpoint computes them
    "sharpcomp.measures.curvature.quotient_trace",
    "sharpcomp.measures.perturbation.worst_case",
    "sharpcomp.measures.perturbation.worst_case_adaptive",
    "sharpcomp.measures.perturbation.worst_case_quotient",
    "sharpcomp.measures.curvature.grad_disagreement",
    "sharpcomp.measures.curvature.fisher_trace",
    "sharpcomp.measures.curvature.hessian_max",
    "sharpcomp.measures.curvature.ggn_max",
    "sharpcomp.measures.curvature.batch_sharpness",
    "sharpcomp.measures.curvature.nonuniformity",
    "sharpcomp.measures.curvature.hessian_density",
    "sharpcomp.measures.perturbation.average",
    "sharpcomp.measures.perturbation.keskar",
    "sharpcomp.measures.perturbation.pacbayes",
    "sharpcomp.measures.curvature.contrastive",
    "sharpcomp.measures.perturbation.regret_kl",
    "sharpcomp.measures.baseline.grad_norm",
    "sharpcomp.measures.baseline.param_norm",
    "sharpcomp.measures.baseline.dist_init",
    "sharpcomp.measures.baseline.grad_noise",
)


@cache
def measures() -> dict[str, Measure]:
    """Every built-in measure by name, in :data:`BUILT_IN` order."""
    out: dict[str, Measure] = {}
    for path in BUILT_IN:
        m = importlib.import_module(path).MEASURE
        if m.name in out or m.name != path.rsplit(".", 1)[1]:
            raise RuntimeError(f"{path}: a measure is named after its module, once ({m.name})")
        out[m.name] = m
    return out


def switchable() -> dict[str, Measure]:
    """The measures switched on under ``metrics.flatness``."""
    return {k: m for k, m in measures().items() if m.config == "metrics.flatness"}


def canonical(key: str) -> str | None:
    """The measure a ``metrics.flatness`` key names (its name or an earlier one), or None."""
    for name, m in switchable().items():
        if key == name or key in m.aliases:
            return name
    return None


@dataclass(frozen=True)
class Plan:
    """The switched-on measures of a run, each with its checked settings, in the order they are computed."""

    entries: tuple[tuple[Measure, Any], ...] = ()

    def __bool__(self) -> bool:
        return bool(self.entries)

    @property
    def names(self) -> tuple[str, ...]:
        """The switched-on measures' names."""
        return tuple(m.name for m, _ in self.entries)

    def settings(self, name: str) -> Any:
        """The checked settings of measure ``name``."""
        return next(s for m, s in self.entries if m.name == name)

    @exact_float32()
    def compute(self, sample: Sample) -> dict[str, Any]:
        """Every measure's columns at one checkpoint; the model is left exactly as it was."""
        out: dict[str, Any] = {}
        if not self.entries:
            return out
        with preserved(sample.model):  # one guard around everything (each function also guards itself)
            for m, s in self.entries:
                out.update(m.compute(sample, s))
        return out


def plan(flatness: Mapping | None) -> Plan:
    """``metrics.flatness`` (measure -> null / ``{}`` / true / a mapping of settings) checked into a :class:`Plan`.

    ValueError with one line for an unknown measure, a measure named twice (by its name and an earlier
    one), or a bad setting.
    """
    if flatness is None:
        return Plan()
    if not isinstance(flatness, Mapping):
        raise ValueError(f"metrics.flatness must be a mapping of measures, got {flatness!r}")
    known = switchable()
    chosen: dict[str, Any] = {}
    for key, value in flatness.items():
        name = canonical(key)
        if name is None:
            raise ValueError(f"unknown metrics.flatness key '{key}' (known: {', '.join(known)})")
        if value is None or value is False:
            continue
        if name in chosen:
            raise ValueError(f"metrics.flatness.{name} is switched on twice (as {key} too)")
        chosen[name] = configure(known[name], value)
    return Plan(tuple((m, chosen[n]) for n, m in known.items() if n in chosen))


def compute_measures(model: torch.nn.Module, loss_fn, x: torch.Tensor, y: torch.Tensor, flatness: Mapping | None,
                     generator: torch.Generator | None = None, batch_size: int | None = None,
                     initial: torch.nn.Module | None = None) -> dict[str, Any]:
    """The columns of the measures a ``metrics.flatness`` mapping switches on, in one call.

    For ``model`` on the training points (x, y): :func:`plan` then :meth:`Plan.compute`. ``initial``: the
    network at initialisation, for the measures relative to it (``dist_init``).
    """
    start = None if initial is None else (lambda: initial)
    return plan(flatness).compute(Sample(model, loss_fn, x, y, generator, batch_size, initial=start))


extra_metrics = compute_measures  # the name this call had before measures were declared
