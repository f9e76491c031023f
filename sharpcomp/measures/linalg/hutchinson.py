"""Hutchinson's stochastic trace estimator of a Hessian (Hutchinson 1990), by double backpropagation.

Tr H = E_z[z^T H z] for Rademacher z; the estimate is the mean over probes and its standard error
std(ddof=1)/sqrt(probes). Parameter-space conventions: :mod:`sharpcomp.measures.linalg.param_space`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from sharpcomp.measures.declaration import Estimate
from sharpcomp.measures.linalg.param_space import dot
from sharpcomp.measures.linalg.precision import exact_float32


@dataclass(frozen=True)
class TracePair:
    """Estimates of Tr(PHP) and Tr H from the same probes, and of their difference where it was paired."""

    quotient: Estimate
    full: Estimate
    gap: Estimate | None = None


def rademacher(params: Sequence[Tensor], generator: torch.Generator | None) -> list[Tensor]:
    """One Rademacher (+-1) vector shaped like ``params``, drawn from ``generator`` on its device
    (the global generator of each parameter's device when None), in the parameters' dtype."""
    out = []
    for p in params:
        dev = generator.device if generator is not None else p.device
        v = torch.randint(0, 2, p.shape, generator=generator, device=dev, dtype=torch.int8) * 2 - 1
        out.append(v.to(device=p.device, dtype=p.dtype))
    return out


@exact_float32()
def hutchinson(grads: Sequence[Tensor | None], params: Sequence[Tensor], probes: int,
               generator: torch.Generator | None,
               project: Callable[[list[Tensor]], list[Tensor]] | None = None,
               sum_in_float64: bool = False) -> tuple[Tensor, Tensor | None]:
    """Hutchinson's estimator of a Hessian trace, the one in sharpcomp: for each of ``probes``
    Rademacher vectors z (``rademacher``, drawn in turn from ``generator``), z^T H z by double
    backpropagation, and u^T H u for u = ``project(z)`` when a projection is given.

    H is the Hessian of the loss whose gradient ``grads`` w.r.t. ``params`` was built with
    ``create_graph=True``; gradients that do not depend on the parameters (a loss linear in them) and
    unused parameters contribute H v = 0. Returns two float64 tensors of length ``probes`` (the second
    None without ``project``); their mean is the trace estimate (E z^T H z = Tr H).
    ``sum_in_float64`` adds the per-parameter terms of z^T H z in float64 rather than in the
    parameters' dtype (the same for float64 models; :func:`hessian_trace` does so).
    """
    curved = [j for j, g in enumerate(grads) if g is not None and g.requires_grad]

    def quadratic(v: list[Tensor]) -> float:
        if not curved:
            return 0.0
        hv = torch.autograd.grad([grads[j] for j in curved], params, [v[j] for j in curved],
                                 retain_graph=True, allow_unused=True)
        if sum_in_float64:
            return sum(float((a * b).sum()) for a, b in zip(v, hv) if b is not None)
        return float(dot(v, hv))

    full = torch.zeros(probes, dtype=torch.float64)
    projected = None if project is None else torch.zeros(probes, dtype=torch.float64)
    for k in range(probes):
        z = rademacher(params, generator)
        full[k] = quadratic(z)
        if projected is not None:
            projected[k] = quadratic(project(z))
    return full, projected
