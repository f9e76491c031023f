"""Sharpness-aware minimisation (SAM, Foret et al. 2021) and its adaptive variant (ASAM, Kwon et al. 2021).

One step at theta with learning rate lr and radius rho:

    g     = grad L_B(theta)                       (first closure call; its loss is returned)
    e     = rho g / ||g||                         (SAM)
          = rho T^2 g / ||T g||,  T = |theta|     (adaptive: elementwise |w|^2 scaling, as in ASAM)
    g_sam = grad L_B(theta + e)                   (second closure call, same batch)
    theta <- theta - lr g_sam                     (plain SGD: no momentum, no weight decay)

Norms run over every parameter of every group; ||g|| = 0 gives e = 0 (guarded by 1e-12). After the
step, ``p.grad`` holds g_sam. The closure follows ``torch.optim.SGD.step(closure)``'s contract: it
zeroes the gradients, computes the loss, calls ``backward()`` and returns the loss.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch

__all__ = ["SAM"]

_EPS = 1e-12


class SAM(torch.optim.Optimizer):
    """SAM / adaptive SAM with a plain SGD base step. ``opt.step(closure)`` returns the loss at theta."""

    def __init__(self, params: Iterable, lr: float, rho: float = 0.05, adaptive: bool = False):
        if not lr > 0:
            raise ValueError(f"learning rate must be > 0, got {lr}")
        if not rho >= 0:
            raise ValueError(f"rho must be >= 0, got {rho}")
        super().__init__(params, {"lr": float(lr), "rho": float(rho), "adaptive": bool(adaptive)})

    def _grad_norm(self) -> torch.Tensor:
        norms = []
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad.detach()
                if group["adaptive"]:
                    g = p.detach().abs() * g
                norms.append(g.norm(2))
        if not norms:
            return torch.tensor(0.0)
        dev = norms[0].device
        return torch.stack([n.to(dev) for n in norms]).norm(2)

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> torch.Tensor:  # type: ignore[override]
        if closure is None:
            raise RuntimeError("SAM.step needs a closure (zero grads, compute the loss, backward, return it)")
        with torch.enable_grad():
            loss = closure()
        norm = float(self._grad_norm())
        saved: list[tuple[torch.Tensor, torch.Tensor]] = []
        for group in self.param_groups:
            scale = group["rho"] / (norm + _EPS)
            for p in group["params"]:
                if p.grad is None:
                    continue
                e = p.grad.detach() * scale
                if group["adaptive"]:
                    e = e * p.detach().pow(2)
                saved.append((p, p.detach().clone()))
                p.add_(e)
        with torch.enable_grad():
            closure()
        for p, theta in saved:
            p.copy_(theta)
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    p.add_(p.grad, alpha=-group["lr"])
        return loss
