"""The flatness measures beyond the study's S, as the trainer runs them.

Their settings (defaults, checks) and one call that computes every switched-on measure at a checkpoint
(:func:`extra_metrics`).

Each measure lives in its own module (symmetry, quotient_trace, worst_case, apgd, gradient_stats,
average_case, keskar, pacbayes, contrastive, regret_kl).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from sharpcomp.measures.curvature._columns import CURVATURE_DEFAULTS, curvature_metrics
from sharpcomp.measures.curvature.contrastive import contrastive_flatness
from sharpcomp.measures.curvature.gradient_stats import fisher_trace, gradient_disagreement
from sharpcomp.measures.curvature.quotient_trace import hutchinson_traces, quotient_trace_gap
from sharpcomp.measures.linalg.hutchpp import hessian_traces
from sharpcomp.measures.linalg.param_space import Batch, LossFn, preserved, trainable
from sharpcomp.measures.linalg.precision import exact_float32
from sharpcomp.measures.perturbation.average import average_sharpness
from sharpcomp.measures.perturbation.keskar import keskar_sharpness
from sharpcomp.measures.perturbation.pacbayes import pacbayes_bounds, pacbayes_sigma
from sharpcomp.measures.perturbation.regret_kl import regret_kl
from sharpcomp.measures.perturbation.worst_case import worst_case_sharpness

FLATNESS_DEFAULTS: dict[str, dict] = {
    # Hutchinson Tr(PHP) on n training points (+ Tr(H) from the same probes, + the exact closed-form gap)
    # (method: hutchinson, or hutchpp: Hutch++ with the same number of Hessian-vector products)
    "quotient_trace": {"probes": 20, "n": 256, "full_trace": True, "gap": True, "chunk_size": None,
                       "method": "hutchinson"},
    # l2 worst-case sharpness: `batches` disjoint minibatches, `steps` ascent steps in the rho-ball
    # (algorithm apgd: Auto-PGD in the `norm` ball with `restarts`; m: the max per group of m samples)
    "worst_case": {"rho": 0.05, "steps": 5, "batches": 4, "batch_size": 128, "step_size": None,
                   "algorithm": "ascent", "norm": "l2", "restarts": 1, "m": None},
    # adaptive (|w|-scaled) worst-case sharpness
    "adaptive": {"rho": 0.5, "steps": 5, "batches": 4, "batch_size": 128, "step_size": None,
                 "algorithm": "ascent", "norm": "l2", "restarts": 1, "m": None},
    # worst-case sharpness restricted to the quotient (orthogonal to the symmetry orbits)
    "quotient_worst": {"rho": 0.05, "steps": 5, "batches": 4, "batch_size": 128, "step_size": None},
    # gradient disagreement over all ordered pairs of `batches` disjoint minibatches
    "disagreement": {"batches": 8, "batch_size": 20},
    # trace of the empirical Fisher on n training points
    "fisher": {"n": 256, "chunk_size": 32},
    # the curvature spectrum: hessian_max (+ hessian_top), ggn_max, batch_sharpness, nonuniformity,
    # hessian_density (sharpcomp.measures.curvature._columns)
    **CURVATURE_DEFAULTS,
    # average-case sharpness under Gaussian weight noise (sigma: plain, adaptive_sigma: |w|-scaled; null = off)
    "average": {"sigma": 0.01, "adaptive_sigma": 0.1, "draws": 100, "batches": 1, "batch_size": 1000},
    # Keskar's epsilon-sharpness in the box |delta_i| <= eps (|w_i| + 1), in percent, by Auto-PGD
    "keskar": {"eps": 1e-3, "steps": 20, "restarts": 1, "n": 1000},
    # PAC-Bayes sigma (plain and magnitude-aware) for a training-error increase of `target`, and the bounds
    "pacbayes": {"target": 0.1, "draws": 10, "iterations": 15, "sigma_max": 2.0, "n": 1000},
    # mean over minibatches of lambda_max(H_B) (or Tr) / that of the loss on their union
    "contrastive": {"kind": "lambda_max", "batches": 4, "batch_size": 64, "probes": 20},
    # regret in the symmetrised-KL (Fisher) ball over ordered pairs of disjoint minibatches
    "regret_kl": {"batches": 8, "batch_size": 20, "damping": 1e-3, "cg_iterations": 100},
}
# text settings and their choices
_CHOICES = {"algorithm": ("ascent", "apgd"), "norm": ("l2", "linf"), "kind": ("lambda_max", "trace"),
            "method": ("hutchinson", "hutchpp")}
# settings that may be null although their default is not (null switches that part off)
_NULLABLE = {("average", "sigma"), ("average", "adaptive_sigma")}


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
           "k": (int, 0, True), "tol": (float, 0, True), "max_iter": (int, 0, True),
           "restarts": (int, 0, True), "m": (int, 0, True), "sigma": (float, 0, True),
           "adaptive_sigma": (float, 0, True), "draws": (int, 1, True), "eps": (float, 0, True),
           "target": (float, 0, True), "iterations": (int, 0, True), "sigma_max": (float, 0, True),
           "damping": (float, 0, False), "cg_iterations": (int, 0, True)}


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
        if cfg.get("algorithm") == "ascent" and cfg.get("norm") == "linf":
            raise ValueError(f"metrics.flatness.{key}: norm linf needs algorithm apgd (the ascent is l2 only)")
        for k, v in cfg.items():
            where = f"metrics.flatness.{key}.{k}"
            if k in _CHOICES and v not in _CHOICES[k]:
                raise ValueError(f"{where} must be one of {', '.join(_CHOICES[k])}, got {v!r}")
            kind, low, strict = _CHECKS.get(k, (None, None, None))
            if kind is None or (v is None and (FLATNESS_DEFAULTS[key].get(k) is None or (key, k) in _NULLABLE)):
                continue
            if kind is bool:
                if not isinstance(v, bool):
                    raise ValueError(f"{where} must be true or false, got {v!r}")
                continue
            if isinstance(v, bool) or not isinstance(v, (int, float)) or (kind is int and v != int(v)):
                raise ValueError(f"{where} must be {'an integer' if kind is int else 'a number'}, got {v!r}")
            if not (v > low if strict else v >= low):
                raise ValueError(f"{where} must be {'>' if strict else '>='} {low}, got {v!r}")
    if "average" in resolved and resolved["average"]["draws"] < 4:
        raise ValueError("metrics.flatness.average.draws must be >= 4 (two antithetic pairs), "
                         f"got {resolved['average']['draws']!r}")
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
    (:func:`sharpcomp.measures.curvature._columns.curvature_metrics`; ``batch_size``: the run's) | the columns of
    :func:`debate_metrics`. The model is left exactly as it was.
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
            if c.get("algorithm", "ascent") == "apgd":
                kwargs.update(algorithm="apgd", norm=c["norm"], restarts=int(c["restarts"]), generator=generator)
            r = worst_case_sharpness(model, loss_fn, _groups(drawn[spec], c.get("m")), float(c["rho"]),
                                     int(c["steps"]), step_size=c["step_size"], **kwargs)
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
        out.update(debate_metrics(model, loss_fn, train_x, train_y, cfg, generator))
    return out


def _groups(batches: list[Batch], m: int | None) -> list[Batch]:
    """m-sharpness: each batch split into consecutive groups of m samples (the batches as they are for None)."""
    if m is None:
        return batches
    return [(x[i:i + int(m)], y[i:i + int(m)]) for x, y in batches for i in range(0, x.shape[0], int(m))]


def debate_metrics(model: nn.Module, loss_fn: LossFn, train_x: Tensor, train_y: Tensor, cfg: dict,
                   generator: torch.Generator | None) -> dict[str, float]:
    """The measures of the flatness debate (average, keskar, pacbayes, contrastive, regret_kl).

    From the resolved settings ``cfg``; columns named after their measure.
    """
    out: dict[str, float] = {}
    if "average" in cfg:
        c = cfg["average"]
        batches = _batches(train_x, train_y, int(c["batches"]), int(c["batch_size"]), generator)
        for col, sigma, adaptive in (("average", c["sigma"], False), ("average_adaptive", c["adaptive_sigma"], True)):
            if sigma is not None:
                r = average_sharpness(model, loss_fn, batches, float(sigma), int(c["draws"]), adaptive, generator)
                out[col], out[col + "_se"], out[col + "_err"] = r["value"], r["se"], r["err"]
    if "keskar" in cfg:
        c = cfg["keskar"]
        idx = _subset(train_x.shape[0], c["n"], generator)
        out["keskar"] = keskar_sharpness(model, loss_fn, train_x[idx], train_y[idx], float(c["eps"]), int(c["steps"]),
                                         int(c["restarts"]), generator)["value"]
    if "pacbayes" in cfg:
        c = cfg["pacbayes"]
        idx = _subset(train_x.shape[0], c["n"], generator)
        kw = {k: c[k] for k in ("target", "draws", "iterations", "sigma_max")}
        sig = pacbayes_sigma(model, train_x[idx], train_y[idx], generator=generator, **kw)["sigma"]
        mag = pacbayes_sigma(model, train_x[idx], train_y[idx], magnitude=True, generator=generator, **kw)["sigma"]
        out["pacbayes_sigma"], out["pacbayes_mag_sigma"] = sig, mag
        out.update(pacbayes_bounds(trainable(model), sig, mag, int(train_x.shape[0])))
    if "contrastive" in cfg:
        c = cfg["contrastive"]
        batches = _batches(train_x, train_y, int(c["batches"]), int(c["batch_size"]), generator)
        r = contrastive_flatness(model, loss_fn, batches, c["kind"], int(c["probes"]), generator)
        out["contrastive"], out["contrastive_full"] = r["value"], r["full"]
    if "regret_kl" in cfg:
        c = cfg["regret_kl"]
        batches = _batches(train_x, train_y, int(c["batches"]), int(c["batch_size"]), generator)
        r = regret_kl(model, loss_fn, batches, float(c["damping"]), int(c["cg_iterations"]))
        out["regret_kl"], out["regret_kl_damping"] = r["value"], r["damping"]
    return out
