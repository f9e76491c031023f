"""Keskar et al. (2017)'s epsilon-sharpness, exactly as defined (the third definition in Dinh et al. 2017):

    phi(theta, eps) = 100 * (max_{delta in C_eps} L(theta + delta) - L(theta)) / (1 + L(theta)),
    C_eps = {delta : |delta_i| <= eps (|theta_i| + 1) for every parameter entry i}   (A = I, full space).

The maximum over the box is found by Auto-PGD in the l-inf ball of radius eps for eta, with
delta = (|theta| + 1) * eta elementwise (:mod:`sharpcomp.measures.linalg.apgd`; Keskar et al. used L-BFGS-B).
The value is a lower bound on the maximum, in percent of 1 + L.

Parameter-space conventions: :mod:`sharpcomp.measures.linalg.param_space`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from sharpcomp.measures.declaration import Column, Measure, Result, setting
from sharpcomp.measures.linalg.apgd import apgd_increase
from sharpcomp.measures.linalg.param_space import LossFn, preserved, to_device, trainable
from sharpcomp.measures.linalg.precision import exact_float32
from sharpcomp.measures.sample import Sample


@exact_float32()
def keskar_sharpness(model: nn.Module, loss_fn: LossFn, x: Tensor, y: Tensor, eps: float = 1e-3,
                     steps: int = 20, restarts: int = 1, generator: torch.Generator | None = None) -> Result:
    """Keskar's sharpness of L on (x, y): phi in percent; details ``increase`` (the max increase) and ``loss``."""
    if not eps > 0:
        raise ValueError(f"eps must be > 0, got {eps}")
    with preserved(model):
        params = trainable(model)
        theta = [p.detach().clone() for p in params]
        scale = [t.abs() + 1 for t in theta]
        x, y = to_device(model, x), to_device(model, y)
        loss0, inc, _ = apgd_increase(model, loss_fn, x, y, params, theta, scale, float(eps), int(steps),
                                      "linf", int(restarts), generator)
    return Result(100.0 * inc / (1.0 + loss0), {"increase": inc, "loss": loss0})


# ---------------------------------------------------------------------------------------------------
# the declaration


@dataclass(frozen=True)
class Settings:
    """``metrics.flatness.keskar``."""

    eps: float = setting(1e-3, above=0, doc="half-width of the box, relative to |w| + 1")
    steps: int = setting(20, above=0, doc="Auto-PGD iterations")
    restarts: int = setting(1, above=0, doc="Auto-PGD restarts")
    n: int = setting(256, above=0, doc="training points, drawn anew at each checkpoint")


def compute(sample: Sample, s: Settings) -> dict[str, float]:
    """Keskar's sharpness on ``s.n`` training points."""
    x, y = sample.subset(s.n)
    r = keskar_sharpness(sample.model, sample.loss_fn, x, y, s.eps, s.steps, s.restarts, sample.generator)
    return {"keskar": r.value}


MEASURE = Measure(
    earlier_defaults={"n": 1000},
    function=keskar_sharpness,
    name="keskar", family="perturbation", settings=Settings, compute=compute,
    summary="Keskar et al.'s epsilon-sharpness in percent: the loss increase in the box |delta_i| <= eps (|w_i| + 1)",
    columns=(Column("keskar"),), reparam={"keskar": "moves"})
