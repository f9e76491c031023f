"""The top of the curvature spectrum: lambda_max(H) and the k largest eigenvalues of the loss Hessian, by
Lanczos on exact Hessian-vector products (lambda_max(G) of the Gauss-Newton matrix: :mod:`.ggn_max`).

"Sharpness" in the edge-of-stability literature (Cohen et al. 2021) is lambda_max(H): gradient descent
with learning rate eta is linearly stable at a minimum only if lambda_max(H) <= 2 / eta. H = G + R with
G = J^T (d^2 L / df^2) J (:mod:`sharpcomp.measures.linalg.matvec`) and R = sum_k (dL/df_k) d^2 f_k / dtheta^2;
R vanishes where the residuals dL/df vanish (interpolation), so lambda_max(H) and lambda_max(G) agree
there, while away from it H can have negative eigenvalues and G (PSD for a convex loss) cannot.

Method: :func:`sharpcomp.measures.linalg.lanczos.top_eigenvalues` (full reorthogonalisation, stop at relative
residual ``tol``); each Lanczos step is one product with H (one backward pass through the kept graph of
the gradient) or G (three passes). The returned residuals bound the relative error of each eigenvalue.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from sharpcomp.measures.declaration import Column, Measure, setting
from sharpcomp.measures.linalg.lanczos import TopEigen, top_of_model
from sharpcomp.measures.linalg.matvec import hessian_matvec
from sharpcomp.measures.linalg.param_space import LossFn, preserved
from sharpcomp.measures.linalg.precision import exact_float32
from sharpcomp.measures.sample import Sample


@exact_float32()
def hessian_top(model: nn.Module, loss_fn: LossFn, inputs: Tensor, targets: Tensor, k: int = 1,
                tol: float = 1e-4, max_iter: int = 100, generator: torch.Generator | None = None,
                chunk_size: int | None = None) -> TopEigen:
    """The ``k`` largest eigenvalues of the Hessian of the mean loss over ``inputs`` (descending), each
    to relative residual ``tol`` (at most ``max_iter`` products), with residuals and the iteration
    count. The model is left as it was."""
    with preserved(model):
        mv = hessian_matvec(model, loss_fn, inputs, targets, chunk_size)
        return top_of_model(model, mv, k, tol, max_iter, generator)


def hessian_max(model: nn.Module, loss_fn: LossFn, inputs: Tensor, targets: Tensor, **kwargs) -> float:
    """lambda_max(H) (see :func:`hessian_top` for the settings)."""
    return hessian_top(model, loss_fn, inputs, targets, 1, **kwargs).values[0]


# ---------------------------------------------------------------------------------------------------
# the declaration


@dataclass(frozen=True)
class LanczosSettings:
    """The settings of a Lanczos measure of the top of a curvature spectrum (this one and ggn_max)."""

    n: int = setting(256, above=0, doc="fixed training points (the same at every checkpoint)")
    tol: float = setting(1e-3, above=0, doc="relative residual to stop at")
    max_iter: int = setting(100, above=0, doc="at most this many Lanczos steps")
    chunk_size: int = setting(None, kind=int, above=0, doc="points per matrix-vector product (memory)")


def top_on(sample: Sample, s: LanczosSettings, top, k: int = 1) -> TopEigen:
    """``top`` (:func:`hessian_top` or ``ggn_top``) on ``s.n`` fixed points of ``sample``, with ``s``."""
    return top(sample.model, sample.loss_fn, *sample.fixed(s.n), k=k, tol=s.tol, max_iter=s.max_iter,
               generator=sample.generator, chunk_size=s.chunk_size)


@dataclass(frozen=True)
class Settings(LanczosSettings):
    """``metrics.flatness.hessian_max``."""

    k: int = setting(1, above=0, doc="how many of the largest eigenvalues (hessian_top)")


def compute(sample: Sample, s: Settings) -> dict:
    """lambda_max(H), its residual and iteration count, and the top k, on ``s.n`` fixed points."""
    r = top_on(sample, s, hessian_top, s.k)
    return {"hessian_max": r.values[0], "hessian_max_residual": max(r.residuals),
            "hessian_max_iterations": r.iterations, "hessian_top": [float(v) for v in r.values]}


MEASURE = Measure(
    earlier_defaults={"n": 1000},
    function=hessian_max,
    name="hessian_max", family="curvature", settings=Settings, compute=compute,
    summary="lambda_max(H), the sharpness of the edge-of-stability literature, and the top k eigenvalues (Lanczos)",
    columns=(Column("hessian_max"), Column("hessian_max_residual", role="diagnostic", of="hessian_max"),
             Column("hessian_max_iterations", kind="int", role="diagnostic", of="hessian_max"),
             Column("hessian_top", kind="list", role="diagnostic", of="hessian_max", doc="the top k, descending")),
    reparam={"hessian_max": "moves"}, reparam_settings={"tol": 1e-9, "max_iter": 300})
