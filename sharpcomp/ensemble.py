"""Vectorised ensembles: many runs of the same network trained in lockstep in one process (issue 6).

Runs that share data, model, batch size, loss, steps and checkpoint settings -- typically a sweep
over learning rate and seed, like fig1's 3 x 5 -- are trained together with ``torch.func``: the
members' parameters are stacked along a leading axis (``stack_module_state``), and one
``vmap(grad_and_value(...))`` over ``functional_call`` gives every member's loss and gradient on its
own minibatch in one call. Each member keeps exactly what it would have as a separate run
(``sharpcomp.train.train``):

- initial weights: ``build_model(..., seed=seed)``, as ``train`` builds them;
- data order: ``epoch_permutation(seed, epoch, n)``; each step gathers a (k, batch, ...) tensor of the
  members' minibatches;
- plain SGD with its own learning rate, ``p_k -= lr_k * g_k`` (only ``optim=sgd``: momentum-free SGD
  has no optimizer state, so a stacked update is the whole optimizer; SAM is rejected);
- loss: the mean over the member's minibatch of ``train.make_loss`` (MSE against one-hot targets,
  averaged over batch and outputs, or cross-entropy), so member k's gradient is that of its own loss;
- records: the same ``metrics.parquet`` rows (``train.run_identity`` run ids, identity columns,
  ``train.checkpoint_rows`` for the metric columns) and the same ``checkpoint.pt`` (per-member
  ``model_state`` and a ``torch.optim.SGD`` ``optimizer_state``), so a run started in an ensemble can
  be resumed by ``train`` and vice versa, and a figure cannot tell the difference. ``wall_time`` is
  the ensemble's elapsed time (plus the member's time before a resume).

Checkpoints: the training loop never waits for the device: minibatch indices are gathered on the
device, running losses are summed there, and the host reads them only at a checkpoint. There, the
whole-set evaluations (train and test loss and accuracy) are one stacked forward pass over members
too, and so are the sample-set metrics (:mod:`sharpcomp.metrics_stacked`: one forward and N backward
passes of the stacked network for all members instead of per member; the results equal
``metrics.compute_metrics`` member by member). ``scripts/bench_ensemble.py`` measures both against
the member-by-member way, and their share of a checkpoint.

Divergence: at a checkpoint, a member whose running loss (or whole-set train loss) is not finite is
recorded ``diverged`` exactly as ``train`` records it, dropped from the stack, and the others go on.

Resume: each member resumes from its own checkpoint. Finished and diverged members are skipped.
Members left at different iterations (e.g. an interrupt between two members' checkpoint writes) are
split by iteration and each part is trained as its own lockstep ensemble, one after another: a
member is never advanced separately to a point where ``train`` would not have checkpointed.

Hydra: ``sharpcomp -m train lr=0.05,0.1,0.2 seed=0,1,2,3,4 hydra/launcher=ensemble`` uses
:class:`EnsembleLauncher`, which prepares every job's folder as the basic launcher does, groups
compatible jobs (:func:`ensemble_key`, at most ``max_members`` per ensemble) and runs leftovers one
by one with the ordinary task function.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import sys
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .data import Dataset, epoch_permutation, steps_per_epoch, train_sample_indices
from .models import samples_per_chunk
from .records import RunRecorder
from .train import (
    ConfigError,
    RunResult,
    _build,
    _num_outputs,
    _plain,
    _save_checkpoint,
    check_writable,
    checkpoint_rows,
    eval_layout,
    load_checkpoint,
    make_loss,
    metric_options,
    per_sample_loss,
    prepare_runtime,
    record_identity,
    run_identity,
    sample_set,
    validate_config,
)

log = logging.getLogger(__name__)

ENSEMBLE_OPTIMS = ("sgd",)
# Settings every member of an ensemble must share (lr and seed may differ; scale_name, progress are
# per member or cosmetic). ``metrics.chunk_size`` only bounds memory and is ignored.
SHARED_KEYS = ("data", "model", "batch", "loss", "optim", "steps", "log_every", "eval_every", "metrics", "device",
               "threads", "deterministic", "data_dir", "cache_dir")

# Timings of the last ensemble (seconds), for benchmarks: train, checkpoint, eval, metrics, write.
LAST_TIMINGS: dict[str, float] = {}


# ---------------------------------------------------------------------------------------------
# compatibility


def _shared(cfg: Mapping) -> dict:
    vals = {k: cfg.get(k) for k in SHARED_KEYS}
    vals["eval_every"] = cfg.get("eval_every", 1)
    vals["optim"] = cfg.get("optim") or {"name": "sgd"}
    vals["deterministic"] = cfg.get("deterministic", True)
    vals["device"] = str(cfg.get("device", "auto"))
    vals["metrics"] = {k: v for k, v in (cfg.get("metrics") or {}).items() if k != "chunk_size"}
    return vals


def ensemble_key(cfg) -> str | None:
    """A string equal for runs that can train in one ensemble; None for a run that cannot be in
    any ensemble (an optimizer other than plain SGD)."""
    cfg = _plain(cfg)
    if (cfg.get("optim") or {}).get("name", "sgd") not in ENSEMBLE_OPTIMS:
        return None
    return json.dumps(_shared(cfg), sort_keys=True, default=str)


def check_compatible(cfgs: Sequence[Mapping]) -> None:
    """ConfigError naming the first setting that keeps these runs from one ensemble."""
    if not cfgs:
        raise ConfigError("an ensemble needs at least one run")
    for cfg in cfgs:
        name = (cfg.get("optim") or {}).get("name", "sgd")
        if name not in ENSEMBLE_OPTIMS:
            raise ConfigError(f"optimizer '{name}' cannot train in an ensemble (only plain sgd: {cfg['lr']=}, "
                              f"seed={cfg['seed']}); run it separately")
    ref = _shared(cfgs[0])
    for cfg in cfgs[1:]:
        other = _shared(cfg)
        for key in SHARED_KEYS:
            if other[key] != ref[key]:
                raise ConfigError(f"runs in one ensemble must share '{key}' (got {ref[key]!r} and {other[key]!r}); "
                                  f"only lr and seed may differ")


def group_compatible(cfgs: Sequence, max_members: int = 32) -> tuple[list[list[int]], list[int]]:
    """Indices of ``cfgs`` grouped into ensembles (each of 2..max_members runs sharing
    :func:`ensemble_key`, in input order) and the leftover indices to run one by one."""
    by_key: dict[str, list[int]] = {}
    single: list[int] = []
    for i, cfg in enumerate(cfgs):
        key = ensemble_key(cfg)
        if key is None:
            single.append(i)
        else:
            by_key.setdefault(key, []).append(i)
    groups = []
    for idx in by_key.values():
        # split into near-equal parts of at most max_members
        parts = max(1, math.ceil(len(idx) / max(1, int(max_members))))
        base, extra = divmod(len(idx), parts)
        pos = 0
        for p in range(parts):
            part = idx[pos:pos + base + (p < extra)]
            pos += len(part)
            (groups.append(part) if len(part) > 1 else single.extend(part))
    return groups, sorted(single)


# ---------------------------------------------------------------------------------------------
# the stacked networks


def _member_loss(loss_name: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """``train.make_loss`` with the target prepared outside ``vmap`` (``F.one_hot`` does not batch):
    MSE against a given one-hot float target, or cross-entropy against labels."""
    if loss_name == "ce":
        return lambda out, target: F.cross_entropy(out, target)
    return lambda out, target: F.mse_loss(out, target)


def _loss_target(loss_name: str, y: torch.Tensor, num_outputs: int, dtype: torch.dtype) -> torch.Tensor:
    return y if loss_name == "ce" else F.one_hot(y, num_outputs).to(dtype)


class StackedSGD:
    """k copies of one architecture with stacked parameters, trained by plain SGD in lockstep.

    ``models``: the members' networks (same architecture, on the training device); ``lrs``: their
    learning rates. ``step(xb, target)`` takes (k, batch, ...) inputs and loss targets and returns
    the (k,) minibatch losses (on the device, no host synchronisation).

    ``impl``: ``"vmap"`` (``torch.func``: ``vmap(grad_and_value(...))`` over ``functional_call``, any
    architecture), ``"grouped"`` (:mod:`sharpcomp._ensemble_ops`: the members' layers as grouped
    convolutions and batched matrix products, autograd for the gradients; ``nn.Sequential`` of
    Conv2d / Linear / ReLU / MaxPool2d / Flatten only, several times faster per step on a CPU), or
    ``"auto"`` (grouped where supported). ``compile``: ``torch.compile`` the step (vmap) or the
    forward pass and loss (grouped; autograd compiles the backward pass with it).
    """

    def __init__(self, models: Sequence[nn.Module], lrs: Sequence[float], loss_name: str, compile: bool = False,
                 impl: str = "auto"):
        from torch.func import functional_call, grad_and_value, stack_module_state, vmap

        from ._ensemble_ops import make_plan, stacked_forward, stacked_losses

        if impl not in ("auto", "grouped", "vmap"):
            raise ValueError(f"unknown ensemble implementation {impl!r} (auto, grouped, vmap)")
        plan = make_plan(models[0])
        if impl == "grouped" and plan is None:
            raise ValueError(f"{type(models[0]).__name__} has layers the grouped implementation does not support")
        self.impl = "grouped" if impl in ("auto", "grouped") and plan is not None else "vmap"
        self.loss_name = loss_name
        params, buffers = stack_module_state(list(models))
        grouped = self.impl == "grouped"
        self.params = {n: p.detach().clone().requires_grad_(grouped) for n, p in params.items()}
        self.buffers = {n: b.detach().clone() for n, b in buffers.items()}
        if grouped and self.buffers:
            raise ValueError("the grouped implementation does not support buffers")
        self.base = copy.deepcopy(models[0]).to("meta")
        dtype = next(iter(self.params.values())).dtype
        device = next(iter(self.params.values())).device
        self.lrs = torch.tensor([float(lr) for lr in lrs], dtype=dtype, device=device)
        base = self.base

        if grouped:
            def losses_of(params, x, t):
                return stacked_losses(stacked_forward(plan, params, x, x.shape[0]), t, loss_name)

            def step(params, buffers, lrs, x, t):
                losses = self._losses(params, x, t)
                grads = torch.autograd.grad(losses.sum(), list(params.values()))
                with torch.no_grad():
                    for p, g in zip(params.values(), grads):
                        p.sub_(lrs.view(-1, *[1] * (p.dim() - 1)) * g)
                return params, losses.detach()

            def forward(params, buffers, x):
                return stacked_forward(plan, params, x, len(self.lrs), shared=True)

            self._losses_eager = self._losses = losses_of
        else:
            loss_fn = _member_loss(loss_name)

            def member(p, b, x, t):
                return loss_fn(functional_call(base, (p, b), (x,)), t)

            grad_all = vmap(grad_and_value(member))

            def step(params, buffers, lrs, x, t):
                grads, losses = grad_all(params, buffers, x, t)
                new = {n: p - lrs.view(-1, *[1] * (p.dim() - 1)) * grads[n] for n, p in params.items()}
                return new, losses

            def forward(params, buffers, x):
                return vmap(lambda p, b: functional_call(base, (p, b), (x,)))(params, buffers)

        self._step_eager, self._forward = step, forward
        self._step = step
        self.compiled = False
        if compile:
            if grouped:
                self._losses = torch.compile(losses_of, dynamic=False)
            else:
                self._step = torch.compile(step, dynamic=False)
            self.compiled = True

    @property
    def k(self) -> int:
        return len(self.lrs)

    def step(self, xb: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        try:
            self.params, losses = self._step(self.params, self.buffers, self.lrs, xb, target)
        except Exception as exc:  # torch.compile unavailable here (no compiler, unsupported op, ...)
            if not self.compiled:
                raise
            warnings.warn(f"torch.compile failed ({type(exc).__name__}: {str(exc).splitlines()[0][:200]}); "
                          f"training the ensemble eagerly", stacklevel=2)
            self._step, self.compiled = self._step_eager, False
            if self.impl == "grouped":
                self._losses = self._losses_eager
            self.params, losses = self._step(self.params, self.buffers, self.lrs, xb, target)
        return losses

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Every member's output on the same inputs x: (k, len(x), outputs)."""
        return self._forward(self.params, self.buffers, x)

    def keep(self, members: Sequence[int]) -> None:
        """Keep only these members (by current position), e.g. after some diverged."""
        idx = torch.as_tensor(list(members), dtype=torch.long, device=self.lrs.device)
        grouped = self.impl == "grouped"
        with torch.no_grad():
            self.params = {n: p.index_select(0, idx).requires_grad_(grouped) for n, p in self.params.items()}
        self.buffers = {n: b.index_select(0, idx) for n, b in self.buffers.items()}
        self.lrs = self.lrs.index_select(0, idx)

    @torch.no_grad()
    def load_into(self, j: int, model: nn.Module) -> nn.Module:
        """Copy member j's parameters and buffers into ``model`` (same architecture); returns it."""
        for n, p in model.named_parameters():
            p.copy_(self.params[n][j])
        for n, b in model.named_buffers():
            if n in self.buffers:
                b.copy_(self.buffers[n][j])
        return model


