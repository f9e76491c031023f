"""The reparametrisation test: rescale one hidden layer and compare every metric.

For a hidden layer l (a layer with a ReLU rescaling symmetry, see :mod:`sharpcomp.measures.flatness`) and
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
from collections.abc import Callable, Sequence

import pandas as pd
import torch
from torch import Tensor, nn

from sharpcomp.measures.curvature import (
    batch_sharpness,
    contrastive,
    gradient_stats,
    hessian_spectrum,
    nonuniformity,
    quotient_trace,
)
from sharpcomp.measures.perturbation import average as average_case
from sharpcomp.measures.perturbation import keskar, pacbayes, regret_kl, worst_case
from sharpcomp.measures.study.metrics import compute_metrics, hessian_trace
from sharpcomp.measures.study.network_wide import network_wide
from sharpcomp.measures.symmetry.graph import Group, TraceError, analyse
from sharpcomp.results.columns import METRIC_COLUMNS

__all__ = ["rescalable_layers", "rescale_unit", "reparam_table"]

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


def _metrics_row(model: nn.Module, x: Tensor, y: Tensor, loss_fn: Callable, probes: int, seed: int,
                 metrics_kwargs: dict, worst: dict,
                 say: Callable[[str], None]) -> tuple[dict[str, float], Tensor]:
    """Every metric of ``model`` (float64, eval mode) on (x, y); fixed seeds so before/after share probes."""
    out: dict[str, float] = {}
    say("the study's metrics")
    with torch.no_grad():
        f = model(x)
    out["loss"] = float(loss_fn(f, y))
    m = compute_metrics(model, x, dtype=torch.float64, **metrics_kwargs)
    for k in METRIC_COLUMNS:
        out[k] = float(m[k])
    if not metrics_kwargs.get("layer"):  # network-wide measures: NMLS moves, sharpness_inv does not
        nw = network_wide(model, x, sharpness=m["sharpness"], dtype=torch.float64)
        for k in ("nmls", "nvr", "nmls_bound", "sharpness_inv", "nmls_bound_inv"):
            out[k] = float(nw[k])
        if nw.get("first_layer"):  # a convolutional first layer: its Eq. 28 analogues
            out.update({k: float(v) for k, v in nw["first_layer"].items()})
    say("traces and worst cases")
    if probes >= 2:
        out["hessian_trace"], _ = hessian_trace(model, loss_fn, x, y, probes,
                                                torch.Generator().manual_seed(seed))
        out["quotient_trace"], _ = quotient_trace.quotient_hessian_trace(model, loss_fn, x, y, probes,
                                                             torch.Generator().manual_seed(seed))
    out["quotient_trace_gap"] = quotient_trace.quotient_trace_gap(model, loss_fn, x, y)
    batches = [(x, y)]
    sharpness = worst_case.worst_case_sharpness
    out["sharpness_worst"] = sharpness(model, loss_fn, batches, worst["rho"], worst["steps"])["value"]
    out["sharpness_adaptive"] = sharpness(model, loss_fn, batches, worst["adaptive_rho"], worst["steps"],
                                          adaptive=True)["value"]
    out["fisher_trace"] = gradient_stats.fisher_trace(model, loss_fn, x, y)
    k = max(2, min(5, x.shape[0]))
    chunks = [(x[i::k], y[i::k]) for i in range(k) if len(x[i::k])]
    out["grad_disagreement"] = gradient_stats.gradient_disagreement(model, loss_fn, chunks)
    say("curvature spectrum")
    out.update(_curvature_row(model, loss_fn, x, y, chunks, seed))
    say("average-case, Keskar, PAC-Bayes, contrastive, regret_kl")
    out.update(_debate_rows(model, loss_fn, x, y, seed, chunks))
    return out, f


def _curvature_row(model: nn.Module, loss_fn: Callable, x: Tensor, y: Tensor, chunks, seed: int) -> dict:
    """The curvature spectrum's scalars (tight Lanczos tolerance, so only a real change counts as moved)."""
    def kw():
        return {"tol": 1e-9, "max_iter": 300, "generator": torch.Generator().manual_seed(seed)}

    return {
        "hessian_max": hessian_spectrum.hessian_top(model, loss_fn, x, y, **kw()).values[0],
        "ggn_max": hessian_spectrum.ggn_top(model, loss_fn, x, y, **kw()).values[0],
        "batch_sharpness": batch_sharpness.batch_sharpness(model, loss_fn, chunks)[0],
        "nonuniformity": nonuniformity.nonuniformity(model, loss_fn, x, y, **kw()),
    }


