"""Batch sharpness (Andreyev & Beneventano 2024): the curvature of each minibatch loss along its own
gradient, averaged over minibatches,

    BS = E_B[ g_B^T H_B g_B / ||g_B||^2 ],   g_B = grad L_B, H_B = its Hessian,

for minibatches B of the run's batch size. One SGD step theta - eta g_B changes L_B by
-eta ||g_B||^2 + (eta^2 / 2) g_B^T H_B g_B + O(eta^3), which decreases only while the Rayleigh quotient
is below 2 / eta; under minibatch SGD it is this quantity, not lambda_max(H), that settles at 2 / eta.
For full-batch gradient descent (B = the whole set) it is the Rayleigh quotient of H along g, at most
lambda_max(H).

Cost per minibatch: one gradient with its graph and one Hessian-vector product H_B g_B. The estimate is
the mean over ``batches`` disjoint random minibatches with its standard error std(ddof=1)/sqrt(batches).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from sharpcomp.measures.linalg.param_space import Batch, LossFn, dot, preserved, to_device, trainable
from sharpcomp.measures.linalg.precision import exact_float32


def rayleigh_along_gradient(model: nn.Module, loss_fn: LossFn, x, y) -> float:
    """g^T H g / ||g||^2 for the mean loss on (x, y) (0 where g = 0)."""
    params = trainable(model)
    x, y = to_device(model, x), to_device(model, y)
    grads = torch.autograd.grad(loss_fn(model(x), y), params, create_graph=True)
    g = [t.detach() for t in grads]
    gg = float(dot(g, g))
    if gg == 0.0:
        return 0.0
    curved = [j for j, t in enumerate(grads) if t.requires_grad]
    if not curved:
        return 0.0
    hg = torch.autograd.grad([grads[j] for j in curved], params, [g[j] for j in curved], allow_unused=True)
    return float(dot(g, hg)) / gg


@exact_float32()
def batch_sharpness(model: nn.Module, loss_fn: LossFn, batches: Sequence[Batch]) -> tuple[float, float]:
    """(mean over ``batches`` of g_B^T H_B g_B / ||g_B||^2, its standard error; nan with one batch).
    The model is left as it was."""
    if not batches:
        raise ValueError("batch_sharpness needs at least one minibatch")
    with preserved(model):
        vals = torch.tensor([rayleigh_along_gradient(model, loss_fn, x, y) for x, y in batches],
                            dtype=torch.float64)
    se = float(vals.std(unbiased=True) / math.sqrt(len(vals))) if len(vals) > 1 else float("nan")
    return float(vals.mean()), se
