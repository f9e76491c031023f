"""Gradient non-uniformity (Ma & Ying 2021): how much the per-sample Hessians differ from their mean,

    nonuniformity = sqrt( lambda_max( (1/n) sum_i H_i^2 - H^2 ) ),   H = (1/n) sum_i H_i,

with H_i the Hessian of sample i's loss. The matrix V = (1/n) sum_i H_i^2 - H^2 = (1/n) sum_i (H_i - H)^2
is the covariance of the per-sample Hessians, positive semi-definite. Ma & Ying show that SGD with
learning rate eta and batch size B is linearly stable at a minimum (in the mean-square sense) only if
lambda_max(H) <= 2 / eta and, roughly, nonuniformity <= sqrt(B) / eta.

Method: Lanczos (:func:`sharpcomp.measures.linalg.lanczos.top_eigenvalues`) on v -> V v, where
V v = (1/n) sum_i H_i (H_i v) - H (H v), H w = (1/n) sum_i H_i w, from per-sample gradient graphs built
once (:func:`sharpcomp.measures.linalg.matvec.per_sample_gradients`): 3n per-sample Hessian-vector products
per Lanczos step. (The study's authors compute the same quantity by power iteration, ``eigen_variance``.)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from sharpcomp.measures.declaration import Column, Measure, setting
from sharpcomp.measures.linalg.lanczos import TopEigen, top_eigenvalues
from sharpcomp.measures.linalg.matvec import dimension, per_sample_gradients, sample_hvp
from sharpcomp.measures.linalg.param_space import LossFn, preserved, trainable
from sharpcomp.measures.linalg.precision import exact_float32
from sharpcomp.measures.sample import Sample


def variance_matvec(model: nn.Module, grads: list):
    """v -> V v = (1/n) sum_i H_i^2 v - H^2 v from per-sample gradient graphs."""
    n = len(grads)

    def matvec(v: Tensor) -> Tensor:
        hv = [sample_hvp(g, model, v) for g in grads]
        mean_hv = sum(hv) / n
        second = sum(sample_hvp(g, model, h) for g, h in zip(grads, hv)) / n
        return second - sum(sample_hvp(g, model, mean_hv) for g in grads) / n

    return matvec


@exact_float32()
def nonuniformity_top(model: nn.Module, loss_fn: LossFn, inputs: Tensor, targets: Tensor, tol: float = 1e-3,
                      max_iter: int = 50, generator: torch.Generator | None = None) -> TopEigen:
    """lambda_max(V) by Lanczos (relative residual ``tol``, at most ``max_iter`` steps); the
    non-uniformity is its square root (:func:`nonuniformity`). The model is left as it was."""
    with preserved(model):
        grads = per_sample_gradients(model, loss_fn, inputs, targets)
        p = trainable(model)[0]
        return top_eigenvalues(variance_matvec(model, grads), dimension(model), 1, tol, max_iter,
                               dtype=p.dtype, device=p.device, generator=generator)


def nonuniformity(model: nn.Module, loss_fn: LossFn, inputs: Tensor, targets: Tensor, **kwargs) -> float:
    """sqrt(lambda_max((1/n) sum_i H_i^2 - H^2)) over the samples ``inputs`` (see :func:`nonuniformity_top`)."""
    return math.sqrt(max(nonuniformity_top(model, loss_fn, inputs, targets, **kwargs).values[0], 0.0))


# ---------------------------------------------------------------------------------------------------
# the declaration


@dataclass(frozen=True)
class Settings:
    """``metrics.flatness.nonuniformity``."""

    n: int = setting(16, above=0, doc="fixed training points (per-sample gradients are kept)")
    tol: float = setting(1e-2, above=0, doc="relative residual to stop at")
    max_iter: int = setting(30, above=0, doc="at most this many Lanczos steps")


def compute(sample: Sample, s: Settings) -> dict:
    """The non-uniformity and its Lanczos iteration count on ``s.n`` fixed points."""
    r = nonuniformity_top(sample.model, sample.loss_fn, *sample.fixed(s.n), tol=s.tol, max_iter=s.max_iter,
                          generator=sample.generator)
    return {"nonuniformity": math.sqrt(max(r.values[0], 0.0)), "nonuniformity_iterations": r.iterations}


MEASURE = Measure(
    earlier_defaults={"n": 32},
    function=nonuniformity,
    name="nonuniformity", family="curvature", settings=Settings, compute=compute,
    summary="non-uniformity sqrt(lambda_max(mean_i H_i^2 - H^2)), the spread of the per-sample Hessians",
    columns=(Column("nonuniformity"),
             Column("nonuniformity_iterations", kind="int", role="diagnostic", of="nonuniformity")),
    reparam={"nonuniformity": "moves"}, reparam_settings={"tol": 1e-9, "max_iter": 300})