@torch.no_grad()
def evaluate_stacked(net: StackedSGD, x: torch.Tensor, y: torch.Tensor, loss: str,
                     chunk: int | None = None) -> list[tuple[float, float, torch.Tensor]]:
    """``train.evaluate`` for every member at once: [(mean loss, accuracy, per-sample correctness)]."""
    k = net.k
    chunk = chunk or samples_per_chunk(net.base, x[:1].to("meta"), k, device=x.device)
    losses, correct = [], []
    for i in range(0, len(x), chunk):
        out = net.forward(eval_layout(x[i:i + chunk]))  # (k, c, N)
        yc = y[i:i + chunk]
        c = len(yc)
        losses.append(per_sample_loss(loss, out.reshape(k * c, -1), yc.repeat(k)).reshape(k, c))
        correct.append(out.argmax(dim=2) == yc)
    losses, correct = torch.cat(losses, dim=1), torch.cat(correct, dim=1)
    mean_loss = losses.mean(dim=1).tolist()
    acc = correct.float().mean(dim=1).tolist()
    return [(mean_loss[j], acc[j], correct[j]) for j in range(k)]


def stacked_sample_metrics(models: Sequence[nn.Module], cfg: Mapping, data: Dataset,
                           sample_idx: Sequence[torch.Tensor],
                           test_correct: Sequence[torch.Tensor | None]) -> list[dict[str, dict]]:
    """The metrics of every member on each of its sample sets, by sample set, for
    ``train.checkpoint_rows(..., metrics=...)``: one :func:`metrics_stacked.compute_metrics_stacked`
    call per sample set for all members (members with an empty set are left out of it)."""
    from .metrics_stacked import compute_metrics_stacked

    mcfg = cfg.get("metrics", {})
    n = int(mcfg.get("n", 100))
    out: list[dict[str, dict]] = [{} for _ in models]
    for name in mcfg.get("sample_sets", ["train"]):
        xs = [sample_set(name, data, idx, n, correct)[0] for idx, correct in zip(sample_idx, test_correct)]
        have = [j for j, x in enumerate(xs) if len(x)]
        if have:
            results = compute_metrics_stacked([models[j] for j in have], [xs[j] for j in have], **metric_options(cfg))
            for j, res in zip(have, results):
                out[j][name] = res
    return out


