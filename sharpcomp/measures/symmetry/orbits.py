"""The ReLU rescaling symmetry of a network and the projection onto its quotient.

Parameter-space conventions: :mod:`sharpcomp.measures.linalg.param_space`.

ReLU rescaling symmetry
-----------------------
A *hidden unit* j of a parametric layer l (a row of a ``Linear`` or an output channel of a ``Conv``)
whose output reaches the next parametric layer l+1 only through positively homogeneous, channel-wise
modules (ReLU, LeakyReLU, max/avg pooling, Flatten, Identity, Dropout) can be rescaled:
(W_l[j, :], b_l[j]) -> a (W_l[j, :], b_l[j]) and W_{l+1}[:, j] -> W_{l+1}[:, j] / a, a > 0, leaves
the network function f unchanged. When layer l is a convolution feeding a Linear through Flatten,
"column j" of W_{l+1} is the block of in_features / C_l columns that flattening assigns to channel j.
The tangent of that orbit at a = 1 is

    v_j = +W_l[j, :] and +b_l[j] on unit j's incoming entries, -W_{l+1}[:, j] on its outgoing ones,

and 0 elsewhere. The output layer has no such symmetry. With V = [v_1 .. v_r]:

    Gm = V^T V   (r x r): Gm_jj = ||W_l[j]||^2 + b_l[j]^2 + ||W_{l+1}[:, j]||^2,
                          Gm_jk = -sum W_{l+1}[k, j, ...]^2  for j in layer l, k in layer l+1,
                          0 otherwise;
    P d = d - V Gm^{-1} V^T d   (projection onto the orthogonal complement of span V, matrix-free;
                                 Cholesky of Gm + ridge I once per theta, ridge for dead units).

Because L is constant along every orbit, H v_j = -D_j g with D_j = +1 on unit j's incoming entries and
-1 on its outgoing ones, so with Q = I - P = V Gm^{-1} V^T

    Tr(H) - Tr(PHP) = Tr(QHQ) = Tr(Gm^{-1} V^T H V) = -Tr(Gm^{-1} Mq),   Mq_ij = v_i^T (D_j g),

and Mq has Gm's sparsity with W*W replaced by W*g (``quotient_trace_gap``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from sharpcomp.measures.linalg.param_space import flat, trainable
from sharpcomp.measures.symmetry.graph import analyse

_PARAMETRIC = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
# Modules through which a per-unit positive scaling passes unchanged (positively homogeneous and
# acting on each channel separately).
_PASS_THROUGH = (
    nn.ReLU, nn.LeakyReLU, nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d,
    nn.AvgPool3d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d,
    nn.Identity, nn.Dropout, nn.Flatten,
)


# ---------------------------------------------------------------------------------------------------
# Structure: which layers carry a rescaling symmetry


@dataclass(frozen=True)
class HiddenLayer:
    """A parametric layer whose units can be rescaled against the next parametric layer."""

    name: str        # layer l (its name in the nn.Sequential)
    next_name: str   # layer l+1
    units: int       # number of hidden units / channels of layer l
    block: int       # columns of W_{l+1} per unit (1 for Linear->Linear, H*W through Flatten, kh*kw for conv)


def _children(model: nn.Module) -> list[tuple[str, nn.Module]]:
    if not isinstance(model, nn.Sequential):
        raise TypeError(f"the rescaling symmetry is found in an nn.Sequential, got {type(model).__name__}")
    return list(model.named_children())


def hidden_layers(model: nn.Module) -> dict[str, HiddenLayer]:
    """Map each rescalable layer's name to its :class:`HiddenLayer` (in network order).

    Layer l pairs with the next parametric layer l+1 when everything between them is in
    ``_PASS_THROUGH``; a convolution pairs with a convolution directly, or with a Linear through a
    Flatten (start_dim 1) whose in_features is a multiple of its channels; a Linear pairs with a
    Linear. Anything else (batch norm, an unknown module, a reshape) breaks the pair.
    """
    children = _children(model)
    out: dict[str, HiddenLayer] = {}
    for i, (name, mod) in enumerate(children):
        if not isinstance(mod, _PARAMETRIC) or not mod.weight.requires_grad:
            continue
        if isinstance(mod, _CONV) and mod.groups != 1:
            continue
        units = mod.weight.shape[0]
        flattened, ok = False, True
        for nxt_name, nxt in children[i + 1:]:  # noqa: B007 (nxt_name used after the loop)
            if isinstance(nxt, _PARAMETRIC):
                break
            if isinstance(nxt, nn.Flatten):
                if nxt.start_dim != 1 or nxt.end_dim != -1:
                    ok = False
                    break
                flattened = True
            elif not isinstance(nxt, _PASS_THROUGH):
                ok = False
                break
        else:
            continue  # no parametric layer after this one: output layer
        if not ok or not nxt.weight.requires_grad:
            continue
        if isinstance(mod, _CONV):
            if isinstance(nxt, nn.Linear) and flattened:
                if nxt.in_features % units:
                    continue
                block = nxt.in_features // units
            elif isinstance(nxt, _CONV) and not flattened and nxt.groups == 1 and nxt.in_channels == units:
                block = math.prod(nxt.kernel_size)
            else:
                continue
        else:  # Linear
            if isinstance(nxt, nn.Linear) and nxt.in_features == units:
                block = 1
            else:
                continue
        out[name] = HiddenLayer(name, nxt_name, units, block)
    return out


# ---------------------------------------------------------------------------------------------------
# Tangents of the symmetry orbits


class SymmetryTangents:
    """The matrix V = [v_1 .. v_r] of orbit tangents at the current theta, kept matrix-free.

    The units are those of the rescalable groups of :func:`sharpcomp.measures.symmetry.graph.analyse`
    (any network: residual additions couple units across blocks; an eval-mode BatchNorm's (gamma, beta)
    are a producer), group by group, unit by unit; for an ``nn.Sequential`` of the study's layers they are
    the units of :func:`hidden_layers`, in the same order. v_j is +theta on the rows (and biases) of unit
    j's producers and -theta on the input columns of its consumers. The weights are copied at
    construction, so V stays the tangent space at that theta even if the parameters move afterwards.
    """

    def __init__(self, model: nn.Module):
        self.params = trainable(model)
        self.theta = [p.detach().clone() for p in self.params]
        index = {id(p): i for i, p in enumerate(self.params)}
        modules = dict(model.named_modules())
        self.groups, self.unsupported = analyse(model)
        self.slices: dict[str, slice] = {}
        self._rows: dict[int, slice] = {}          # param index -> its rows' units (a producer's weight, bias)
        self._cols: dict[int, tuple[slice, int]] = {}  # param index -> its input columns' units and block
        offset = 0
        for g in self.groups:
            sl = slice(offset, offset + g.units)
            for name in g.producers:
                self.slices[name] = sl
                for p in modules[name].parameters(recurse=False):
                    self._rows[index[id(p)]] = sl
            for name, _block in g.consumers:
                self._cols[index[id(modules[name].weight)]] = (sl, g.units)
            offset += g.units
        self.r = offset

    # views: incoming rows (units, -1) and outgoing columns (out, units, -1)
    @staticmethod
    def _in(t: Tensor, units: int) -> Tensor:
        return t.reshape(units, -1)

    @staticmethod
    def _out(t: Tensor, units: int) -> Tensor:
        return t.reshape(t.shape[0], units, -1)

    def rmatvec(self, d: Sequence[Tensor]) -> Tensor:
        """V^T d, shape (r,)."""
        w = self.theta
        res = torch.zeros(self.r, dtype=w[0].dtype if w else torch.float32, device=w[0].device if w else None)
        for i, sl in self._rows.items():
            res[sl] += (self._in(w[i], sl.stop - sl.start) * self._in(d[i], sl.stop - sl.start)).sum(1)
        for i, (sl, units) in self._cols.items():
            res[sl] -= (self._out(w[i], units) * self._out(d[i], units)).sum((0, 2))
        return res

    def matvec(self, c: Tensor) -> list[Tensor]:
        """V c as a parameter-space vector."""
        w = self.theta
        out = [torch.zeros_like(t) for t in w]
        c = c.to(dtype=w[0].dtype, device=w[0].device) if w else c
        for i, sl in self._rows.items():
            self._in(out[i], sl.stop - sl.start).add_(c[sl][:, None] * self._in(w[i], sl.stop - sl.start))
        for i, (sl, units) in self._cols.items():
            self._out(out[i], units).sub_(c[sl][None, :, None] * self._out(w[i], units))
        return out

    def gram_like(self, other: Sequence[Tensor] | None = None) -> Tensor:
        """The r x r matrix sum over parameter entries of (coefficient of v_i) (coefficient of v_j) theta o,
        with o = theta (``other=None``: Gm = V^T V) or o = g (Mq, Mq_ij = v_i^T (D_j g), D_j = +1 on unit
        j's rows, -1 on its columns). Per parameter tensor with rows of units A and columns of units B
        (block b): diag += row sums over A and column sums over B of theta * o, and (A, B), (B, A) -= the
        (unit, unit) sums X, X^T; A = B (a layer inside a residual space) needs nothing else."""
        w = [t.double() for t in self.theta]
        o = w if other is None else [t.detach().double() for t in other]
        dev = w[0].device if w else None
        m = torch.zeros(self.r, self.r, dtype=torch.float64, device=dev)
        for i in set(self._rows) | set(self._cols):
            prod = w[i] * o[i]
            rows, cols = self._rows.get(i), self._cols.get(i)
            if rows is not None:
                idx = torch.arange(rows.start, rows.stop, device=dev)
                m[idx, idx] += self._in(prod, rows.stop - rows.start).sum(1)
            if cols is not None:
                sl, units = cols
                idx = torch.arange(sl.start, sl.stop, device=dev)
                m[idx, idx] += self._out(prod, units).sum((0, 2))
                if rows is not None:
                    x = self._out(prod, units).sum(2)  # (units of rows, units of columns)
                    m[rows, sl] -= x
                    m[sl, rows] -= x.T
        return m

    def gram(self) -> Tensor:
        return self.gram_like(None)

    def dense(self) -> Tensor:
        """V as a dense (num_params x r) matrix (tests and tiny models only)."""
        eye = torch.eye(self.r, dtype=self.theta[0].dtype, device=self.theta[0].device)
        return torch.stack([flat(self.matvec(eye[j])) for j in range(self.r)], dim=1)


def symmetry_tangents(model: nn.Module) -> tuple[SymmetryTangents, Tensor]:
    """(V, Gm): the orbit tangents at the current theta (matrix-free) and their Gram matrix (float64)."""
    v = SymmetryTangents(model)
    return v, v.gram()


class QuotientProjector:
    """P d = d - V (Gm + ridge I)^{-1} V^T d, with the Cholesky factor computed once.

    ``ridge`` is relative to the mean diagonal of Gm; it only matters for dead units (v_j ~ 0), where
    V^T d is ~0 as well. P is symmetric and idempotent up to that ridge.
    """

    def __init__(self, tangents: SymmetryTangents, gram: Tensor | None = None, ridge: float = 1e-10):
        self.V = tangents
        gm = tangents.gram() if gram is None else gram.double()
        scale = float(gm.diagonal().mean()) if gm.numel() else 1.0
        eps = ridge * (scale if scale > 0 else 1.0)
        self.gram = gm
        eye = torch.eye(gm.shape[0], dtype=gm.dtype, device=gm.device)
        self.chol = torch.linalg.cholesky(gm + eps * eye) if gm.numel() else gm

    def solve(self, rhs: Tensor) -> Tensor:
        """(Gm + ridge I)^{-1} rhs in float64; rhs (r,) or (r, k)."""
        b = rhs.double()
        vec = b.dim() == 1
        x = torch.cholesky_solve(b[:, None] if vec else b, self.chol)
        return x[:, 0] if vec else x

    def __call__(self, d: Sequence[Tensor]) -> list[Tensor]:
        if self.V.r == 0:
            return [t.clone() for t in d]
        c = self.solve(self.V.rmatvec(d))
        vc = self.V.matvec(c)
        return [t - u for t, u in zip(d, vc)]


def quotient_projector(model: nn.Module, ridge: float = 1e-10) -> QuotientProjector:
    """The projector P onto the orthogonal complement of the symmetry orbits at the current theta."""
    return QuotientProjector(SymmetryTangents(model), ridge=ridge)


def project(tangents: SymmetryTangents, gram: Tensor, d: Sequence[Tensor],
            ridge: float = 1e-10) -> list[Tensor]:
    """P d = d - V Gm^{-1} V^T d (one-off; build a :class:`QuotientProjector` to reuse the factor)."""
    return QuotientProjector(tangents, gram, ridge)(d)
