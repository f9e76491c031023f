"""The flatness measures beyond the study's S, as the trainer runs them.

Their settings (defaults, checks) and one call that computes every switched-on measure at a checkpoint
(:func:`extra_metrics`).

Each measure lives in its own module (symmetry, quotient_trace, worst_case, gradient_stats).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from sharpcomp.measures.curvature import CURVATURE_DEFAULTS, curvature_metrics
from sharpcomp.measures.gradient_stats import fisher_trace, gradient_disagreement
from sharpcomp.measures.hutchpp import hessian_traces
from sharpcomp.measures.param_space import Batch, LossFn, preserved
from sharpcomp.measures.precision import exact_float32
from sharpcomp.measures.quotient_trace import hutchinson_traces, quotient_trace_gap
from sharpcomp.measures.worst_case import worst_case_sharpness

FLATNESS_DEFAULTS: dict[str, dict] = {
    # Hutchinson Tr(PHP) on n training points (+ Tr(H) from the same probes, + the exact closed-form gap)
    # (method: hutchinson, or hutchpp: Hutch++ with the same number of Hessian-vector products)
    "quotient_trace": {"probes": 20, "n": 256, "full_trace": True, "gap": True, "chunk_size": None,
                       "method": "hutchinson"},
    # l2 worst-case sharpness: `batches` disjoint minibatches, `steps` ascent steps in the rho-ball
    "worst_case": {"rho": 0.05, "steps": 5, "batches": 4, "batch_size": 128, "step_size": None},
    # adaptive (|w|-scaled) worst-case sharpness
    "adaptive": {"rho": 0.5, "steps": 5, "batches": 4, "batch_size": 128, "step_size": None},
    # worst-case sharpness restricted to the quotient (orthogonal to the symmetry orbits)
    "quotient_worst": {"rho": 0.05, "steps": 5, "batches": 4, "batch_size": 128, "step_size": None},
    # gradient disagreement over all ordered pairs of `batches` disjoint minibatches
    "disagreement": {"batches": 8, "batch_size": 20},
    # trace of the empirical Fisher on n training points
    "fisher": {"n": 256, "chunk_size": 32},
    # the curvature spectrum: hessian_max (+ hessian_top), ggn_max, batch_sharpness, nonuniformity,
    # hessian_density (sharpcomp.measures.curvature)
    **CURVATURE_DEFAULTS,
}


def conf_flatness_default(enabled: bool = False) -> dict:
    """The ``metrics.flatness`` config block: every measure off (null), or on with its defaults."""
    return {k: (dict(v) if enabled else None) for k, v in FLATNESS_DEFAULTS.items()}


def _resolve(settings: Mapping | None) -> dict[str, dict]:
    """Fill each switched-on measure's settings from the defaults; None / False / absent = off."""
    if settings is None:
        return {}
    if not isinstance(settings, Mapping):
        raise TypeError(f"metrics.flatness must be a mapping, got {type(settings).__name__}")
    out = {}
    for key in settings:
        if key not in FLATNESS_DEFAULTS:
            raise ValueError(f"unknown metrics.flatness key '{key}' (known: {', '.join(FLATNESS_DEFAULTS)})")
        val = settings[key]
        if val is None or val is False:
            continue
        cfg = dict(FLATNESS_DEFAULTS[key])
        if val is not True:
            if not isinstance(val, Mapping):
                raise TypeError(f"metrics.flatness.{key} must be a mapping, true or null, got {val!r}")
            for k in val:
                if k not in cfg:
                    raise ValueError(f"unknown setting metrics.flatness.{key}.{k} (known: {', '.join(cfg)})")
                cfg[k] = val[k]
        out[key] = cfg
    return out



# value checks of the measures' settings: key -> (kind, lowest value, strictly above it)
_CHECKS = {"probes": (int, 0, True), "n": (int, 0, True), "steps": (int, 0, True), "batches": (int, 0, True),
           "batch_size": (int, 0, True), "chunk_size": (int, 0, True), "rho": (float, 0, False),
           "step_size": (float, 0, True), "full_trace": (bool, None, None), "gap": (bool, None, None),
           "k": (int, 0, True), "tol": (float, 0, True), "max_iter": (int, 0, True), "method": (str, None, None)}
# the choices of a string setting
_CHOICES = {"method": ("hutchinson", "hutchpp")}


