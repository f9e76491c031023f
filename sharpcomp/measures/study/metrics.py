r"""Sharpness and representation-geometry metrics of a model on a fixed sample set.

The study's definitions are in ``docs/science.md``.

Index conventions (used throughout): ``i`` sample (n of them), ``k`` output of the representation
f (N of them, f flattened per sample), ``m`` input entry (x flattened, M of them), ``p`` parameter
entry (theta = the trainable parameters that influence f).

Definitions, per sample i:

* ``J_i[k, m] = d f_k(x_i) / d x_m``, ``K_i = J_i J_i^T`` (N x N) with eigenvalues
  ``lambda_{i,1} >= ... >= lambda_{i,N} >= 0``;
* ``S_i = sum_k ||d f_k(x_i) / d theta||^2``, ``G_i = ||J_i||_F^2 = sum_k lambda_{i,k}``;
* ``log_volume_i = 1/2 sum_{k <= r} log lambda_{i,k}`` (r = ``log_volume_rank``, default N);
* ``mls_i = sqrt(lambda_{i,1})``, ``local_dim_i = (sum_k lambda_{i,k})^2 / sum_k lambda_{i,k}^2``;

and every metric column is the mean over i: ``sharpness = mean_i S_i`` etc. The bounds of Eq. 28 need
a fully connected first layer ``z = W x + b`` acting on the raw input: then ``J_i = D_i W`` with
``D_i = d f(x_i) / d z`` (N x d), ``d f_k / d W = D_i[k]^T x_i^T`` so ``||d f(x_i)/dW||_F = ||D_i||_F ||x_i||``
(summed over k, like S), and

* ``bound_b = ||W||_2 mean_i ||D_i||_F``   (= ``||W||_2 mean_i ||df(x_i)/dW||_F / ||x_i||``),
* ``bound_c = ||W||_2 sqrt(mean_i ||x_i||^-2) sqrt(mean_i ||df(x_i)/dW||_F^2)``,
* ``bound_d = ||W||_2 sqrt(mean_i ||x_i||^-2) sqrt(sharpness)``,

so ``mls <= bound_b <= bound_c <= bound_d`` (``||J_i||_2 <= ||D_i||_F ||W||_2``, Cauchy-Schwarz, and
``||df/dW||^2 <= S_i``). Otherwise (e.g. a convolutional first layer) they are NaN and
``bounds_reason`` says why.

Computation. One forward pass over a chunk of samples records, by module hooks, the input ``a`` and
output of every module owning trainable parameters. Then, for each output k, one backward pass of the
cotangent ``e_k`` (the same for all samples; samples are independent in eval mode) through the same
graph gives, at once and for every sample, row k of ``J_i`` (the gradient w.r.t. the inputs) and the
gradient ``g`` of ``f_k`` w.r.t. each recorded module output. Parameter gradients are never formed by
autograd: each module turns ``(a, g)`` into per-sample squared norms (:mod:`sharpcomp.measures.study._layer_rules`):
for a Linear layer ``||g a^T||^2 = ||g||^2 ||a||^2`` and ``||g||^2`` for the bias; for a convolution
either the per-sample weight gradient ``sum_p g_p a_p^T`` over unfolded patches ``a_p`` is materialised,
or the Gram form ``sum_{p,q} (g_p . g_q)(a_p . a_q)`` is used, whichever costs fewer operations for
that layer's shapes. ``K_i`` is formed in float64 and diagonalised by ``eigvalsh``.

Backward passes: the default (``BACKWARD_MODE = "loop"``) is one forward and N backward calls through
the retained graph. Measured alternatives, kept as options: ``"vmap"`` (``is_grads_batched``: one
vmapped backward per COTANGENT_CHUNK outputs; max-pool backward has no batching rule, so it falls back
to a slow per-cotangent loop: slower on vgg10, slightly faster on mlp4) and ``"replicate"`` (a forward
of stacked copies of the chunk, one backward: pays N forwards, slower on vgg10).

Assumptions: samples are independent (eval mode, no batch statistics) and every parameter enters the
computation only through the forward of the module that owns it (parameters shared by two modules
are refused; a module called several times is fine). Modules other than Linear/Conv1d/Conv2d that own
parameters get per-sample gradients from ``torch.func`` (vmap of grad), slower but exact.

Zero eigenvalues. Eigenvalues below ``lambda_{i,1} * max(N eps_64, (N eps)^2)`` count as zero, where
``eps`` is the machine epsilon of the computation dtype: the first term is the round-off level of the
float64 eigensolver, the second that of singular values of a J_i computed in that dtype (so exact zeros,
e.g. from inactive ReLU units of a middle-layer representation or from N > M, are recognised in float32
as well; in float32 a genuine ``sqrt(lambda_k / lambda_1)`` below ~N * 1e-7 is not resolvable and
counts as zero too). A zero among the kept ``r`` eigenvalues makes ``log_volume_i = -inf``, hence the
mean ``log_volume = -inf``; the per-sample values show which samples (a lower ``log_volume_rank``
avoids it). A sample with ``J_i = 0`` has ``mls_i = 0`` and ``local_dim_i = 0`` (a locally constant
representation has no local dimensions).
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from sharpcomp.measures.declaration import Column, Measure, setting
from sharpcomp.measures.linalg.operator_norms import spectral_norm
from sharpcomp.measures.linalg.precision import exact_float32
from sharpcomp.measures.sample import Sample
from sharpcomp.measures.study._layer_rules import rule_for
from sharpcomp.measures.study._spectra import spectral_values
from sharpcomp.measures.study.network_wide import LayerGradients, add_network_wide
from sharpcomp.models import eval_mode

# The study's metric columns, in the paper's order (the first columns of the declaration below).
METRIC_NAMES = ("sharpness", "G", "log_volume", "mls", "local_dim", "bound_b", "bound_c", "bound_d")
PER_SAMPLE_NAMES = ("sharpness", "G", "log_volume", "mls", "local_dim", "grad_W_norm", "x_norm")

# Outputs differentiated per batched backward pass (bounds the memory of the output gradients).
COTANGENT_CHUNK = 16
# How the N backward passes run: "loop" (one forward, N backward calls), "vmap" (one forward, batched
# backward calls via is_grads_batched), "replicate" (forward of stacked copies of the chunk, one
# backward call per COTANGENT_CHUNK outputs).
BACKWARD_MODE = "loop"
# Outputs N from which compute_metrics warns of its cost (N backward passes per chunk of samples).
LARGE_OUTPUTS = 256
# Seconds of metric work after which a progress bar appears.
PROGRESS_AFTER = 3.0
# Seconds of backward passes after which, for N over LARGE_OUTPUTS, the time of all of them is projected.
ESTIMATE_AFTER = 2.0


@exact_float32()
def compute_metrics(model: nn.Module, inputs: Tensor, *, layer: str | None = None,
                    log_volume_rank: int | None = None, dtype: torch.dtype = torch.float32,
                    chunk_size: int | None = None, per_sample: bool = False,
                    progress: bool | None = None, network_wide: bool = False) -> dict:
    """The study's metric columns of ``model`` on the samples ``inputs`` (n, ...); see the module docstring.

    Args:
        model: maps a batch of inputs to outputs; evaluated in eval mode (BatchNorm's running
            statistics, no dropout), whatever its mode. Left untouched (modes restored).
        inputs: the sample set, one sample per row.
        layer: name (as in ``model.named_modules()``) of the module whose output is f; default: the
            model output.
        log_volume_rank: number of top eigenvalues kept in ``log_volume`` (default: all N).
        dtype: computation dtype; with float64 the work is done on a float64 deep copy of the model.
        chunk_size: at most this many samples per forward pass (memory); results do not depend on it.
        per_sample: also return ``"per_sample"``: numpy arrays of length n, keys ``PER_SAMPLE_NAMES``.
        progress: a progress bar over the N backward passes per chunk, shown once the work has taken
            ``PROGRESS_AFTER`` seconds (None: on a terminal only; False: never). With N over
            ``LARGE_OUTPUTS`` a warning says the number of passes and the time they will take, projected
            from the first of them once they have taken ``ESTIMATE_AFTER`` seconds.
        network_wide: also the network-wide columns (:mod:`sharpcomp.measures.study.network_wide`: NMLS, NVR,
            their bounds), gathered in the same forward and backward passes.

    A ``log_volume`` of -inf (a zero eigenvalue among the kept ones) comes with a RuntimeWarning saying
    why: how many samples, the rank of ``K_i`` against the N kept, and the ``log_volume_rank`` that avoids it.

    Returns:
        dict with the 8 ``METRIC_NAMES`` as floats and ``"bounds_reason"`` (None when the bounds are
        defined, else why they are NaN); plus ``"per_sample"`` on request.
    """
    model = _with_dtype(model, dtype)
    device = next((p.device for p in model.parameters()), inputs.device)
    x = inputs.detach().to(device=device, dtype=dtype)
    if x.shape[0] == 0:
        raise ValueError("compute_metrics needs at least one sample")
    if log_volume_rank is not None and log_volume_rank < 1:
        raise ValueError(f"log_volume_rank must be >= 1, got {log_volume_rank}")
    step = x.shape[0] if chunk_size is None else int(chunk_size)
    if step < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    with torch.enable_grad(), eval_mode(model):
        with torch.no_grad():  # N, the number of backward passes per chunk
            num_out = _forward(model, x[:1], layer, clone=False)[0][0].numel()
        with _progress(num_out, x.shape[0], step, layer, progress) as tick:
            parts = [_chunk_metrics(model, x[s:s + step], layer, num_out, log_volume_rank, tick, network_wide)
                     for s in range(0, x.shape[0], step)]
    per = {k: np.concatenate([part.values[k] for part in parts]) for k in parts[0].values}
    rank = per.pop("_rank")
    res = {name: float(np.mean(per[name])) for name in METRIC_NAMES[:5]}
    if res["log_volume"] == -math.inf:
        warnings.warn(log_volume_reason(per["log_volume"], rank, parts[0].num_out, x[0].numel(), log_volume_rank),
                      RuntimeWarning, stacklevel=3)
    first = parts[0].first_layer
    res.update(bounds(parts[0].bounds_reason, None if first is None else first.module.weight, per,
                      per.pop("_D_norm"), res["sharpness"]))
    if network_wide:
        shared = [p.wide for p in parts] if all(p.wide is not None for p in parts) else None
        with torch.enable_grad(), eval_mode(model):  # its own passes where the engine's cannot serve
            add_network_wide(res, model, x, layer=layer, dtype=dtype, chunk_size=chunk_size, shared=shared)
    if per_sample:
        res["per_sample"] = per
    return res


def _with_dtype(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    floats = [t for t in [*model.parameters(), *model.buffers()] if t.is_floating_point()]
    if all(t.dtype == dtype for t in floats):
        return model
    return copy.deepcopy(model).to(dtype)


class _Stop(Exception):
    """Raised by the hook on the representation layer: the rest of the forward pass is not needed."""

    def __init__(self, output: Tensor):
        super().__init__()
        self.output = output


@dataclass
class _Record:
    name: str
    module: nn.Module
    inputs: list = field(default_factory=list)
    outputs: list = field(default_factory=list)
    versions: list = field(default_factory=list)


@dataclass
class _ChunkResult:
    values: dict
    first_layer: _Record | None
    bounds_reason: str | None
    num_out: int = 0
    wide: dict | None = None  # the network-wide values of the chunk (LayerGradients), when gathered


@contextlib.contextmanager
def _progress(num_out: int, n: int, step: int, layer: str | None, show: bool | None):
    """A ``tick(passes)`` callable over every backward pass of the computation (N = ``num_out`` per chunk).

    A tqdm bar appears after ``PROGRESS_AFTER`` seconds. For N over ``LARGE_OUTPUTS``, once the passes have
    taken ``ESTIMATE_AFTER`` seconds (and a twentieth of them is timed), one warning gives the time all of
    them will take: the work up to the first pass, and the rest at the rate measured since.
    """
    total = num_out * -(-n // step)
    start = time.perf_counter()
    bar = tqdm(total=total, desc="metrics", unit="pass", delay=PROGRESS_AFTER, leave=False,
               disable=None if show is None else not show, dynamic_ncols=True, mininterval=0.5)
    state = {"done": 0, "warned": num_out <= LARGE_OUTPUTS, "first": None}

    def tick(passes: int = 1) -> None:
        bar.update(passes)
        state["done"] += passes
        elapsed = time.perf_counter() - start
        if state["first"] is None:  # the work before the first pass (forward, set-up) is paid once
            state["first"] = (state["done"], elapsed)
            return
        first_done, first_at = state["first"]
        measured = state["done"] - first_done
        if state["warned"] or elapsed < ESTIMATE_AFTER or measured * 20 < total or state["done"] >= total:
            return
        state["warned"] = True
        projected = first_at + (elapsed - first_at) / measured * (total - first_done)
        warnings.warn(f"compute_metrics: N = {num_out} outputs of {layer or 'the network'}: {total} backward passes "
                      f"over {n} samples, about {projected:.2g} s (projected from the first {state['done']}; "
                      f"choose a smaller layer or fewer samples to cut it)", RuntimeWarning, stacklevel=2)

    try:
        yield tick
    finally:
        bar.close()


def log_volume_reason(log_volume: np.ndarray, rank: np.ndarray, num_out: int, m: int, kept: int | None) -> str:
    """Why the mean log_volume is -inf, in one line."""
    bad = ~np.isfinite(log_volume)
    r = num_out if kept is None else min(kept, num_out)
    lo, hi = int(rank[bad].min()), int(rank[bad].max())
    ranks = f"{lo}" if lo == hi else f"{lo}..{hi}"
    why = f"N = {num_out} outputs > M = {m} inputs" if num_out > m else f"rank {ranks} < {r}"
    fix = f"; log_volume_rank={int(rank.min())} keeps only non-zero eigenvalues" if rank.min() > 0 else ""
    return (f"log_volume = -inf: {int(bad.sum())} of {len(bad)} samples have a zero eigenvalue among the {r} kept "
            f"(K_i = J_i J_i^T of rank {ranks}; {why}){fix}")


def _forward(model: nn.Module, x: Tensor, layer: str | None, clone: bool):
    """Forward pass recording every parametrised module's inputs/outputs; returns (f, records, order)."""
    modules = dict(model.named_modules())
    if layer not in (None, "") and layer not in modules:
        raise ValueError(f"no module named '{layer}' in the model")
    records = {name: _Record(name, m) for name, m in modules.items()
               if next(m.parameters(recurse=False), None) is not None}
    order: list[str] = []

    def record(rec: _Record):
        def hook(module, args, output):
            rec.inputs.append(args[0] if len(args) == 1 and isinstance(args[0], Tensor) else None)
            rec.outputs.append(output)
            rec.versions.append(output._version)
            if rec.name not in order:
                order.append(rec.name)
            return output.clone() if clone else None  # protects `output` from later in-place ops
        return hook

    def stop(module, args, output):
        raise _Stop(output)

    handles = [rec.module.register_forward_hook(record(rec)) for rec in records.values()]
    if layer not in (None, ""):
        handles.append(modules[layer].register_forward_hook(stop))
    try:
        f = model(x)
    except _Stop as s:
        f = s.output
    finally:
        for h in handles:
            h.remove()
    if not isinstance(f, Tensor):
        raise TypeError(f"the representation must be a tensor, got {type(f).__name__}")
    return f, {name: records[name] for name in order}, order


