"""Parameter-space vectors and model state, shared by the curvature and perturbation measures.

Conventions (stated once for every module of :mod:`sharpcomp.measures`)
---------------------------------------------------------------------
theta is the list of the model's trainable parameters (``p.requires_grad``), in ``model.parameters()``
order; a *parameter-space vector* is a list of tensors shaped like theta. ``loss_fn(outputs, targets)``
returns the mean loss over the batch (the study: ``mse_loss(out, onehot)``); L_B is that loss on batch B,
g = grad L, H = the Hessian of L. Every measure leaves the model as it found it (parameters, gradients,
train/eval mode): :func:`preserved`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import Tensor, nn

LossFn = Callable[[Tensor, Tensor], Tensor]
Batch = tuple[Tensor, Tensor]


def trainable(model: nn.Module) -> list[nn.Parameter]:
    """The parameters that require gradients, in ``model.parameters()`` order (theta)."""
    return [p for p in model.parameters() if p.requires_grad]


def dot(a: Sequence[Tensor], b: Sequence[Tensor | None]) -> Tensor:
    """Inner product of two parameter-space vectors; a ``None`` entry of ``b`` is zero."""
    return sum((x * y).sum() for x, y in zip(a, b) if y is not None)


def norm(a: Sequence[Tensor]) -> Tensor:
    return torch.sqrt(dot(a, a))


def flat(a: Sequence[Tensor]) -> Tensor:
    return torch.cat([x.reshape(-1) for x in a])


@contextmanager
def preserved(model: nn.Module) -> Iterator[None]:
    was_training = model.training
    params = list(model.parameters())
    saved = [p.detach().clone() for p in params]
    grads = [None if p.grad is None else p.grad.detach().clone() for p in params]
    model.eval()
    try:
        with torch.enable_grad():
            yield
    finally:
        with torch.no_grad():
            for p, s, g in zip(params, saved, grads):
                p.copy_(s)
                p.grad = g
        model.train(was_training)


def to_device(model: nn.Module, x: Tensor) -> Tensor:
    p = next(model.parameters(), None)
    if p is None:
        return x
    if x.is_floating_point():
        return x.to(device=p.device, dtype=p.dtype)
    return x.to(device=p.device)


def loss_and_grad(model: nn.Module, loss_fn: LossFn, x: Tensor, y: Tensor, params: Sequence[Tensor],
                   create_graph: bool = False) -> tuple[Tensor, tuple[Tensor, ...]]:
    loss = loss_fn(model(x), y)
    grads = torch.autograd.grad(loss, params, create_graph=create_graph)
    return loss, grads


def loss_value_and_grad(model: nn.Module, loss_fn: LossFn, x: Tensor, y: Tensor, params: Sequence[Tensor],
                        grad: bool = True) -> tuple[float, tuple[Tensor, ...] | None]:
    """The loss at the current parameters (a float) and, with ``grad``, its gradient (else None, no graph)."""
    if not grad:
        with torch.no_grad():
            return float(loss_fn(model(x), y)), None
    loss, g = loss_and_grad(model, loss_fn, x, y, params)
    return float(loss.detach()), g


def batch_gradients(model: nn.Module, loss_fn: LossFn, batches: Iterable[Batch]) -> Tensor:
    """The flattened gradients of L_B for each batch, stacked (M x num_params)."""
    out = []
    with preserved(model):
        params = trainable(model)
        for x, y in batches:
            _, g = loss_and_grad(model, loss_fn, to_device(model, x), to_device(model, y), params)
            out.append(flat(g).detach())
    return torch.stack(out)


def mean_gradient(model: nn.Module, loss_fn: LossFn, inputs: Tensor, targets: Tensor,
                  chunk_size: int | None = None) -> list[Tensor]:
    """grad_theta of the mean loss over (inputs, targets), in float64; the model is left as it was.

    ``chunk_size`` points per backward pass, the chunks' gradients weighted by their sizes (the result does
    not depend on it).
    """
    n = inputs.shape[0]
    step = n if chunk_size is None else max(1, int(chunk_size))
    with preserved(model):
        params = trainable(model)
        total = [torch.zeros_like(p, dtype=torch.float64) for p in params]
        for start in range(0, n, step):
            x, y = to_device(model, inputs[start:start + step]), to_device(model, targets[start:start + step])
            _, g = loss_and_grad(model, loss_fn, x, y, params)
            for t, gi in zip(total, g):
                t += gi.double() * (x.shape[0] / n)
    return total
