r"""Network-wide compression measures (NMLS, NVR) and their bounds by per-layer weight norms and S.

Index conventions as in :mod:`sharpcomp.measures.study.metrics` (``i`` sample, ``k`` output of f, N outputs).
A *layer* ``l`` is one call of a parametric linear map: ``nn.Linear`` (also the linear maps inside
attention blocks: query/key/value and output projections are Linear modules in timm and torchvision
vision transformers, so fused attention kernels are simply part of the differentiated graph) or a
convolution (``nn.Conv1d/2d/3d``). ``a_l`` is the layer's input, ``z_l = W_l a_l + b_l`` (convolution:
``z_l = C_{W_l} a_l + b_l``, ``C_W`` the convolution as a linear map of the whole input) its output.
Per sample i:

* ``J_il = d f(x_i) / d a_l`` (N x |a_l|, the total derivative of f w.r.t. that activation tensor),
  ``D_il = d f(x_i) / d z_l`` (N x |z_l|), so ``J_il = D_il C_l`` with ``C_l`` = W_l or C_{W_l};
* ``nmls_i = sum_l ||J_il||_2`` (the authors' ``get_nmls``: top singular value per layer, summed);
* ``nvr_i = sum_l 1/2 sum_{k <= N} log lambda_k(J_il J_il^T)``: the network-wide log volumetric ratio,
  the study's ``log_volume`` of every layer's input summed over layers (``-inf`` if some J_il has rank
  < N, as for ``log_volume``);
* ``op_l``: the exact operator norm of C_l (``||W_l||_2``; power iteration for a convolution,
  :mod:`sharpcomp.measures.linalg.operator_norms`); ``op^A_l``: the authors' norm (``||W_l||_2`` for Linear,
  ``||W_l||_F sqrt(P_l)`` for a convolution with P_l output positions);
* ``H_i = sum_l op_l^2 / ||a_il||^2`` (the "harmonic" term), ``H^A_i`` the same with ``op^A``.

Columns (means over i; ``NETWORK_WIDE_COLUMNS``): ``nmls``, ``nvr``, and the bounds

* ``nmls_bound_b = mean_i sum_l op_l ||D_il||_F``  (proven for every layer kind:
  ``||D C||_2 <= ||D||_2 ||C||_2 <= ||D||_F ||C||_2``);
* ``nmls_bound_w = mean_i sum_l op_l ||dW_il||_F / ||a_il||``, with ``dW_il`` the gradient of f w.r.t.
  W_l (summed over k like S). For a Linear layer on a flat input ``||dW_il||_F = ||D_il||_F ||a_il||``,
  so it equals the b term; under weight sharing (convolutions, Linear on token sequences)
  ``||dW||_F = ||sum_p D_p a_p^T||_F`` can be smaller than ``||D||_F ||a||`` (even 0), so it is not a
  bound there;
* ``nmls_bound = sqrt(mean_i H_i) sqrt(sharpness)`` (v5's network-wide bound): by Cauchy-Schwarz over
  layers, ``sum_l op_l ||dW_il|| / ||a_il|| <= sqrt(H_i) sqrt(sum_l ||dW_il||^2) <= sqrt(H_i S_i)``, then
  over samples ``mean_i sqrt(H_i S_i) <= sqrt(mean H) sqrt(mean S)``. Proven (``nmls <= nmls_bound_b
  = nmls_bound_w <= nmls_bound``) when every layer is a Linear map on a flat input; with weight sharing
  it is the authors' inequality, which holds empirically but not as a theorem;
* ``nmls_bound_authors``: the same with ``H^A`` (the authors' stand-in norms, >= the exact ones);
* ``sharpness_inv = sum_l ||W_l||_F^2 mean_i ||dW_il||_F^2`` (per-layer weight norm times the layer's
  share of S; over the weight matrices of the layers above): v5's reparametrisation-invariant
  sharpness. Rescaling a layer's units by alpha against the next layer (ReLU symmetry, all units of the
  layer) scales W_l by alpha and dW_l by 1/alpha (and W_{l+1} by 1/alpha, dW_{l+1} by alpha), so every
  product is unchanged while S moves (``sharpcomp reparam``);
* ``nmls_bound_inv = sqrt(mean_i sum_l ||a_il||^-2) sqrt(sharpness_inv)``: from
  ``op_l <= ||W_l||_F`` and Cauchy-Schwarz over layers and samples, ``sum_l op_l ||dW_il|| / ||a_il||
  <= sqrt(sum_l ||a_il||^-2) sqrt(sum_l ||W_l||_F^2 ||dW_il||^2)``, so ``nmls_bound_w <= nmls_bound_inv``
  (proven for Linear layers on flat inputs, like ``nmls_bound``). NMLS itself is *not* invariant: the
  input of the layer after a rescaled one scales by alpha, its Jacobian by 1/alpha.

``network_wide_reason`` says why a column is NaN, or which chain is proven. The first-layer bounds of
Eq. 28 for a convolutional first layer (columns ``bound_b_conv``, ``bound_c_conv``; NaN otherwise):
``bound_b_conv = op_1 mean_i ||D_i1||_F`` (proven as above, so ``mls <= bound_b_conv``) and
``bound_c_conv = op_1 sqrt(mean_i ||x_i||^-2) sqrt(mean_i ||D_i1||_F^2 ||x_i||^2)`` (>= bound_b_conv by
Cauchy-Schwarz; ``||D_i1||_F ||x_i||`` is the gradient norm w.r.t. the convolution's dense matrix C_W
with all entries free); ``bound_d`` has no proven analogue (it needs ``||dW|| = ||D|| ||x||``).

Computation: one forward pass per chunk with hooks on the layers, then N backward passes of the
cotangent ``e_k`` giving, for every sample at once, row k of every J_il and of every D_il; weight
gradient norms by the per-sample rules of :mod:`sharpcomp.measures.study._layer_rules`; eigenvalues of the
N x N Gram matrices in float64 (``_spectra.spectral_values``).
"""