# ---------------------------------------------------------------------------------------------
# members


@dataclass
class _Member:
    cfg: dict
    run_dir: Path
    ident: dict
    recorder: RunRecorder
    model: nn.Module
    sample_idx: torch.Tensor
    loss_fn: Callable
    start: int = 0
    wall_offset: float = 0.0
    prev_ckpt: int | None = None
    result: RunResult | None = None
    checkpoints: int = 0

    @property
    def run_id(self) -> str:
        return self.ident["run_id"]


def _optimizer_state(model: nn.Module, lr: float) -> dict:
    """What ``torch.optim.SGD(lr, momentum=0, weight_decay=0).state_dict()`` holds (no per-parameter state)."""
    return torch.optim.SGD(model.parameters(), lr=lr, momentum=0.0, weight_decay=0.0).state_dict()


def _setup_member(cfg: dict, run_dir: Path, data: Dataset, device: torch.device) -> _Member:
    ident = run_identity(cfg)
    num_outputs = _num_outputs(cfg, data)
    identity = record_identity(cfg, ident["run_id"], data, device)
    model = _build(cfg, data, device)
    mcfg = cfg.get("metrics", {})
    sample_idx = train_sample_indices(int(cfg["seed"]), len(data.train_x), int(mcfg.get("n", 100))).to(device)
    m = _Member(cfg, run_dir, ident, RunRecorder(run_dir, identity), model, sample_idx,
                make_loss(cfg["loss"], num_outputs))
    steps = int(cfg["steps"])
    state = load_checkpoint(run_dir, ident["run_id"], device)
    if state is not None:
        model.load_state_dict(state["model_state"])
        m.start = m.prev_ckpt = int(state["iteration"])
        m.wall_offset = float(state["wall_time"])
        if state.get("status") == "diverged":
            m.recorder.set_status("diverged")
            m.result = RunResult(run_dir, "diverged", m.start, len(m.recorder.frame))
            return m
        m.recorder.truncate_after(m.start)
    else:
        m.recorder.truncate_after(None)  # rows without a saved model state cannot be resumed
    if m.prev_ckpt is not None and m.prev_ckpt >= steps:
        m.recorder.set_status("finished")
        m.result = RunResult(run_dir, "finished", m.prev_ckpt, len(m.recorder.frame))
    return m


