"""The gradient noise: the trace of the covariance of the minibatch gradient at the run's batch size.

For the n training points, g_i the gradient of the loss at point i, g = (1/n) sum_i g_i the gradient of the
mean loss, and g_B the gradient of the mean loss over a minibatch B of b points drawn uniformly without
replacement (SGD's minibatches), the noise SGD adds to the gradient is

    tr Cov(g_B) = E ||g_B - g||^2 = (n - b) / (b (n - 1)) * (1/n) sum_i ||g_i - g||^2,

zero for b = n. It is estimated from K minibatches drawn independently of each other (each uniformly
without replacement): the mean of d_k = ||g_{B_k} - g||^2, an unbiased estimate since the d_k are
independent draws with mean tr Cov(g_B), with the standard error std(d_k) / sqrt(K). g is exact (one pass
over the points, in chunks). The draws come from the checkpoint's generator.

Jiang et al. 2020 rank the variance of the minibatch gradients among their optimisation-based measures;
here it is the trace, at the batch size the run trained with (``batch_size`` null). ``n`` null uses every
training point; a number uses a random subset of that many, and the minibatches come from it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from sharpcomp.measures.declaration import Column, Estimate, Measure, setting
from sharpcomp.measures.linalg.monte_carlo import sample_mean
from sharpcomp.measures.linalg.param_space import LossFn, mean_gradient
from sharpcomp.measures.linalg.precision import exact_float32
from sharpcomp.measures.sample import Sample


@exact_float32()
def grad_noise(model: nn.Module, loss_fn: LossFn, inputs: Tensor, targets: Tensor, batch_size: int,
               batches: int = 32, generator: torch.Generator | None = None,
               chunk_size: int | None = 1000) -> Estimate:
    """tr Cov(g_B) for minibatches of ``batch_size`` of (inputs, targets), from ``batches`` independent draws.

    An :class:`Estimate` (the mean of ||g_B - g||^2 over the draws, its standard error, the number of
    draws); the model is left as it was.
    """
    n = inputs.shape[0]
    if n == 0:
        return Estimate(math.nan, se=math.nan, samples=0)
    b = max(1, min(int(batch_size), n))
    full = mean_gradient(model, loss_fn, inputs, targets, chunk_size)
    draws = []
    for _ in range(max(1, int(batches))):
        idx = torch.randperm(n, generator=generator)[:b]
        g_b = mean_gradient(model, loss_fn, inputs[idx], targets[idx])
        draws.append(sum(float((gb - g).pow(2).sum()) for gb, g in zip(g_b, full)))
    return sample_mean(torch.tensor(draws, dtype=torch.float64))


# ---------------------------------------------------------------------------------------------------
# the declaration


@dataclass(frozen=True)
class Settings:
    """``metrics.flatness.grad_noise``."""

    batches: int = setting(32, above=1, doc="minibatches drawn independently (each without replacement)")
    batch_size: int = setting(None, kind=int, above=0, doc="their size (null: the run's batch size)")
    n: int = setting(None, kind=int, above=0, doc="training points (null: all of them)")
    chunk_size: int = setting(1000, kind=int, above=0, nullable=True,
                              doc="points per backward pass of the full gradient (memory)")


def compute(sample: Sample, s: Settings) -> dict[str, float]:
    """tr Cov(g_B) at the run's batch size (or ``s.batch_size``) and its standard error."""
    x, y = (sample.x, sample.y) if s.n is None else sample.subset(s.n)
    b = s.batch_size or sample.batch_size or x.shape[0]
    r = grad_noise(sample.model, sample.loss_fn, x, y, b, s.batches, sample.generator, s.chunk_size)
    return {"grad_noise": r.value, "grad_noise_se": r.se}


MEASURE = Measure(
    function=grad_noise,
    name="grad_noise", family="baseline", stochastic=True, settings=Settings, compute=compute,
    summary="gradient noise: the trace of the minibatch gradient's covariance at the run's batch size",
    columns=(Column("grad_noise"), Column("grad_noise_se", role="se", of="grad_noise")),
    reparam={"grad_noise": "moves"}, reparam_settings={"batches": 8, "batch_size": 2})
