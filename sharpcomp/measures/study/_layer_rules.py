"""Per-sample squared gradient norms of one module's parameters, from its inputs and output gradients.

Shared by :mod:`sharpcomp.measures.study.metrics` (the maths is written out there) and
:mod:`sharpcomp.measures.study.stacked`,
which use its public names ``rule_for``, ``conv_patches`` and ``PositionsRule``. Index conventions:

* v: cotangent (which output f_k is being differentiated), n: sample,
* g: convolution group, p: position (spatial location of a convolution, a token of a Linear
  applied to a sequence, or one call of a module that runs several times),
* o: output feature of the module (within its group), i: input feature (within its group; for a
  convolution, the unfolded patch ``c_in / groups * kernel entries``).

Every supported weight gradient has the "sum over positions" form ``dW_{vn} = sum_p g_{vnp} a_{np}^T``
and every bias gradient ``db_{vn} = sum_p g_{vnp}``. The squared Frobenius norm of ``dW_{vn}`` is
computed either by materialising ``dW_{vn}`` (cost ``P * O * I`` per (v, n)) or by the Gram trick
``||sum_p g_p a_p^T||^2 = sum_{p,q} (g_p . g_q)(a_p . a_q)`` (cost ``P^2 * (O + 1)`` per (v, n) plus
``P^2 * I`` per n, shared by all v), whichever is cheaper for the layer's shapes. With a single
position (a Linear layer on flat inputs) the Gram trick is ``||g||^2 ||a||^2``.

Measured on vgg10 (n = 100, N = 10, one CPU thread, ms per cotangent + once per forward): conv1
materialise 5.5 + 6 vs Gram 1141 + 737; conv2 6.0 + 15 vs 99 + 105; conv3 4.1 + 3 vs 3.9 + 15; conv4
5.8 + 4 vs 1.0 + 8; conv5 7.1 + 4 vs 0.6 + 7. The operation count picks the faster one for each layer
(materialise for conv1-3, Gram for conv4-5).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

# Elements of the (n, g, P, P) activation Gram matrix above which the Gram trick is not used.
GRAM_MAX_ELEMENTS = 2**26
# "gram" or "materialise" overrides the cost-based choice for layers with several positions (tests).
FORCE_STRATEGY = None


def rule_for(module: nn.Module, params: dict[str, nn.Parameter], inputs: list[Tensor],
             num_cotangents: int) -> _Rule:
    """The squared-norm rule for ``module`` called on ``inputs`` (one tensor per call)."""
    if isinstance(module, nn.Linear):
        return PositionsRule(params, [_linear_patches(a) for a in inputs], num_cotangents)
    if isinstance(module, (nn.Conv1d, nn.Conv2d)):
        return PositionsRule(params, [conv_patches(module, a) for a in inputs], num_cotangents,
                              groups=module.groups)
    return _FunctionalRule(module, params, inputs)


class _Rule:
    params: dict[str, nn.Parameter]

    def sq_norms(self, grads: list[Tensor]) -> dict[str, Tensor]:
        """``grads[c]``: gradient (v, n, *out) w.r.t. the output of call c; returns name -> (v, n)."""
        raise NotImplementedError


def _linear_patches(a: Tensor) -> Tensor:
    """(n, *, i) -> (n, 1, i, p) (a view)."""
    return a.reshape(a.shape[0], 1, -1, a.shape[-1]).transpose(2, 3)


def conv_patches(module: nn.Conv1d | nn.Conv2d, a: Tensor, groups: int | None = None) -> Tensor:
    """Unfolded input patches (n, g, i, p) of a Conv1d/Conv2d, matching the (o, i) weight layout.
    ``groups`` overrides ``module.groups`` (k members of one network run as one grouped convolution)."""
    padding = module.padding
    if isinstance(padding, str) or module.padding_mode != "zeros":
        mode = "constant" if module.padding_mode == "zeros" else module.padding_mode
        a = F.pad(a, module._reversed_padding_repeated_twice, mode=mode)
        padding = 0
    if isinstance(module, nn.Conv1d):  # a 1-d convolution is a 2-d one of height 1
        a = a.unsqueeze(2)
        kernel, dilation, stride = (1, *module.kernel_size), (1, *module.dilation), (1, *module.stride)
        padding = (0, padding if isinstance(padding, int) else padding[0])
    else:
        kernel, dilation, stride = module.kernel_size, module.dilation, module.stride
    cols = F.unfold(a, kernel, dilation=dilation, padding=padding, stride=stride)  # (n, c_in * K, p)
    return cols.reshape(cols.shape[0], groups or module.groups, -1, cols.shape[2])


def _output_positions(g: Tensor, groups: int, linear: bool) -> Tensor:
    """Output gradient (v, n, *out) -> (v, n, g, o, p) (a view when g is contiguous)."""
    v, n = g.shape[:2]
    if linear:
        return g.reshape(v, n, 1, -1, g.shape[-1]).transpose(3, 4)
    return g.reshape(v, n, groups, g.shape[2] // groups, -1)


class PositionsRule(_Rule):
    """Linear and convolution layers: ``dW_{vn} = sum_p g_{vnp} a_{np}^T``, ``db_{vn} = sum_p g_{vnp}``.

    Norms are formed per group g and summed over groups, or returned as (v, n, g) with ``per_group``
    (:mod:`sharpcomp.measures.study.stacked`, where group g is ensemble member g)."""

    def __init__(self, params: dict[str, nn.Parameter], patches: list[Tensor], num_cotangents: int,
                 groups: int | None = None, per_group: bool = False):
        self.params, self.linear, self.groups = params, groups is None, groups or 1
        self.per_group = per_group
        self.a = torch.cat(patches, dim=3) if len(patches) > 1 else patches[0]  # (n, g, i, p)
        n, _, i, p = self.a.shape
        o = next(iter(params.values())).shape[0] // self.groups
        materialise_cost = p * o * i
        gram_cost = p * p * (o + 1) + p * p * i / max(num_cotangents, 1)
        self.strategy = "norms" if p == 1 else "gram" if gram_cost < materialise_cost else "materialise"
        if self.strategy == "gram" and n * self.groups * p * p > GRAM_MAX_ELEMENTS:
            self.strategy = "materialise"
        if FORCE_STRATEGY and p > 1:
            self.strategy = FORCE_STRATEGY
        if "weight" not in params:
            return
        if self.strategy == "norms":
            self.a_sq = self.a.square().sum((2, 3))  # (n, g)
        elif self.strategy == "gram":
            self.a_gram = self.a.transpose(2, 3) @ self.a  # (n, g, p, p): a_p . a_q

    def sq_norms(self, grads: list[Tensor]) -> dict[str, Tensor]:
        gs = [_output_positions(t, self.groups, self.linear) for t in grads]
        g = torch.cat(gs, dim=4) if len(gs) > 1 else gs[0]  # (v, n, g, o, p)
        v, n = g.shape[:2]
        out = {}  # name -> (v, n, g)
        if "weight" in self.params:
            if self.strategy == "norms":
                out["weight"] = g.square().sum((3, 4)) * self.a_sq
            elif self.strategy == "gram":
                gram = g.transpose(3, 4) @ g  # (v, n, g, p, p): g_p . g_q
                out["weight"] = (gram.reshape(v, n, self.groups, -1)
                                 * self.a_gram.reshape(1, n, self.groups, -1)).sum(3)
            else:  # fold v into o: (n, g, v o, p) @ (n, g, p, i) -> per-sample gradients (n, g, v o, i)
                g_folded = g.permute(1, 2, 0, 3, 4).reshape(n, self.groups, -1, g.shape[-1])
                dw = g_folded @ self.a.transpose(2, 3)
                out["weight"] = dw.reshape(n, self.groups, v, -1).square().sum(3).permute(2, 0, 1)
        if "bias" in self.params:
            out["bias"] = g.sum(4).square().sum(3)
        return out if self.per_group else {name: t.sum(2) for name, t in out.items()}


class _FunctionalRule(_Rule):
    """Any other module with its own parameters: per-sample gradients by ``torch.func`` (vmap of grad).

    Needs a module whose calls take one batched tensor and treat samples independently.
    """

    def __init__(self, module: nn.Module, params: dict[str, nn.Parameter], inputs: list[Tensor]):
        if any(a is None for a in inputs):
            raise NotImplementedError(f"{type(module).__name__}: needs one positional tensor input")
        self.module, self.params, self.inputs = module, params, inputs

    def sq_norms(self, grads: list[Tensor]) -> dict[str, Tensor]:
        def pairing(p, xs, gs):
            return sum((functional_call(self.module, p, (x.unsqueeze(0),)) * g.unsqueeze(0)).sum()
                       for x, g in zip(xs, gs))

        detached = {k: p.detach() for k, p in self.params.items()}
        per_sample = vmap(grad(pairing), in_dims=(None, 0, 0))
        per_cotangent = vmap(per_sample, in_dims=(None, None, 0))
        grads_p = per_cotangent(detached, tuple(a.detach() for a in self.inputs), tuple(grads))
        return {k: t.square().flatten(2).sum(2) for k, t in grads_p.items()}