def _rows_count(m: _Member) -> int:
    return 0 if m.recorder.frame is None else len(m.recorder.frame)


# ---------------------------------------------------------------------------------------------
# the ensemble


def train_ensemble(cfgs: Sequence, run_dirs: Sequence[str | Path], *, data: Dataset | None = None,
                   callback: Callable[[int, dict[Path, list[dict]]], None] | None = None,
                   compile: bool | None = None, impl: str = "auto") -> list[RunResult]:
    """Train the runs ``cfgs`` (resolved ``train`` configs) into ``run_dirs`` in lockstep; see the module
    docstring. Each run's folder ends up as ``train(cfg, run_dir)`` would leave it.

    ``callback(iteration, rows)`` is called after each checkpoint of the ensemble is safely written,
    ``rows`` mapping each member's run folder to its new rows. ``compile``: wrap the training step in
    ``torch.compile`` (default: the configs' ``compile`` setting, else off); ``impl``: how the stacked
    networks run (:class:`StackedSGD`). Returns one ``RunResult`` per run, in order.
    """
    cfgs = [_plain(c) for c in cfgs]
    run_dirs = [Path(d) for d in run_dirs]
    if len(cfgs) != len(run_dirs):
        raise ConfigError(f"{len(cfgs)} configs but {len(run_dirs)} output folders")
    if len({d.resolve() for d in run_dirs}) != len(run_dirs):
        raise ConfigError("two runs of the ensemble share one output folder")
    for cfg in cfgs:
        validate_config(cfg)
    check_compatible(cfgs)
    if len({run_identity(c)["run_id"] for c in cfgs}) != len(cfgs):
        raise ConfigError("the ensemble holds the same run twice (same lr and seed)")
    for d in run_dirs:
        check_writable(d)
    cfg0 = cfgs[0]
    if compile is None:
        compile = bool(cfg0.get("compile", False))

    device, data = prepare_runtime(cfg0, data)
    for cfg in cfgs:
        validate_config(cfg, n_train=len(data.train_x))

    members = [_setup_member(cfg, d, data, device) for cfg, d in zip(cfgs, run_dirs)]
    todo = [m for m in members if m.result is None]
    # members at different iterations: one lockstep ensemble per starting point, one after another
    by_start: dict[int, list[_Member]] = {}
    for m in todo:
        by_start.setdefault(-1 if m.prev_ckpt is None else m.start, []).append(m)
    for key in sorted(by_start):
        _train_lockstep(by_start[key], data, device, callback, compile, impl)
    return [m.result for m in members]


