r"""Operator norms of the linear maps inside a network: ``||W||_2`` of a Linear layer and the exact
operator norm of a convolution as a linear map of its whole input.

A convolution without its bias is a linear map ``C_W: R^{C_in x H x W} -> R^{C_out x H' x W'}`` that
depends on the weight W *and* on the input shape, the stride, the padding (zeros, reflect, replicate or
circular: all linear in the input), the dilation and the groups. Its operator norm
``||C_W||_2 = max_{||u|| = 1} ||C_W u||`` is the square root of the largest eigenvalue of
``C_W^T C_W`` (symmetric, positive semi-definite), found by Lanczos iteration (a Krylov refinement
of power iteration; ARPACK through scipy). ``C_W^T`` is the transposed convolution with the same
stride, padding, dilation and groups (zero padding), or else the vector-Jacobian product of ``C_W``
(``torch.func.vjp``: any padding mode). Every Ritz value is a Rayleigh quotient, a lower bound of
``||C_W||_2^2`` converging to it; ARPACK stops at relative residual ``tol``; the tests check the value
against the largest singular value of the dense matrix of the convolution. Float64 throughout.

Relations used by the bounds (``sharpcomp.measures.study.network_wide``): each output position p of a
convolution reads one patch through the kernel W, so ``||C_W||_2 <= ||C_W||_F <= ||W||_F sqrt(P)``
(P output positions; equality in the second step when no patch reaches the padding): the authors'
stand-in ``||W||_F sqrt(P)`` is an upper bound of the exact norm, usually far from tight. A Linear
layer applied to a sequence of T tokens is ``I_T (x) W``, of norm ``||W||_2``.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from scipy.sparse.linalg import ArpackNoConvergence, LinearOperator, eigsh
from torch import Tensor, nn
from torch.func import vjp

# Lanczos: relative residual tolerance and iteration cap (ARPACK's tol and maxiter).
TOL = 1e-8
MAX_ITER = 2000
# The last ||W||_2 results: (a float64 copy of W, tol, value). A weight whose values equal a stored copy
# exactly (torch.equal) gets the stored value: the Eq. 28 bounds and the network-wide bounds of one
# checkpoint need the first layer's norm once. Every solve starts from the same seeded vector, so a norm
# is a function of the weight's values alone (a resumed run equals an uninterrupted one bit for bit).
_NORMS: list = []
NORMS_KEPT = 16


def clear_caches() -> None:
    """Forget stored norms (benchmarks time cold solves with it)."""
    _NORMS.clear()


def spectral_norm(w: Tensor, *, tol: float = 1e-10) -> float:
    """``||W||_2`` of a matrix, in float64: the top eigenvalue of the smaller Gram matrix (small W) or
    Lanczos on ``W^T W`` by matrix-vector products (both sides over 64; several times faster)."""
    w = w.detach().to(device="cpu", dtype=torch.float64, copy=True)  # a copy: never an alias of W
    for kept, kept_tol, value in _NORMS:
        if kept_tol == tol and kept.shape == w.shape and torch.equal(kept, w):
            return value
    if min(w.shape) <= 64:
        gram = w @ w.T if w.shape[0] <= w.shape[1] else w.T @ w
        top = float(torch.linalg.eigvalsh(gram)[-1])
    else:
        a = w.numpy()
        size = a.shape[1]
        op = LinearOperator((size, size), matvec=lambda v: a.T @ (a @ v), dtype=np.float64)
        start = np.random.default_rng(0).standard_normal(size)
        top = float(eigsh(op, k=1, which="LA", tol=tol, maxiter=MAX_ITER, v0=start, return_eigenvectors=False)[0])
    value = math.sqrt(max(top, 0.0))
    _NORMS.append((w, tol, value))
    del _NORMS[:-NORMS_KEPT]
    return value


def conv_operator_norm(conv: nn.modules.conv._ConvNd, input_shape: tuple[int, ...], *, tol: float = TOL,
                       max_iter: int = MAX_ITER, seed: int = 0) -> float:
    """Exact operator norm of ``conv`` (weight only) as a linear map of inputs of shape ``input_shape``
    (one sample, without the batch axis): the largest eigenvalue of ``C^T C`` by Lanczos iteration
    (ARPACK, ``scipy.sparse.linalg.eigsh``) in float64, with ``C^T`` the vector-Jacobian product of C."""
    weight = conv.weight.detach().double().cpu()
    shape = (1, *input_shape)

    def apply(u: Tensor) -> Tensor:
        return conv._conv_forward(u, weight, None)

    transpose = _transpose(conv, weight, shape)

    def gram(v: np.ndarray) -> np.ndarray:
        u = torch.from_numpy(np.ascontiguousarray(v, dtype=np.float64)).reshape(shape)
        return transpose(apply(u)).reshape(-1).numpy()

    size = math.prod(shape)
    if size == 1:
        return math.sqrt(max(float(gram(np.ones(1))[0]), 0.0))
    start = np.random.default_rng(seed).standard_normal(size)
    op = LinearOperator((size, size), matvec=gram, dtype=np.float64)
    try:
        top = eigsh(op, k=1, which="LA", tol=tol, maxiter=max_iter, v0=start, return_eigenvectors=False)[0]
    except ArpackNoConvergence as exc:  # pragma: no cover - a last resort; eigsh converges in tens of steps
        raise RuntimeError(f"operator norm of {conv}: Lanczos did not converge") from exc
    return math.sqrt(max(float(top), 0.0))


def _transpose(conv: nn.modules.conv._ConvNd, weight: Tensor, shape: tuple[int, ...]):
    """``C^T`` as a function of an output: the transposed convolution (zero padding, numeric padding),
    else the vector-Jacobian product of C (any padding mode; C is linear, so one vjp serves all)."""
    if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
        _, back = vjp(lambda u: conv._conv_forward(u, weight, None), torch.zeros(shape, dtype=weight.dtype))
        return lambda y: back(y)[0]
    dims = len(conv.kernel_size)
    fn = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}[dims]
    out = conv._conv_forward(torch.zeros(shape, dtype=weight.dtype), weight, None).shape[2:]
    extra = tuple(shape[2 + d] - ((out[d] - 1) * conv.stride[d] - 2 * conv.padding[d]
                                  + conv.dilation[d] * (conv.kernel_size[d] - 1) + 1) for d in range(dims))
    return lambda y: fn(y, weight, None, conv.stride, conv.padding, extra, conv.groups, conv.dilation)


def frobenius_stand_in(conv: nn.modules.conv._ConvNd, output_shape: tuple[int, ...]) -> float:
    """The authors' stand-in for a convolution's operator norm: ``||W||_F sqrt(P)``, with P the number
    of output positions (``output_shape`` without the batch axis, channels first)."""
    positions = math.prod(output_shape[1:])
    return float(conv.weight.detach().double().norm()) * math.sqrt(positions)


def operator_norm(module: nn.Module, input_shape: tuple[int, ...]) -> float:
    """Exact operator norm of a Linear or convolution module's weight map on one sample's input."""
    if isinstance(module, nn.Linear):
        return spectral_norm(module.weight)
    if isinstance(module, nn.modules.conv._ConvNd) and not isinstance(module, nn.modules.conv._ConvTransposeNd):
        return conv_operator_norm(module, input_shape)
    raise TypeError(f"no operator norm for {type(module).__name__}")
