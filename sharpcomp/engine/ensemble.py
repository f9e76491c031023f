"""Vectorised ensembles: many runs of the same network trained in lockstep in one process.

Runs that share data, model, batch size, loss, steps and checkpoint settings -- typically a sweep
over learning rate and seed, like fig1's 3 x 5 -- are trained together with ``torch.func``: the
members' parameters are stacked along a leading axis (``stack_module_state``), and one
``vmap(grad_and_value(...))`` over ``functional_call`` gives every member's loss and gradient on its
own minibatch in one call. Each member keeps what it would have as a separate run
(``sharpcomp.engine.train.train``) -- the same data order, initial weights and protocol -- and its numbers
equal the separate run's within float round-off (grouped and plain kernels sum in different orders,
and the difference grows with training; the tests pin the tolerance):

- initial weights: ``build_model(..., seed=seed)``, as ``train`` builds them;
- data order: ``epoch_permutation(seed, epoch, n)``; each step gathers a (k, batch, ...) tensor of the
  members' minibatches;
- the optimizer with its own learning rate and the shared schedule: plain SGD as one stacked update,
  ``p_k -= lr_k(t) * g_k`` (momentum-free SGD has no optimizer state); SGD with momentum or weight decay,
  Adam and AdamW as each member's own torch optimizer over its slices of the stack
  (:mod:`sharpcomp.engine.member_optim`); SAM and a user's own optimizer are not batched: their runs
  train one by one, with a line saying so (:func:`unbatchable`);
- loss: the mean over the member's minibatch of ``train.make_loss`` (MSE against one-hot targets,
  averaged over batch and outputs, or cross-entropy), so member k's gradient is that of its own loss;
- records: the same ``metrics.parquet`` rows (``train.run_identity`` run ids, identity columns,
  ``train.checkpoint_rows`` for the metric columns) and the same ``checkpoint.pt`` (per-member
  ``model_state`` and the member's ``optimizer_state``), so a run started in an ensemble can
  be resumed by ``train`` and vice versa, and a figure cannot tell the difference. ``wall_time`` is
  the ensemble's elapsed time (plus the member's time before a resume).

This module holds only what is specific to stacking k networks: the stacked networks
(:class:`StackedSGD`), their whole-set evaluation and sample-set metrics (:mod:`sharpcomp.measures.study.stacked`:
one forward and N backward passes of the stacked network for all members; the results equal
``metrics.compute_metrics`` member by member), and :class:`EnsembleStepper`, the stepper that the one
training loop (:mod:`sharpcomp.engine.train`) drives. The loop does the rest as for any run: checkpoints,
divergence (a member whose loss is not finite is recorded ``diverged`` and dropped from the stack; the
others go on) and resume (members left at different iterations train as separate lockstep groups).
Models with buffers (BatchNorm statistics) are not stacked: their runs train one by one, with a line
saying so. ``scripts/bench_ensemble.py`` measures the speed-up.

Hydra: ``sharpcomp -m train lr=0.05,0.1,0.2 seed=0,1,2,3,4 hydra/launcher=ensemble`` uses
:class:`sharpcomp.engine.launcher.EnsembleLauncher`, which groups compatible jobs (:func:`group_compatible`).
"""


from __future__ import annotations

import copy
import sys
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import nn
from torch.func import functional_call, grad_and_value, stack_module_state, vmap

from sharpcomp.data.datasets import Dataset
from sharpcomp.engine.cuda_graphs import graphs_apply, try_capture
from sharpcomp.engine.ensemble_groups import check_compatible, unbatchable
from sharpcomp.engine.evaluation import eval_layout, with_network_wide
from sharpcomp.engine.member_optim import MemberOptimizers
from sharpcomp.engine.opening import Member, close_all, open_runs
from sharpcomp.engine.setup import build
from sharpcomp.engine.steppers import no_graph_reason
from sharpcomp.engine.train import plain_stepper, train_members
from sharpcomp.losses import batch_loss, loss_target, per_sample_loss
from sharpcomp.measures.study._stacked_ops import make_plan, stacked_forward
from sharpcomp.measures.study.stacked import compute_metrics_stacked
from sharpcomp.models import eval_mode, samples_per_chunk
from sharpcomp.optim import is_plain_sgd
from sharpcomp.results.run_state import RunInUse, RunResult, load_resume
from sharpcomp.schedule import is_constant
from sharpcomp.settings import ConfigError, Settings, run_identity

# ---------------------------------------------------------------------------------------------
# the stacked networks


