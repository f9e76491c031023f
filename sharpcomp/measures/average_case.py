"""Average-case sharpness: the mean loss increase under Gaussian weight noise, with its standard error.

    S_avg = E_delta[L_B(theta + delta)] - L_B(theta),   delta_i ~ N(0, sigma^2)          (l2)
                                                       delta_i ~ N(0, sigma^2 theta_i^2) (adaptive)

for each batch B, averaged over the batches (as Andriushchenko et al. 2023's ``eval_average_sharpness``:
per-entry Gaussian noise of standard deviation sigma, times |theta_i| when adaptive). Estimated with
``draws`` independent draws per batch; the standard error is sqrt(sum_B s_B^2 / draws) / |batches|, s_B
the sample standard deviation of the per-draw increases on batch B. Also returned: the mean increase of
the classification error (argmax of the outputs against integer labels; NaN for other targets).

Parameter-space conventions: :mod:`sharpcomp.measures.param_space`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import Tensor, nn

from sharpcomp.measures.param_space import Batch, LossFn, preserved, to_device, trainable
from sharpcomp.measures.precision import exact_float32


def gaussian(theta: list[Tensor], generator: torch.Generator | None) -> list[Tensor]:
    """Standard normal noise shaped like ``theta``, drawn from ``generator`` (on its device)."""
    dev = generator.device if generator is not None else theta[0].device
    return [torch.randn(t.shape, generator=generator, device=dev, dtype=t.dtype).to(t.device) for t in theta]


def _perturb(params: list[Tensor], theta: list[Tensor], bufs: list[Tensor], sigma: float,
             scale: list[Tensor] | None, generator: torch.Generator | None) -> None:
    """params <- theta + noise, in place (preallocated buffers: no allocation per draw)."""
    for i, (p, t, b) in enumerate(zip(params, theta, bufs)):
        if generator is None or generator.device == b.device:
            torch.randn(b.shape, generator=generator, out=b)
        else:
            b.copy_(torch.randn(b.shape, generator=generator, device=generator.device, dtype=b.dtype))
        if scale is None:
            p.copy_(t).add_(b, alpha=sigma)
        else:
            p.copy_(t).addcmul_(b, scale[i])


def loss_and_error(model: nn.Module, loss_fn: LossFn, x: Tensor, y: Tensor) -> tuple[float, float]:
    out = model(x)
    loss = float(loss_fn(out, y))
    if y.dtype in (torch.int64, torch.int32) and out.dim() == 2 and y.dim() == 1:
        return loss, float((out.argmax(1) != y).double().mean())
    return loss, math.nan


@exact_float32()
def average_sharpness(model: nn.Module, loss_fn: LossFn, batches: Iterable[Batch], sigma: float,
                      draws: int = 100, adaptive: bool = False,
                      generator: torch.Generator | None = None) -> dict:
    """{"value", "se", "err" (mean error increase), "loss" (mean L_B(theta)), "per_draw" (increases of the
    first batch)}; the model is left as it was."""
    if not sigma > 0 or draws < 2:
        raise ValueError("average_sharpness needs sigma > 0 and draws >= 2")
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
            inc = torch.empty(draws, dtype=torch.float64)
            err = torch.empty(draws, dtype=torch.float64)
            for k in range(draws):
                _perturb(params, theta, bufs, sigma, scale, generator)
                lk, ek = loss_and_error(model, loss_fn, x, y)
                inc[k], err[k] = lk - l0, ek - e0
            means.append(float(inc.mean()))
            variances.append(float(inc.var()))
            errs.append(float(err.mean()))
            losses.append(l0)
            first = inc if first is None else first
    if not means:
        raise ValueError("average_sharpness needs at least one batch")
    nb = len(means)
    return {"value": sum(means) / nb, "se": math.sqrt(sum(variances) / draws) / nb, "err": sum(errs) / nb,
            "loss": sum(losses) / nb, "per_draw": first}