from __future__ import annotations

import copy
import math

import numpy as np
import torch
from torch import Tensor, nn

from sharpcomp.measures.declaration import Column, Measure
from sharpcomp.measures.linalg.operator_norms import frobenius_stand_in, operator_norm
from sharpcomp.measures.linalg.precision import exact_float32
from sharpcomp.measures.sample import Sample
from sharpcomp.measures.study._layer_rules import rule_for
from sharpcomp.measures.study._spectra import spectral_values

LAYER_TYPES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
# The columns, in order (the declaration below): NMLS, NVR, their bounds, and the convolutional first
# layer's analogues of bound_b and bound_c.
NETWORK_WIDE_COLUMNS = ("nmls", "nvr", "nmls_bound", "nmls_bound_b", "nmls_bound_w", "nmls_bound_authors",
                        "bound_b_conv", "bound_c_conv", "sharpness_inv", "nmls_bound_inv")


def _layers(model: nn.Module) -> dict[str, nn.Module]:
    return {name: m for name, m in model.named_modules() if isinstance(m, LAYER_TYPES)}


def _record(model: nn.Module, x: Tensor):
    """Forward pass recording (name, module, input, output) of every layer call; returns (f, calls)."""
    calls = []

    def hook(name):
        def fn(module, args, output):
            calls.append((name, module, args[0], output))
            return output.clone()  # later in-place ops must not touch the recorded output
        return fn

    handles = [m.register_forward_hook(hook(name)) for name, m in _layers(model).items()]
    try:
        f = model(x)
    finally:
        for h in handles:
            h.remove()
    return f.reshape(f.shape[0], -1), calls


def _chunk(model: nn.Module, x: Tensor) -> dict:
    """Per-sample, per-call quantities of one chunk: J norms, log-volumes, ||D||, ||dW||^2, ||a||."""
    x = x.detach().requires_grad_()
    f, calls = _record(model, x)
    n, num_out = f.shape
    used = [c for c in calls if c[2].requires_grad and c[3].requires_grad]
    if not used:
        return {"calls": []}
    acc = LayerGradients(used, n, num_out)
    rules = {name: rule_for(used[cs[0]][1], {"weight": used[cs[0]][1].weight}, [used[c][2].detach() for c in cs],
                            num_out) for name, cs in acc.index.items()}
    outputs = [z for *_, z in used]
    for k in range(num_out):
        cot = torch.zeros_like(f)
        cot[:, k] = 1
        grads = torch.autograd.grad(f, acc.targets + outputs, cot, retain_graph=k < num_out - 1, allow_unused=True)
        grads = [None if g is None else g.unsqueeze(0) for g in grads]  # one cotangent: (1, n, ...)
        acc.add_inputs(torch.tensor([k]), grads[:len(used)])
        for name, cs in acc.index.items():
            gs = [torch.zeros_like(outputs[c]).unsqueeze(0) if grads[len(used) + c] is None else grads[len(used) + c]
                  for c in cs]
            acc.add_outputs(name, gs, rules[name].sq_norms(gs))
    return acc.values()