def _debate_rows(model: nn.Module, loss_fn: Callable, x: Tensor, y: Tensor, seed: int,
                 chunks: list) -> dict[str, float]:
    """average, average_adaptive, keskar, the PAC-Bayes sigmas, contrastive and regret_kl (small damping:
    its invariance holds as the damping goes to 0); the same random draws before and after."""
    gen = lambda: torch.Generator().manual_seed(seed)  # noqa: E731
    out = {"average": average_case.average_sharpness(model, loss_fn, [(x, y)], 0.01, 50, False, gen())["value"],
           "average_adaptive": average_case.average_sharpness(model, loss_fn, [(x, y)], 0.1, 50, True,
                                                              gen())["value"],
           "keskar": keskar.keskar_sharpness(model, loss_fn, x, y, 1e-3, 20)["value"]}
    if not y.is_floating_point():
        for col, mag in (("pacbayes_sigma", False), ("pacbayes_mag_sigma", True)):
            out[col] = pacbayes.pacbayes_sigma(model, x, y, 0.1, 10, 15, magnitude=mag, generator=gen())["sigma"]
    out["contrastive"] = contrastive.contrastive_flatness(model, loss_fn, chunks)["value"]
    out["regret_kl"] = regret_kl.regret_kl(model, loss_fn, chunks, damping=1e-10, cg_iterations=500)["value"]
    return out


def reparam_table(model: nn.Module, inputs: Tensor, targets: Tensor, loss_fn: Callable, layer: str,
                  alpha: float, *, units: Sequence[int] | None = None, probes: int = 50, seed: int = 0,
                  metrics_kwargs: dict | None = None, rho: float = 0.05, adaptive_rho: float = 0.5,
                  steps: int = 5, progress: Callable[[str], None] | None = None) -> pd.DataFrame:
    """Every metric before and after :func:`rescale_unit` (on a float64 copy; ``model`` is untouched).

    Rows (index ``metric``): ``output_change`` (before 0, after max_i |f_after(x_i) - f_before(x_i)|),
    loss, the study's metrics of ``compute_metrics`` (``metrics_kwargs`` passed on, e.g. layer or
    log_volume_rank), hessian_trace and quotient_trace (Hutchinson, the same ``probes`` probes before and
    after; skipped for probes < 2), quotient_trace_gap (closed form), sharpness_worst (l2, radius
    ``rho``) and sharpness_adaptive (radius ``adaptive_rho``), each on the whole sample as one batch,
    fisher_trace and grad_disagreement (over up to 5 interleaved sub-batches), hessian_max and ggn_max
    (Lanczos to 1e-9), batch_sharpness (over the same sub-batches), nonuniformity, and the rows of
    :func:`_debate_rows` (average, average_adaptive, keskar, pacbayes sigmas, contrastive, regret_kl).
    Columns: before, after, rel_change = (after - before) / |before|,
    moved = |after - before| > 1e-6 max(|before|, |after|)
    (NaN values never count as moved). ``progress`` (optional) is called with a short description of each
    stage as it starts ("before: curvature spectrum", ...).
    """
    base = copy.deepcopy(model).to(torch.float64).eval()
    moved_model = rescale_unit(base, layer, alpha, units, copy_model=True)
    dev = next(base.parameters()).device
    x = inputs.detach().to(device=dev, dtype=torch.float64)
    y = targets.detach().to(dev)
    if y.is_floating_point():
        y = y.to(torch.float64)
    worst = {"rho": rho, "adaptive_rho": adaptive_rho, "steps": steps}
    kw = dict(metrics_kwargs or {})
    tell = progress or (lambda _: None)
    before, f0 = _metrics_row(base, x, y, loss_fn, probes, seed, kw, worst, lambda s: tell(f"before: {s}"))
    after, f1 = _metrics_row(moved_model, x, y, loss_fn, probes, seed, kw, worst, lambda s: tell(f"after: {s}"))
    rows = [{"metric": "output_change", "before": 0.0, "after": float((f1 - f0).abs().max())}]
    rows += [{"metric": k, "before": before[k], "after": after[k]} for k in before]
    df = pd.DataFrame(rows).set_index("metric")

    def rel(b: float, a: float) -> float:
        if math.isnan(a) or math.isnan(b) or b == 0:
            return math.nan if (math.isnan(a) or math.isnan(b) or a != b) else 0.0
        return (a - b) / abs(b)

    def moved(b: float, a: float) -> bool:
        if math.isnan(a) or math.isnan(b):
            return False
        if math.isinf(a) or math.isinf(b):
            return a != b
        scale = max(abs(a), abs(b))
        if scale == 0:
            return False
        return abs(a - b) > REL_TOL * scale

    df["rel_change"] = [rel(b, a) for b, a in zip(df["before"], df["after"])]
    df["moved"] = [moved(b, a) for b, a in zip(df["before"], df["after"])]
    # output_change: any change beyond float64 round-off of the outputs counts as moved
    scale = float(f0.abs().max()) if f0.numel() else 1.0
    df.loc["output_change", "moved"] = bool(df.loc["output_change", "after"] > 1e-9 * max(scale, 1e-300))
    df.loc["output_change", "rel_change"] = df.loc["output_change", "after"] / max(scale, 1e-300)
    return df


# ---------------------------------------------------------------------------------------------------
# command line
