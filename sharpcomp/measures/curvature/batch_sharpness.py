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

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from sharpcomp.measures.declaration import Column, Estimate, Measure, setting
from sharpcomp.measures.linalg.monte_carlo import sample_mean
from sharpcomp.measures.linalg.param_space import Batch, LossFn, dot, preserved, to_device, trainable
from sharpcomp.measures.linalg.precision import exact_float32
from sharpcomp.measures.sample import Sample


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
def batch_sharpness(model: nn.Module, loss_fn: LossFn, batches: Sequence[Batch]) -> Estimate:
    """The mean over ``batches`` of g_B^T H_B g_B / ||g_B||^2, with its standard error (NaN with one batch).
    The model is left as it was."""
    if not batches:
        raise ValueError("batch_sharpness needs at least one minibatch")
    with preserved(model):
        vals = torch.tensor([rayleigh_along_gradient(model, loss_fn, x, y) for x, y in batches],
                            dtype=torch.float64)
    return sample_mean(vals)


# ---------------------------------------------------------------------------------------------------
# the declaration


@dataclass(frozen=True)
class Settings:
    """``metrics.flatness.batch_sharpness``."""

    batches: int = setting(16, above=0, doc="disjoint minibatches of the training set")
    batch_size: int = setting(None, kind=int, above=0, doc="their size (null: the run's batch size)")


def compute(sample: Sample, s: Settings) -> dict[str, float]:
    """The batch sharpness over ``s.batches`` minibatches and its standard error."""
    r = batch_sharpness(sample.model, sample.loss_fn, sample.batches(s.batches, s.batch_size))
    return {"batch_sharpness": r.value, "batch_sharpness_se": r.se}


MEASURE = Measure(
    function=batch_sharpness,
    name="batch_sharpness", family="curvature", stochastic=True, settings=Settings, compute=compute,
    summary="batch sharpness: the mean over minibatches of g_B^T H_B g_B / ||g_B||^2",
    columns=(Column("batch_sharpness"), Column("batch_sharpness_se", role="se", of="batch_sharpness")),
    reparam={"batch_sharpness": "moves"}, reparam_settings={"batches": 5})