class StackedSGD:
    """k copies of one architecture with stacked parameters, trained by plain SGD in lockstep.

    ``models``: the members' networks (same architecture, on the training device); ``lrs``: their
    learning rates. ``step(xb, target)`` takes (k, batch, ...) inputs and loss targets and returns
    the (k,) minibatch losses (on the device, no host synchronisation).

    ``impl``: ``"vmap"`` (``torch.func``: ``vmap(grad_and_value(...))`` over ``functional_call``, any
    architecture), ``"grouped"`` (:mod:`sharpcomp.measures.study._stacked_ops`: the members' layers as grouped
    convolutions and batched matrix products, autograd for the gradients; ``nn.Sequential`` of
    Conv2d / Linear / ReLU / MaxPool2d / Flatten only, several times faster per step on a CPU), or
    ``"auto"`` (grouped where supported). ``compile``: ``torch.compile`` the step (vmap) or the
    forward pass and loss (grouped; autograd compiles the backward pass with it).
    """

    def __init__(self, models: Sequence[nn.Module], lrs: Sequence[float], loss_name: str, compile: bool = False,
                 impl: str = "auto"):
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
                return batch_loss(loss_name, stacked_forward(plan, params, x, x.shape[0]), t)

            def step(params, buffers, lrs, x, t):
                losses = self._losses(params, x, t)
                grads = torch.autograd.grad(losses.sum(), list(params.values()))
                with torch.no_grad():
                    for p, g in zip(params.values(), grads):
                        p.sub_(lrs.view(-1, *[1] * (p.dim() - 1)) * g)
                return params, losses.detach()

            def forward(params, buffers, x):
                return stacked_forward(plan, params, x, len(self.lrs), shared=True)

            def grads_of(params, buffers, x, t):
                losses = self._losses(params, x, t)
                grads = torch.autograd.grad(losses.sum(), list(params.values()))
                return dict(zip(params, grads)), losses.detach()

            self._losses_eager = self._losses = losses_of
        else:
            def member(p, b, x, t):
                return batch_loss(loss_name, functional_call(base, (p, b), (x,)), t)

            grad_all = vmap(grad_and_value(member))

            def step(params, buffers, lrs, x, t):
                grads, losses = grad_all(params, buffers, x, t)
                new = {n: p - lrs.view(-1, *[1] * (p.dim() - 1)) * grads[n] for n, p in params.items()}
                return new, losses

            def forward(params, buffers, x):
                return vmap(lambda p, b: functional_call(base, (p, b), (x,)))(params, buffers)

            grads_of = grad_all

        self._step_eager, self._forward, self._grads = step, forward, grads_of
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
        """The number of stacked networks."""
        return len(self.lrs)

    def gradients(self, xb: torch.Tensor, target: torch.Tensor) -> tuple[dict, torch.Tensor]:
        """Every network's gradient on its minibatch (name -> (k, ...)) and the k losses; nothing updated.

        An optimizer per member takes the step (:mod:`sharpcomp.engine.member_optim`).
        """
        return self._grads(self.params, self.buffers, xb, target)

    def step(self, xb: torch.Tensor, target: torch.Tensor, lrs: torch.Tensor | None = None) -> torch.Tensor:
        """One SGD step of every network on its minibatch; the k losses (before the step).

        ``lrs``: the members' learning rates of this step (default: their ``lr``).
        """
        lrs = self.lrs if lrs is None else lrs
        try:
            self.params, losses = self._step(self.params, self.buffers, lrs, xb, target)
        except Exception as exc:  # torch.compile unavailable here (no compiler, unsupported op, ...)
            if not self.compiled:
                raise
            warnings.warn(f"torch.compile failed ({type(exc).__name__}: {str(exc).splitlines()[0][:200]}); "
                          f"training the ensemble eagerly", stacklevel=2)
            self._step, self.compiled = self._step_eager, False
            if self.impl == "grouped":
                self._losses = self._losses_eager
            self.params, losses = self._step(self.params, self.buffers, lrs, xb, target)
        return losses

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Every member's output on the same inputs x, in eval mode: (k, len(x), outputs)."""
        with eval_mode(self.base):
            return self._forward(self.params, self.buffers, x)

    def keep(self, members: Sequence[int]) -> None:
        """Keep only the members at these positions (the others diverged or ended)."""
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


