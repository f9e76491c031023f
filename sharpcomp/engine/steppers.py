"""Steppers: what advances a list of k runs by one SGD iteration, and what a checkpoint asks of them.

The training loop (:mod:`sharpcomp.engine.train`) drives any stepper the same way and never asks which one
it has. A stepper holds the k runs' networks (position j <-> the loop's j-th active run) and offers:

- ``step(idx)``: one iteration on minibatch indices ``idx`` (k, batch) into the training set, at each
  run's learning rate for that iteration (its schedule, :mod:`sharpcomp.schedule`; a stepper counts its
  iterations from the runs' common starting point); returns the (k,) minibatch losses, on the device
  (no host synchronisation);
- ``evaluate(x, y)``: [(mean loss, accuracy, per-sample correctness)] of every network on a whole set,
  in eval mode (BatchNorm's running statistics are read, never updated, by a checkpoint; no dropout);
- ``models()``: the k networks as ``nn.Module`` s in eval mode, holding the current parameters;
- ``sample_metrics(models, sets)``: the metrics of each network on its sample sets
  ([{set name: (inputs, labels)}] -> [{set name: ``compute_metrics`` result}]);
- ``states(j)``: network j's (model state, optimizer state) for its checkpoint (copies: training goes on);
- ``weights(j)``: network j's model state (parameters and buffers), to keep along the way;
- ``keep(members)``: keep only these positions (after some runs diverged); ``train()``: back to
  each module's training-time mode after a checkpoint (so evaluation leaves no trace on training).

:class:`PlainStepper` trains one network (k = 1) with its own optimizer (any of :mod:`sharpcomp.optim`);
:class:`sharpcomp.engine.ensemble.EnsembleStepper` trains k networks of one architecture as one stacked
network. On CUDA (``cuda_graph=auto``) both replay a plain SGD step at a constant rate as a captured CUDA
graph (:mod:`sharpcomp.engine.cuda_graphs`); other optimisers and schedules step eagerly.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from sharpcomp.data.datasets import Dataset
from sharpcomp.engine.cuda_graphs import graphs_apply, try_capture
from sharpcomp.engine.evaluation import compute_sample_metrics, evaluate
from sharpcomp.losses import batch_loss, loss_target
from sharpcomp.optim import OptimError, build_optimizer, is_plain_sgd
from sharpcomp.results.run_state import load_resume
from sharpcomp.schedule import is_constant
from sharpcomp.settings import ConfigError, Settings


def make_optimizer(s: Settings, params) -> torch.optim.Optimizer:
    """The run's optimizer over ``params`` at its learning rate ``lr`` (ConfigError, one line, when it refuses)."""
    try:
        return build_optimizer(s.optim, params, s.lr)
    except OptimError as exc:
        raise ConfigError(str(exc)) from None


def no_graph_reason(s: Settings) -> str | None:
    """Why a run's step is not captured as a CUDA graph (None: it may be): a graph replays the values
    baked in at capture, so only plain SGD at a constant rate (no optimizer state, no schedule) is."""
    if s.optim_name == "sam":
        return "SAM synchronises with the host inside its step"
    if not is_plain_sgd(s.optim):
        return f"optim={s.optim_name} keeps a state a replayed graph would not advance"
    if not is_constant(s.schedule):
        return f"schedule={s.schedule['name']} changes the learning rate a graph bakes in"
    return None


def cloned(state: dict) -> dict:
    """An optimizer's ``state_dict()`` with its tensors copied (the live ones keep changing)."""
    if isinstance(state, dict):
        return {k: cloned(v) for k, v in state.items()}
    if isinstance(state, list):
        return [cloned(v) for v in state]
    return state.detach().clone() if torch.is_tensor(state) else state


class PlainStepper:
    """One network and its optimizer: the plain PyTorch step (``optimizer.step()``, or SAM's
    ``step(closure)``), captured as a CUDA graph where possible."""

    k = 1

    def __init__(self, model: nn.Module, s: Settings, data: Dataset, num_outputs: int, resume: dict | None = None):
        self.model, self.settings = model, s
        self.optimizer = make_optimizer(s, model.parameters())
        self.it = 0
        if resume is not None:
            load_resume(model, self.optimizer, resume)
            self.it = int(resume["iteration"])
        self.scheduled = not is_constant(s.schedule)
        self.x = data.train_x
        self.targets = loss_target(s.loss, data.train_y, num_outputs, data.train_x.dtype)
        self.sam = s.optim_name == "sam"
        self.modes = [(m, m.training) for m in model.modules()]  # the modes training runs in
        self.graphed = None
        self.try_graph = graphs_apply(self.x.device, s.cuda_graph, no_graph_reason(s), "single run")

    def _loss(self, idx: torch.Tensor) -> torch.Tensor:
        return batch_loss(self.settings.loss, self.model(self.x[idx]), self.targets[idx])

    def _eager(self, idx: torch.Tensor) -> torch.Tensor:
        if self.sam:
            def closure():
                self.optimizer.zero_grad(set_to_none=True)
                out = self._loss(idx)
                out.backward()
                return out

            return self.optimizer.step(closure).detach()
        self.optimizer.zero_grad(set_to_none=True)
        loss = self._loss(idx)
        loss.backward()
        self.optimizer.step()
        return loss.detach()

    def _state_tensors(self) -> list[torch.Tensor]:
        return list(self.model.state_dict(keep_vars=True).values())

    def step(self, idx: torch.Tensor) -> torch.Tensor:
        if self.scheduled:
            lr = self.settings.lr_at(self.it)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
        self.it += 1
        if self.try_graph:
            self.try_graph = False
            # _eager sets the gradients to None first: the captured backward allocates them in the graph's pool
            self.graphed = try_capture(self._eager, self._state_tensors, idx[0], "single run")
        if self.graphed is not None:
            return self.graphed.step(idx[0]).reshape(1)
        return self._eager(idx[0]).reshape(1)

    def evaluate(self, x: torch.Tensor, y: torch.Tensor) -> list[tuple[float, float, torch.Tensor]]:
        return [evaluate(self.model, x, y, self.settings.loss)]

    def models(self) -> list[nn.Module]:
        return [self.model.eval()]

    def sample_metrics(self, models: Sequence[nn.Module],
                       inputs: Sequence[Mapping[str, tuple]]) -> list[dict[str, dict]]:
        return [compute_sample_metrics(m, x, self.settings) for m, x in zip(models, inputs)]

    def states(self, j: int) -> tuple[dict, dict]:
        return self.model.state_dict(), cloned(self.optimizer.state_dict())

    def weights(self, j: int) -> dict:
        return self.model.state_dict()

    def keep(self, members: Sequence[int]) -> None:
        pass  # one network: a diverged run ends the loop

    def train(self) -> None:
        for m, training in self.modes:
            m.training = training
