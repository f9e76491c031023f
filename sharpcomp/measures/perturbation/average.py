"""Average-case sharpness: the mean loss increase under Gaussian weight noise, with its standard error.

    S_avg = E_delta[L_B(theta + delta)] - L_B(theta),   delta_i ~ N(0, sigma^2)          (l2)
                                                       delta_i ~ N(0, sigma^2 theta_i^2) (adaptive)

for each batch B, averaged over the batches (as Andriushchenko et al. 2023's ``eval_average_sharpness``:
per-entry Gaussian noise of standard deviation sigma, times |theta_i| when adaptive).

Estimated with antithetic pairs: each noise draw delta is used twice, as theta + delta and theta - delta
(both are N(0, Sigma) draws, so the mean stays unbiased), and the pair's mean increase

    m_j = (L_B(theta + delta_j) + L_B(theta - delta_j)) / 2 - L_B(theta)

is the Monte-Carlo sample. The odd terms of the Taylor series of L around theta (the gradient term
g^T delta, which dominates the plain estimator's variance away from a minimum) cancel in every pair,
and each Gaussian vector serves two forward passes, so the noise costs half as much. ``draws`` forward
passes per batch make ceil(draws / 2) pairs; the standard error is sqrt(sum_B s_B^2 / pairs) / |batches|,
s_B the sample standard deviation of the pair means on batch B. Also returned: the mean increase of the
classification error (argmax of the outputs against integer labels; NaN for other targets), with the
same pairing.

Parameter-space conventions: :mod:`sharpcomp.measures.linalg.param_space`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from sharpcomp.measures.declaration import Column, Estimate, Measure, setting
from sharpcomp.measures.linalg.param_space import Batch, LossFn, preserved, to_device, trainable
from sharpcomp.measures.linalg.precision import exact_float32
from sharpcomp.measures.sample import Sample


def gaussian(theta: list[Tensor], generator: torch.Generator | None) -> list[Tensor]:
    """Standard normal noise shaped like ``theta``, drawn from ``generator`` (on its device)."""
    dev = generator.device if generator is not None else theta[0].device
    return [torch.randn(t.shape, generator=generator, device=dev, dtype=t.dtype).to(t.device) for t in theta]


def _draw(bufs: list[Tensor], generator: torch.Generator | None) -> None:
    """Fill the preallocated buffers with standard normal noise (no allocation per draw)."""
    for b in bufs:
        if generator is None or generator.device == b.device:
            torch.randn(b.shape, generator=generator, out=b)
        else:
            b.copy_(torch.randn(b.shape, generator=generator, device=generator.device, dtype=b.dtype))


def _set(params: list[Tensor], theta: list[Tensor], bufs: list[Tensor], sigma: float,
         scale: list[Tensor] | None, sign: float) -> None:
    """params <- theta + sign * noise, in place, one pass over each tensor."""
    for i, (p, t, b) in enumerate(zip(params, theta, bufs)):
        if scale is None:
            torch.add(t, b, alpha=sign * sigma, out=p)
        else:
            torch.addcmul(t, b, scale[i], value=sign, out=p)


def loss_and_error(model: nn.Module, loss_fn: LossFn, x: Tensor, y: Tensor) -> tuple[float, float]:
    out = model(x)
    loss = float(loss_fn(out, y))
    if y.dtype in (torch.int64, torch.int32) and out.dim() == 2 and y.dim() == 1:
        return loss, float((out.argmax(1) != y).double().mean())
    return loss, math.nan


@exact_float32()
def average_sharpness(model: nn.Module, loss_fn: LossFn, batches: Iterable[Batch], sigma: float,
                      draws: int = 100, adaptive: bool = False,
                      generator: torch.Generator | None = None) -> Estimate:
    """The average-case sharpness with its standard error over the antithetic pairs (``samples``: pairs per
    batch); details ``err`` (mean error increase), ``loss`` (mean L_B(theta)) and ``per_draw`` (the first
    batch's increases, in the order theta + delta_1, theta - delta_1, theta + delta_2, ...). The model is
    left as it was. ``draws`` >= 4 forward passes per batch (rounded up to an even number)."""
    if not sigma > 0 or draws < 4:
        raise ValueError("average_sharpness needs sigma > 0 and draws >= 4 (two antithetic pairs)")
    pairs = (draws + 1) // 2
    means, variances, errs, losses, first = [], [], [], [], None
    with preserved(model), torch.no_grad():
        params = trainable(model)
        theta = [p.detach().clone() for p in params]
        scale = [t.abs() * sigma for t in theta] if adaptive else None
        bufs = [torch.empty_like(t) for t in theta]
        for x, y in batches:
            x, y = to_device(model, x), to_device(model, y)
            for p, t in zip(params, theta):
                p.copy_(t)
            l0, e0 = loss_and_error(model, loss_fn, x, y)
            inc = torch.empty(2 * pairs, dtype=torch.float64)
            err = torch.empty(2 * pairs, dtype=torch.float64)
            for k in range(2 * pairs):
                if k % 2 == 0:
                    _draw(bufs, generator)
                _set(params, theta, bufs, sigma, scale, 1.0 if k % 2 == 0 else -1.0)
                lk, ek = loss_and_error(model, loss_fn, x, y)
                inc[k], err[k] = lk - l0, ek - e0
            pair_means = inc.view(pairs, 2).mean(1)
            means.append(float(pair_means.mean()))
            variances.append(float(pair_means.var()))
            errs.append(float(err.mean()))
            losses.append(l0)
            first = inc if first is None else first
    if not means:
        raise ValueError("average_sharpness needs at least one batch")
    nb = len(means)
    return Estimate(sum(means) / nb, {"err": sum(errs) / nb, "loss": sum(losses) / nb, "per_draw": first},
                    se=math.sqrt(sum(variances) / pairs) / nb, samples=pairs)


# ---------------------------------------------------------------------------------------------------
# the declaration


@dataclass(frozen=True)
class Settings:
    """``metrics.flatness.average``."""

    sigma: float = setting(0.01, above=0, nullable=True, doc="noise scale of the plain measure (null: off)")
    adaptive_sigma: float = setting(0.1, above=0, nullable=True, doc="noise scale relative to |w| (null: off)")
    draws: int = setting(20, above=1, doc="noisy forward passes per batch (antithetic pairs: at least 4)")
    batches: int = setting(1, above=0, doc="disjoint minibatches of the training set")
    batch_size: int = setting(1000, above=0, doc="their size")


def compute(sample: Sample, s: Settings) -> dict[str, float]:
    """The plain and adaptive average-case sharpness on the same minibatches, with standard errors."""
    batches = sample.batches(s.batches, s.batch_size)
    out = {}
    for col, sigma, adaptive in (("average", s.sigma, False), ("average_adaptive", s.adaptive_sigma, True)):
        if sigma is not None:
            r = average_sharpness(sample.model, sample.loss_fn, batches, sigma, s.draws, adaptive, sample.generator)
            out[col], out[col + "_se"], out[col + "_err"] = r.value, r.se, r.details["err"]
    return out


MEASURE = Measure(
    earlier_defaults={"draws": 100},
    function=average_sharpness,
    name="average", family="perturbation", stochastic=True, settings=Settings, compute=compute,
    check=lambda s: f"draws must be >= 4 (two antithetic pairs), got {s.draws!r}" if s.draws < 4 else None,
    summary="average-case sharpness E L(w + delta) - L(w) under Gaussian noise, plain and |w|-scaled (antithetic)",
    columns=(Column("average"), Column("average_se", role="se", of="average"),
             Column("average_err", role="diagnostic", of="average", doc="the mean error increase"),
             Column("average_adaptive"), Column("average_adaptive_se", role="se", of="average_adaptive"),
             Column("average_adaptive_err", role="diagnostic", of="average_adaptive")),
    reparam={"average": "moves", "average_adaptive": "stays"}, reparam_settings={"batches": 1, "draws": 50})