def check_settings(settings: Mapping | None) -> dict[str, dict]:
    """The switched-on measures' settings, filled from the defaults.

    ValueError (one line) for an unknown measure or key and for a value of the wrong type or range (null:
    the default where allowed).
    """
    try:
        resolved = _resolve(settings)
    except TypeError as exc:
        raise ValueError(str(exc)) from None
    for key, cfg in resolved.items():
        for k, v in cfg.items():
            kind, low, strict = _CHECKS.get(k, (None, None, None))
            if kind is None or (v is None and FLATNESS_DEFAULTS[key].get(k) is None):
                continue
            where = f"metrics.flatness.{key}.{k}"
            if kind is str:
                if v not in _CHOICES[k]:
                    raise ValueError(f"{where} must be one of {', '.join(_CHOICES[k])}, got {v!r}")
                continue
            if kind is bool:
                if not isinstance(v, bool):
                    raise ValueError(f"{where} must be true or false, got {v!r}")
                continue
            if isinstance(v, bool) or not isinstance(v, (int, float)) or (kind is int and v != int(v)):
                raise ValueError(f"{where} must be {'an integer' if kind is int else 'a number'}, got {v!r}")
            if not (v > low if strict else v >= low):
                raise ValueError(f"{where} must be {'>' if strict else '>='} {low}, got {v!r}")
    return resolved

def _subset(n_total: int, n: int | None, generator: torch.Generator | None) -> Tensor:
    perm = torch.randperm(n_total, generator=generator)
    return perm if n is None else perm[: min(int(n), n_total)]


def _batches(x: Tensor, y: Tensor, count: int, size: int, generator: torch.Generator | None) -> list[Batch]:
    """``count`` disjoint random minibatches of ``size`` (as many as fit, at least one)."""
    n = x.shape[0]
    size = max(1, min(int(size), n))
    count = max(1, min(int(count), n // size))
    idx = torch.randperm(n, generator=generator)[: count * size].view(count, size)
    return [(x[i], y[i]) for i in idx]


@exact_float32()
def extra_metrics(model: nn.Module, loss_fn: LossFn, train_x: Tensor, train_y: Tensor,
                  settings: Mapping | None, generator: torch.Generator | None,
                  batch_size: int | None = None) -> dict[str, float]:
    """Every switched-on measure of ``metrics.flatness``, as flat parquet columns.

    ``train_x``/``train_y``: training points to draw from (``loss_fn(model(x), y)`` must work on any
    subset); every random choice (subsets, batches, probes) comes from ``generator`` in a fixed order.
    Columns: quotient_trace, quotient_trace_se [+ hessian_trace, hessian_trace_se with full_trace,
    + quotient_trace_gap with gap] | sharpness_worst, sharpness_worst_rel | sharpness_adaptive,
    sharpness_adaptive_rel | sharpness_worst_quotient, sharpness_worst_quotient_rel |
    grad_disagreement | fisher_trace | the curvature spectrum's columns
    (:func:`sharpcomp.measures.curvature.curvature_metrics`; ``batch_size``: the run's). The model is
    left exactly as it was.
    """
    cfg = _resolve(settings)
    out: dict[str, float] = {}
    if not cfg:
        return out
    with preserved(model):  # one guard around everything (each function also guards itself)
        if "quotient_trace" in cfg:
            c = cfg["quotient_trace"]
            idx = _subset(train_x.shape[0], c["n"], generator)
            x, y = train_x[idx], train_y[idx]
            traces = hessian_traces if c["method"] == "hutchpp" else hutchinson_traces
            r = traces(model, loss_fn, x, y, int(c["probes"]), generator, chunk_size=c["chunk_size"])
            out["quotient_trace"], out["quotient_trace_se"] = r["quotient"], r["quotient_se"]
            if c["full_trace"]:
                out["hessian_trace"], out["hessian_trace_se"] = r["full"], r["full_se"]
            if c["gap"]:
                out["quotient_trace_gap"] = quotient_trace_gap(model, loss_fn, x, y)
        drawn: dict[tuple[int, int], list[Batch]] = {}  # same batches for equal (batches, batch_size)
        for key, col, kwargs in (("worst_case", "sharpness_worst", {}),
                                 ("adaptive", "sharpness_adaptive", {"adaptive": True}),
                                 ("quotient_worst", "sharpness_worst_quotient", {"quotient": True})):
            if key not in cfg:
                continue
            c = cfg[key]
            spec = (int(c["batches"]), int(c["batch_size"]))
            if spec not in drawn:
                drawn[spec] = _batches(train_x, train_y, *spec, generator)
            r = worst_case_sharpness(model, loss_fn, drawn[spec], float(c["rho"]), int(c["steps"]),
                                     step_size=c["step_size"], **kwargs)
            out[col], out[col + "_rel"] = r["value"], r["rel"]
        if "disagreement" in cfg:
            c = cfg["disagreement"]
            batches = _batches(train_x, train_y, int(c["batches"]), int(c["batch_size"]), generator)
            out["grad_disagreement"] = gradient_disagreement(model, loss_fn, batches)
        if "fisher" in cfg:
            c = cfg["fisher"]
            idx = _subset(train_x.shape[0], c["n"], generator)
            out["fisher_trace"] = fisher_trace(model, loss_fn, train_x[idx], train_y[idx], c["chunk_size"])
        out.update(curvature_metrics(model, loss_fn, train_x, train_y, cfg, generator, batch_size))
    return out