def _chunk_metrics(model: nn.Module, x: Tensor, layer: str | None, num_out: int, rank: int | None, tick=None,
                   wide: bool = False) -> _ChunkResult:
    n = x.shape[0]
    per_pass = num_out if BACKWARD_MODE == "loop" else min(COTANGENT_CHUNK, num_out)
    jac = x.new_zeros(n, num_out, x[0].numel())
    sharp = torch.zeros(n, dtype=torch.float64, device=x.device)
    first_out_sq = torch.zeros_like(sharp)  # sum_k ||d f_k / d z||^2 for the first layer z = W x + b
    first_used = False
    state = None
    for k0 in range(0, num_out, per_pass):
        ks = torch.arange(k0, min(k0 + per_pass, num_out))
        if state is None or BACKWARD_MODE == "replicate":
            state = _Pass(model, x, layer, len(ks) if BACKWARD_MODE == "replicate" else 1, num_out,
                          wide and BACKWARD_MODE != "replicate")
        state.tick = tick
        j, sq, first_sq = state.backward(ks, last=BACKWARD_MODE == "replicate" or int(ks[-1]) == num_out - 1)
        jac[:, k0:k0 + len(ks)] = j.transpose(0, 1)
        sharp += sq
        if first_sq is not None:
            first_used = True
            first_out_sq += first_sq
    values = spectral_values(jac, rank)
    values["sharpness"] = sharp
    values["x_norm"] = x.detach().reshape(n, -1).double().norm(dim=1)
    reason = _bounds_reason(state.first, x, layer, first_used, state.trainable)
    values["grad_W_norm"] = (first_out_sq.sqrt() * values["x_norm"] if reason is None
                             else torch.full_like(sharp, math.nan))
    values["_D_norm"] = first_out_sq.sqrt()
    return _ChunkResult({k: v.detach().cpu().numpy() for k, v in values.items()}, state.first, reason, num_out,
                        None if state.wide is None else state.wide.values())