def _train_lockstep(members: list[_Member], data: Dataset, device: torch.device, callback, compile: bool,
                    impl: str) -> None:
    from tqdm.auto import tqdm

    cfg0 = members[0].cfg
    n_train, batch = len(data.train_x), int(cfg0["batch"])
    steps, log_every = int(cfg0["steps"]), int(cfg0["log_every"])
    eval_every = int(cfg0.get("eval_every", 1))
    flatness_every = int(cfg0.get("metrics", {}).get("flatness_every", 1))
    loss_name = cfg0["loss"]
    num_outputs = _num_outputs(cfg0, data)
    spe = steps_per_epoch(n_train, batch)
    checkpoints = sorted(set(range(0, steps, log_every)) | {steps})
    start = members[0].start
    fresh = members[0].prev_ckpt is None

    net = StackedSGD([m.model for m in members], [float(m.cfg["lr"]) for m in members], loss_name, compile=compile,
                     impl=impl)
    active = list(members)  # position j in the stack <-> active[j]
    running_sum = torch.zeros(len(active), device=device)
    running_count = 0
    t0 = time.perf_counter()
    timing = {"train": 0.0, "checkpoint": 0.0, "eval": 0.0, "metrics": 0.0, "write": 0.0}
    LAST_TIMINGS.clear()
    LAST_TIMINGS.update(timing)

    def finish(m: _Member, status: str, it: int) -> RunResult:
        # the call's time and the checkpoint time are the ensemble's (shared by its members)
        return RunResult(m.run_dir, status, it, _rows_count(m), time.perf_counter() - t0, timing["checkpoint"],
                         m.checkpoints)

    def wall(m: _Member) -> float:
        return time.perf_counter() - t0 + m.wall_offset

    def record_diverged(m: _Member, j: int, it: int) -> None:
        """As ``train`` records a diverged run: one NaN row, status diverged, the model state kept."""
        m.recorder.append([{"iteration": it, "epoch": it / spe, "train_loss_running": math.nan,
                            "train_loss": math.nan, "sample_set": "train", "wall_time": wall(m)}],
                          status="diverged")
        net.load_into(j, m.model)
        _save_checkpoint(m.run_dir, {"run_id": m.run_id, "iteration": it, "status": "diverged",
                                     "wall_time": wall(m), "config": m.cfg, "model_state": m.model.state_dict(),
                                     "optimizer_state": _optimizer_state(m.model, float(m.cfg["lr"]))})
        m.result = finish(m, "diverged", it)
        bar.write(f"{m.run_id}: diverged (non-finite loss) at iteration {it}; recorded as diverged")
        sys.stdout.flush()  # summaries reach logs (SLURM, pipes) as they happen

    def checkpoint(it: int) -> None:
        nonlocal running_sum, running_count, active
        c0 = time.perf_counter()
        if running_count:
            run_losses = (running_sum / running_count).tolist()  # the one host synchronisation
        else:
            run_losses = [math.nan] * len(active)
        running_sum, running_count = torch.zeros(len(active), device=device), 0
        k_ckpt = checkpoints.index(it)
        evals = [None] * len(active)
        whole = k_ckpt % eval_every == 0 or it == steps
        if whole:
            e0 = time.perf_counter()
            evals = list(zip(evaluate_stacked(net, data.train_x, data.train_y, loss_name),
                             evaluate_stacked(net, data.test_x, data.test_y, loss_name)))
            timing["eval"] += time.perf_counter() - e0
        status = "finished" if it == steps else "running"
        keep, new_rows = [], {}
        for j, m in enumerate(active):
            run_loss = run_losses[j]
            if (it > 0 and not math.isfinite(run_loss)) or (whole and not math.isfinite(evals[j][0][0])):
                record_diverged(m, j, it)
            else:
                keep.append(j)
        models = [net.load_into(j, active[j].model).eval() for j in keep]
        test_correct = [evals[j][1][2] if whole else None for j in keep]
        m0 = time.perf_counter()
        if "misclassified" in cfg0.get("metrics", {}).get("sample_sets", ["train"]) and not whole:
            every = evaluate_stacked(net, data.test_x, data.test_y, loss_name)
            test_correct = [every[j][2] for j in keep]
        metrics = stacked_sample_metrics(models, cfg0, data, [active[j].sample_idx for j in keep], test_correct)
        timing["metrics"] += time.perf_counter() - m0
        for j, model, correct, precomputed in zip(keep, models, test_correct, metrics):
            m = active[j]
            row = {"iteration": it, "epoch": it / spe, "train_loss_running": run_losses[j]}
            if whole:
                (row["train_loss"], row["train_acc"], _), (row["test_loss"], row["test_acc"], _) = evals[j]
            m0 = time.perf_counter()
            rows = checkpoint_rows(model, m.cfg, data, m.sample_idx, loss_name, m.loss_fn, row, correct, it,
                                   with_flatness=k_ckpt % flatness_every == 0 or it == steps, metrics=precomputed)
            timing["metrics"] += time.perf_counter() - m0
            model.train()
            for r in rows:
                r["wall_time"] = wall(m)
            w0 = time.perf_counter()
            m.recorder.append(rows, status=status)
            _save_checkpoint(m.run_dir, {
                "run_id": m.run_id, "iteration": it, "wall_time": wall(m), "status": status,
                "model_state": model.state_dict(), "optimizer_state": _optimizer_state(model, float(m.cfg["lr"])),
                "config": m.cfg,
            })
            timing["write"] += time.perf_counter() - w0
            new_rows[m.run_dir] = rows
            m.checkpoints += 1
            if status == "finished":
                m.result = finish(m, "finished", it)
        if len(keep) != len(active):
            if keep:
                net.keep(keep)
            active = [active[j] for j in keep]
            running_sum = torch.zeros(len(active), device=device)
        timing["checkpoint"] += time.perf_counter() - c0
        LAST_TIMINGS.update(timing)
        if new_rows:
            _summary(bar, it, steps, new_rows, len(members))
        if callback is not None:
            callback(it, new_rows)

    show = bool(cfg0.get("progress", True))
    bar = tqdm(total=steps, initial=start, desc=f"ensemble of {len(members)}", unit="it", disable=not show,
               dynamic_ncols=True, mininterval=0.5, smoothing=0.05)
    it = start
    try:
        if fresh:
            checkpoint(0)
        next_ckpts = iter([c for c in checkpoints if c > start])
        next_ckpt = next(next_ckpts)
        epoch, perms = -1, None
        # loss targets of the whole train set, once (one-hot rows for MSE): a step only gathers
        targets = _loss_target(loss_name, data.train_y, num_outputs, data.train_x.dtype)
        t_train = time.perf_counter()
        while it < steps and active:
            e, kb = divmod(it, spe)
            if e != epoch:
                epoch = e
                perms = torch.stack([epoch_permutation(int(m.cfg["seed"]), e, n_train) for m in active]).to(device)
            idx = perms[:, kb * batch:(kb + 1) * batch]  # (k, batch)
            xb, target = data.train_x[idx], targets[idx]
            losses = net.step(xb, target)
            running_sum += losses.detach()
            running_count += 1
            it += 1
            bar.update(1)
            if it == next_ckpt:
                timing["train"] += time.perf_counter() - t_train
                before = len(active)
                checkpoint(it)
                if len(active) != before and active:
                    perms = torch.stack([epoch_permutation(int(m.cfg["seed"]), epoch, n_train)
                                         for m in active]).to(device)
                next_ckpt = next(next_ckpts, None)
                t_train = time.perf_counter()
    except KeyboardInterrupt:
        bar.close()
        raise
    except BaseException:
        for m in active:
            if m.result is None:
                m.recorder.set_status("failed")
        bar.close()
        raise
    finally:
        bar.close()
        LAST_TIMINGS.update(timing)