def _chunk_values(used: list, jac: list[Tensor], d_sq: list[Tensor], w_sq: dict[str, Tensor], n: int) -> dict:
    """One chunk's per-sample, per-call arrays from the rows of J_il, ||D_il||^2 and ||dW_il||^2."""
    spectra = [spectral_values(j, None) for j in jac]
    return {
        "calls": [(name, module, tuple(a.shape[1:]), tuple(z.shape[1:])) for name, module, a, z in used],
        "mls": torch.stack([s["mls"] for s in spectra], 1).cpu().numpy(),  # (n, L)
        "logvol": torch.stack([s["log_volume"] for s in spectra], 1).cpu().numpy(),
        "d_norm": torch.stack(d_sq, 1).sqrt().cpu().numpy(),
        "a_norm": torch.stack([a[:n].detach().reshape(n, -1).double().norm(dim=1) for _, _, a, _ in used], 1)
        .cpu().numpy(),
        "w_sq": {name: v.cpu().numpy() for name, v in w_sq.items()},
    }


class LayerGradients:
    """The per-layer sums of one chunk, fed by backward passes of the cotangents e_k.

    Per call, the rows of J_il (gradients w.r.t. the call's input a_l, :attr:`targets`) and ||D_il||^2 (its
    output); per module, the weight part ||dW_il||^2 of the per-sample norms. Fed by the separate passes
    of :func:`network_wide`, or inside the metric engine's own passes
    (``compute_metrics(network_wide=True)``, :meth:`create`), which differentiate w.r.t. every parametrised
    module's outputs already: then only the layer inputs join its targets. :meth:`create` gives None when
    the engine's pass cannot serve (a layer with a frozen weight or a non-tensor input): then
    :func:`network_wide` runs on its own.
    """

    def __init__(self, used: list, n: int, num_out: int):
        self.used, self.n = used, n
        self.targets = [a for _, _, a, _ in used]
        self.index: dict[str, list[int]] = {}
        for c, (name, *_) in enumerate(used):
            self.index.setdefault(name, []).append(c)
        dev = used[0][2].device
        self.jac = [a.new_zeros(n, num_out, a[0].numel()) for _, _, a, _ in used]
        self.d_sq = [torch.zeros(n, dtype=torch.float64, device=dev) for _ in used]
        self.w_sq = {name: torch.zeros(n, dtype=torch.float64, device=dev) for name in self.index}

    @classmethod
    def create(cls, records: list, trainable: dict, wanted: list, n: int, num_out: int) -> LayerGradients | None:
        """From the engine's records (name, module, inputs, outputs per call) and its differentiated ones."""
        layers = [r for r in records if isinstance(r.module, LAYER_TYPES)]
        served = {id(r) for r in wanted}
        if not layers or any(id(r) not in served or "weight" not in trainable[r.name] or
                             any(a is None or not a.requires_grad for a in r.inputs) for r in layers):
            return None
        return cls([(r.name, r.module, a, z) for r in layers for a, z in zip(r.inputs, r.outputs)], n, num_out)

    def add_outputs(self, name: str, gs: list[Tensor], sq: dict[str, Tensor]) -> None:
        """Module ``name``'s output gradients (v, n, ...) per call, and its per-parameter norms (v, n)."""
        for c, g in zip(self.index[name], gs):
            norms = torch.linalg.vector_norm(g.detach().reshape(g.shape[0], self.n, -1), dim=2)
            self.d_sq[c] += norms.double().square().sum(0)
        self.w_sq[name] += sq["weight"].detach().sum(0).double()

    def add_inputs(self, ks: Tensor, grads: list[Tensor | None]) -> None:
        """The gradients (v, n, ...) of f . e_k, k in ``ks``, w.r.t. every call's input: rows ks of J_il."""
        for c, g in enumerate(grads):
            if g is not None:
                self.jac[c][:, ks] = g.detach().reshape(len(ks), self.n, -1).transpose(0, 1)

    def values(self) -> dict:
        """This chunk's arrays, as :func:`combine` takes them."""
        return _chunk_values(self.used, self.jac, self.d_sq, self.w_sq, self.n)


