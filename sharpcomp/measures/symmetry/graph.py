"""The ReLU rescaling symmetry of any network, found on its traced graph (``torch.fx.symbolic_trace``).

A *channel space* is the set of tensors whose channel j is scaled by the same a_j > 0 when a rescaling
is applied. It starts at a *producer*: a Linear or a Conv (``groups=1``) -- row j of its weight and its
bias -- or an affine BatchNorm in eval mode -- its (gamma_j, beta_j). It flows through positively
homogeneous, channel-wise operations (ReLU, LeakyReLU, max/avg pooling, adaptive pooling, Dropout (eval),
Identity, Flatten), and ends at *consumers*: Linear or Conv (``groups=1``) layers reading it, whose
input column j (a block of ``in_features / C`` columns after a Flatten, ``kh*kw`` for a convolution) is
scaled by 1 / a_j. A residual addition ``u + v`` couples the spaces of u and v: channel j of every
tensor summed is scaled together, so the spaces merge into one (their producers and consumers joined).

Scaling channel j by a_j leaves f unchanged when every path from the space reaches consumers; a space
is *broken* (no symmetry) when a path reaches the network output, an addition with an unscaled operand
(the input, a constant), or any other operation (softmax, a reshape, a multiplication, an unknown module,
a BatchNorm's input).

BatchNorm in eval mode, y = gamma (x - mu) / sigma + beta with mu, sigma fixed buffers, is affine per
channel. Scaling its input x by a does *not* pass through: (a x - mu) / sigma != a (x - mu) / sigma
unless mu = 0, and mu is not a parameter that could be rescaled with it. So a BatchNorm's input breaks
the space of the layer before it (the convolution feeding a BatchNorm has no rescaling against what
follows). Its output, however, is linear in (gamma, beta) jointly: y = gamma xhat + beta with xhat
fixed, so scaling (gamma_j, beta_j) by a scales y_j by a: the BatchNorm is the producer of its channels.
This is exactly the symmetry of the BatchNorm folded into the preceding convolution (W' = gamma W / sigma,
b' = beta - gamma mu / sigma, the folded layer's (W'_j, b'_j) -> a (W'_j, b'_j) being (gamma_j, beta_j)
-> a (gamma_j, beta_j) with W untouched). (In training mode BatchNorm normalises by batch statistics,
which makes the preceding weights scale-invariant; the measures run in eval mode, where that does not hold.)
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

_LINEAR_CONV = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
PASS_MODULES = (
    nn.ReLU, nn.LeakyReLU, nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d,
    nn.AvgPool3d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool1d,
    nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d, nn.Identity, nn.Dropout, nn.Flatten,
)
PASS_FUNCTIONS = {F.relu, torch.relu, F.leaky_relu, F.max_pool1d, F.max_pool2d, F.max_pool3d, F.avg_pool1d,
                  F.avg_pool2d, F.avg_pool3d, F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d,
                  F.adaptive_max_pool1d, F.adaptive_max_pool2d, F.dropout, torch.flatten}
PASS_METHODS = {"relu", "flatten", "contiguous"}
ADDITIONS = {operator.add, operator.iadd, torch.add}
SHAPE_ONLY = {"size", "dim"}  # uses that read no values


class TraceError(ValueError):
    """The network cannot be traced; the message is one line."""


@dataclass
class Space:
    units: int
    producers: list = field(default_factory=list)   # module names
    consumers: list = field(default_factory=list)   # (module name, block)
    broken: str | None = None                       # why there is no symmetry (None: there is)
    parent: int | None = None


@dataclass(frozen=True)
class Group:
    """One set of rescalable units: channel j of every producer and consumer is scaled together."""

    units: int
    producers: tuple[str, ...]
    consumers: tuple[tuple[str, int], ...]


class _Spaces:
    def __init__(self):
        self.items: list[Space] = []

    def new(self, units: int, producer: str) -> int:
        self.items.append(Space(units, [producer]))
        return len(self.items) - 1

    def root(self, i: int) -> int:
        while self.items[i].parent is not None:
            i = self.items[i].parent
        return i

    def get(self, i: int) -> Space:
        return self.items[self.root(i)]

    def union(self, a: int, b: int) -> int:
        a, b = self.root(a), self.root(b)
        if a == b:
            return a
        sa, sb = self.items[a], self.items[b]
        if sa.units != sb.units:
            sa.broken = sb.broken = "an addition of tensors with different channel counts"
        sb.parent = a
        sa.producers += sb.producers
        sa.consumers += sb.consumers
        sa.broken = sa.broken or sb.broken
        return a

    def brk(self, i: int, why: str) -> None:
        s = self.get(i)
        s.broken = s.broken or why


def _trace(model: nn.Module):
    try:
        return torch.fx.symbolic_trace(model)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TraceError(f"{type(model).__name__} cannot be traced by torch.fx ({first[:160]}), so its rescaling "
                         f"symmetry cannot be found") from None


def _producer_units(mod: nn.Module) -> int | None:
    if isinstance(mod, _LINEAR_CONV) and not (isinstance(mod, _CONV) and mod.groups != 1):
        return mod.weight.shape[0]
    if isinstance(mod, _BN) and mod.affine and mod.track_running_stats and mod.weight is not None:
        return mod.num_features
    return None


def analyse(model: nn.Module) -> tuple[list[Group], list[str]]:
    """(the rescalable groups, in the order their first producer runs; the names of modules the analysis
    cannot see through, where a channel space reached them). TraceError when tracing fails."""
    gm = _trace(model)
    modules = dict(gm.named_modules())
    calls: dict[str, int] = {}
    for node in gm.graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    spaces, where, unknown = _Spaces(), {}, []  # where: node -> (space index, layout)

    def arg_nodes(node):
        return [a for a in node.all_input_nodes if a in where]

    for node in gm.graph.nodes:
        ins = arg_nodes(node)
        if node.op == "call_module":
            mod = modules[node.target]
            if isinstance(mod, PASS_MODULES) and len(ins) == 1:
                space, layout = where[ins[0]]
                if isinstance(mod, nn.Flatten):
                    if mod.start_dim != 1 or mod.end_dim != -1:
                        spaces.brk(space, f"{node.target} flattens other dimensions")
                        continue
                    layout = "flat" if layout == "channels" else layout
                where[node] = (space, layout)
                continue
            for a in ins:
                space, layout = where[a]
                _consume(spaces, space, layout, node.target, mod, calls, unknown)
            units = _producer_units(mod)
            if units is not None and calls[node.target] == 1:
                where[node] = (spaces.new(units, node.target),
                               "vector" if isinstance(mod, nn.Linear) else "channels")
            continue
        if node.op == "call_function" and node.target in ADDITIONS:
            tensors = [a for a in node.args if isinstance(a, torch.fx.Node)]
            if len(ins) == len(tensors) == 2 and len(node.args) == 2 and where[ins[0]][1] == where[ins[1]][1]:
                where[node] = (spaces.union(where[ins[0]][0], where[ins[1]][0]), where[ins[0]][1])
                continue
            for a in ins:
                spaces.brk(where[a][0], "an addition with an unscaled operand")
            continue
        if (node.op == "call_function" and node.target in PASS_FUNCTIONS) or (
                node.op == "call_method" and node.target in PASS_METHODS):
            if len(ins) == 1 and node.args and node.args[0] is ins[0]:
                space, layout = where[ins[0]]
                if node.target in (torch.flatten, "flatten"):
                    dims = list(node.args[1:]) + list(node.kwargs.values())
                    if dims[:1] != [1] or any(d != -1 for d in dims[1:]):
                        spaces.brk(space, "a flatten of other dimensions")
                        continue
                    layout = "flat" if layout == "channels" else layout
                where[node] = (space, layout)
                continue
        if node.op == "call_method" and node.target in SHAPE_ONLY:
            continue
        for a in ins:
            spaces.brk(where[a][0], "the network output" if node.op == "output" else f"the operation {node.name}")
    return _groups(spaces, modules), sorted(set(unknown))


def _consume(spaces: _Spaces, space: int, layout: str, name: str, mod: nn.Module, calls: dict, unknown: list):
    """Record ``mod`` reading the space (a consumer), or break the space."""
    units = spaces.get(space).units
    if calls[name] != 1:
        spaces.brk(space, f"{name} is called more than once")
        return
    if isinstance(mod, nn.Linear) and layout in ("vector", "flat") and mod.in_features % units == 0 and (
            layout == "flat" or mod.in_features == units):
        spaces.get(space).consumers.append((name, mod.in_features // units))
        return
    if isinstance(mod, _CONV) and layout == "channels" and mod.groups == 1 and mod.in_channels == units:
        spaces.get(space).consumers.append((name, math.prod(mod.kernel_size)))
        return
    if next(mod.parameters(recurse=False), None) is not None and (
            not isinstance(mod, (*_LINEAR_CONV, *_BN)) or getattr(mod, "groups", 1) != 1):
        unknown.append(f"{name} ({type(mod).__name__})")  # parameters the analysis cannot rescale
    spaces.brk(space, f"{name} ({type(mod).__name__})")


def _groups(spaces: _Spaces, modules: dict) -> list[Group]:
    out = []
    for s in spaces.items:
        if s.parent is not None or s.broken or not s.consumers:
            continue
        names = s.producers + [c for c, _ in s.consumers]
        params = [p for n in names for p in modules[n].parameters(recurse=False)]
        if not all(p.requires_grad for p in params):
            continue  # a frozen parameter: the orbit leaves the trainable parameters
        out.append(Group(s.units, tuple(s.producers), tuple(s.consumers)))
    return out