def _summary(bar, it: int, steps: int, rows: dict[Path, list[dict]], total: int) -> None:
    first = [r[0] for r in rows.values()]
    run = [r["train_loss_running"] for r in first if r.get("train_loss_running") is not None]
    run = [v for v in run if math.isfinite(v)]
    acc = [r["test_acc"] for r in first if r.get("test_acc") is not None and math.isfinite(r["test_acc"])]

    def fmt(v):
        return "-" if not v else f"{min(v):.4g}..{max(v):.4g}"

    bar.write(f"[{it:>7d}/{steps}] {len(rows)}/{total} runs: loss(run)={fmt(run)} test_acc={fmt(acc)} "
              f"t={first[0]['wall_time']:.1f}s")

    sys.stdout.flush()  # summaries reach logs (SLURM, pipes) as they happen


# ---------------------------------------------------------------------------------------------
# Hydra launcher


def _hydra_launcher_base():
    from hydra.plugins.launcher import Launcher

    return Launcher


PLUGIN_NAME = "hydra_plugins.sharpcomp_ensemble.EnsembleLauncher"


class EnsembleLauncher(_hydra_launcher_base()):
    """Hydra launcher: compatible jobs of a sweep train as vectorised ensembles; the rest one by one.

    Settings (``conf/hydra/launcher/ensemble.yaml``): ``max_members`` (largest ensemble; larger
    groups are split into near-equal parts), ``compile`` (``torch.compile`` the training step) and
    ``impl`` (:class:`StackedSGD`: auto, grouped or vmap).
    Job folders and their ``.hydra`` files are made exactly as by Hydra's basic launcher.
    """

    def __init__(self, max_members: int = 32, compile: bool = False, impl: str = "auto", **_ignored) -> None:
        super().__init__()
        self.max_members = int(max_members)
        self.compile = bool(compile)
        self.impl = str(impl)
        self.config = self.task_function = self.hydra_context = None

    def setup(self, *, hydra_context, task_function, config) -> None:
        self.config, self.hydra_context, self.task_function = config, hydra_context, task_function

    def _job_config(self, overrides, idx):
        from omegaconf import open_dict

        cfg = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
        with open_dict(cfg):
            cfg.hydra.job.id = idx
            cfg.hydra.job.num = idx
        return cfg

    @staticmethod
    def _resolved(sweep_config) -> tuple[dict, Path]:
        """The job's plain train config and output folder, resolved as ``run_job`` resolves them."""
        from hydra.core.hydra_config import HydraConfig
        from omegaconf import OmegaConf

        hc = HydraConfig.instance()
        orig = hc.cfg
        try:
            cfg = copy.deepcopy(sweep_config)
            hc.set_config(cfg)
            out = Path(str(OmegaConf.select(cfg, "hydra.sweep.dir"))) / str(OmegaConf.select(cfg, "hydra.sweep.subdir"))
            plain = OmegaConf.to_container(cfg, resolve=False)
            plain.pop("hydra", None)
            plain = OmegaConf.to_container(OmegaConf.create(plain), resolve=True)
        finally:
            hc.cfg = orig
        return plain, Path(os.path.abspath(out))

    def launch(self, job_overrides, initial_job_idx):
        from hydra.core.utils import JobReturn, JobStatus, configure_log, filter_overrides, run_job, setup_globals

        setup_globals()
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        jobs = []
        for i, overrides in enumerate(job_overrides):
            idx = initial_job_idx + i
            sweep_config = self._job_config(overrides, idx)
            plain, out = self._resolved(sweep_config)
            jobs.append((idx, list(overrides), sweep_config, plain, out))
        try:
            groups, singles = group_compatible([j[3] for j in jobs], self.max_members)
        except Exception:
            groups, singles = [], list(range(len(jobs)))
        log.info(f"Launching {len(jobs)} jobs locally: {len(groups)} ensemble(s) "
                 f"({', '.join(str(len(g)) for g in groups) or '-'} runs), {len(singles)} run(s) one by one")
        results: dict[int, JobReturn] = {}
        for group in groups:
            prepared = []
            for i in group:
                idx, overrides, sweep_config, plain, out = jobs[i]
                log.info(f"\t#{idx} : {' '.join(filter_overrides(overrides))} (ensemble)")
                # folders and .hydra files exactly as the basic launcher makes them; training follows
                ret = run_job(hydra_context=self.hydra_context, task_function=lambda cfg: None, config=sweep_config,
                              job_dir_key="hydra.sweep.dir", job_subdir_key="hydra.sweep.subdir")
                prepared.append((i, ret, Path(ret.hydra_cfg.hydra.runtime.output_dir)))
                configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
            outcome = _run_group([jobs[i][3] for i in group], [p[2] for p in prepared], self.compile, self.impl)
            for (i, ret, _), res in zip(prepared, outcome):
                if isinstance(res, BaseException):
                    ret.status, ret.return_value = JobStatus.FAILED, res
                else:
                    ret.status, ret.return_value = JobStatus.COMPLETED, res
                results[i] = ret
        for i in singles:
            idx, overrides, sweep_config, _, _ = jobs[i]
            log.info(f"\t#{idx} : {' '.join(filter_overrides(overrides))}")
            results[i] = run_job(hydra_context=self.hydra_context, task_function=self.task_function,
                                 config=sweep_config, job_dir_key="hydra.sweep.dir",
                                 job_subdir_key="hydra.sweep.subdir")
            configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        return [results[i] for i in range(len(jobs))]


