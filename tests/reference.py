"""Brute-force float64 references for the metric engine: loops over samples and outputs, plain
``torch.autograd.grad``, dense Jacobians and Hessians, numpy eigensolvers. Slow and obvious on purpose;
shares no code with ``sharpcomp.measures.study.metrics``.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

from tests.problems import mse  # noqa: F401  (the study's loss lives with the test problems; kept importable here)


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


def dense_linear_map(fn, input_shape: tuple[int, ...]) -> np.ndarray:
    """The matrix of a linear map of one sample (float64), column by column on the standard basis."""
    size = int(np.prod(input_shape))
    cols = [fn(torch.eye(size, dtype=torch.float64)[j].reshape(1, *input_shape)).reshape(-1) for j in range(size)]
    return torch.stack(cols, 1).detach().numpy()


def _layer_jacobians(model: nn.Module, xi: torch.Tensor, module: nn.Module, n_out: int):
    """(d f / d a, d f / d z, d f / d W) of one sample for one layer, by substituting leaves for its
    input a and output z (two separate forward passes) and one autograd.grad call per output."""
    def jac(wrt_input: bool):
        leaf = []

        def pre(m, args):
            leaf.append(args[0].detach().requires_grad_())
            return (leaf[0],)

        def post(m, args, out):
            leaf.append(out.detach().requires_grad_())
            return leaf[0]

        h = module.register_forward_pre_hook(pre) if wrt_input else module.register_forward_hook(post)
        try:
            f = model(xi).reshape(-1)
        finally:
            h.remove()
        rows = [torch.autograd.grad(f[k], leaf[0], retain_graph=True, allow_unused=True)[0] for k in range(n_out)]
        return np.stack([np.zeros(leaf[0].numel()) if r is None else r.reshape(-1).numpy() for r in rows]), leaf[0]

    ja, a = jac(True)
    jz, _ = jac(False)
    f = model(xi).reshape(-1)
    gw = [torch.autograd.grad(f[k], module.weight, retain_graph=True)[0] for k in range(n_out)]
    return ja, jz, float(sum((g ** 2).sum() for g in gw)), a.detach()


def reference_network_wide(model: nn.Module, inputs: torch.Tensor) -> dict:
    """NMLS, NVR and their bounds (sharpcomp.measures.study.network_wide's docstring) by loops over samples,
    layers and outputs, float64, numpy SVDs; operator norms from dense matrices. Layers: every Linear
    and convolution module, each called once."""
    model = copy.deepcopy(model).double()
    layers = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d))]
    sharp = reference_metrics(model, inputs)["sharpness"]
    per = {"nmls": [], "nvr": [], "b": [], "w": [], "h": [], "h_a": [], "inv": [], "h0": []}
    ops, ops_a = {}, {}
    for i in range(inputs.shape[0]):
        xi = inputs[i:i + 1].detach().double()
        n_out = model(xi).numel()
        nmls = nvr = b = w = h = h_a = inv = h0 = 0.0
        for m in layers:
            ja, jz, w_sq, a = _layer_jacobians(model, xi, m, n_out)
            if id(m) not in ops:
                if isinstance(m, nn.Linear):
                    ops[id(m)] = ops_a[id(m)] = float(np.linalg.norm(m.weight.detach().numpy(), 2))
                else:
                    dense = dense_linear_map(lambda u, m=m: m._conv_forward(u, m.weight, None), tuple(a.shape[1:]))
                    ops[id(m)] = float(np.linalg.norm(dense, 2))
                    positions = int(np.prod(m(a).shape[2:]))
                    ops_a[id(m)] = float(m.weight.detach().norm()) * np.sqrt(positions)
            sv = np.linalg.svd(ja, compute_uv=False)
            a_norm = float(a.norm())
            nmls += sv[0]
            nvr += float(np.log(sv[:n_out] ** 2).sum()) / 2
            b += ops[id(m)] * np.linalg.norm(jz)
            w += ops[id(m)] * np.sqrt(w_sq) / a_norm
            h += ops[id(m)] ** 2 / a_norm ** 2
            h_a += ops_a[id(m)] ** 2 / a_norm ** 2
            inv += float(m.weight.detach().square().sum()) * w_sq
            h0 += 1 / a_norm ** 2
        for k, v in zip(per, (nmls, nvr, b, w, h, h_a, inv, h0)):
            per[k].append(v)
    per = {k: np.asarray(v) for k, v in per.items()}
    return {"nmls": per["nmls"].mean(), "nvr": per["nvr"].mean(), "nmls_bound_b": per["b"].mean(),
            "nmls_bound_w": per["w"].mean(), "nmls_bound": np.sqrt(per["h"].mean() * sharp),
            "nmls_bound_authors": np.sqrt(per["h_a"].mean() * sharp), "sharpness": sharp,
            "sharpness_inv": per["inv"].mean(), "nmls_bound_inv": np.sqrt(per["h0"].mean() * per["inv"].mean()),
            "per_sample": per}


def flat_theta(model: nn.Module) -> torch.Tensor:
    """The model's parameters as one detached vector (``named_parameters`` order)."""
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def as_dict(model: nn.Module, vec: torch.Tensor) -> dict[str, torch.Tensor]:
    """A parameter vector cut into the model's named parameters (for ``torch.func.functional_call``)."""
    out, i = {}, 0
    for name, p in model.named_parameters():
        out[name] = vec[i:i + p.numel()].view_as(p)
        i += p.numel()
    return out