def stacked_sample_metrics(models: Sequence[nn.Module], inputs: Sequence[Mapping[str, tuple]],
                           s: Settings) -> list[dict[str, dict]]:
    """The metrics of every member on each of its sample sets ([{set: (inputs, labels)}] -> [{set: result}]).

    One :func:`metrics_stacked.compute_metrics_stacked` call per sample set for all members (members
    with an empty set are left out of it).
    """
    out: list[dict[str, dict]] = [{} for _ in models]
    for name in s.metrics.sample_sets:
        have = [j for j, x in enumerate(inputs) if len(x[name][0])]
        if have:
            results = compute_metrics_stacked([models[j] for j in have], [inputs[j][name][0] for j in have],
                                              **s.metrics.options())
            for j, res in zip(have, results):
                out[j][name] = res
    return with_network_wide(models, inputs, out, s)


# ---------------------------------------------------------------------------------------------
# the stepper


def _optimizer_state(model: nn.Module, lr: float) -> dict:
    """What ``torch.optim.SGD(lr, momentum=0, weight_decay=0).state_dict()`` holds (no per-parameter state)."""
    return torch.optim.SGD(model.parameters(), lr=lr, momentum=0.0, weight_decay=0.0).state_dict()


class EnsembleStepper:
    """The stepper (:mod:`sharpcomp.engine.steppers`) of k runs trained as one :class:`StackedSGD`."""

    def __init__(self, members: Sequence[Member], data: Dataset, compile: bool = False, impl: str = "auto"):
        s = members[0].settings
        device = data.train_x.device
        self.modules = []
        for m in members:
            model = build(m.settings, data, device)
            if m.run.resume is not None:
                load_resume(model, None, m.run.resume)
            self.modules.append(model)
        self.settings, self.lrs = s, [m.settings.lr for m in members]
        self.member_settings = [m.settings for m in members]
        resume = members[0].run.resume  # the members' common starting point (fresh: 0)
        self.it = 0 if resume is None else int(resume["iteration"])
        self.net = StackedSGD(self.modules, self.lrs, s.loss, compile=compile, impl=impl)
        self.update = None if is_plain_sgd(s.optim) else MemberOptimizers(
            self.net.params, self.member_settings, [m.run.resume for m in members])
        self.scheduled = not is_constant(s.schedule)
        if impl == "auto" and self.net.impl == "vmap":
            print(f"sharpcomp: ensemble: {type(self.modules[0]).__name__} has layers the grouped implementation "
                  f"does not stack (it takes nn.Sequential of Conv2d, Linear, ReLU, MaxPool2d, Flatten); using vmap",
                  file=sys.stderr)
        self.x = data.train_x
        self.targets = loss_target(s.loss, data.train_y, s.num_outputs(data.num_classes), data.train_x.dtype)
        reason = no_graph_reason(s) or ("torch.compile" if self.net.compiled else None if self.net.impl == "grouped"
                                        else "the vmap implementation makes new parameters each step")
        self.use_graph = graphs_apply(device, s.cuda_graph, reason, f"ensemble of {len(members)}")
        self.try_graph, self.graphed = self.use_graph, None

    @property
    def k(self) -> int:
        """The number of members still training."""
        return self.net.k

    def _eager(self, idx: torch.Tensor) -> torch.Tensor:
        xb, target = self.x[idx], self.targets[idx]
        if self.update is not None:
            grads, losses = self.net.gradients(xb, target)
            self.update.step(grads, self.it)
            return losses
        lrs = None
        if self.scheduled:  # each member's rate as a separate run computes it (lr times the schedule, in double)
            lrs = torch.tensor([s.lr_at(self.it) for s in self.member_settings], dtype=self.net.lrs.dtype,
                               device=self.net.lrs.device)
        return self.net.step(xb, target, lrs)

    def step(self, idx: torch.Tensor) -> torch.Tensor:
        """One SGD step of every member on the samples ``idx`` (k, batch); the k losses (before the step).

        Replayed as a CUDA graph where one was captured.
        """
        if self.try_graph:
            self.try_graph = False
            self.graphed = try_capture(self._eager, lambda: list(self.net.params.values()), idx,
                                       f"ensemble of {self.k}")
        losses = self._eager(idx) if self.graphed is None else self.graphed.step(idx)
        self.it += 1
        return losses

    def evaluate(self, x: torch.Tensor, y: torch.Tensor) -> list[tuple[float, float, torch.Tensor]]:
        """Every member's loss and accuracy on ``(x, y)``, with its per-sample correctness."""
        return evaluate_stacked(self.net, x, y, self.settings.loss)

    def models(self) -> list[nn.Module]:
        """Each member as a plain module (a copy of its stacked parameters), in eval mode."""
        return [self.net.load_into(j, model).eval() for j, model in enumerate(self.modules)]

    def sample_metrics(self, models, inputs) -> list[dict[str, dict]]:
        """The metrics of every member on its sample sets (:func:`stacked_sample_metrics`)."""
        return stacked_sample_metrics(models, inputs, self.settings)

    def states(self, j: int) -> tuple[dict, dict]:
        """Member ``j``'s model state and its optimizer's state.

        That of the plain SGD it stands for, or its own optimizer's.
        """
        model = self.net.load_into(j, self.modules[j])
        if self.update is not None:
            return model.state_dict(), self.update.state(j)
        return model.state_dict(), _optimizer_state(model, self.lrs[j])

    def weights(self, j: int) -> dict:
        """Member ``j``'s parameters and buffers."""
        return self.net.load_into(j, self.modules[j]).state_dict()

    def keep(self, members: Sequence[int]) -> None:
        """Keep only the members at these positions (the others diverged or ended)."""
        if members:
            self.net.keep(members)
            if self.update is not None:
                self.update.keep(self.net.params, members)
        self.member_settings = [self.member_settings[j] for j in members]
        self.modules = [self.modules[j] for j in members]
        self.lrs = [self.lrs[j] for j in members]
        self.try_graph, self.graphed = self.use_graph, None  # a graph holds the old stack's shapes

    def train(self) -> None:
        """Nothing to switch: the stacked parameters are the networks."""
        # the stacked parameters are the networks; the modules only receive copies


