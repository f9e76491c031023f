"""Worst-case sharpness by Auto-PGD (Croce & Hein 2020), in l2 and l-infinity balls, plain or scaled.

The problem, per batch B:

    max_{||eta||_p <= rho}  L_B(theta + s * eta) - L_B(theta),     p in {2, inf},

with s = 1 (plain), s = |theta| (adaptive, Kwon et al. 2021; the sharpness of Andriushchenko et al. 2023)
or s = |theta| + 1 (Keskar et al. 2017's box, :mod:`sharpcomp.measures.perturbation.keskar`), elementwise.

Auto-PGD, as Croce & Hein's Algorithm 1 and Andriushchenko et al.'s ``eval_APGD_sharpness``: step size
eta_0 = 2 rho; u = grad_eta L_B (= s * grad L_B); the ascent direction is u / ||u|| (l2) or sign(u)
(l-inf); with P the projection onto the ball,

    z_{k+1} = P(eta_k + step * dir_k),
    eta_{k+1} = P(eta_k + a (z_{k+1} - eta_k) + (1 - a)(eta_k - eta_{k-1})),   a = 0.75 (eta_1 = z_1),

and at the checkpoints w_j = ceil(p_j N) (p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03,
0.06)) the step is halved, and the iterate reset to the best point so far, when fewer than 75% of the
steps since the last checkpoint raised the best loss or when neither the step nor the best loss changed
since then. The first restart starts at eta = 0, the others at a random point of the ball (drawn from
``generator``). The value is the best increase seen over all iterates and restarts (a lower bound on the
maximum, >= 0).

Parameter-space conventions: :mod:`sharpcomp.measures.linalg.param_space`.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from sharpcomp.measures.linalg.param_space import LossFn, loss_and_grad, loss_value_and_grad, norm

NORMS = ("l2", "linf")


def checkpoints(steps: int) -> list[int]:
    """Auto-PGD's checkpoint iterations w_j = ceil(p_j N), j >= 1, below N."""
    p, w = [0.0, 0.22], [0, math.ceil(0.22 * steps)]
    while w[-1] < steps and w[-1] != w[-2]:
        p.append(p[-1] + max(p[-1] - p[-2] - 0.03, 0.06))
        w.append(math.ceil(p[-1] * steps))
    return sorted({c for c in w[1:] if c < steps})


def project(eta: list[Tensor], rho: float, p: str) -> list[Tensor]:
    """Euclidean projection onto {||eta||_p <= rho}."""
    if p == "linf":
        return [e.clamp(-rho, rho) for e in eta]
    n = float(norm(eta))
    return eta if n <= rho else [e * (rho / n) for e in eta]


def random_point(theta: list[Tensor], rho: float, p: str, generator: torch.Generator | None) -> list[Tensor]:
    """A random start in the ball: uniform in the l-inf box, a Gaussian direction at radius rho U^(1/d)."""
    dev = generator.device if generator is not None else theta[0].device
    if p == "linf":
        return [((torch.rand(t.shape, generator=generator, device=dev, dtype=t.dtype) * 2 - 1) * rho).to(t.device)
                for t in theta]
    z = [torch.randn(t.shape, generator=generator, device=dev, dtype=t.dtype).to(t.device) for t in theta]
    d = sum(t.numel() for t in theta)
    r = rho * float(torch.rand((), generator=generator, device=dev)) ** (1.0 / d)
    n = float(norm(z))
    return [e * (r / n) for e in z]


def _set(params: list[nn.Parameter], theta: list[Tensor], scale: list[Tensor] | None, eta: list[Tensor]) -> None:
    with torch.no_grad():
        for i, (p, t) in enumerate(zip(params, theta)):
            p.copy_(t + (eta[i] if scale is None else scale[i] * eta[i]))


def _direction(u: list[Tensor], p: str) -> list[Tensor] | None:
    if p == "linf":
        return [x.sign() for x in u]
    n = float(norm(u))
    if not n > 0 or not math.isfinite(n):
        return None
    return [x / n for x in u]


def apgd_run(model: nn.Module, loss_fn: LossFn, x: Tensor, y: Tensor, params: list[nn.Parameter],
             theta: list[Tensor], scale: list[Tensor] | None, rho: float, steps: int, p: str,
             start: list[Tensor], loss0: float, momentum: float = 0.75) -> tuple[float, list[Tensor]]:
    """One Auto-PGD run from ``start``: (best L_B(theta + s eta) - loss0 over the iterates, best eta)."""
    marks = set(checkpoints(steps))
    eta, prev = [e.clone() for e in start], None
    step, best, best_eta = 2.0 * rho, -math.inf, [e.clone() for e in start]
    last_mark, last_step, last_best, updates = 0, step, -math.inf, 0
    for k in range(steps + 1):
        _set(params, theta, scale, eta)
        loss, g = loss_value_and_grad(model, loss_fn, x, y, params, grad=k < steps)
        if loss > best:
            updates += best > -math.inf
            best, best_eta = loss, [e.clone() for e in eta]
        if k == steps:
            break
        if k in marks:
            halve = updates < 0.75 * (k - last_mark) or (last_step == step and last_best == best)
            last_mark, last_step, last_best, updates = k, step, best, 0
            if halve:
                step /= 2
                eta, prev = [e.clone() for e in best_eta], None
                _set(params, theta, scale, eta)
                loss_t, g = loss_and_grad(model, loss_fn, x, y, params)
        u = list(g) if scale is None else [s * gi for s, gi in zip(scale, g)]
        d = _direction(u, p)
        if d is None:
            break
        z = project([e + step * di for e, di in zip(eta, d)], rho, p)
        if prev is None:
            new = z
        else:
            new = project([e + momentum * (zi - e) + (1 - momentum) * (e - q) for e, zi, q in zip(eta, z, prev)],
                          rho, p)
        prev, eta = eta, new
    _set(params, theta, None, [torch.zeros_like(t) for t in theta])
    return best - loss0, best_eta


def apgd_increase(model: nn.Module, loss_fn: LossFn, x: Tensor, y: Tensor, params: list[nn.Parameter],
                  theta: list[Tensor], scale: list[Tensor] | None, rho: float, steps: int, p: str = "l2",
                  restarts: int = 1, generator: torch.Generator | None = None) -> tuple[float, float, list[Tensor]]:
    """One batch: (L_B(theta), the best increase over ``restarts`` Auto-PGD runs (>= 0), best delta)."""
    if p not in NORMS:
        raise ValueError(f"norm must be one of {', '.join(NORMS)}, got {p!r}")
    if not rho > 0 or steps < 1 or restarts < 1:
        raise ValueError("Auto-PGD needs rho > 0, steps >= 1 and restarts >= 1")
    _set(params, theta, None, [torch.zeros_like(t) for t in theta])
    with torch.no_grad():
        loss0 = float(loss_fn(model(x), y))
    best, best_eta = 0.0, [torch.zeros_like(t) for t in theta]
    for r in range(restarts):
        start = [torch.zeros_like(t) for t in theta] if r == 0 else random_point(theta, rho, p, generator)
        inc, eta = apgd_run(model, loss_fn, x, y, params, theta, scale, rho, steps, p, start, loss0)
        if inc > best:
            best, best_eta = inc, eta
    delta = best_eta if scale is None else [s * e for s, e in zip(scale, best_eta)]
    return loss0, best, delta