def _run_group(cfgs: list[dict], run_dirs: list[Path], compile: bool, impl: str) -> list:
    """Train one group; per job the status string (as the ``train`` task returns it) or the exception.
    Errors are reported like the multirun task function reports them (one line per job)."""
    from .data import DataError
    from .records import RecordError

    try:
        results = train_ensemble(cfgs, run_dirs, compile=compile, impl=impl)
    except KeyboardInterrupt:
        raise
    except (ConfigError, DataError, RecordError) as exc:
        for d in run_dirs:
            print(f"sharpcomp: job ({d}) failed: {exc}", file=sys.stderr)
        return ["failed"] * len(run_dirs)
    except Exception as exc:
        import traceback

        text = traceback.format_exc()
        for d in run_dirs:
            try:
                (d / "error.log").write_text(text)
            except OSError:
                pass
            print(f"sharpcomp: run {d} failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                  f"; traceback in {d / 'error.log'}", file=sys.stderr)
        return ["failed"] * len(run_dirs)
    for r in results:
        print(f"{r.status}: {r.rows} rows in {r.run_dir / 'metrics.parquet'}", flush=True)
    return [r.status for r in results]


def register_launcher() -> None:
    """Make ``hydra/launcher=ensemble`` instantiable.

    Hydra instantiates only plugin classes that live in the ``hydra_plugins`` namespace and are
    registered with its plugin registry (``hydra.core.plugins.Plugins._instantiate``; this Hydra's
    target policy then imports the ``_target_`` by name). Unless a real ``hydra_plugins.sharpcomp_ensemble``
    module is installed, this makes that module in memory, holding a subclass of :class:`EnsembleLauncher`,
    and registers it. ``conf/hydra/launcher/ensemble.yaml`` calls this through a Hydra callback
    (:class:`RegisterEnsembleLauncher`), which Hydra instantiates before the launcher.
    """
    import importlib
    import types

    from hydra.core.plugins import Plugins

    module_name, cls_name = PLUGIN_NAME.rsplit(".", 1)
    module = sys.modules.get(module_name)
    if module is None:
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            module = types.ModuleType(module_name, "sharpcomp's ensemble launcher (made by sharpcomp.ensemble)")
            sys.modules[module_name] = module
            parent = importlib.import_module(module_name.rsplit(".", 1)[0])
            setattr(parent, module_name.rsplit(".", 1)[1], module)
    cls = getattr(module, cls_name, None)
    if cls is None:
        cls = type(cls_name, (EnsembleLauncher,), {"__module__": module_name, "__doc__": EnsembleLauncher.__doc__})
        setattr(module, cls_name, cls)
    plugins = Plugins.instance()
    if plugins.class_name_to_class.get(PLUGIN_NAME) is not cls:
        plugins.register(cls)


try:
    from hydra.experimental.callback import Callback as _Callback
except ImportError:  # pragma: no cover
    _Callback = object


class RegisterEnsembleLauncher(_Callback):
    """Hydra callback whose only job is :func:`register_launcher` (instantiated before the launcher)."""

    def __init__(self) -> None:
        register_launcher()
