"""The trace of the empirical Fisher: (1/n) sum_i ||grad_theta loss(f(x_i), y_i)||^2.

Per-sample gradients by ``torch.func`` (vmap of grad), ``chunk_size`` samples at a time. Parameter-space
conventions: :mod:`sharpcomp.measures.linalg.param_space`.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from sharpcomp.measures.declaration import Column, Measure, setting
from sharpcomp.measures.linalg.param_space import LossFn, loss_and_grad, preserved, to_device, trainable
from sharpcomp.measures.linalg.precision import exact_float32
from sharpcomp.measures.sample import Sample


@exact_float32()
def fisher_trace(model: nn.Module, loss_fn: LossFn, inputs: Tensor, targets: Tensor,
                 chunk_size: int | None = 32) -> float:
    """Trace of the empirical Fisher, (1/n) sum_i ||grad_theta loss_fn(f(x_i), y_i)||^2.

    Per-sample gradients with torch.func (vmap of grad over ``chunk_size`` samples at a time), falling
    back to a loop over samples if the loss cannot be vmapped. Leaves the model as it was.
    """
    n = inputs.shape[0]
    if n == 0:
        return float("nan")
    step = n if chunk_size is None else max(1, int(chunk_size))
    total = 0.0
    with preserved(model):
        names = [k for k, p in model.named_parameters() if p.requires_grad]
        params = {k: p.detach() for k, p in model.named_parameters() if p.requires_grad}
        frozen = {k: p.detach() for k, p in model.named_parameters() if not p.requires_grad}
        buffers = {k: b for k, b in model.named_buffers()}

        def loss_one(p: dict, x: Tensor, y: Tensor) -> Tensor:
            out = functional_call(model, ({**p, **frozen}, buffers), (x.unsqueeze(0),))
            return loss_fn(out, y.unsqueeze(0))

        per_sample = vmap(grad(loss_one), in_dims=(None, 0, 0))
        x_all, y_all = to_device(model, inputs), to_device(model, targets)
        for start in range(0, n, step):
            x, y = x_all[start:start + step], y_all[start:start + step]
            try:
                g = per_sample(params, x, y)
                sq = sum(g[k].reshape(x.shape[0], -1).double().pow(2).sum(1) for k in names)
                total += float(sq.sum())
            except (RuntimeError, NotImplementedError):
                plist = trainable(model)
                for i in range(x.shape[0]):
                    _, gi = loss_and_grad(model, loss_fn, x[i:i + 1], y[i:i + 1], plist)
                    total += float(sum(t.double().pow(2).sum() for t in gi))
    return total / n


# ---------------------------------------------------------------------------------------------------
# the declaration


@dataclass(frozen=True)
class Settings:
    """``metrics.flatness.fisher_trace``."""

    n: int = setting(256, above=0, doc="training points, drawn anew at each checkpoint")
    chunk_size: int = setting(32, above=0, nullable=True, doc="samples per vmapped gradient (memory)")


def compute(sample: Sample, s: Settings) -> dict[str, float]:
    """Tr F on ``s.n`` training points."""
    x, y = sample.subset(s.n)
    return {"fisher_trace": fisher_trace(sample.model, sample.loss_fn, x, y, s.chunk_size)}


MEASURE = Measure(
    function=fisher_trace,
    name="fisher_trace", family="curvature", settings=Settings, compute=compute,
    summary="trace of the empirical Fisher, the mean squared norm of the per-sample loss gradients",
    columns=(Column("fisher_trace"),), aliases=("fisher",), id_key="fisher",
    reparam={"fisher_trace": "moves"}, in_every_id=True)
