"""lambda_max(G): the largest eigenvalue of the Gauss-Newton matrix G = J^T (d^2 L / df^2) J, by Lanczos.

G is H without the term R = sum_k (dL/df_k) d^2 f_k / dtheta^2 that vanishes at interpolation (see
:mod:`.hessian_max`): lambda_max(H) and lambda_max(G) agree there, and G is positive semi-definite for a
convex loss. Each Lanczos step is one product with G (three passes, :mod:`sharpcomp.measures.linalg.matvec`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from sharpcomp.measures.curvature.hessian_max import LanczosSettings, top_on
from sharpcomp.measures.declaration import Column, Measure
from sharpcomp.measures.linalg.lanczos import TopEigen, top_of_model
from sharpcomp.measures.linalg.matvec import ggn_matvec
from sharpcomp.measures.linalg.param_space import LossFn, preserved
from sharpcomp.measures.linalg.precision import exact_float32
from sharpcomp.measures.sample import Sample


@exact_float32()
def ggn_top(model: nn.Module, loss_fn: LossFn, inputs: Tensor, targets: Tensor, k: int = 1,
            tol: float = 1e-4, max_iter: int = 100, generator: torch.Generator | None = None,
            chunk_size: int | None = None) -> TopEigen:
    """The ``k`` largest eigenvalues of the Gauss-Newton matrix G = J^T (d^2 L / df^2) J (as
    :func:`hessian_top`)."""
    with preserved(model):
        mv = ggn_matvec(model, loss_fn, inputs, targets, chunk_size)
        return top_of_model(model, mv, k, tol, max_iter, generator)


def ggn_max(model: nn.Module, loss_fn: LossFn, inputs: Tensor, targets: Tensor, **kwargs) -> float:
    """lambda_max(G) (see :func:`ggn_top`)."""
    return ggn_top(model, loss_fn, inputs, targets, 1, **kwargs).values[0]


# ---------------------------------------------------------------------------------------------------
# the declaration


@dataclass(frozen=True)
class Settings(LanczosSettings):
    """``metrics.flatness.ggn_max``: those of hessian_max but k."""


def compute(sample: Sample, s: Settings) -> dict:
    """lambda_max(G), its residual and iteration count, on ``s.n`` fixed points."""
    r = top_on(sample, s, ggn_top)
    return {"ggn_max": r.values[0], "ggn_max_residual": r.residuals[0], "ggn_max_iterations": r.iterations}


MEASURE = Measure(
    earlier_defaults={"n": 1000},
    function=ggn_max,
    name="ggn_max", family="curvature", settings=Settings, compute=compute,
    summary="lambda_max(G) of the Gauss-Newton matrix (Lanczos); equals lambda_max(H) at interpolation",
    columns=(Column("ggn_max"), Column("ggn_max_residual", role="diagnostic", of="ggn_max"),
             Column("ggn_max_iterations", kind="int", role="diagnostic", of="ggn_max")),
    reparam={"ggn_max": "moves"}, reparam_settings={"tol": 1e-9, "max_iter": 300})
