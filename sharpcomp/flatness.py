"""Flatness beyond the study: symmetry-aware (quotient) sharpness, worst-case and adaptive sharpness,
gradient disagreement between minibatches and the trace of the empirical Fisher (issue 5).

Conventions
-----------
theta is the list of the model's trainable parameters (``p.requires_grad``), in ``model.parameters()``
order; a "parameter-space vector" is a list of tensors shaped like theta. ``loss_fn(outputs, targets)``
returns the mean loss over the batch (the study: ``mse_loss(out, onehot)``); L_B is that loss on batch B,
g = grad L, H = the Hessian of L.

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
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .precision import exact_float32

__all__ = [
    "FLATNESS_DEFAULTS", "HiddenLayer", "QuotientProjector", "SymmetryTangents", "conf_flatness_default",
    "extra_metrics", "fisher_trace", "gradient_disagreement", "hidden_layers", "hutchinson", "hutchinson_traces",
    "project", "quotient_hessian_trace", "quotient_projector", "quotient_trace_gap", "rademacher",
    "symmetry_tangents",
    "worst_case_sharpness",
]

LossFn = Callable[[Tensor, Tensor], Tensor]
Batch = tuple[Tensor, Tensor]

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


def _trainable(model: nn.Module) -> list[nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


# ---------------------------------------------------------------------------------------------------
# Parameter-space vector helpers (lists of tensors shaped like theta)


def _dot(a: Sequence[Tensor], b: Sequence[Tensor | None]) -> Tensor:
    """Inner product of two parameter-space vectors; a ``None`` entry of ``b`` is zero."""
    return sum((x * y).sum() for x, y in zip(a, b) if y is not None)


def _norm(a: Sequence[Tensor]) -> Tensor:
    return torch.sqrt(_dot(a, a))


def _flat(a: Sequence[Tensor]) -> Tensor:
    return torch.cat([x.reshape(-1) for x in a])


# ---------------------------------------------------------------------------------------------------
# Tangents of the symmetry orbits


class SymmetryTangents:
    """The matrix V = [v_1 .. v_r] of orbit tangents at the current theta, kept matrix-free.

    The weights are copied at construction, so V stays the tangent space at that theta even if the
    model's parameters move afterwards. Units are ordered layer by layer, unit by unit; ``slices``
    gives each hidden layer's range of columns.
    """

    def __init__(self, model: nn.Module):
        self.params = _trainable(model)
        self.theta = [p.detach().clone() for p in self.params]
        index = {id(p): i for i, p in enumerate(self.params)}
        modules = dict(_children(model))
        self.layers = list(hidden_layers(model).values())
        self.slices: dict[str, slice] = {}
        self._entries = []  # (w_in idx, b_in idx or None, w_out idx, units, column slice)
        offset = 0
        for hl in self.layers:
            mod, nxt = modules[hl.name], modules[hl.next_name]
            b = mod.bias if (mod.bias is not None and mod.bias.requires_grad) else None
            sl = slice(offset, offset + hl.units)
            self.slices[hl.name] = sl
            self._entries.append((index[id(mod.weight)], None if b is None else index[id(b)],
                                  index[id(nxt.weight)], hl.units, sl, hl.next_name))
            offset += hl.units
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
        for wi, bi, wo, units, sl, _ in self._entries:
            val = (self._in(w[wi], units) * self._in(d[wi], units)).sum(1)
            if bi is not None:
                val = val + w[bi] * d[bi]
            val = val - (self._out(w[wo], units) * self._out(d[wo], units)).sum((0, 2))
            res[sl] = val
        return res

    def matvec(self, c: Tensor) -> list[Tensor]:
        """V c as a parameter-space vector."""
        w = self.theta
        out = [torch.zeros_like(t) for t in w]
        c = c.to(dtype=w[0].dtype, device=w[0].device) if w else c
        for wi, bi, wo, units, sl, _ in self._entries:
            cj = c[sl]
            self._in(out[wi], units).add_(cj[:, None] * self._in(w[wi], units))
            if bi is not None:
                out[bi].add_(cj * w[bi])
            self._out(out[wo], units).sub_(cj[None, :, None] * self._out(w[wo], units))
        return out

    def gram_like(self, other: Sequence[Tensor] | None = None) -> Tensor:
        """The r x r matrix with Gm's sparsity built from theta and ``other`` (float64).

        ``other=None`` gives Gm = V^T V. ``other=g`` gives Mq with Mq_ij = v_i^T (D_j g):
        diagonal <W_l[j], g_l[j]> + b_l[j] g_b[j] + <W_{l+1}[:, j], g_{l+1}[:, j]>, entry (k in l+1,
        j in l) = -<W_{l+1}[k, j, ...], g_{l+1}[k, j, ...]>, symmetric.
        """
        w = [t.double() for t in self.theta]
        o = w if other is None else [t.detach().double() for t in other]
        dev = w[0].device if w else None
        m = torch.zeros(self.r, self.r, dtype=torch.float64, device=dev)
        starts = {hl.name: self.slices[hl.name] for hl in self.layers}
        for wi, bi, wo, units, sl, next_name in self._entries:
            diag = (self._in(w[wi], units) * self._in(o[wi], units)).sum(1)
            if bi is not None:
                diag = diag + w[bi] * o[bi]
            prod = self._out(w[wo], units) * self._out(o[wo], units)  # (out, units, block)
            diag = diag + prod.sum((0, 2))
            idx = torch.arange(sl.start, sl.stop, device=dev)
            m[idx, idx] = diag
            if next_name in starts:  # the next layer's units are hidden too: coupling block
                nsl = starts[next_name]
                block = -prod.sum(2)  # (units_{l+1}, units_l)
                m[nsl, sl] = block
                m[sl, nsl] = block.T
        return m

    def gram(self) -> Tensor:
        return self.gram_like(None)

    def dense(self) -> Tensor:
        """V as a dense (num_params x r) matrix (tests and tiny models only)."""
        eye = torch.eye(self.r, dtype=self.theta[0].dtype, device=self.theta[0].device)
        return torch.stack([_flat(self.matvec(eye[j])) for j in range(self.r)], dim=1)


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


# ---------------------------------------------------------------------------------------------------
# Model state: leave parameters, gradients and mode exactly as they were


@contextmanager
def _preserved(model: nn.Module) -> Iterator[None]:
    was_training = model.training
    params = list(model.parameters())
    saved = [p.detach().clone() for p in params]
    grads = [None if p.grad is None else p.grad.detach().clone() for p in params]
    model.eval()
    try:
        with torch.enable_grad():
            yield
    finally:
        with torch.no_grad():
            for p, s, g in zip(params, saved, grads):
                p.copy_(s)
                p.grad = g
        model.train(was_training)


def _to_device(model: nn.Module, x: Tensor) -> Tensor:
    p = next(model.parameters(), None)
    if p is None:
        return x
    if x.is_floating_point():
        return x.to(device=p.device, dtype=p.dtype)
    return x.to(device=p.device)


def _loss_and_grad(model: nn.Module, loss_fn: LossFn, x: Tensor, y: Tensor, params: Sequence[Tensor],
                   create_graph: bool = False) -> tuple[Tensor, tuple[Tensor, ...]]:
    loss = loss_fn(model(x), y)
    grads = torch.autograd.grad(loss, params, create_graph=create_graph)
    return loss, grads


# ---------------------------------------------------------------------------------------------------
# Quotient Hessian trace


@exact_float32()
def quotient_trace_gap(model: nn.Module, loss_fn: LossFn, inputs: Tensor, targets: Tensor,
                       ridge: float = 1e-10) -> float:
    """Closed form Tr(H) - Tr(PHP) = Tr(QHQ) = -Tr(Gm^{-1} Mq), Mq_ij = v_i^T (D_j grad L).

    Exact (no probes); it needs one gradient. Uses H v_j = -D_j g, which holds because L is constant
    along each orbit. Leaves the model as it was.
    """
    with _preserved(model):
        x, y = _to_device(model, inputs), _to_device(model, targets)
        params = _trainable(model)
        _, g = _loss_and_grad(model, loss_fn, x, y, params)
        proj = quotient_projector(model, ridge)
        if proj.V.r == 0:
            return 0.0
        mq = proj.V.gram_like(g)
        return float(-torch.trace(proj.solve(mq)))


def rademacher(params: Sequence[Tensor], generator: torch.Generator | None) -> list[Tensor]:
    """One Rademacher (+-1) vector shaped like ``params``, drawn from ``generator`` on its device
    (the global generator of each parameter's device when None), in the parameters' dtype."""
    out = []
    for p in params:
        dev = generator.device if generator is not None else p.device
        v = torch.randint(0, 2, p.shape, generator=generator, device=dev, dtype=torch.int8) * 2 - 1
        out.append(v.to(device=p.device, dtype=p.dtype))
    return out


@exact_float32()
def hutchinson(grads: Sequence[Tensor | None], params: Sequence[Tensor], probes: int,
               generator: torch.Generator | None,
               project: Callable[[list[Tensor]], list[Tensor]] | None = None,
               sum_in_float64: bool = False) -> tuple[Tensor, Tensor | None]:
    """Hutchinson's estimator of a Hessian trace, the one in sharpcomp: for each of ``probes``
    Rademacher vectors z (``rademacher``, drawn in turn from ``generator``), z^T H z by double
    backpropagation, and u^T H u for u = ``project(z)`` when a projection is given.

    H is the Hessian of the loss whose gradient ``grads`` w.r.t. ``params`` was built with
    ``create_graph=True``; gradients that do not depend on the parameters (a loss linear in them) and
    unused parameters contribute H v = 0. Returns two float64 tensors of length ``probes`` (the second
    None without ``project``); their mean is the trace estimate (E z^T H z = Tr H).
    ``sum_in_float64`` adds the per-parameter terms of z^T H z in float64 rather than in the
    parameters' dtype (the same for float64 models; ``metrics.hessian_trace`` has always done so).
    """
    curved = [j for j, g in enumerate(grads) if g is not None and g.requires_grad]

    def quadratic(v: list[Tensor]) -> float:
        if not curved:
            return 0.0
        hv = torch.autograd.grad([grads[j] for j in curved], params, [v[j] for j in curved],
                                 retain_graph=True, allow_unused=True)
        if sum_in_float64:
            return sum(float((a * b).sum()) for a, b in zip(v, hv) if b is not None)
        return float(_dot(v, hv))

    full = torch.zeros(probes, dtype=torch.float64)
    projected = None if project is None else torch.zeros(probes, dtype=torch.float64)
    for k in range(probes):
        z = rademacher(params, generator)
        full[k] = quadratic(z)
        if projected is not None:
            projected[k] = quadratic(project(z))
    return full, projected


@exact_float32()
def hutchinson_traces(model: nn.Module, loss_fn: LossFn, inputs: Tensor, targets: Tensor, probes: int = 20,
                      generator: torch.Generator | None = None, *, ridge: float = 1e-10,
                      chunk_size: int | None = None) -> dict[str, float]:
    """Paired Hutchinson estimates of Tr(PHP) and Tr(H) from the same Rademacher probes z.

    Tr(PHP) = E_z[(Pz)^T H (Pz)], Tr(H) = E_z[z^T H z]; est = mean over probes, se = std(ddof=1)/sqrt(k).
    Also reports the paired difference Tr(H) - Tr(PHP) (``gap``, ``gap_se``), which should agree with
    :func:`quotient_trace_gap`. With ``chunk_size``, H is accumulated over input chunks as
    sum_c (n_c / n) H_c (valid for a loss that is a mean over samples).
    Returns keys quotient, quotient_se, full, full_se, gap, gap_se.
    """
    if probes < 1:
        raise ValueError(f"probes must be >= 1, got {probes}")
    with _preserved(model):
        x_all, y_all = _to_device(model, inputs), _to_device(model, targets)
        params = _trainable(model)
        proj = quotient_projector(model, ridge)
        seed = int(torch.randint(0, 2**62, (1,), generator=generator).item())
        n = x_all.shape[0]
        step = n if chunk_size is None else max(1, int(chunk_size))
        qv = torch.zeros(probes, dtype=torch.float64)
        fv = torch.zeros(probes, dtype=torch.float64)
        for start in range(0, n, step):
            x, y = x_all[start:start + step], y_all[start:start + step]
            weight = x.shape[0] / n
            _, g = _loss_and_grad(model, loss_fn, x, y, params, create_graph=True)
            gen = torch.Generator().manual_seed(seed)  # the same probes for every chunk
            full, projected = hutchinson(g, params, probes, gen, proj)
            fv += weight * full
            qv += weight * projected
            del g

    def stats(v: Tensor) -> tuple[float, float]:
        se = float(v.std(unbiased=True) / math.sqrt(len(v))) if len(v) > 1 else float("nan")
        return float(v.mean()), se

    q, q_se = stats(qv)
    f, f_se = stats(fv)
    d, d_se = stats(fv - qv)
    return {"quotient": q, "quotient_se": q_se, "full": f, "full_se": f_se, "gap": d, "gap_se": d_se}


@exact_float32()
def quotient_hessian_trace(model: nn.Module, loss_fn: LossFn, inputs: Tensor, targets: Tensor,
                           probes: int = 20, generator: torch.Generator | None = None,
                           **kwargs) -> tuple[float, float]:
    """Hutchinson estimate of Tr(PHP) with projected probes u = P z: (estimate, standard error)."""
    r = hutchinson_traces(model, loss_fn, inputs, targets, probes, generator, **kwargs)
    return r["quotient"], r["quotient_se"]


# ---------------------------------------------------------------------------------------------------
# Worst-case (epsilon-) sharpness by projected gradient ascent


def _ascent(model: nn.Module, loss_fn: LossFn, x: Tensor, y: Tensor, rho: float, steps: int, step_size: float,
            scale: list[Tensor] | None, proj: QuotientProjector | None, params: list[nn.Parameter],
            theta: list[Tensor]) -> tuple[float, float, list[Tensor]]:
    """One batch: returns (L_B(theta), max_k L_B(theta + delta_k) - L_B(theta), best delta).

    The search variable eta lives in the ball ||eta|| <= rho; delta = eta (l2), or delta = |w| * eta
    (adaptive, ``scale`` = |w|). eta_0 = 0; u = grad_eta L_B(theta + delta_k) (projected by P in the
    quotient case); eta_{k+1} = Proj_ball(P(eta_k + step_size u / ||u||)).
    """
    eta = [torch.zeros_like(t) for t in theta]
    best, best_delta, loss0 = 0.0, [torch.zeros_like(t) for t in theta], None
    for k in range(steps + 1):
        delta = eta if scale is None else [s * e for s, e in zip(scale, eta)]
        with torch.no_grad():
            for p, t, d in zip(params, theta, delta):
                p.copy_(t + d)
        if k == steps:
            with torch.no_grad():
                loss = float(loss_fn(model(x), y))
        else:
            loss_t, g = _loss_and_grad(model, loss_fn, x, y, params)
            loss = float(loss_t.detach())
        if loss0 is None:
            loss0 = loss
        elif loss - loss0 > best:
            best, best_delta = loss - loss0, [d.clone() for d in delta]
        if k == steps:
            break
        u = list(g) if scale is None else [s * gi for s, gi in zip(scale, g)]
        if proj is not None:
            u = proj(u)
        un = float(_norm(u))
        if not un > 0 or not math.isfinite(un):
            break
        eta = [e + (step_size / un) * ui for e, ui in zip(eta, u)]
        if proj is not None:
            eta = proj(eta)
        en = float(_norm(eta))
        if en > rho:
            eta = [e * (rho / en) for e in eta]
    with torch.no_grad():
        for p, t in zip(params, theta):
            p.copy_(t)
    return loss0, best, best_delta


@exact_float32()
def worst_case_sharpness(model: nn.Module, loss_fn: LossFn, batches: Iterable[Batch], rho: float,
                         steps: int = 5, adaptive: bool = False, quotient: bool = False,
                         step_size: float | None = None, ridge: float = 1e-10) -> dict:
    """Worst-case sharpness max_{||delta|| <= rho} L_B(theta + delta) - L_B(theta), averaged over batches.

    Estimated per batch by ``steps`` steps of normalised projected gradient ascent from delta = 0 (step
    ``step_size``, default rho, so the first iterate is the first-order maximiser rho g / ||g||); the
    value is the best increase seen, max_k L_B(theta + delta_k) - L_B(theta) >= 0, a lower bound on the
    true maximum.

    - ``adaptive``: delta = |w| * eta elementwise with ||eta|| <= rho (the scale-aware measure of Kwon
      et al. 2021 / Andriushchenko et al. 2023); gradients w.r.t. eta are |w| * g.
    - ``quotient``: the ascent is restricted to the orthogonal complement of the symmetry orbits at
      theta: u = P grad L_B(theta + delta_k), delta_{k+1} = P(delta_k + step u / ||u||), rescaled into
      the ball. Not combined with ``adaptive``.

    Returns {"value": mean_B increase, "rel": mean_B increase / (1 + L_B(theta)), "loss": mean_B
    L_B(theta), "per_batch": [increase per batch]}. Leaves the model as it was.
    """
    if not rho > 0:
        raise ValueError(f"rho must be > 0, got {rho}")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if adaptive and quotient:
        raise ValueError("adaptive and quotient worst-case sharpness are not combined")
    step = float(rho if step_size is None else step_size)
    values, rels, losses = [], [], []
    with _preserved(model):
        params = _trainable(model)
        theta = [p.detach().clone() for p in params]
        scale = [t.abs() for t in theta] if adaptive else None
        proj = quotient_projector(model, ridge) if quotient else None
        for x, y in batches:
            x, y = _to_device(model, x), _to_device(model, y)
            l0, inc, _ = _ascent(model, loss_fn, x, y, float(rho), int(steps), step, scale, proj, params,
                                 theta)
            values.append(inc)
            rels.append(inc / (1.0 + l0))
            losses.append(l0)
    if not values:
        raise ValueError("worst_case_sharpness needs at least one batch")
    mean = lambda v: float(sum(v) / len(v))  # noqa: E731
    return {"value": mean(values), "rel": mean(rels), "loss": mean(losses), "per_batch": values}


# ---------------------------------------------------------------------------------------------------
# Gradient disagreement and the empirical Fisher


@exact_float32()
def batch_gradients(model: nn.Module, loss_fn: LossFn, batches: Iterable[Batch]) -> Tensor:
    """The flattened gradients of L_B for each batch, stacked (M x num_params)."""
    out = []
    with _preserved(model):
        params = _trainable(model)
        for x, y in batches:
            _, g = _loss_and_grad(model, loss_fn, _to_device(model, x), _to_device(model, y), params)
            out.append(_flat(g).detach())
    return torch.stack(out)


@exact_float32()
def gradient_disagreement(model: nn.Module, loss_fn: LossFn, batches: Iterable[Batch]) -> float:
    """E over ordered pairs (a != b) of batches of ||g_b|| (1 - cos(g_a, g_b)).

    With M batch gradients, the mean over all M (M - 1) ordered pairs of
    ||g_b|| - <g_a, g_b> / ||g_a|| (how much of batch b's gradient a step along batch a's direction
    fails to follow). NaN for fewer than two batches; a zero gradient g_a counts as cos = 0.
    """
    grads = batch_gradients(model, loss_fn, batches).double()
    m = grads.shape[0]
    if m < 2:
        return float("nan")
    gram = grads @ grads.T
    norms = gram.diagonal().clamp_min(0).sqrt()
    inv = torch.where(norms > 0, 1.0 / norms, torch.zeros_like(norms))
    # term[a, b] = ||g_b|| - <g_a, g_b> / ||g_a||
    term = norms[None, :] - gram * inv[:, None]
    off = ~torch.eye(m, dtype=torch.bool, device=term.device)
    return float(term[off].mean())


@exact_float32()
def fisher_trace(model: nn.Module, loss_fn: LossFn, inputs: Tensor, targets: Tensor,
                 chunk_size: int | None = 32) -> float:
    """Trace of the empirical Fisher, (1/n) sum_i ||grad_theta loss_fn(f(x_i), y_i)||^2.

    Per-sample gradients with torch.func (vmap of grad over ``chunk_size`` samples at a time), falling
    back to a loop over samples if the loss cannot be vmapped. Leaves the model as it was.
    """
    from torch.func import functional_call, grad, vmap

    n = inputs.shape[0]
    if n == 0:
        return float("nan")
    step = n if chunk_size is None else max(1, int(chunk_size))
    total = 0.0
    with _preserved(model):
        names = [k for k, p in model.named_parameters() if p.requires_grad]
        params = {k: p.detach() for k, p in model.named_parameters() if p.requires_grad}
        frozen = {k: p.detach() for k, p in model.named_parameters() if not p.requires_grad}
        buffers = {k: b for k, b in model.named_buffers()}

        def loss_one(p: dict, x: Tensor, y: Tensor) -> Tensor:
            out = functional_call(model, ({**p, **frozen}, buffers), (x.unsqueeze(0),))
            return loss_fn(out, y.unsqueeze(0))

        per_sample = vmap(grad(loss_one), in_dims=(None, 0, 0))
        x_all, y_all = _to_device(model, inputs), _to_device(model, targets)
        for start in range(0, n, step):
            x, y = x_all[start:start + step], y_all[start:start + step]
            try:
                g = per_sample(params, x, y)
                sq = sum(g[k].reshape(x.shape[0], -1).double().pow(2).sum(1) for k in names)
                total += float(sq.sum())
            except (RuntimeError, NotImplementedError):
                plist = _trainable(model)
                for i in range(x.shape[0]):
                    _, gi = _loss_and_grad(model, loss_fn, x[i:i + 1], y[i:i + 1], plist)
                    total += float(sum(t.double().pow(2).sum() for t in gi))
    return total / n


# ---------------------------------------------------------------------------------------------------
# The trainer's entry point


FLATNESS_DEFAULTS: dict[str, dict] = {
    # Hutchinson Tr(PHP) on n training points (+ Tr(H) from the same probes, + the exact closed-form gap)
    "quotient_trace": {"probes": 20, "n": 256, "full_trace": True, "gap": True, "chunk_size": None},
    # l2 worst-case sharpness: `batches` disjoint minibatches, `steps` ascent steps in the rho-ball
    "worst_case": {"rho": 0.05, "steps": 5, "batches": 4, "batch_size": 128, "step_size": None},
    # adaptive (|w|-scaled) worst-case sharpness
    "adaptive": {"rho": 0.5, "steps": 5, "batches": 4, "batch_size": 128, "step_size": None},
    # worst-case sharpness restricted to the quotient (orthogonal to the symmetry orbits)
    "quotient_worst": {"rho": 0.05, "steps": 5, "batches": 4, "batch_size": 128, "step_size": None},
    # gradient disagreement over all ordered pairs of `batches` disjoint minibatches
    "disagreement": {"batches": 8, "batch_size": 20},
    # trace of the empirical Fisher on n training points
    "fisher": {"n": 256, "chunk_size": 32},
}


def conf_flatness_default(enabled: bool = False) -> dict:
    """The ``metrics.flatness`` config block: every measure off (null), or on with its defaults."""
    return {k: (dict(v) if enabled else None) for k, v in FLATNESS_DEFAULTS.items()}


def _resolve(settings: Mapping | None) -> dict[str, dict]:
    """Fill each switched-on measure's settings from the defaults; None / False / absent = off."""
    if settings is None:
        return {}
    if not isinstance(settings, Mapping):
        raise TypeError(f"metrics.flatness must be a mapping, got {type(settings).__name__}")
    out = {}
    for key in settings:
        if key not in FLATNESS_DEFAULTS:
            raise ValueError(f"unknown metrics.flatness key '{key}' (known: {', '.join(FLATNESS_DEFAULTS)})")
        val = settings[key]
        if val is None or val is False:
            continue
        cfg = dict(FLATNESS_DEFAULTS[key])
        if val is not True:
            if not isinstance(val, Mapping):
                raise TypeError(f"metrics.flatness.{key} must be a mapping, true or null, got {val!r}")
            for k in val:
                if k not in cfg:
                    raise ValueError(f"unknown setting metrics.flatness.{key}.{k} (known: {', '.join(cfg)})")
                cfg[k] = val[k]
        out[key] = cfg
    return out



# value checks of the measures' settings: key -> (kind, lowest value, strictly above it)
_CHECKS = {"probes": (int, 0, True), "n": (int, 0, True), "steps": (int, 0, True), "batches": (int, 0, True),
           "batch_size": (int, 0, True), "chunk_size": (int, 0, True), "rho": (float, 0, False),
           "step_size": (float, 0, True), "full_trace": (bool, None, None), "gap": (bool, None, None)}


def check_settings(settings: Mapping | None) -> dict[str, dict]:
    """The switched-on measures' settings, filled from the defaults; ValueError (one line) for an
    unknown measure or key and for a value of the wrong type or range (null: the default where allowed)."""
    try:
        resolved = _resolve(settings)
    except TypeError as exc:
        raise ValueError(str(exc)) from None
    for key, cfg in resolved.items():
        for k, v in cfg.items():
            kind, low, strict = _CHECKS.get(k, (None, None, None))
            if kind is None or (v is None and FLATNESS_DEFAULTS[key].get(k) is None):
                continue
            where = f"metrics.flatness.{key}.{k}"
            if kind is bool:
                if not isinstance(v, bool):
                    raise ValueError(f"{where} must be true or false, got {v!r}")
                continue
            if isinstance(v, bool) or not isinstance(v, (int, float)) or (kind is int and v != int(v)):
                raise ValueError(f"{where} must be {'an integer' if kind is int else 'a number'}, got {v!r}")
            if not (v > low if strict else v >= low):
                raise ValueError(f"{where} must be {'>' if strict else '>='} {low}, got {v!r}")
    return resolved

def _subset(n_total: int, n: int | None, generator: torch.Generator | None) -> Tensor:
    perm = torch.randperm(n_total, generator=generator)
    return perm if n is None else perm[: min(int(n), n_total)]


def _batches(x: Tensor, y: Tensor, count: int, size: int, generator: torch.Generator | None) -> list[Batch]:
    """``count`` disjoint random minibatches of ``size`` (as many as fit, at least one)."""
    n = x.shape[0]
    size = max(1, min(int(size), n))
    count = max(1, min(int(count), n // size))
    idx = torch.randperm(n, generator=generator)[: count * size].view(count, size)
    return [(x[i], y[i]) for i in idx]


@exact_float32()
def extra_metrics(model: nn.Module, loss_fn: LossFn, train_x: Tensor, train_y: Tensor,
                  settings: Mapping | None, generator: torch.Generator | None) -> dict[str, float]:
    """Every switched-on measure of ``metrics.flatness``, as flat parquet columns.

    ``train_x``/``train_y``: training points to draw from (``loss_fn(model(x), y)`` must work on any
    subset); every random choice (subsets, batches, probes) comes from ``generator`` in a fixed order.
    Columns: quotient_trace, quotient_trace_se [+ hessian_trace, hessian_trace_se with full_trace,
    + quotient_trace_gap with gap] | sharpness_worst, sharpness_worst_rel | sharpness_adaptive,
    sharpness_adaptive_rel | sharpness_worst_quotient, sharpness_worst_quotient_rel |
    grad_disagreement | fisher_trace. The model is left exactly as it was.
    """
    cfg = _resolve(settings)
    out: dict[str, float] = {}
    if not cfg:
        return out
    with _preserved(model):  # one guard around everything (each function also guards itself)
        if "quotient_trace" in cfg:
            c = cfg["quotient_trace"]
            idx = _subset(train_x.shape[0], c["n"], generator)
            x, y = train_x[idx], train_y[idx]
            r = hutchinson_traces(model, loss_fn, x, y, int(c["probes"]), generator,
                                  chunk_size=c["chunk_size"])
            out["quotient_trace"], out["quotient_trace_se"] = r["quotient"], r["quotient_se"]
            if c["full_trace"]:
                out["hessian_trace"], out["hessian_trace_se"] = r["full"], r["full_se"]
            if c["gap"]:
                out["quotient_trace_gap"] = quotient_trace_gap(model, loss_fn, x, y)
        drawn: dict[tuple[int, int], list[Batch]] = {}  # same batches for equal (batches, batch_size)
        for key, col, kwargs in (("worst_case", "sharpness_worst", {}),
                                 ("adaptive", "sharpness_adaptive", {"adaptive": True}),
                                 ("quotient_worst", "sharpness_worst_quotient", {"quotient": True})):
            if key not in cfg:
                continue
            c = cfg[key]
            spec = (int(c["batches"]), int(c["batch_size"]))
            if spec not in drawn:
                drawn[spec] = _batches(train_x, train_y, *spec, generator)
            r = worst_case_sharpness(model, loss_fn, drawn[spec], float(c["rho"]), int(c["steps"]),
                                     step_size=c["step_size"], **kwargs)
            out[col], out[col + "_rel"] = r["value"], r["rel"]
        if "disagreement" in cfg:
            c = cfg["disagreement"]
            batches = _batches(train_x, train_y, int(c["batches"]), int(c["batch_size"]), generator)
            out["grad_disagreement"] = gradient_disagreement(model, loss_fn, batches)
        if "fisher" in cfg:
            c = cfg["fisher"]
            idx = _subset(train_x.shape[0], c["n"], generator)
            out["fisher_trace"] = fisher_trace(model, loss_fn, train_x[idx], train_y[idx], c["chunk_size"])
    return out
