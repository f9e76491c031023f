"""Brute-force float64 references for the metric engine: loops over samples and outputs, plain
``torch.autograd.grad``, dense Jacobians and Hessians, numpy eigensolvers. Slow and obvious on purpose;
shares no code with ``sharpcomp.measures.metrics``.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def mse(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The study's loss: MSE against one-hot targets, averaged over batch and outputs."""
    return F.mse_loss(out, F.one_hot(y, out.shape[1]).to(out.dtype))


def representation(model: nn.Module, x: torch.Tensor, layer: str | None) -> torch.Tensor:
    """f for a batch: the model output, or the output of module ``layer`` (flattened per sample)."""
    if layer is None:
        return model(x).reshape(x.shape[0], -1)
    seen = []
    handle = dict(model.named_modules())[layer].register_forward_hook(lambda m, a, out: seen.append(out))
    try:
        model(x)
    finally:
        handle.remove()
    return seen[0].reshape(x.shape[0], -1)


def reference_metrics(model: nn.Module, inputs: torch.Tensor, layer: str | None = None,
                      log_volume_rank: int | None = None, first_weight: str | None = None) -> dict:
    """Every metric of the study by loops over samples i and outputs k. ``first_weight``: name of the parameter
    W of Eq. 28 (bounds are computed only when given). Also returns per-sample arrays."""
    model = copy.deepcopy(model).double()
    params = dict(model.named_parameters())
    trainable = {k: p for k, p in params.items() if p.requires_grad}
    per = {"sharpness": [], "G": [], "log_volume": [], "mls": [], "local_dim": [], "grad_W_norm": [],
           "x_norm": []}
    for i in range(inputs.shape[0]):
        xi = inputs[i:i + 1].detach().double().requires_grad_()
        f = representation(model, xi, layer)[0]
        s_i, w_sq, rows = 0.0, 0.0, []
        for k in range(f.shape[0]):
            wrt = [xi, *trainable.values()] + ([params[first_weight]] if first_weight else [])
            grads = torch.autograd.grad(f[k], wrt, retain_graph=True, allow_unused=True)
            rows.append(grads[0].reshape(-1).numpy())
            s_i += sum(float((g ** 2).sum()) for g in grads[1:1 + len(trainable)] if g is not None)
            if first_weight and grads[-1] is not None:
                w_sq += float((grads[-1] ** 2).sum())
        jac = np.stack(rows)
        lam = np.sort(np.linalg.eigvalsh(jac @ jac.T))[::-1]
        per["sharpness"].append(s_i)
        per["G"].append(lam.sum())
        per["log_volume"].append(0.5 * np.log(lam[:log_volume_rank]).sum())
        per["mls"].append(np.sqrt(lam[0]))
        per["local_dim"].append(lam.sum() ** 2 / (lam ** 2).sum())
        per["grad_W_norm"].append(np.sqrt(w_sq))
        per["x_norm"].append(float(xi.detach().norm()))
    per = {k: np.asarray(v) for k, v in per.items()}
    out = {k: float(per[k].mean()) for k in ("sharpness", "G", "log_volume", "mls", "local_dim")}
    if first_weight:
        w2 = float(np.linalg.norm(params[first_weight].detach().numpy(), 2))
        inv_x = np.sqrt(np.mean(1 / per["x_norm"] ** 2))
        out["bound_b"] = w2 * float(np.mean(per["grad_W_norm"] / per["x_norm"]))
        out["bound_c"] = w2 * inv_x * np.sqrt(np.mean(per["grad_W_norm"] ** 2))
        out["bound_d"] = w2 * inv_x * np.sqrt(out["sharpness"])
    out["per_sample"] = per
    return out


def dense_hessian_trace(model: nn.Module, loss_fn, inputs: torch.Tensor, targets: torch.Tensor) -> float:
    """Tr H of the loss w.r.t. the trainable parameters, by one dense Hessian row per parameter entry."""
    params = [p for p in model.parameters() if p.requires_grad]
    loss = loss_fn(model(inputs), targets)
    flat = torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params, create_graph=True)])
    diag = [torch.cat([h.reshape(-1) for h in torch.autograd.grad(flat[j], params, retain_graph=True)])[j]
            for j in range(flat.numel())]
    return float(sum(diag))
