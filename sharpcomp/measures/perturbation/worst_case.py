"""Worst-case (epsilon-) sharpness by normalised gradient ascent in a rho-ball.

Plain l2, adaptive (|theta|-scaled, Kwon et al. 2021) and restricted to the quotient by the rescaling
symmetry.

Parameter-space conventions: :mod:`sharpcomp.measures.linalg.param_space`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import Tensor, nn

from sharpcomp.measures.linalg.apgd import apgd_increase
from sharpcomp.measures.linalg.param_space import (
    Batch,
    LossFn,
    loss_value_and_grad,
    norm,
    preserved,
    to_device,
    trainable,
)
from sharpcomp.measures.linalg.precision import exact_float32
from sharpcomp.measures.symmetry.orbits import QuotientProjector, quotient_projector


def _ascent(model: nn.Module, loss_fn: LossFn, x: Tensor, y: Tensor, rho: float, steps: int, step_size: float,
            scale: list[Tensor] | None, proj: QuotientProjector | None, params: list[nn.Parameter],
            theta: list[Tensor]) -> tuple[float, float, list[Tensor]]:
    """One batch: returns (L_B(theta), max_k L_B(theta + delta_k) - L_B(theta), best delta).

    The search variable eta lives in the ball ||eta|| <= rho; delta = eta (l2), or delta = |w| * eta
    (adaptive, ``scale`` = |w|). eta_0 = 0; u = grad_eta L_B(theta + delta_k) (projected by P in the
    quotient case); eta_{k+1} = Proj_ball(P(eta_k + step_size u / ||u||)).
    """
    eta = [torch.zeros_like(t) for t in theta]
    best, best_delta, loss0 = 0.0, [torch.zeros_like(t) for t in theta], None
    for k in range(steps + 1):
        delta = eta if scale is None else [s * e for s, e in zip(scale, eta)]
        with torch.no_grad():
            for p, t, d in zip(params, theta, delta):
                p.copy_(t + d)
        loss, g = loss_value_and_grad(model, loss_fn, x, y, params, grad=k < steps)
        if loss0 is None:
            loss0 = loss
        elif loss - loss0 > best:
            best, best_delta = loss - loss0, [d.clone() for d in delta]
        if k == steps:
            break
        u = list(g) if scale is None else [s * gi for s, gi in zip(scale, g)]
        if proj is not None:
            u = proj(u)
        un = float(norm(u))
        if not un > 0 or not math.isfinite(un):
            break
        eta = [e + (step_size / un) * ui for e, ui in zip(eta, u)]
        if proj is not None:
            eta = proj(eta)
        en = float(norm(eta))
        if en > rho:
            eta = [e * (rho / en) for e in eta]
    with torch.no_grad():
        for p, t in zip(params, theta):
            p.copy_(t)
    return loss0, best, best_delta


@exact_float32()
def worst_case_sharpness(model: nn.Module, loss_fn: LossFn, batches: Iterable[Batch], rho: float,
                         steps: int = 5, adaptive: bool = False, quotient: bool = False,
                         step_size: float | None = None, ridge: float = 1e-10, algorithm: str = "ascent",
                         norm: str = "l2", restarts: int = 1, generator: torch.Generator | None = None) -> dict:
    """Worst-case sharpness max_{||delta|| <= rho} L_B(theta + delta) - L_B(theta), averaged over batches.

    Estimated per batch by ``steps`` steps of normalised projected gradient ascent from delta = 0 (step
    ``step_size``, default rho, so the first iterate is the first-order maximiser rho g / ||g||); the
    value is the best increase seen, max_k L_B(theta + delta_k) - L_B(theta) >= 0, a lower bound on the
    true maximum.

    - ``adaptive``: delta = |w| * eta elementwise with ||eta|| <= rho (the scale-aware measure of Kwon
      et al. 2021 / Andriushchenko et al. 2023); gradients w.r.t. eta are |w| * g.
    - ``quotient``: the ascent is restricted to the orthogonal complement of the symmetry orbits at
      theta: u = P grad L_B(theta + delta_k), delta_{k+1} = P(delta_k + step u / ||u||), rescaled into
      the ball. Not combined with ``adaptive``.

    - ``algorithm="apgd"``: Auto-PGD (:mod:`sharpcomp.measures.linalg.apgd`) in the l2 or l-inf (``norm``) ball,
      best of ``restarts`` runs (random starts from ``generator`` after the first); ``steps`` iterations.
      ``algorithm="ascent"`` (the default) is the normalised ascent above, l2 only.

    Returns {"value": mean_B increase, "rel": mean_B increase / (1 + L_B(theta)), "loss": mean_B
    L_B(theta), "per_batch": [increase per batch]}. Leaves the model as it was.
    """
    if not rho > 0:
        raise ValueError(f"rho must be > 0, got {rho}")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if adaptive and quotient:
        raise ValueError("adaptive and quotient worst-case sharpness are not combined")
    if algorithm not in ("ascent", "apgd"):
        raise ValueError(f"algorithm must be 'ascent' or 'apgd', got {algorithm!r}")
    if algorithm == "ascent" and norm != "l2":
        raise ValueError("the normalised ascent is l2 only; use algorithm='apgd' for norm='linf'")
    if quotient and algorithm != "ascent":
        raise ValueError("quotient worst-case sharpness uses the normalised ascent")
    step = float(rho if step_size is None else step_size)
    values, rels, losses = [], [], []
    with preserved(model):
        params = trainable(model)
        theta = [p.detach().clone() for p in params]
        scale = [t.abs() for t in theta] if adaptive else None
        proj = quotient_projector(model, ridge) if quotient else None
        for x, y in batches:
            x, y = to_device(model, x), to_device(model, y)
            if algorithm == "apgd":
                l0, inc, _ = apgd_increase(model, loss_fn, x, y, params, theta, scale, float(rho), int(steps),
                                           norm, int(restarts), generator)
            else:
                l0, inc, _ = _ascent(model, loss_fn, x, y, float(rho), int(steps), step, scale, proj, params,
                                     theta)
            values.append(inc)
            rels.append(inc / (1.0 + l0))
            losses.append(l0)
    if not values:
        raise ValueError("worst_case_sharpness needs at least one batch")
    mean = lambda v: float(sum(v) / len(v))  # noqa: E731
    return {"value": mean(values), "rel": mean(rels), "loss": mean(losses), "per_batch": values}