@exact_float32()
def network_wide(model: nn.Module, inputs: Tensor, *, sharpness: float | None = None,
                 dtype: torch.dtype = torch.float32, chunk_size: int | None = None,
                 per_sample: bool = False) -> dict:
    """The network-wide columns of ``model`` (eval mode) on ``inputs``; see the module docstring.

    ``sharpness``: the study's S on the same samples (``compute_metrics``); ``nmls_bound`` and
    ``nmls_bound_authors`` are NaN without it. Returns the ``NETWORK_WIDE_COLUMNS`` as floats,
    ``network_wide_reason``, ``first_layer`` (the convolutional first-layer bounds, or None) and, on
    request, ``per_sample`` arrays.
    """
    if any(t.dtype != dtype for t in [*model.parameters(), *model.buffers()] if t.is_floating_point()):
        model = copy.deepcopy(model).to(dtype)
    device = next((p.device for p in model.parameters()), inputs.device)
    x = inputs.detach().to(device=device, dtype=dtype)
    if x.shape[0] == 0:
        raise ValueError("network_wide needs at least one sample")
    step = x.shape[0] if chunk_size is None else int(chunk_size)
    with torch.enable_grad():
        parts = [_chunk(model, x[s:s + step]) for s in range(0, x.shape[0], step)]
    return combine(parts, x, sharpness, per_sample)


def combine(parts: list[dict], x: Tensor, sharpness: float | None, per_sample: bool) -> dict:
    """The columns from the per-chunk quantities (:class:`LayerGradients`, from separate passes or the metric
    engine's)."""
    calls = parts[0]["calls"]
    if not calls or any(p["calls"] != calls for p in parts):
        nan = float("nan")
        return {**{c: nan for c in NETWORK_WIDE_COLUMNS if not c.endswith("_conv")}, "first_layer": None,
                "network_wide_reason": "the output depends on no Linear or convolution layer"}
    per = {k: np.concatenate([p[k] for p in parts]) for k in ("mls", "logvol", "d_norm", "a_norm")}
    w_sq = {name: np.concatenate([p["w_sq"][name] for p in parts]) for name in parts[0]["w_sq"]}
    return _columns(calls, per, w_sq, x, sharpness, per_sample)


def _columns(calls, per, w_sq, x, sharpness, per_sample) -> dict:
    op_cache: dict = {}
    ops, ops_a = [], []
    for name, module, a_shape, z_shape in calls:
        key = (name, a_shape)
        if key not in op_cache:
            op_cache[key] = operator_norm(module, a_shape)
        ops.append(op_cache[key])
        ops_a.append(frobenius_stand_in(module, z_shape) if isinstance(module, nn.modules.conv._ConvNd)
                     else op_cache[key])
    ops, ops_a = np.array(ops), np.array(ops_a)
    with np.errstate(divide="ignore"):
        inv_a_sq = 1.0 / per["a_norm"] ** 2  # (n, L)
    with np.errstate(invalid="ignore"):  # 0 * inf where a layer's input is zero: replaced by inf below
        w_term = np.where(np.isinf(inv_a_sq), np.inf, w_norm_of(calls, w_sq) * np.sqrt(inv_a_sq))
    harmonic, harmonic_a = inv_a_sq @ ops ** 2, inv_a_sq @ ops_a ** 2
    counts: dict[str, int] = {}
    for name, *_ in calls:
        counts[name] = counts.get(name, 0) + 1
    w_norm = w_norm_of(calls, w_sq)
    nmls_i = per["mls"].sum(1)
    res = {
        "nmls": float(nmls_i.mean()),
        "nvr": float(per["logvol"].sum(1).mean()),
        "nmls_bound_b": float((per["d_norm"] @ ops).mean()),
        # a layer with a zero input makes the w and S forms vacuous (+inf)
        "nmls_bound_w": float((w_term @ ops).mean()),
    }
    s = math.nan if sharpness is None else float(sharpness)
    res["nmls_bound"] = math.sqrt(float(harmonic.mean()) * s)
    res["nmls_bound_authors"] = math.sqrt(float(harmonic_a.mean()) * s)
    weight_sq = {name: float(module.weight.detach().double().square().sum()) for name, module, *_ in calls}
    res["sharpness_inv"] = float(sum(weight_sq[name] * w_sq[name].mean() for name in weight_sq))
    res["nmls_bound_inv"] = math.sqrt(float(inv_a_sq.sum(1).mean()) * res["sharpness_inv"])
    shared = [name for name, module, a_shape, _ in calls
              if isinstance(module, nn.modules.conv._ConvNd) or len(a_shape) > 1 or counts[name] > 1]
    res["network_wide_reason"] = (
        None if not shared else
        f"weight sharing in {', '.join(dict.fromkeys(shared))}: nmls <= nmls_bound_b is proven, "
        "nmls_bound_w and nmls_bound (v5's form) are not")
    res["first_layer"] = _first_layer(calls, ops, per, x)
    if per_sample:
        res["per_sample"] = {"nmls": nmls_i, "nvr": per["logvol"].sum(1), "harmonic": harmonic,
                             "layer_mls": per["mls"], "d_norm": per["d_norm"], "a_norm": per["a_norm"],
                             "w_norm": w_norm, "op": ops, "op_authors": ops_a}
    return res