class _Pass:
    """One recorded forward pass of ``copies`` stacked copies of the chunk x, and its backward passes."""

    def __init__(self, model: nn.Module, x: Tensor, layer: str | None, copies: int, num_out: int,
                 wide: bool = False):
        self.n, self.copies = x.shape[0], copies
        self.tick = None  # called with the number of backward passes done (progress)
        self.x = (x.repeat(copies, *[1] * (x.dim() - 1)) if copies > 1 else x.detach()).requires_grad_()
        f, records, order = _forward(model, self.x, layer, clone=False)
        if any(o._version != v for r in records.values() for o, v in zip(r.outputs, r.versions)):
            f, records, order = _forward(model, self.x, layer, clone=True)  # an output was changed in place
        self.f = f.reshape(f.shape[0], -1)
        self.first = records[order[0]] if order else None
        owners = [id(p) for r in records.values() for p in r.module.parameters(recurse=False)]
        if len(owners) != len(set(owners)):
            raise NotImplementedError("a parameter owned by two modules: per-sample norms need one owner")
        self.trainable = {name: {k: p for k, p in r.module.named_parameters(recurse=False) if p.requires_grad}
                          for name, r in records.items()}
        self.wanted = [r for r in records.values() if (self.trainable[r.name] or r is self.first)
                       and all(o.requires_grad for o in r.outputs)]
        self.rules = {r.name: rule_for(r.module, self.trainable[r.name],
                                       [None if a is None else a[:self.n] for a in r.inputs], num_out)
                      for r in self.wanted if self.trainable[r.name]}
        self.targets = [self.x] + [o for r in self.wanted for o in r.outputs]
        self.wide = None  # network-wide quantities from these passes (network_wide.LayerGradients)
        if wide and layer in (None, ""):
            self.wide = LayerGradients.create(list(records.values()), self.trainable, self.wanted, self.n, num_out)
            self.targets += [] if self.wide is None else self.wide.targets

    def backward(self, ks: Tensor, last: bool):
        """Backward passes of the cotangents e_k, k in ks.

        Returns rows ks of every J_i (v, n, M), the per-sample sum over ks of squared parameter-gradient norms
        (n,), and sum_k ||d f_k/d z||^2 (n,) for a Linear first layer z = W x + b (None when f does not
        depend on it).
        """
        n = self.n
        sharp = torch.zeros(n, dtype=torch.float64, device=self.x.device)
        first_sq = None
        jac = self.x.new_zeros(len(ks), n, self.x[0].numel())
        if not self.f.requires_grad:
            return jac, sharp, first_sq
        for sub, grads in self._grads(ks, last):
            if self.tick is not None:
                self.tick(len(sub))
            if grads[0] is not None:
                jac[sub.start:sub.stop] = grads[0].reshape(len(sub), n, -1)
            pos = 1
            for r in self.wanted:
                gs = grads[pos:pos + len(r.outputs)]
                pos += len(r.outputs)
                if all(g is None for g in gs):
                    continue
                gs = [torch.zeros(len(sub), n, *o.shape[1:], dtype=o.dtype, device=o.device) if g is None else g
                      for g, o in zip(gs, r.outputs)]
                if r.name in self.rules:
                    sqs = self.rules[r.name].sq_norms(gs)
                    for sq in sqs.values():
                        sharp += sq.sum(0)
                    if self.wide is not None and r.name in self.wide.index:
                        self.wide.add_outputs(r.name, gs, sqs)
                if r is self.first:
                    first_sq = 0 if first_sq is None else first_sq
                    if isinstance(r.module, nn.Linear):
                        first_sq = first_sq + sum(g.reshape(len(sub), n, -1).square().sum((0, 2)) for g in gs)
            if self.wide is not None:
                self.wide.add_inputs(ks[sub.start:sub.stop], grads[pos:])
        return jac, sharp, first_sq

    def _grads(self, ks: Tensor, last: bool):
        """Yields (positions in ks, gradients (v, n, ...) of f . e_k w.r.t. self.targets, None if unused)."""
        v, n = len(ks), self.n
        if self.copies > 1:  # copy c of the samples carries cotangent e_{ks[c]}
            cot = torch.zeros_like(self.f).reshape(v, n, -1)
            cot[torch.arange(v, device=cot.device), :, ks.to(cot.device)] = 1
            grads = torch.autograd.grad(self.f, self.targets, cot.reshape(v * n, -1), retain_graph=not last,
                                        allow_unused=True)
            yield range(v), [None if g is None else g.reshape(v, n, *g.shape[1:]) for g in grads]
        elif BACKWARD_MODE == "vmap":
            cot = self.f.new_zeros(v, *self.f.shape)
            cot[torch.arange(v, device=cot.device), :, ks.to(cot.device)] = 1
            yield range(v), torch.autograd.grad(self.f, self.targets, cot, retain_graph=not last,
                                                allow_unused=True, is_grads_batched=True)
        else:
            for c, k in enumerate(ks.tolist()):
                cot = torch.zeros_like(self.f)
                cot[:, k] = 1
                grads = torch.autograd.grad(self.f, self.targets, cot, retain_graph=not last or c < v - 1,
                                            allow_unused=True)
                yield range(c, c + 1), [None if g is None else g.unsqueeze(0) for g in grads]


