"""The regret of a minibatch step measured in the symmetrised-KL ball (the Fisher metric) instead of the
Euclidean ball: a reparametrisation-invariant form of gradient disagreement.

A step of KL-size eps along minibatch a's natural gradient, delta_a = eps F^-1 g_a / sqrt(g_a^T F^-1 g_a),
changes minibatch b's loss by -eps g_b^T F^-1 g_a / sqrt(g_a^T F^-1 g_a), while the best step of that size
for b gains eps sqrt(g_b^T F^-1 g_b). The regret per unit eps, averaged over ordered pairs (a != b) of
disjoint minibatches,

    regret_kl = mean_{a != b} [ sqrt(g_b^T F^-1 g_b) - g_b^T F^-1 g_a / sqrt(g_a^T F^-1 g_a) ],

replaces the Euclidean inner product of ``gradient_disagreement`` by the Fisher one. F is the Fisher
information of the loss on the union of the batches in its Gauss-Newton form F = J^T H_out J (J the
Jacobian of the outputs with respect to theta, H_out the Hessian of the mean loss with respect to the
outputs; the Fisher of the model's predictive distribution for MSE and cross-entropy). F^-1 g is
(F + lambda I)^-1 g by conjugate gradient (F-vector products by torch.func jvp/vjp, no matrix), lambda =
``damping`` (recorded with the value). Under theta -> A theta (A invertible, e.g. the ReLU rescaling), g ->
A^-T g and F -> A^-T F A^-1, so g^T F^-1 g is invariant when lambda -> 0.

Parameter-space conventions: :mod:`sharpcomp.measures.linalg.param_space`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, jvp, vjp

from sharpcomp.measures.declaration import Column, Measure, Result, setting
from sharpcomp.measures.linalg.param_space import Batch, LossFn, batch_gradients, preserved, to_device
from sharpcomp.measures.linalg.precision import exact_float32
from sharpcomp.measures.sample import Sample


def fisher_operator(model: nn.Module, loss_fn: LossFn, x: Tensor, y: Tensor) -> Callable[[Tensor], Tensor]:
    """v (flat) -> F v = J^T H_out J v (flat) for the mean loss on (x, y)."""
    names = [k for k, p in model.named_parameters() if p.requires_grad]
    params = {k: p.detach() for k, p in model.named_parameters() if p.requires_grad}
    frozen = {k: p.detach() for k, p in model.named_parameters() if not p.requires_grad}
    buffers = dict(model.named_buffers())

    def f(p: dict) -> Tensor:
        return functional_call(model, ({**p, **frozen}, buffers), (x,))

    out, vjp_fn = vjp(f, params)
    loss_grad = grad(lambda o: loss_fn(o, y))
    shapes = [params[k].shape for k in names]

    def matvec(v: Tensor) -> Tensor:
        parts, i = {}, 0
        for k, s in zip(names, shapes):
            n = params[k].numel()
            parts[k] = v[i:i + n].view(s).to(params[k].dtype)
            i += n
        jv = jvp(f, (params,), (parts,))[1]
        hjv = vjp(loss_grad, out)[1](jv)[0]  # H_out is symmetric: the vjp is H_out J v
        back = vjp_fn(hjv)[0]
        return torch.cat([back[k].reshape(-1) for k in names]).to(v.dtype)

    return matvec


def conjugate_gradient(matvec: Callable[[Tensor], Tensor], b: Tensor, damping: float, iterations: int,
                       tol: float = 1e-10) -> Tensor:
    """(A + damping I)^-1 b by conjugate gradient from 0 (stops at ||r|| <= tol ||b||)."""
    x = torch.zeros_like(b)
    r = b.clone()
    p = r.clone()
    rs = float(r @ r)
    stop = tol**2 * float(b @ b)
    for _ in range(int(iterations)):
        if rs <= stop:
            break
        ap = matvec(p) + damping * p
        alpha = rs / float(p @ ap)
        x += alpha * p
        r -= alpha * ap
        rs_new = float(r @ r)
        p = r + (rs_new / rs) * p
        rs = rs_new
    return x


@exact_float32()
def regret_kl(model: nn.Module, loss_fn: LossFn, batches: Sequence[Batch], damping: float = 1e-3,
              cg_iterations: int = 100) -> Result:
    """regret_kl; details ``damping`` (lambda) and ``gram`` (the M x M matrix g_a^T (F + lambda I)^-1 g_b).
    NaN for fewer than two batches; the model is left as it was."""
    if not damping >= 0:
        raise ValueError(f"damping must be >= 0, got {damping}")
    batches = list(batches)
    if len(batches) < 2:
        return Result(float("nan"), {"damping": float(damping), "gram": None})
    grads = batch_gradients(model, loss_fn, batches)
    with preserved(model):
        x = torch.cat([to_device(model, b[0]) for b in batches])
        y = torch.cat([to_device(model, b[1]) for b in batches])
        mv = fisher_operator(model, loss_fn, x, y)
        solved = torch.stack([conjugate_gradient(mv, g, float(damping), cg_iterations) for g in grads])
    gram = grads.double() @ solved.double().T
    gram = (gram + gram.T) / 2
    m = gram.shape[0]
    norms = gram.diagonal().clamp_min(0).sqrt()
    inv = torch.where(norms > 0, 1.0 / norms, torch.zeros_like(norms))
    term = norms[None, :] - gram * inv[:, None]
    off = ~torch.eye(m, dtype=torch.bool, device=term.device)
    return Result(float(term[off].mean()), {"damping": float(damping), "gram": gram})


# ---------------------------------------------------------------------------------------------------
# the declaration


@dataclass(frozen=True)
class Settings:
    """``metrics.flatness.regret_kl``."""

    batches: int = setting(4, above=0, doc="disjoint minibatches of the training set")
    batch_size: int = setting(20, above=0, doc="their size")
    damping: float = setting(1e-3, at_least=0, doc="lambda added to the Fisher")
    cg_iterations: int = setting(30, above=0, doc="conjugate-gradient iterations")


def compute(sample: Sample, s: Settings) -> dict[str, float]:
    """The Fisher-ball regret over ``s.batches`` minibatches, and the damping used."""
    r = regret_kl(sample.model, sample.loss_fn, sample.batches(s.batches, s.batch_size), s.damping, s.cg_iterations)
    return {"regret_kl": r.value, "regret_kl_damping": r.details["damping"]}


MEASURE = Measure(
    earlier_defaults={"batches": 8, "cg_iterations": 100},
    function=regret_kl,
    name="regret_kl", family="perturbation", settings=Settings, compute=compute,
    summary="regret in the symmetrised-KL (Fisher) ball over ordered pairs of minibatches",
    columns=(Column("regret_kl"), Column("regret_kl_damping", role="diagnostic", of="regret_kl")),
    reparam={"regret_kl": "stays"}, reparam_settings={"batches": 5, "damping": 1e-10, "cg_iterations": 500})
