"""The reparametrisation test: rescale one hidden layer and compare every metric.

For a hidden layer l (a layer with a ReLU rescaling symmetry, see :mod:`sharpcomp.measures.symmetry.graph`) and
alpha > 0, :func:`rescale_unit` maps

    (W_l[j, :], b_l[j]) -> alpha (W_l[j, :], b_l[j]),   W_{l+1}[:, j] -> W_{l+1}[:, j] / alpha

for every unit j (or the given ones). The network function f is unchanged, hence so are the input
Jacobians J_i and every representation metric built from them (G, log_volume, mls, local_dim) and
the loss. Parameter-space quantities move: with A = sum of ||d f_k / d theta||^2 over the rescaled
units' incoming entries and B = the same over their outgoing entries,

    S(alpha) = A / alpha^2 + alpha^2 B + (S - A - B)

(the gradient w.r.t. an entry scaled by alpha scales by 1/alpha). The same holds for Tr H and the
empirical Fisher; the l2 worst-case sharpness moves too, while the adaptive (|w|-scaled) worst-case
sharpness is exactly invariant (its ascent iterates map onto each other). The curvature spectrum moves
as well: H becomes D^-1 H D^-1 (D = alpha on the incoming entries, 1/alpha on the outgoing ones), not a
similarity transform, so lambda_max(H), lambda_max(G), the batch sharpness (a Rayleigh quotient along a
gradient that also rescales), the non-uniformity and the spectral density (whose moments are Tr H / P
and Tr H^2 / P) all change with alpha.

``sharpcomp reparam RUN_DIR [alpha=10] [layer=NAME] [units=0,3] [probes=50] [seed=0]`` loads a run's
last checkpoint and prints the before/after table of :func:`reparam_table`.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping, Sequence

import pandas as pd
import torch
from torch import Tensor, nn

from sharpcomp.measures.declaration import Measure
from sharpcomp.measures.registry import measures
from sharpcomp.measures.sample import WholeSample
from sharpcomp.measures.symmetry.graph import Group, TraceError, analyse

__all__ = ["chosen_measures", "rescalable_layers", "rescale_unit", "reparam_table"]

REL_TOL = 1e-6  # |after - before| above this fraction of max(|before|, |after|) counts as moved


def rescalable_layers(model: nn.Module) -> dict[str, Group]:
    """Each rescalable layer (a producer of a group of :func:`sharpcomp.measures.symmetry.graph.analyse`:
    a Linear/Conv, or an eval-mode BatchNorm) and its group; in a residual network one group has several
    producers (the units every residual addition couples), and naming any of them rescales the group."""
    try:
        groups, _ = analyse(model)
    except TraceError as exc:
        raise ValueError(str(exc)) from None
    return {name: g for g in groups for name in g.producers}


def rescale_unit(model: nn.Module, layer: str, alpha: float, units: Sequence[int] | None = None, *,
                 copy_model: bool = False) -> nn.Module:
    """Rescale hidden layer ``layer``'s units (all, or ``units``) by ``alpha`` against the layers that read
    them (and, in a residual network, together with every layer coupled to them by an addition).

    In place (returns ``model``), or on a deep copy with ``copy_model=True``. Raises ValueError for an
    unknown layer, a layer without the symmetry (e.g. the output layer), alpha <= 0 or a bad unit.
    """
    try:
        alpha = float(alpha)
    except (TypeError, ValueError):
        raise ValueError(f"alpha must be a positive number, got {alpha!r}") from None
    if not (math.isfinite(alpha) and alpha > 0):
        raise ValueError(f"alpha must be a positive number, got {alpha}")
    hidden = rescalable_layers(model)
    if layer not in hidden:
        names = [n for n, _ in model.named_modules() if n]
        choices = ", ".join(hidden) or "none"
        if layer not in names:
            raise ValueError(f"unknown layer '{layer}' (rescalable layers: {choices})")
        raise ValueError(f"layer '{layer}' has no rescaling symmetry (the output layer, or not followed by "
                         f"ReLU/pooling and another layer); rescalable layers: {choices}")
    group = hidden[layer]
    if units is None:
        idx = torch.arange(group.units)
    else:
        idx = torch.as_tensor(list(units), dtype=torch.long)
        bad = [int(u) for u in idx if not 0 <= int(u) < group.units]
        if bad:
            raise ValueError(f"unit {bad[0]} out of range for layer '{layer}' ({group.units} units)")
        idx = torch.unique(idx)
    if copy_model:
        model = copy.deepcopy(model)
    mods = dict(model.named_modules())
    with torch.no_grad():
        for name in group.producers:
            for p in mods[name].parameters(recurse=False):
                p[idx.to(p.device)] *= alpha
        for name, _block in group.consumers:
            w = mods[name].weight
            i = idx.to(w.device)
            view = w.view(w.shape[0], group.units, -1)
            view[:, i] = view[:, i] / alpha
    return model


def chosen_measures(names: Sequence[str] | None = None) -> list[Measure]:
    """The measures with a declared verdict under the rescaling (``names``: those only, in registry order).

    ValueError (one line) for a name that is no measure or has no declared verdict.
    """
    with_verdict = {n: m for n, m in measures().items() if m.reparam}
    if names is None:
        return list(with_verdict.values())
    for n in names:
        if n not in with_verdict:
            raise ValueError(f"unknown measure '{n}' for the reparametrisation table (choose from "
                             f"{', '.join(with_verdict)})")
    return [m for n, m in with_verdict.items() if n in names]


def _settings(m: Measure, probes: int, metrics_kwargs: dict, chosen: Mapping | None = None):
    """The settings a measure is computed with in the table: its defaults, its ``reparam_settings``, the
    settings ``chosen`` for it (a measure of one's own, as named on the command line), the study's
    ``metrics_kwargs`` (layer, log_volume_rank) in float64 and ``probes`` for probe estimates."""
    values = {**m.defaults(), **m.reparam_settings, **(chosen or {})}
    if m.name == "metrics":
        values.update(metrics_kwargs, dtype="float64")
    if "probes" in values and m.stochastic:
        values["probes"] = probes
    return m.settings(**values)


def _measure_rows(model: nn.Module, x: Tensor, y: Tensor, loss_fn: Callable, chosen: list[tuple[Measure, Mapping]],
                  probes: int, seed: int, metrics_kwargs: dict,
                  say: Callable[[str], None]) -> tuple[dict[str, float], Tensor]:
    """Each chosen measure's declared columns for ``model`` (float64, eval mode) on (x, y), every measure
    from a generator of the same seed (so before and after share probes and draws); the outputs."""
    with torch.no_grad():
        f = model(x)
    out: dict[str, float] = {"loss": float(loss_fn(f, y))}
    shared: dict = {}
    for m, settings in chosen:
        if m.name == "network_wide" and metrics_kwargs.get("layer"):
            continue  # defined for the network output only
        if m.name == "quotient_trace" and probes < 2:
            continue
        say(m.name)
        sample = WholeSample(model, loss_fn, x, y, torch.Generator().manual_seed(seed), shared=shared)
        values = m.compute(sample, _settings(m, probes, metrics_kwargs, settings))
        out.update({c: float(values.get(c, math.nan)) for c in m.reparam})
    return out, f


def reparam_table(model: nn.Module, inputs: Tensor, targets: Tensor, loss_fn: Callable, layer: str,
                  alpha: float, *, units: Sequence[int] | None = None, probes: int = 50, seed: int = 0,
                  metrics_kwargs: dict | None = None, measures: Sequence[str] | None = None,
                  own: Sequence[tuple[Measure, Mapping]] = (),
                  progress: Callable[[str], None] | None = None) -> pd.DataFrame:
    """Every declared measure before and after :func:`rescale_unit` (on a float64 copy; ``model`` is untouched).

    Rows (index ``metric``): ``output_change`` (before 0, after max_i |f_after(x_i) - f_before(x_i)|),
    ``loss``, then each column of each measure (``measures``: those named; default: every measure with a
    declared verdict) that its declaration gives a verdict for, computed on the whole sample with the
    declaration's ``reparam_settings`` (tight tolerances; minibatches are the whole sample or up to five
    interleaved parts of it; ``probes`` Hutchinson probes for the traces, skipped below 2), then each
    measure of the user's own in ``own`` (its declaration and the settings named for it) the same way.
    ``metrics_kwargs`` (layer, log_volume_rank) go to the study's metrics.
    Columns: before, after, rel_change = (after - before) / |before|,
    moved = |after - before| > 1e-6 max(|before|, |after|) (NaN values never count as moved), and
    ``expected``: the declared verdict (moves / stays). ``progress`` (optional) is called with each
    stage's name as it starts ("before: hessian_max", ...).
    """
    chosen = [(m, None) for m in chosen_measures(measures)] + [(m, dict(s)) for m, s in own if m.reparam]
    base = copy.deepcopy(model).to(torch.float64).eval()
    moved_model = rescale_unit(base, layer, alpha, units, copy_model=True)
    dev = next(base.parameters()).device
    x = inputs.detach().to(device=dev, dtype=torch.float64)
    y = targets.detach().to(dev)
    if y.is_floating_point():
        y = y.to(torch.float64)
    kw = dict(metrics_kwargs or {})
    tell = progress or (lambda _: None)
    before, f0 = _measure_rows(base, x, y, loss_fn, chosen, probes, seed, kw, lambda s: tell(f"before: {s}"))
    after, f1 = _measure_rows(moved_model, x, y, loss_fn, chosen, probes, seed, kw, lambda s: tell(f"after: {s}"))
    expected = {c: v for m, _ in chosen for c, v in m.reparam.items()}
    rows = [{"metric": "output_change", "before": 0.0, "after": float((f1 - f0).abs().max()), "expected": "stays"}]
    rows += [{"metric": k, "before": before[k], "after": after[k], "expected": expected.get(k, "stays")}
             for k in before]
    df = pd.DataFrame(rows).set_index("metric")
    df["rel_change"] = [_rel(b, a) for b, a in zip(df["before"], df["after"])]
    df["moved"] = [_moved(b, a) for b, a in zip(df["before"], df["after"])]
    # output_change: any change beyond float64 round-off of the outputs counts as moved
    scale = float(f0.abs().max()) if f0.numel() else 1.0
    df.loc["output_change", "moved"] = bool(df.loc["output_change", "after"] > 1e-9 * max(scale, 1e-300))
    df.loc["output_change", "rel_change"] = df.loc["output_change", "after"] / max(scale, 1e-300)
    return df[["before", "after", "rel_change", "moved", "expected"]]


def _rel(b: float, a: float) -> float:
    if math.isnan(a) or math.isnan(b) or b == 0:
        return math.nan if (math.isnan(a) or math.isnan(b) or a != b) else 0.0
    return (a - b) / abs(b)


def _moved(b: float, a: float) -> bool:
    if math.isnan(a) or math.isnan(b):
        return False
    if math.isinf(a) or math.isinf(b):
        return a != b
    scale = max(abs(a), abs(b))
    if scale == 0:
        return False
    return abs(a - b) > REL_TOL * scale