def _bounds_reason(first: _Record | None, x: Tensor, layer: str | None, used: bool,
                   trainable: dict) -> str | None:
    if first is None:
        return (f"the representation {layer} does not depend on any parametrised layer" if layer
                else "the model has no parametrised first layer")
    where = f"first layer {first.name}"
    if isinstance(first.module, nn.modules.conv._ConvNd):
        return conv_first_reason(first.name)
    if not isinstance(first.module, nn.Linear):
        return f"{where} ({type(first.module).__name__}) is not fully connected (Eq. 28 needs z = W x + b)"
    a = first.inputs[0]
    flat = x.detach().reshape(x.shape[0], -1)
    if len(first.inputs) > 1 or a is None or a.shape != flat.shape or not torch.equal(a.detach(), flat):
        return f"{where} does not act once on the raw flattened input x (Eq. 28 needs z = W x + b)"
    if not used:
        return f"the representation {layer} does not depend on {where}"
    if "weight" not in trainable[first.name]:
        return f"the weight of {where} is frozen, so it is not part of theta (bound_d needs it)"
    return None


def conv_first_reason(name: str) -> str:
    """Why the bounds are NaN for a network whose first layer ``name`` is a convolution."""
    return f"first layer {name} is convolutional: bounds of Eq. 28 need a fully connected first layer"


