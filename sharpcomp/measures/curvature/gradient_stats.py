"""Gradient statistics: disagreement between minibatch gradients and the trace of the empirical Fisher.

Parameter-space conventions: :mod:`sharpcomp.measures.linalg.param_space`.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from sharpcomp.measures.linalg.param_space import Batch, LossFn, flat, loss_and_grad, preserved, to_device, trainable
from sharpcomp.measures.linalg.precision import exact_float32


@exact_float32()
def batch_gradients(model: nn.Module, loss_fn: LossFn, batches: Iterable[Batch]) -> Tensor:
    """The flattened gradients of L_B for each batch, stacked (M x num_params)."""
    out = []
    with preserved(model):
        params = trainable(model)
        for x, y in batches:
            _, g = loss_and_grad(model, loss_fn, to_device(model, x), to_device(model, y), params)
            out.append(flat(g).detach())
    return torch.stack(out)


@exact_float32()
def gradient_disagreement(model: nn.Module, loss_fn: LossFn, batches: Iterable[Batch]) -> float:
    """E over ordered pairs (a != b) of batches of ||g_b|| (1 - cos(g_a, g_b)).

    With M batch gradients, the mean over all M (M - 1) ordered pairs of
    ||g_b|| - <g_a, g_b> / ||g_a|| (how much of batch b's gradient a step along batch a's direction
    fails to follow). NaN for fewer than two batches; a zero gradient g_a counts as cos = 0.
    """
    grads = batch_gradients(model, loss_fn, batches).double()
    m = grads.shape[0]
    if m < 2:
        return float("nan")
    gram = grads @ grads.T
    norms = gram.diagonal().clamp_min(0).sqrt()
    inv = torch.where(norms > 0, 1.0 / norms, torch.zeros_like(norms))
    # term[a, b] = ||g_b|| - <g_a, g_b> / ||g_a||
    term = norms[None, :] - gram * inv[:, None]
    off = ~torch.eye(m, dtype=torch.bool, device=term.device)
    return float(term[off].mean())


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
