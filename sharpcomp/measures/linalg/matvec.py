"""Curvature matrices as linear operators on flat parameter vectors: the loss Hessian H, the generalised
Gauss-Newton matrix G and the per-sample Hessians H_i, by automatic differentiation (never formed).

Conventions: :mod:`sharpcomp.measures.linalg.param_space`. A flat vector is the concatenation of a
parameter-space vector, in the parameters' dtype and device. For a loss that is a mean over samples,
L = (1/n) sum_i l_i, H = (1/n) sum_i H_i.

- Hessian-vector product: H v = d/dtheta (g^T v), one backward pass through the graph of g = grad L
  (built once with ``create_graph=True`` and kept), or, with ``chunk_size``, the sum over chunks c of
  (n_c / n) H_c v, each chunk's graph rebuilt per product (memory of one chunk).
- Gauss-Newton-vector product: with f the network outputs on the batch, J = df/dtheta and
  Hf = d^2 L / df^2, G = J^T Hf J (the GGN; for the study's MSE loss Hf is constant, G is PSD and its
  trace is the study's S up to the loss's constant factor). G v = J^T (Hf (J v)), where
  J v = d/du (J^T u)^T v (the double-backward trick: J^T u is linear in u), Hf w by double backward
  through L(f) and J^T w one backward pass.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from sharpcomp.measures.linalg.param_space import LossFn, to_device, trainable

MatVec = Callable[[Tensor], Tensor]


def unflatten(vec: Tensor, params: Sequence[Tensor]) -> list[Tensor]:
    """The parameter-space vector (views of ``vec``) shaped like ``params``."""
    out, i = [], 0
    for p in params:
        out.append(vec[i:i + p.numel()].view_as(p))
        i += p.numel()
    return out


def flatten(parts: Sequence[Tensor | None], params: Sequence[Tensor]) -> Tensor:
    """One flat vector from a parameter-space vector; ``None`` entries (unused parameters) are zero."""
    return torch.cat([(torch.zeros_like(p) if t is None else t).reshape(-1) for t, p in zip(parts, params)])


def dimension(model: nn.Module) -> int:
    return sum(p.numel() for p in trainable(model))


def _chunks(n: int, chunk_size: int | None) -> list[slice]:
    step = n if chunk_size is None else max(1, int(chunk_size))
    return [slice(s, min(s + step, n)) for s in range(0, n, step)]


def _hvp(grads: Sequence[Tensor], params: Sequence[Tensor], v: Tensor) -> Tensor:
    """H v from a gradient built with create_graph=True (parameters the gradient does not depend on: 0)."""
    curved = [j for j, g in enumerate(grads) if g.requires_grad]
    if not curved:
        return torch.zeros_like(v)
    vs = unflatten(v, params)
    hv = torch.autograd.grad([grads[j] for j in curved], params, [vs[j] for j in curved],
                             retain_graph=True, allow_unused=True)
    return flatten(hv, params)


def _mean_matvec(x: Tensor, y: Tensor, chunk_size: int | None, build, apply) -> MatVec:
    """v -> the mean over samples of a per-chunk product: ``apply(build(x_c, y_c), v)`` weighted by the chunk's
    share; one graph held for a single chunk, rebuilt chunk by chunk otherwise (memory of one chunk)."""
    n = x.shape[0]
    parts = _chunks(n, chunk_size)
    if len(parts) == 1:
        graph = build(x, y)
        return lambda v: apply(graph, v)

    def matvec(v: Tensor) -> Tensor:
        out = torch.zeros_like(v)
        for s in parts:
            out += (s.stop - s.start) / n * apply(build(x[s], y[s]), v)
        return out

    return matvec


def hessian_matvec(model: nn.Module, loss_fn: LossFn, inputs: Tensor, targets: Tensor,
                   chunk_size: int | None = None) -> MatVec:
    """v -> H v for the mean loss over ``inputs``; the model must stay untouched while it is used."""
    x, y = to_device(model, inputs), to_device(model, targets)
    params = trainable(model)

    def build(xc: Tensor, yc: Tensor):
        return torch.autograd.grad(loss_fn(model(xc), yc), params, create_graph=True)

    return _mean_matvec(x, y, chunk_size, build, lambda grads, v: _hvp(grads, params, v))


def _ggn_graph(model: nn.Module, loss_fn: LossFn, x: Tensor, y: Tensor, params: Sequence[Tensor]):
    out = model(x)
    u = torch.zeros_like(out, requires_grad=True)
    jt_u = torch.autograd.grad(out, params, u, create_graph=True, allow_unused=True)
    f = out.detach().requires_grad_(True)
    df = torch.autograd.grad(loss_fn(f, y), f, create_graph=True)[0]
    return out, u, [t for t in jt_u if t is not None], [p for p, t in zip(params, jt_u) if t is not None], f, df


def _ggn_vp(graph, params: Sequence[Tensor], v: Tensor) -> Tensor:
    out, u, jt_u, used, f, df = graph
    vs = dict(zip(map(id, params), unflatten(v, params)))
    jv = torch.autograd.grad(jt_u, u, [vs[id(p)] for p in used], retain_graph=True)[0]
    hjv = torch.autograd.grad(df, f, jv, retain_graph=True)[0] if df.requires_grad else torch.zeros_like(jv)
    return flatten(torch.autograd.grad(out, params, hjv, retain_graph=True, allow_unused=True), params)


def ggn_matvec(model: nn.Module, loss_fn: LossFn, inputs: Tensor, targets: Tensor,
               chunk_size: int | None = None) -> MatVec:
    """v -> G v, G = J^T (d^2 L / df^2) J, for the mean loss over ``inputs``."""
    x, y = to_device(model, inputs), to_device(model, targets)
    params = trainable(model)
    return _mean_matvec(x, y, chunk_size, lambda xc, yc: _ggn_graph(model, loss_fn, xc, yc, params),
                        lambda graph, v: _ggn_vp(graph, params, v))


def per_sample_gradients(model: nn.Module, loss_fn: LossFn, inputs: Tensor, targets: Tensor) -> list:
    """grad l_i for each sample, each with its graph (``create_graph=True``), for per-sample products
    H_i v = :func:`sample_hvp` (memory of one graph over all the samples)."""
    x, y = to_device(model, inputs), to_device(model, targets)
    params = trainable(model)
    return [torch.autograd.grad(loss_fn(model(x[i:i + 1]), y[i:i + 1]), params, create_graph=True)
            for i in range(x.shape[0])]


def sample_hvp(grads: Sequence[Tensor], model: nn.Module, v: Tensor) -> Tensor:
    """H_i v from one sample's gradient graph (:func:`per_sample_gradients`)."""
    return _hvp(grads, trainable(model), v)