def bounds(reason: str | None, weight: Tensor | None, per: dict, d_norm: np.ndarray, sharpness: float) -> dict:
    """The bound columns from the per-sample values.

    Uses ``x_norm``, ``grad_W_norm``, the per-sample ``||D_i||_F`` and the first layer's weight W; NaN
    with ``reason`` when that is not None.
    """
    nan = float("nan")
    if reason is not None:
        return {"bound_b": nan, "bound_c": nan, "bound_d": nan, "bounds_reason": reason}
    w_norm = spectral_norm(weight)
    with np.errstate(divide="ignore"):
        inv_x = math.sqrt(float(np.mean(1.0 / per["x_norm"] ** 2)))
    return {"bound_b": w_norm * float(np.mean(d_norm)),
            "bound_c": w_norm * inv_x * math.sqrt(float(np.mean(per["grad_W_norm"] ** 2))),
            "bound_d": w_norm * inv_x * math.sqrt(sharpness),
            "bounds_reason": None}


# ---------------------------------------------------------------------------------------------------
# the declaration


@dataclass(frozen=True)
class Settings:
    """The study's settings, directly under ``metrics`` (checked with the run's settings)."""

    layer: str = setting(None, kind=str, doc="submodule whose output is the representation (null: the output)")
    log_volume_rank: int = setting(None, kind=int, above=0, doc="keep the top-k eigenvalues in log_volume")
    chunk_size: int = setting(None, kind=int, above=0, doc="samples per chunk of the metric engine (memory)")
    dtype: str = setting("float32", choices=("float32", "float64"), doc="computation dtype")


