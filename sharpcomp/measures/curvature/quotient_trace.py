"""The Hessian trace, on the whole parameter space and on the quotient by the rescaling symmetry.

Tr H (:func:`hessian_trace`), Tr(PHP), its exact gap to Tr(H), and paired Hutchinson estimates of both.
Hutchinson's estimator of ``Tr H`` is ``mean_s v_s^T H v_s`` over Rademacher probes ``v_s``, with
Hessian-vector products by double backpropagation; Tr H equals the study's sharpness (of the loss
1/2 ||f - y||^2) only at an interpolation point.

P projects onto the orthogonal complement of the symmetry orbits' tangents (:mod:`sharpcomp.measures.symmetry.orbits`,
where the derivation of the closed-form gap Tr(H) - Tr(PHP) = -Tr(Gm^{-1} Mq) is written out).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from sharpcomp.measures.declaration import Column, Estimate, Measure, setting
from sharpcomp.measures.linalg.hutchinson import TracePair, hutchinson
from sharpcomp.measures.linalg.hutchpp import hessian_traces
from sharpcomp.measures.linalg.monte_carlo import sample_mean
from sharpcomp.measures.linalg.param_space import LossFn, loss_and_grad, preserved, to_device, trainable
from sharpcomp.measures.linalg.precision import exact_float32
from sharpcomp.measures.sample import Sample
from sharpcomp.measures.symmetry.orbits import quotient_projector


@exact_float32()
def hessian_trace(model: nn.Module, loss_fn, inputs: Tensor, targets: Tensor, probes: int = 100,
                  generator: torch.Generator | None = None) -> Estimate:
    """Hutchinson estimate of ``Tr H`` of the loss w.r.t. the trainable parameters, and its standard error.

    The loss is ``loss_fn(model(inputs), targets)``; the standard error is the std of the probe values /
    sqrt(probes).

    ``probes`` Rademacher vectors ``v`` (drawn from ``generator``), each costing one Hessian-vector
    product ``H v`` by double backpropagation (:mod:`sharpcomp.measures.linalg.hutchinson`); ``v^T H v``
    averages to ``Tr H``.
    """
    if probes < 2:
        raise ValueError(f"need at least 2 probes for a standard error, got {probes}")
    params = [p for p in model.parameters() if p.requires_grad]
    with torch.enable_grad():
        loss = loss_fn(model(inputs), targets)
        grads = torch.autograd.grad(loss, params, create_graph=True, allow_unused=True)
        values, _ = hutchinson(grads, params, probes, generator, sum_in_float64=True)
    values = values.numpy()
    return Estimate(float(values.mean()), se=float(values.std(ddof=1) / math.sqrt(probes)), samples=probes)


@exact_float32()
def quotient_trace_gap(model: nn.Module, loss_fn: LossFn, inputs: Tensor, targets: Tensor,
                       ridge: float = 1e-10) -> float:
    """Closed form Tr(H) - Tr(PHP) = Tr(QHQ) = -Tr(Gm^{-1} Mq), Mq_ij = v_i^T (D_j grad L).

    Exact (no probes); it needs one gradient. Uses H v_j = -D_j g, which holds because L is constant
    along each orbit. Leaves the model as it was.
    """
    with preserved(model):
        x, y = to_device(model, inputs), to_device(model, targets)
        params = trainable(model)
        _, g = loss_and_grad(model, loss_fn, x, y, params)
        proj = quotient_projector(model, ridge)
        if proj.V.r == 0:
            return 0.0
        mq = proj.V.gram_like(g)
        return float(-torch.trace(proj.solve(mq)))


@exact_float32()
def hutchinson_traces(model: nn.Module, loss_fn: LossFn, inputs: Tensor, targets: Tensor, probes: int = 20,
                      generator: torch.Generator | None = None, *, ridge: float = 1e-10,
                      chunk_size: int | None = None) -> TracePair:
    """Paired Hutchinson estimates of Tr(PHP) and Tr(H) from the same Rademacher probes z.

    Tr(PHP) = E_z[(Pz)^T H (Pz)], Tr(H) = E_z[z^T H z]; est = mean over probes, se = std(ddof=1)/sqrt(k).
    Also reports the paired difference Tr(H) - Tr(PHP) (``gap``), which should agree with
    :func:`quotient_trace_gap`. With ``chunk_size``, H is accumulated over input chunks as
    sum_c (n_c / n) H_c (valid for a loss that is a mean over samples).
    """
    if probes < 1:
        raise ValueError(f"probes must be >= 1, got {probes}")
    with preserved(model):
        x_all, y_all = to_device(model, inputs), to_device(model, targets)
        params = trainable(model)
        proj = quotient_projector(model, ridge)
        seed = int(torch.randint(0, 2**62, (1,), generator=generator).item())
        n = x_all.shape[0]
        step = n if chunk_size is None else max(1, int(chunk_size))
        qv = torch.zeros(probes, dtype=torch.float64)
        fv = torch.zeros(probes, dtype=torch.float64)
        for start in range(0, n, step):
            x, y = x_all[start:start + step], y_all[start:start + step]
            weight = x.shape[0] / n
            _, g = loss_and_grad(model, loss_fn, x, y, params, create_graph=True)
            gen = torch.Generator().manual_seed(seed)  # the same probes for every chunk
            full, projected = hutchinson(g, params, probes, gen, proj)
            fv += weight * full
            qv += weight * projected
            del g

    return TracePair(quotient=sample_mean(qv), full=sample_mean(fv), gap=sample_mean(fv - qv))


@exact_float32()
def quotient_hessian_trace(model: nn.Module, loss_fn: LossFn, inputs: Tensor, targets: Tensor,
                           probes: int = 20, generator: torch.Generator | None = None,
                           **kwargs) -> Estimate:
    """Hutchinson estimate of Tr(PHP) with projected probes u = P z."""
    return hutchinson_traces(model, loss_fn, inputs, targets, probes, generator, **kwargs).quotient


# ---------------------------------------------------------------------------------------------------
# the declaration


@dataclass(frozen=True)
class Settings:
    """``metrics.flatness.quotient_trace``."""

    probes: int = setting(10, above=0, doc="Rademacher probes (Hutch++: Hessian-vector products)")
    n: int = setting(256, above=0, doc="training points, drawn anew at each checkpoint")
    full_trace: bool = setting(True, doc="also Tr H from the same probes")
    gap: bool = setting(True, doc="also the exact gap Tr H - Tr(PHP) in closed form")
    chunk_size: int = setting(None, kind=int, above=0, doc="points per Hessian-vector product (memory)")
    method: str = setting("hutchinson", choices=("hutchinson", "hutchpp"), doc="hutchinson or hutchpp (Hutch++)")


def compute(sample: Sample, s: Settings) -> dict[str, float]:
    """Tr(PHP) (and Tr H, the gap) on ``s.n`` training points."""
    x, y = sample.subset(s.n)
    traces = hessian_traces if s.method == "hutchpp" else hutchinson_traces
    r = traces(sample.model, sample.loss_fn, x, y, s.probes, sample.generator, chunk_size=s.chunk_size)
    out = {"quotient_trace": r.quotient.value, "quotient_trace_se": r.quotient.se}
    if s.full_trace:
        out["hessian_trace"], out["hessian_trace_se"] = r.full.value, r.full.se
    if s.gap:
        out["quotient_trace_gap"] = quotient_trace_gap(sample.model, sample.loss_fn, x, y)
    return out


MEASURE = Measure(
    earlier_defaults={"probes": 20},
    function=quotient_hessian_trace,
    name="quotient_trace", family="curvature", stochastic=True, settings=Settings, compute=compute,
    summary="Tr(PHP): the Hessian trace off the ReLU rescaling orbits (Hutchinson or Hutch++), with Tr H "
            "and their exact gap",
    columns=(Column("quotient_trace"), Column("quotient_trace_se", role="se", of="quotient_trace"),
             Column("hessian_trace"), Column("hessian_trace_se", role="se", of="hessian_trace"),
             Column("quotient_trace_gap", role="diagnostic", of="quotient_trace", doc="Tr H - Tr(PHP), exact")),
    reparam={"quotient_trace": "moves", "hessian_trace": "moves", "quotient_trace_gap": "moves"},
    reparam_settings={"probes": 50}, in_every_id=True, symmetry=True)