# ---------------------------------------------------------------------------------------------
# the ensemble


def _check_runs(cfgs: Sequence, run_dirs: Sequence[Path]) -> None:
    if len(cfgs) != len(run_dirs):
        raise ConfigError(f"{len(cfgs)} configs but {len(run_dirs)} output folders")
    if len({d.resolve() for d in run_dirs}) != len(run_dirs):
        raise ConfigError("two runs of the ensemble share one output folder")
    check_compatible(cfgs)
    if len({run_identity(c)["run_id"] for c in cfgs}) != len(cfgs):
        raise ConfigError("the ensemble holds the same run twice (same lr and seed)")


def _stackable(members: Sequence[Member], data: Dataset) -> str | None:
    """Why these runs cannot train as one stacked network (None: they can)."""
    model = build(members[0].settings, data, torch.device("cpu"))
    if any(True for _ in model.buffers()):
        return f"{type(model).__name__} has buffers (e.g. BatchNorm statistics), which no stacked step updates"
    return None


def train_ensemble(cfgs: Sequence, run_dirs: Sequence[str | Path], *, data: Dataset | None = None,
                   callback=None, compile: bool | None = None, impl: str = "auto") -> list[RunResult]:
    """Train the runs ``cfgs`` (resolved ``train`` configs) into ``run_dirs`` in lockstep.

    See the module docstring. Each run's folder ends up as ``train(cfg, run_dir)`` would leave it.

    ``callback(iteration, rows)`` is called after each checkpoint of the ensemble is safely written,
    ``rows`` mapping each member's run folder to its new rows. ``compile``: wrap the training step in
    ``torch.compile`` (default: the configs' ``compile`` setting); ``impl``: how the stacked networks
    run (:class:`StackedSGD`). Returns one ``RunResult`` per run, in order.
    """
    run_dirs = [Path(d) for d in run_dirs]
    _check_runs(cfgs, run_dirs)
    blocked: list = []
    members, data = open_runs(cfgs, run_dirs, data, blocked)
    # a folder in use is skipped (another process trains it); one that cannot be used fails its run alone
    skipped = {d: RunResult(d, "skipped" if isinstance(exc, RunInUse) else "failed", 0, 0, message=str(exc))
               for d, exc in blocked}
    if blocked:
        print(f"sharpcomp: {len(blocked)} run(s) of the ensemble left out; training the other {len(members)}",
              file=sys.stderr)
    if not members:
        return [skipped[d] for d in run_dirs]
    try:
        if data is None:  # every run had ended: nothing to train, no data loaded
            return [m.run.outcome() for m in members]
        compile = members[0].settings.compile if compile is None else compile
        why = next((r for m in members if (r := unbatchable(m.settings))), None) or _stackable(members, data)
        if why is None:
            train_members(members, data, lambda group: EnsembleStepper(group, data, compile, impl), callback,
                          isolate=True)
        else:
            print(f"sharpcomp: no stacked ensemble ({why}); training the runs one by one", file=sys.stderr)
            for m in members:
                train_members([m], data, lambda group: plain_stepper(group[0], data), callback, isolate=True)
    finally:
        close_all(members)
    done = {m.run.run_dir: m.run.outcome() for m in members}
    return [skipped.get(d) or done[d] for d in run_dirs]
