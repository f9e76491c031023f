"""The top of the curvature spectrum: lambda_max(H) and the k largest eigenvalues of the loss Hessian,
and lambda_max(G) of the Gauss-Newton matrix, by Lanczos on exact matrix-vector products.

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

import torch
from torch import Tensor, nn

from sharpcomp.measures.linalg.lanczos import TopEigen, top_eigenvalues
from sharpcomp.measures.linalg.matvec import dimension, ggn_matvec, hessian_matvec
from sharpcomp.measures.linalg.param_space import LossFn, preserved, trainable
from sharpcomp.measures.linalg.precision import exact_float32


def _solve(model: nn.Module, matvec, k: int, tol: float, max_iter: int, generator) -> TopEigen:
    p = trainable(model)[0]
    return top_eigenvalues(matvec, dimension(model), k, tol, max_iter, dtype=p.dtype, device=p.device,
                           generator=generator)


@exact_float32()
def hessian_top(model: nn.Module, loss_fn: LossFn, inputs: Tensor, targets: Tensor, k: int = 1,
                tol: float = 1e-4, max_iter: int = 100, generator: torch.Generator | None = None,
                chunk_size: int | None = None) -> TopEigen:
    """The ``k`` largest eigenvalues of the Hessian of the mean loss over ``inputs`` (descending), each
    to relative residual ``tol`` (at most ``max_iter`` products), with residuals and the iteration
    count. The model is left as it was."""
    with preserved(model):
        mv = hessian_matvec(model, loss_fn, inputs, targets, chunk_size)
        return _solve(model, mv, k, tol, max_iter, generator)


@exact_float32()
def ggn_top(model: nn.Module, loss_fn: LossFn, inputs: Tensor, targets: Tensor, k: int = 1,
            tol: float = 1e-4, max_iter: int = 100, generator: torch.Generator | None = None,
            chunk_size: int | None = None) -> TopEigen:
    """The ``k`` largest eigenvalues of the Gauss-Newton matrix G = J^T (d^2 L / df^2) J (as
    :func:`hessian_top`)."""
    with preserved(model):
        mv = ggn_matvec(model, loss_fn, inputs, targets, chunk_size)
        return _solve(model, mv, k, tol, max_iter, generator)


def hessian_max(model: nn.Module, loss_fn: LossFn, inputs: Tensor, targets: Tensor, **kwargs) -> float:
    """lambda_max(H) (see :func:`hessian_top` for the settings)."""
    return hessian_top(model, loss_fn, inputs, targets, 1, **kwargs).values[0]


def ggn_max(model: nn.Module, loss_fn: LossFn, inputs: Tensor, targets: Tensor, **kwargs) -> float:
    """lambda_max(G) (see :func:`ggn_top`)."""
    return ggn_top(model, loss_fn, inputs, targets, 1, **kwargs).values[0]