def compute(sample: Sample, s: Settings) -> dict:
    """The study's columns on the sample's points (all of them; the targets are not used)."""
    dtype = {"float32": torch.float32, "float64": torch.float64}[s.dtype]
    out = compute_metrics(sample.model, sample.x, layer=s.layer, log_volume_rank=s.log_volume_rank,
                          dtype=dtype, chunk_size=s.chunk_size, progress=False)
    sample.shared["sharpness"] = out["sharpness"]
    return out


_STAYS = ("G", "log_volume", "mls", "local_dim", "bound_b", "bound_c")

MEASURE = Measure(
    function=compute_metrics,
    name="metrics", family="study", cadence="checkpoint", config="metrics", settings=Settings, compute=compute,
    summary="the study's sharpness S and compression G, log volume, MLS, local dimensionality, and the bounds "
            "of Eq. 28 (mls <= bound_b <= bound_c <= bound_d)",
    columns=(*(Column(c) for c in METRIC_NAMES),
             Column("bounds_reason", kind="text", role="diagnostic", of="bound_b", doc="why the bounds are NaN"),
             Column("sharpness_se", role="se", of="sharpness", doc="matrix-free estimates only"),
             Column("G_se", role="se", of="G"), Column("local_dim_se", role="se", of="local_dim"),
             Column("mls_err", role="diagnostic", of="mls", doc="power iteration's residual"),
             Column("probes", kind="int", role="diagnostic", of="sharpness", doc="probes of the estimates")),
    reparam={"sharpness": "moves", "bound_d": "moves", **dict.fromkeys(_STAYS, "stays")})
