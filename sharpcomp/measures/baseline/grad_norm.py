"""The norm of the training loss's gradient, ||g|| = ||grad_theta L(theta)||_2, on n training points.

L is the mean loss over the points (``loss_fn(model(x), y)``), theta the trainable parameters
(:mod:`sharpcomp.measures.linalg.param_space`). Near a minimum ||g|| goes to zero; along training it says how
far from stationary the network is on the data the other measures see, the simplest of the baselines the
generalisation literature ranks flatness against. Under the ReLU rescaling of a hidden layer by alpha the
gradient w.r.t. the rescaled entries scales by 1/alpha (incoming) and alpha (outgoing), so ||g|| moves.

One forward and one backward pass over the points, in chunks of ``chunk_size`` (the mean of the chunk
gradients weighted by their sizes, so the result does not depend on it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from torch import Tensor, nn

from sharpcomp.measures.declaration import Column, Measure, setting
from sharpcomp.measures.linalg.param_space import LossFn, mean_gradient
from sharpcomp.measures.linalg.precision import exact_float32
from sharpcomp.measures.sample import Sample


@exact_float32()
def grad_norm(model: nn.Module, loss_fn: LossFn, inputs: Tensor, targets: Tensor,
              chunk_size: int | None = None) -> float:
    """||grad_theta L|| of the mean loss over (inputs, targets); the model is left as it was."""
    if inputs.shape[0] == 0:
        return math.nan
    return math.sqrt(sum(float(t.pow(2).sum()) for t in mean_gradient(model, loss_fn, inputs, targets, chunk_size)))


# ---------------------------------------------------------------------------------------------------
# the declaration


@dataclass(frozen=True)
class Settings:
    """``metrics.flatness.grad_norm``."""

    n: int = setting(1000, above=0, doc="training points, drawn anew at each checkpoint")
    chunk_size: int = setting(None, kind=int, above=0, doc="points per backward pass (memory)")


def compute(sample: Sample, s: Settings) -> dict[str, float]:
    """||g|| on ``s.n`` training points."""
    x, y = sample.subset(s.n)
    return {"grad_norm": grad_norm(sample.model, sample.loss_fn, x, y, s.chunk_size)}


MEASURE = Measure(
    function=grad_norm,
    name="grad_norm", family="baseline", settings=Settings, compute=compute,
    summary="the norm of the training loss's gradient on n training points",
    columns=(Column("grad_norm"),), reparam={"grad_norm": "moves"})
