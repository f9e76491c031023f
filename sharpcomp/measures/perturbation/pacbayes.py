"""PAC-Bayes flatness (Jiang et al. 2019, "Fantastic generalization measures", Appendix C; Dziugaite et
al. 2020): the largest noise level that the training error tolerates, and the bounds built on it.

For a noise level sigma, the posterior is theta + u with

    u_i ~ N(0, sigma^2)                              (plain)
    u_i ~ N(0, sigma^2 theta_i^2 + eps^2)            (magnitude-aware, eps = 1e-3)

and e(sigma) = E_u[err(theta + u)] - err(theta), err the 0-1 training error on the points given.
sigma* is the largest sigma in [0, sigma_max] with e(sigma) <= d (d = ``target``, 0.1 as Jiang et al.),
found by ``iterations`` bisection steps on [0, sigma_max]; e(sigma) is estimated by ``draws`` Monte-Carlo
draws, the same standard normal draws z at every sigma (u = sigma z, resp. sqrt(sigma^2 theta^2 + eps^2) z:
common random numbers, so the search is deterministic for a given generator). Returned: the bracket
[lo, hi] (e(lo) <= d < e(hi) for the estimated e), sigma* = lo.

Derived values, with m the number of training points, omega the number of parameters, w = theta:

    pacbayes_flatness     = 1 / sigma*^2
    pacbayes_orig         = ||w||^2 / (4 sigma*^2) + log(m / sigma*) + 10
    pacbayes_mag_flatness = 1 / sigma'^2            (sigma' the magnitude-aware sigma*)
    pacbayes_mag_orig     = 1/4 sum_i log((eps^2 + (sigma'^2 + 1) ||w||^2 / omega) / (eps^2 + sigma'^2 w_i^2))
                            + log(m / sigma') + 10

(Jiang et al.'s equations 49, 53, 57, 61, over every trainable parameter; the "init" versions need the
initial weights, which a checkpoint does not hold.)

Parameter-space conventions: :mod:`sharpcomp.measures.linalg.param_space`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from sharpcomp.measures.declaration import Column, Measure, Result, setting
from sharpcomp.measures.linalg.param_space import preserved, to_device, trainable
from sharpcomp.measures.linalg.precision import exact_float32
from sharpcomp.measures.perturbation.average import gaussian
from sharpcomp.measures.sample import Sample

MAG_EPS = 1e-3


def error_increase(model: nn.Module, x: Tensor, y: Tensor, sigma: float, draws: int, seed: int,
                   magnitude: bool = False, eps: float = MAG_EPS) -> float:
    """Monte-Carlo e(sigma) with the draws of ``torch.Generator().manual_seed(seed)`` (model on any device)."""
    params = trainable(model)
    theta = [p.detach().clone() for p in params]
    gen = torch.Generator().manual_seed(int(seed))
    std = [(sigma**2 * t.pow(2) + eps**2).sqrt() if magnitude else None for t in theta]
    with torch.no_grad():
        for p, t in zip(params, theta):
            p.copy_(t)
        err0 = float((model(x).argmax(1) != y).double().mean())
        total = 0.0
        try:
            for _ in range(draws):
                z = gaussian([t.cpu() for t in theta], gen)
                for p, t, zi, s in zip(params, theta, z, std):
                    zi = zi.to(t.device)
                    p.copy_(t + (zi * s if magnitude else zi * sigma))
                total += float((model(x).argmax(1) != y).double().mean())
        finally:
            for p, t in zip(params, theta):
                p.copy_(t)
    return total / draws - err0


@exact_float32()
def pacbayes_sigma(model: nn.Module, x: Tensor, y: Tensor, target: float = 0.1, draws: int = 10,
                   iterations: int = 15, sigma_max: float = 2.0, magnitude: bool = False, eps: float = MAG_EPS,
                   generator: torch.Generator | None = None) -> Result:
    """sigma (the bisection's ``lo``, see the module docstring); details ``lo``, ``hi`` and ``increase`` (e(lo))."""
    if not (target > 0 and sigma_max > 0 and draws >= 1 and iterations >= 1):
        raise ValueError("pacbayes_sigma needs target > 0, sigma_max > 0, draws >= 1, iterations >= 1")
    seed = int(torch.randint(0, 2**62, (1,), generator=generator).item())
    with preserved(model):
        x, y = to_device(model, x), to_device(model, y)
        lo, hi, inc_lo = 0.0, float(sigma_max), 0.0
        if error_increase(model, x, y, hi, draws, seed, magnitude, eps) <= target:
            return Result(hi, {"lo": hi, "hi": math.inf, "increase": math.nan})
        for _ in range(int(iterations)):
            mid = (lo + hi) / 2
            e = error_increase(model, x, y, mid, draws, seed, magnitude, eps)
            if e <= target:
                lo, inc_lo = mid, e
            else:
                hi = mid
    return Result(lo, {"lo": lo, "hi": hi, "increase": inc_lo})


def pacbayes_bounds(theta: list[Tensor], sigma: float, sigma_mag: float, m: int, eps: float = MAG_EPS) -> dict:
    """The derived values of the module docstring (NaN where a sigma is 0)."""
    w = torch.cat([t.detach().reshape(-1).double().cpu() for t in theta])
    sq, omega = float(w.pow(2).sum()), w.numel()
    out = {"pacbayes_flatness": math.nan, "pacbayes_orig": math.nan,
           "pacbayes_mag_flatness": math.nan, "pacbayes_mag_orig": math.nan}
    if sigma > 0:
        out["pacbayes_flatness"] = 1.0 / sigma**2
        out["pacbayes_orig"] = sq / (4 * sigma**2) + math.log(m / sigma) + 10
    if sigma_mag > 0:
        num = eps**2 + (sigma_mag**2 + 1) * sq / omega
        den = eps**2 + sigma_mag**2 * w.pow(2)
        out["pacbayes_mag_flatness"] = 1.0 / sigma_mag**2
        out["pacbayes_mag_orig"] = float(0.25 * torch.log(num / den).sum()) + math.log(m / sigma_mag) + 10
    return out


# ---------------------------------------------------------------------------------------------------
# the declaration


@dataclass(frozen=True)
class Settings:
    """``metrics.flatness.pacbayes``."""

    target: float = setting(0.1, above=0, doc="the training-error increase the sigma allows")
    draws: int = setting(5, above=0, doc="noise draws per error estimate")
    iterations: int = setting(15, above=0, doc="bisection steps")
    sigma_max: float = setting(2.0, above=0, doc="the largest sigma searched")
    n: int = setting(256, above=0, doc="training points, drawn anew at each checkpoint")


def compute(sample: Sample, s: Settings) -> dict[str, float]:
    """Both sigmas on ``s.n`` training points, and the flatness and bound values they give."""
    x, y = sample.subset(s.n)
    if y.is_floating_point():  # defined by the classification error
        return {c: math.nan for c in ("pacbayes_sigma", "pacbayes_mag_sigma", "pacbayes_flatness", "pacbayes_orig",
                                      "pacbayes_mag_flatness", "pacbayes_mag_orig")}
    kw = {"target": s.target, "draws": s.draws, "iterations": s.iterations, "sigma_max": s.sigma_max}
    sig = pacbayes_sigma(sample.model, x, y, generator=sample.generator, **kw).value
    mag = pacbayes_sigma(sample.model, x, y, magnitude=True, generator=sample.generator, **kw).value
    out = {"pacbayes_sigma": sig, "pacbayes_mag_sigma": mag}
    out.update(pacbayes_bounds(trainable(sample.model), sig, mag, int(sample.x.shape[0])))
    return out


MEASURE = Measure(
    earlier_defaults={"draws": 10, "n": 1000},
    function=pacbayes_sigma,
    name="pacbayes", family="perturbation", settings=Settings, compute=compute,
    summary="PAC-Bayes flatness: the largest Gaussian weight noise (plain and magnitude-aware) that raises the "
            "training error by a target, and the bounds it gives",
    columns=(Column("pacbayes_flatness", doc="1 / sigma^2"), Column("pacbayes_mag_flatness", doc="1 / sigma_mag^2"),
             Column("pacbayes_sigma", role="diagnostic", of="pacbayes_flatness"),
             Column("pacbayes_mag_sigma", role="diagnostic", of="pacbayes_mag_flatness"),
             Column("pacbayes_orig", role="diagnostic", of="pacbayes_flatness", doc="Jiang et al.'s bound value"),
             Column("pacbayes_mag_orig", role="diagnostic", of="pacbayes_mag_flatness")),
    reparam={"pacbayes_flatness": "moves"})  # the magnitude-aware one stays only up to its eps: no verdict
