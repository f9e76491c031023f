"""Worst-case (epsilon-) sharpness by normalised gradient ascent in a rho-ball.

Plain l2, adaptive (|theta|-scaled, Kwon et al. 2021) and restricted to the quotient by the rescaling
symmetry.

Parameter-space conventions: :mod:`sharpcomp.measures.linalg.param_space`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from sharpcomp.measures.declaration import Column, Measure, Result, setting
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
from sharpcomp.measures.sample import Sample
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
                         norm: str = "l2", restarts: int = 1, generator: torch.Generator | None = None) -> Result:
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

    The value is the mean increase over the batches; details: ``rel`` (mean_B increase / (1 + L_B(theta))),
    ``loss`` (mean_B L_B(theta)), ``per_batch`` (the increase per batch). Leaves the model as it was.
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
    return Result(mean(values), {"rel": mean(rels), "loss": mean(losses), "per_batch": values})


# ---------------------------------------------------------------------------------------------------
# the declaration (the adaptive and quotient variants declare themselves in their own modules)


def m_groups(batches: list[Batch], m: int | None) -> list[Batch]:
    """m-sharpness: each batch split into consecutive groups of m samples (the batches as they are for None)."""
    if m is None:
        return batches
    return [(x[i:i + int(m)], y[i:i + int(m)]) for x, y in batches for i in range(0, x.shape[0], int(m))]


def variant_columns(name: str) -> tuple[Column, ...]:
    """A worst-case measure's columns: its value and the value / (1 + L)."""
    return Column(name), Column(f"{name}_rel", role="diagnostic", of=name, doc="the increase / (1 + L)")


def compute_variant(sample: Sample, s, name: str, **kwargs) -> dict[str, float]:
    """A worst-case variant on the minibatches its settings name (the same for every variant of equal sizes).

    ``kwargs``: :func:`worst_case_sharpness`'s variant switches.
    """
    batches = sample.batches(s.batches, s.batch_size, share="worst_case")
    if getattr(s, "algorithm", "ascent") == "apgd":
        kwargs.update(algorithm="apgd", norm=s.norm, restarts=s.restarts, generator=sample.generator)
    r = worst_case_sharpness(sample.model, sample.loss_fn, m_groups(batches, getattr(s, "m", None)), s.rho, s.steps,
                             step_size=s.step_size, **kwargs)
    return {name: r.value, f"{name}_rel": r.details["rel"]}


def ascent_settings(radius: float, doc: str):
    """The settings dataclass of a worst-case variant: its default ``radius`` and the search's options."""

    @dataclass(frozen=True)
    class Settings:
        rho: float = setting(radius, at_least=0, doc=doc)
        steps: int = setting(5, above=0, doc="ascent steps (Auto-PGD: iterations)")
        batches: int = setting(4, above=0, doc="disjoint minibatches of the training set")
        batch_size: int = setting(128, above=0, doc="their size")
        step_size: float = setting(None, kind=float, above=0, doc="ascent step (null: rho)")
        algorithm: str = setting("ascent", choices=("ascent", "apgd"), doc="ascent (l2) or apgd (Auto-PGD)")
        norm: str = setting("l2", choices=("l2", "linf"), doc="the ball's norm (linf: apgd only)")
        restarts: int = setting(1, above=0, doc="Auto-PGD restarts")
        m: int = setting(None, kind=int, above=0, doc="m-sharpness: the max per group of m samples (null: off)")

    Settings.__qualname__ = "Settings"
    return Settings


def check_search(s) -> str | None:
    """The l-inf ball needs Auto-PGD."""
    return "norm linf needs algorithm apgd (the ascent is l2 only)" if s.algorithm == "ascent" and s.norm == "linf" \
        else None


Settings = ascent_settings(0.05, "radius of the l2 ball")

MEASURE = Measure(
    function=worst_case_sharpness,
    name="worst_case", family="perturbation", settings=Settings, check=check_search,
    compute=lambda sample, s: compute_variant(sample, s, "worst_case"),
    summary="l2 worst-case sharpness: max over ||delta|| <= rho of L(w + delta) - L(w), by ascent or Auto-PGD; "
            "m-sharpness",
    columns=variant_columns("worst_case"), column_aliases={"sharpness_worst": "worst_case",
                                                          "sharpness_worst_rel": "worst_case_rel"},
    reparam={"worst_case": "moves"}, reparam_settings={"batches": 1}, in_every_id=True)