def w_norm_of(calls, w_sq: dict) -> np.ndarray:
    """``||dW_il||`` (n, L): of the module's weight (a module called several times: over all its calls)."""
    return np.stack([np.sqrt(w_sq[name]) for name, *_ in calls], 1)


def _first_layer(calls, ops, per, x) -> dict | None:
    """Eq. 28's bounds b and c for a convolution acting on the raw input (see the module docstring)."""
    name, module, a_shape, _ = calls[0]
    if not isinstance(module, nn.modules.conv._ConvNd) or a_shape != tuple(x.shape[1:]):
        return None
    x_norm = x.detach().reshape(x.shape[0], -1).double().norm(dim=1).cpu().numpy()
    if not np.allclose(per["a_norm"][:, 0], x_norm, rtol=1e-6):
        return None
    d = per["d_norm"][:, 0]
    with np.errstate(divide="ignore"):
        inv_x = math.sqrt(float(np.mean(1.0 / x_norm ** 2)))
    return {"bound_b_conv": float(ops[0] * d.mean()),
            "bound_c_conv": float(ops[0] * inv_x * math.sqrt(float(np.mean((d * x_norm) ** 2))))}


def add_network_wide(result: dict, model: nn.Module, x: Tensor, *, layer: str | None = None,
                     dtype: torch.dtype = torch.float32, chunk_size: int | None = None,
                     shared: list[dict] | None = None) -> dict:
    """``result`` (a ``compute_metrics`` dict) with the network-wide columns added, and the convolutional
    first-layer bounds in place of missing Eq. 28 bounds. NaN with a reason for a middle-layer f.

    ``shared``: the per-chunk values gathered by :class:`LayerGradients` in the metric engine's passes (then
    no pass of its own is made).
    """
    if layer not in (None, ""):
        result.update({c: float("nan") for c in NETWORK_WIDE_COLUMNS})
        result["network_wide_reason"] = "network-wide measures are defined for the network output only"
        return result
    if shared is not None:
        nw = combine(shared, x, result.get("sharpness"), False)
    else:
        nw = network_wide(model, x, sharpness=result.get("sharpness"), dtype=dtype, chunk_size=chunk_size)
    first = nw.pop("first_layer")
    result.update(nw)
    result.update(first or {"bound_b_conv": math.nan, "bound_c_conv": math.nan})
    return result


# ---------------------------------------------------------------------------------------------------
# the declaration


def compute(sample: Sample, s) -> dict:
    """The network-wide columns on the sample's points (with the study's S, when a measure left it)."""
    dtype = next(sample.model.parameters()).dtype
    out = add_network_wide({"sharpness": sample.shared.get("sharpness")}, sample.model, sample.x, dtype=dtype)
    out.pop("sharpness")
    return out


MEASURE = Measure(
    function=network_wide,
    name="network_wide", family="study", cadence="checkpoint", config="metrics.network_wide", compute=compute,
    summary="network-wide compression NMLS and NVR (every layer's input Jacobian), their bounds by layer norms and "
            "S, and the reparametrisation-invariant sharpness",
    columns=(*(Column(c) for c in NETWORK_WIDE_COLUMNS),
             Column("network_wide_reason", kind="text", role="diagnostic", of="nmls",
                    doc="which bounds are proven for the network, or why a column is NaN")),
    reparam={"nmls": "moves", "nvr": "moves", "nmls_bound": "moves", "sharpness_inv": "stays",
             "nmls_bound_inv": "moves", "bound_b_conv": "stays", "bound_c_conv": "stays"})
