"""Loss landscapes (Li et al. 2018, "Visualizing the loss landscape of neural nets"): the loss and the
accuracy on a grid of points theta + a d_1 + b d_2 around trained weights, and along the line between two
trained networks.

Filter-normalised directions: d is drawn N(0, I) in the shape of theta; for every parameter with more than
one dimension, each filter (each slice d[i] along the output dimension: a row of a Linear weight, an output
channel of a convolution) is rescaled to the norm of the same filter of theta, d[i] <- d[i] ||theta[i]|| /
||d[i]||. Parameters with one dimension or fewer (biases, BatchNorm weights and biases) get d = 0, as Li et
al.'s default ("biasbn" ignored); BatchNorm running statistics (buffers) stay those of the trained network.

Interpolation: theta(t) = (1 - t) theta_A + t theta_B for every parameter (biases and BatchNorm parameters
included) and every floating-point buffer.

Evaluation: the points are evaluated in chunks of ``chunk`` points at once, with torch.func
(``functional_call`` of the model under ``vmap`` over stacked weights), over the data in batches of
``batch_size`` samples; the loss is the sample-weighted mean of ``loss_fn`` over the batches (exact for a
loss that is a mean over samples), the accuracy the fraction of argmax(outputs) == label.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.func import functional_call, vmap

from sharpcomp.measures.linalg.param_space import LossFn
from sharpcomp.measures.linalg.precision import exact_float32


def parameters(model: nn.Module) -> dict[str, Tensor]:
    return {k: p.detach().clone() for k, p in model.named_parameters()}


def filter_normalized_direction(params: dict[str, Tensor], generator: torch.Generator | None) -> dict[str, Tensor]:
    """One filter-normalised random direction (module docstring), drawn from ``generator``."""
    out = {}
    for name, p in params.items():
        dev = generator.device if generator is not None else p.device
        d = torch.randn(p.shape, generator=generator, device=dev, dtype=p.dtype).to(p.device)
        if p.dim() <= 1:
            out[name] = torch.zeros_like(p)
            continue
        dn = d.reshape(d.shape[0], -1).norm(dim=1).clamp_min(1e-12)
        pn = p.reshape(p.shape[0], -1).norm(dim=1)
        out[name] = d * (pn / dn).view(-1, *([1] * (p.dim() - 1)))
    return out


def _stack(base: dict[str, Tensor], directions: Sequence[dict[str, Tensor]], c: Tensor) -> dict[str, Tensor]:
    """base + sum_j c[k, j] directions[j] for every row k, stacked along a new first dimension."""
    out = {}
    for name, b in base.items():
        val = b.unsqueeze(0).expand(c.shape[0], *b.shape).clone()
        for j, d in enumerate(directions):
            val = val + c[:, j].to(device=b.device, dtype=b.dtype).view(-1, *([1] * b.dim())) * d[name].unsqueeze(0)
        out[name] = val
    return out


@exact_float32()
def evaluate_points(model: nn.Module, loss_fn: LossFn, x: Tensor, y: Tensor, base: dict[str, Tensor],
                    directions: Sequence[dict[str, Tensor]], coefficients: Tensor, chunk: int = 32,
                    batch_size: int = 500, buffers: Sequence[dict[str, Tensor]] | None = None) -> tuple[Tensor, Tensor]:
    """Loss and accuracy at base + sum_j c[k, j] directions[j] for each row c[k] of ``coefficients`` (K x J).

    ``buffers``: (base, direction) for interpolation (a floating buffer is base + c[k, 0] direction), else
    the model's own buffers. Returns two float64 tensors of length K. The model is not modified.
    """
    def one(p: dict, bf: dict, xb: Tensor, yb: Tensor) -> tuple[Tensor, Tensor]:
        out = functional_call(model, (p, bf), (xb,))
        return loss_fn(out, yb), (out.argmax(-1) == yb).to(out.dtype).mean()

    was = model.training
    model.eval()
    coefficients = coefficients.to(torch.float64)
    loss = torch.zeros(coefficients.shape[0], dtype=torch.float64)
    acc = torch.zeros_like(loss)
    n, step = x.shape[0], max(1, int(chunk))
    try:
        with torch.no_grad():
            for start in range(0, coefficients.shape[0], step):
                c = coefficients[start:start + step]
                stacked = _stack(base, directions, c)
                if buffers is None:
                    bufs, dims = dict(model.named_buffers()), None
                else:
                    b0, bd = buffers
                    bufs = {k: (_stack({k: v}, [{k: bd[k]}], c)[k] if v.is_floating_point()
                                else v.unsqueeze(0).expand(c.shape[0], *v.shape)) for k, v in b0.items()}
                    dims = 0
                fn = vmap(one, in_dims=(0, dims, None, None))
                for s in range(0, n, int(batch_size)):
                    xb, yb = x[s:s + batch_size], y[s:s + batch_size]
                    lb, ab = fn(stacked, bufs, xb, yb)
                    loss[start:start + c.shape[0]] += (xb.shape[0] / n) * lb.double().cpu()
                    acc[start:start + c.shape[0]] += (xb.shape[0] / n) * ab.double().cpu()
    finally:
        model.train(was)
    return loss, acc


def surface_2d(model: nn.Module, loss_fn: LossFn, x: Tensor, y: Tensor, points: int = 41, span: float = 1.0,
               generator: torch.Generator | None = None, chunk: int = 32, batch_size: int = 500) -> dict:
    """Loss and accuracy on the points x points grid [-span, span]^2 of two filter-normalised directions:
    {"a": (points,), "b": (points,), "loss": (points, points) [i, j] at (a_i, b_j), "acc": same}."""
    base = parameters(model)
    d1 = filter_normalized_direction(base, generator)
    d2 = filter_normalized_direction(base, generator)
    a = torch.linspace(-span, span, points, dtype=torch.float64)
    ga, gb = torch.meshgrid(a, a, indexing="ij")
    coef = torch.stack([ga.reshape(-1), gb.reshape(-1)], 1)
    loss, acc = evaluate_points(model, loss_fn, x, y, base, [d1, d2], coef, chunk, batch_size)
    return {"a": a, "b": a.clone(), "loss": loss.view(points, points), "acc": acc.view(points, points)}


def line_1d(model: nn.Module, loss_fn: LossFn, x: Tensor, y: Tensor, points: int = 41, span: float = 1.0,
            generator: torch.Generator | None = None, chunk: int = 32, batch_size: int = 500) -> dict:
    """Loss and accuracy along one filter-normalised direction, a in [-span, span]."""
    base = parameters(model)
    d1 = filter_normalized_direction(base, generator)
    a = torch.linspace(-span, span, points, dtype=torch.float64)
    loss, acc = evaluate_points(model, loss_fn, x, y, base, [d1], a[:, None], chunk, batch_size)
    return {"a": a, "loss": loss, "acc": acc}


def interpolation(model_a: nn.Module, model_b: nn.Module, loss_fn: LossFn, x: Tensor, y: Tensor,
                  points: int = 41, lo: float = -0.5, hi: float = 1.5, chunk: int = 32,
                  batch_size: int = 500) -> dict:
    """Loss and accuracy at (1 - t) theta_A + t theta_B (parameters and floating buffers), t in [lo, hi]."""
    pa, pb = parameters(model_a), parameters(model_b)
    if set(pa) != set(pb) or any(pa[k].shape != pb[k].shape for k in pa):
        raise ValueError("the two networks do not have the same parameters")
    ba, bb = dict(model_a.named_buffers()), dict(model_b.named_buffers())
    bd = {k: (bb[k] - ba[k]) if ba[k].is_floating_point() else None for k in ba}
    t = torch.linspace(lo, hi, points, dtype=torch.float64)
    d = {k: pb[k] - pa[k] for k in pa}
    loss, acc = evaluate_points(model_a, loss_fn, x, y, pa, [d], t[:, None], chunk, batch_size,
                                buffers=(ba, bd) if ba else None)
    return {"t": t, "loss": loss, "acc": acc}


def loop_reference(model: nn.Module, loss_fn: LossFn, x: Tensor, y: Tensor, base: dict[str, Tensor],
                   directions: Sequence[dict[str, Tensor]], coefficients: Tensor) -> tuple[Tensor, Tensor]:
    """The same values by one plain forward pass per point (copying the weights in): the baseline of the
    benchmark and the reference of the tests."""
    params = dict(model.named_parameters())
    saved = {k: p.detach().clone() for k, p in params.items()}
    was = model.training
    model.eval()
    loss = torch.zeros(coefficients.shape[0], dtype=torch.float64)
    acc = torch.zeros_like(loss)
    try:
        with torch.no_grad():
            for i, c in enumerate(coefficients.tolist()):
                for k, p in params.items():
                    p.copy_(base[k] + sum(cj * d[k] for cj, d in zip(c, directions)))
                out = model(x)
                loss[i] = float(loss_fn(out, y))
                acc[i] = float((out.argmax(-1) == y).double().mean())
    finally:
        with torch.no_grad():
            for k, p in params.items():
                p.copy_(saved[k])
        model.train(was)
    return loss, acc
