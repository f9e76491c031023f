r"""The metrics of k networks of one architecture at once: an ensemble's checkpoint.

``compute_metrics_stacked(models, inputs)`` equals ``[compute_metrics(m, x) for m, x in zip(models,
inputs)]`` (float round-off aside; the tests compare them) but runs the k members as one network.

Index conventions as in :mod:`sharpcomp.measures.study.metrics` (``i`` sample, ``k`` output of f, ``m`` input
entry), plus ``j`` member (``K`` of them) and ``v`` cotangent.

How. The members' parameters are stacked and run by :func:`sharpcomp.measures.study._stacked_ops.stacked_forward`:
convolutions as one convolution with ``groups = K`` on activations laid out (n, K * C, H, W), linear
layers as one batched matrix product on (K, n, features). Member j sees its own sample set x^{(j)}
(inputs (K, n, ...), requiring gradients). No operation mixes members, so the cotangent that puts
``e_k`` on output k of *every* member gives, in one backward pass,

* ``d f^{(j)}_k(x^{(j)}_i) / d x^{(j)}_i``: row k of every member's J_i (the gradient w.r.t. x);
* the gradient of ``f^{(j)}_k`` w.r.t. member j's block of every layer output, from which the rules of
  :mod:`sharpcomp.measures.study._layer_rules` form per-sample squared parameter-gradient norms, kept per group
  (= member) instead of summed: ``S^{(j)}_i = sum_k sum_layers ||d f^{(j)}_k(x_i) / d theta_layer^{(j)}||^2``.

So a checkpoint costs one forward and N backward passes of the stacked network instead of K forwards
and K N backward passes of small ones. The spectral metrics and the bounds then use the same code
as ``compute_metrics`` on the (K n, N, M) Jacobians.

Members may have sample sets of different sizes n_j (e.g. misclassified samples): each is padded to
max n_j by repeating its own samples; samples are independent (eval mode), so the padded rows are
simply dropped.

Scope: ``nn.Sequential`` networks of Conv2d / Linear / ReLU / MaxPool2d / Flatten (vgg10, mlp4), all
parameters trainable, ``layer`` a child name. Anything else is computed member by member with
``compute_metrics`` (same results, no speed-up).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor, nn

from sharpcomp.measures.linalg.precision import exact_float32
from sharpcomp.measures.study._layer_rules import PositionsRule, conv_patches
from sharpcomp.measures.study._spectra import spectral_values
from sharpcomp.measures.study._stacked_ops import make_plan, stacked_forward
from sharpcomp.measures.study.metrics import METRIC_NAMES, bounds, compute_metrics, conv_first_reason
from sharpcomp.models import samples_per_chunk


def stacked_supported(models: Sequence[nn.Module], layer: str | None = None,
                      inputs: Tensor | None = None) -> str | None:
    """None when :func:`compute_metrics_stacked` vectorises these models (on samples shaped like
    ``inputs``, when given), else why it does not."""
    plan = make_plan(models[0], reorder=False)
    if plan is None:
        return "not an nn.Sequential of Conv2d / Linear / ReLU / MaxPool2d / Flatten"
    shapes = [[(n, p.shape) for n, p in m.named_parameters()] for m in models]
    if any(s != shapes[0] for s in shapes[1:]) or any(type(a) is not type(b) for m in models[1:]
                                                       for a, b in zip(m.children(), models[0].children())):
        return "the members do not share one architecture"
    if not all(p.requires_grad for m in models for p in m.parameters()):
        return "some parameters are frozen"
    names = [name for _, name, _ in plan]
    if layer not in (None, "") and layer not in names:
        return f"layer {layer!r} is not a child of the Sequential"
    upto = plan if layer in (None, "") else plan[:names.index(layer) + 1]
    first = next((i for i, (kind, _, _) in enumerate(upto) if kind in ("conv", "linear")), None)
    if first is None:
        return "the representation does not depend on any parametrised layer"
    # a Linear first layer must see the raw flattened sample (Eq. 28): only Flatten before it, or 1-d samples
    before = [kind for kind, _, _ in plan[:first]]
    if plan[first][0] == "linear" and inputs is not None and not (
            all(kind == "flatten" for kind in before) and (before or inputs.dim() == 2)):
        return "a Linear first layer that does not act on the raw flattened input"
    return None


@exact_float32()
def compute_metrics_stacked(models: Sequence[nn.Module], inputs: Sequence[Tensor], *, layer: str | None = None,
                            log_volume_rank: int | None = None, dtype: torch.dtype = torch.float32,
                            chunk_size: int | None = None, per_sample: bool = False) -> list[dict]:
    """``compute_metrics(models[j], inputs[j], ...)`` for every j, as one computation.

    Args:
        models: K networks of one architecture (eval mode); left untouched.
        inputs: K sample sets, (n_j, ...) each, n_j >= 1.
        layer, log_volume_rank, dtype, per_sample: as in ``compute_metrics``.
        chunk_size: at most this many samples per member per forward pass; results do not depend on
            it. Default: from the size of the stacked activations (``models.samples_per_chunk``).

    Returns:
        one ``compute_metrics`` dict per member.
    """
    if len(models) != len(inputs) or not models:
        raise ValueError(f"need one sample set per model, got {len(models)} models and {len(inputs)} sets")
    if any(len(x) == 0 for x in inputs):
        raise ValueError("compute_metrics needs at least one sample")
    if log_volume_rank is not None and log_volume_rank < 1:
        raise ValueError(f"log_volume_rank must be >= 1, got {log_volume_rank}")
    opts = dict(layer=layer, log_volume_rank=log_volume_rank, dtype=dtype, chunk_size=chunk_size,
                per_sample=per_sample)
    if len(models) == 1 or stacked_supported(models, layer, inputs[0]) is not None:
        return [compute_metrics(m, x, **opts) for m, x in zip(models, inputs)]

    plan = make_plan(models[0], reorder=not _stops_at_relu_or_pool(models[0], layer))
    first_kind, first_name = next((kind, name) for kind, name, _ in plan if kind in ("conv", "linear"))
    reason = conv_first_reason(first_name) if first_kind == "conv" else None
    device = next(models[0].parameters()).device
    params = {name: torch.stack([dict(m.named_parameters())[name].detach() for m in models]).to(dtype)
              for name, _ in models[0].named_parameters()}
    sizes = [len(x) for x in inputs]
    n = max(sizes)
    # (K, n, ...): member j's samples, padded by repeating them
    x = torch.stack([xj.detach().to(device=device, dtype=dtype)[torch.arange(n) % len(xj)] for xj in inputs])
    if chunk_size is None:
        step = samples_per_chunk(models[0], x[0, :1].to(next(models[0].parameters()).dtype), len(models))
    else:
        step = int(chunk_size)
    if step < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    modules = dict(models[0].named_children())
    with torch.enable_grad():
        parts = [_chunk(plan, modules, params, x[:, s:s + step], layer or None, log_volume_rank, reason is None)
                 for s in range(0, n, step)]
    per = {name: np.concatenate([p[name] for p in parts], axis=1) for name in parts[0]}  # name -> (K, n)
    out = []
    for j, nj in enumerate(sizes):
        pj = {name: v[j, :nj] for name, v in per.items()}
        res = {name: float(np.mean(pj[name])) for name in METRIC_NAMES[:5]}
        d_norm = pj.pop("_D_norm")
        pj.pop("_rank")
        res.update(bounds(reason, params[f"{first_name}.weight"][j], pj, d_norm, res["sharpness"]))
        if per_sample:
            res["per_sample"] = pj
        out.append(res)
    return out


def _stops_at_relu_or_pool(model: nn.Sequential, layer: str | None) -> bool:
    """True when f is the output of a ReLU or max-pooling layer: the reordered plan (pooling before
    ReLU, :func:`make_plan`) forms neither ReLU-then-pool's intermediate nor pool-then-ReLU's."""
    module = dict(model.named_children()).get(layer) if layer else None
    return isinstance(module, (nn.ReLU, nn.MaxPool2d))


def _chunk(plan, modules: dict[str, nn.Module], params: dict, x: Tensor, layer: str | None, rank: int | None,
           with_bounds: bool) -> dict[str, np.ndarray]:
    """Per-sample values (K, n) of one chunk of every member's samples x (K, n, ...); ``modules``: one
    member's layers by name (for their settings)."""
    kk, n = x.shape[:2]
    x = x.detach().requires_grad_()
    layers: list[tuple[str, Tensor, Tensor]] = []  # (name, input, output) of the parametrised layers
    f = stacked_forward(plan, params, x, kk, record=lambda name, a, h: layers.append((name, a, h)), stop=layer,
                        channels_last=False)
    f = f.reshape(kk, n, -1)
    num_out = f.shape[2]
    kinds = {name: kind for kind, name, _ in plan}
    rules = {}
    for name, a, _ in layers:
        w = params[f"{name}.weight"]
        own = {"weight": w.reshape(-1, *w.shape[2:])}
        if f"{name}.bias" in params:
            own["bias"] = params[f"{name}.bias"].reshape(-1)
        if kinds[name] == "conv":
            patches = conv_patches(modules[name], a, groups=kk)  # (n, K, i, p)
        else:
            patches = a.permute(1, 0, 2).unsqueeze(3)  # (K, n, in) -> (n, K, in, 1)
        rules[name] = PositionsRule(own, [patches], num_out, groups=kk, per_group=True)
    first = layers[0][0]
    jac = x.new_zeros(kk, n, num_out, x[0, 0].numel())
    sharp = torch.zeros(n, kk, dtype=torch.float64, device=x.device)
    first_sq = torch.zeros_like(sharp)
    targets = [x] + [h for _, _, h in layers]
    for k in range(num_out):
        cot = torch.zeros_like(f)
        cot[:, :, k] = 1
        grads = torch.autograd.grad(f, targets, cot, retain_graph=k < num_out - 1, allow_unused=True)
        jac[:, :, k] = grads[0].reshape(kk, n, -1)
        for (name, _, _), g in zip(layers, grads[1:]):
            if g is None:
                continue
            if kinds[name] == "linear":
                g = g.permute(1, 0, 2).reshape(n, -1)  # (K, n, out) -> (n, K * out): member blocks
                if name == first:
                    first_sq += g.reshape(n, kk, -1).square().sum(2)
            for sq in rules[name].sq_norms([g.unsqueeze(0)]).values():
                sharp += sq[0]
    values = spectral_values(jac.reshape(kk * n, num_out, -1), rank)
    values = {name: v.reshape(kk, n) for name, v in values.items()}
    values["sharpness"] = sharp.T
    values["x_norm"] = x.detach().reshape(kk, n, -1).double().norm(dim=2)
    values["_D_norm"] = first_sq.T.sqrt()
    values["grad_W_norm"] = (values["_D_norm"] * values["x_norm"] if with_bounds
                             else torch.full_like(values["x_norm"], float("nan")))
    return {name: v.detach().cpu().numpy() for name, v in values.items()}

