"""Contrastive flatness: how much sharper each minibatch's loss is than the full loss.

With disjoint minibatches B_1..B_M and the full loss L on their union,

    contrastive = (1/M) sum_b  phi(H_{B_b}) / phi(H),     phi = lambda_max (default) or Tr,

H_B the Hessian of the minibatch loss L_B, H that of L (the ratio proposed as a reparametrisation-robust
flatness indicator in the essay "The Generalization Mystery: Sharp vs Flat Minima"). lambda_max is the
largest (algebraic) eigenvalue, by Lanczos (scipy's eigsh) on Hessian-vector products in float64.
With phi = Tr and equal-size batches, sum_b H_{B_b} = M H, so (1/M) sum_b Tr H_B / Tr H = 1 exactly:
the trace version is reported only as a check (Hutchinson estimates with the same probes for every
batch and the full loss, whose ratio is then exactly 1 up to round-off).

Parameter-space conventions: :mod:`sharpcomp.measures.linalg.param_space`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from scipy.sparse.linalg import LinearOperator, eigsh
from torch import Tensor, nn

from sharpcomp.measures.declaration import Column, Measure, Result, setting
from sharpcomp.measures.linalg.hutchinson import hutchinson
from sharpcomp.measures.linalg.param_space import Batch, LossFn, flat, preserved, to_device, trainable
from sharpcomp.measures.linalg.precision import exact_float32
from sharpcomp.measures.sample import Sample

KINDS = ("lambda_max", "trace")


def hessian_operator(model: nn.Module, loss_fn: LossFn, x: Tensor, y: Tensor, params: list[nn.Parameter]):
    """v (flat float64 numpy) -> H v (flat float64 numpy) for the loss on (x, y)."""
    grads = torch.autograd.grad(loss_fn(model(x), y), params, create_graph=True)
    shapes = [p.shape for p in params]

    def matvec(v: np.ndarray) -> np.ndarray:
        t = torch.as_tensor(np.asarray(v).reshape(-1), dtype=params[0].dtype, device=params[0].device)
        parts, i = [], 0
        for s in shapes:
            k = int(np.prod(s))
            parts.append(t[i:i + k].view(s))
            i += k
        hv = torch.autograd.grad(grads, params, parts, retain_graph=True, allow_unused=True)
        hv = [torch.zeros_like(p) if h is None else h for h, p in zip(hv, params)]
        return flat(hv).detach().double().cpu().numpy()

    return matvec


def lambda_max(model: nn.Module, loss_fn: LossFn, x: Tensor, y: Tensor, tol: float = 1e-6,
               seed: int = 0) -> float:
    """Largest eigenvalue of the Hessian of the loss on (x, y) (Lanczos, start vector from ``seed``)."""
    params = trainable(model)
    n = sum(p.numel() for p in params)
    mv = hessian_operator(model, loss_fn, x, y, params)
    if n <= 2:
        dense = np.stack([mv(e) for e in np.eye(n)], 1)
        return float(np.linalg.eigvalsh((dense + dense.T) / 2).max())
    v0 = np.random.default_rng(seed).standard_normal(n)
    op = LinearOperator((n, n), matvec=mv, dtype=np.float64)
    return float(eigsh(op, k=1, which="LA", tol=tol, v0=v0, return_eigenvectors=False)[0])


@exact_float32()
def contrastive_flatness(model: nn.Module, loss_fn: LossFn, batches: Sequence[Batch], kind: str = "lambda_max",
                         probes: int = 20, generator: torch.Generator | None = None, tol: float = 1e-6) -> Result:
    """The mean ratio; details ``full`` (phi(H)) and ``per_batch`` ([phi(H_B)]). ``tol``: the relative accuracy
    of each lambda_max (scipy's eigsh). The model is left as it was."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    if not batches:
        raise ValueError("contrastive_flatness needs at least one batch")
    seed = int(torch.randint(0, 2**62, (1,), generator=generator).item())
    with preserved(model):
        params = trainable(model)
        data = [(to_device(model, x), to_device(model, y)) for x, y in batches]
        x_all, y_all = torch.cat([d[0] for d in data]), torch.cat([d[1] for d in data])

        def phi(x: Tensor, y: Tensor) -> float:
            if kind == "lambda_max":
                return lambda_max(model, loss_fn, x, y, tol=tol, seed=seed % 2**32)
            g = torch.autograd.grad(loss_fn(model(x), y), params, create_graph=True)
            values, _ = hutchinson(g, params, probes, torch.Generator().manual_seed(seed))
            return float(values.mean())

        full = phi(x_all, y_all)
        per = [phi(x, y) for x, y in data]
    return Result(float(np.mean(per)) / full if full != 0 else float("nan"), {"full": full, "per_batch": per})


# ---------------------------------------------------------------------------------------------------
# the declaration


@dataclass(frozen=True)
class Settings:
    """``metrics.flatness.contrastive``."""

    kind: str = setting("lambda_max", choices=KINDS, doc="phi: lambda_max or trace (Hutchinson)")
    batches: int = setting(2, above=0, doc="disjoint minibatches of the training set")
    batch_size: int = setting(64, above=0, doc="their size")
    probes: int = setting(20, above=0, doc="Hutchinson probes (kind trace)")
    tol: float = setting(1e-3, above=0, doc="relative accuracy of each lambda_max (kind lambda_max)")


def compute(sample: Sample, s: Settings) -> dict[str, float]:
    """The contrastive ratio over ``s.batches`` minibatches, and phi of the whole loss."""
    batches = sample.batches(s.batches, s.batch_size)
    r = contrastive_flatness(sample.model, sample.loss_fn, batches, s.kind, s.probes, sample.generator, tol=s.tol)
    return {"contrastive": r.value, "contrastive_full": r.details["full"]}


MEASURE = Measure(
    earlier_defaults={"batches": 4, "tol": 1e-6},
    function=contrastive_flatness,
    name="contrastive", family="curvature", settings=Settings, compute=compute,
    summary="contrastive flatness: mean over minibatches of phi(H_B) / phi(H) (phi: lambda_max or trace)",
    columns=(Column("contrastive"), Column("contrastive_full", role="diagnostic", of="contrastive")),
    reparam={"contrastive": "moves"}, reparam_settings={"batches": 5})
