"""Steppers: what advances a list of k runs by one SGD iteration, and what a checkpoint asks of them.

The training loop (:mod:`sharpcomp.engine.train`) drives any stepper the same way and never asks which one
it has. A stepper holds the k runs' networks (position j <-> the loop's j-th active run) and offers:

- ``step(idx)``: one iteration on minibatch indices ``idx`` (k, batch) into the training set;
  returns the (k,) minibatch losses, on the device (no host synchronisation);
- ``evaluate(x, y)``: [(mean loss, accuracy, per-sample correctness)] of every network on a whole set,
  in eval mode (BatchNorm's running statistics are read, never updated, by a checkpoint; no dropout);
- ``models()``: the k networks as ``nn.Module`` s in eval mode, holding the current parameters;
- ``sample_metrics(models, sets)``: the metrics of each network on its sample sets
  ([{set name: (inputs, labels)}] -> [{set name: ``compute_metrics`` result}]);
- ``states(j)``: network j's (model state, optimizer state) for its checkpoint;
- ``keep(members)``: keep only these positions (after some runs diverged); ``train()``: back to
  each module's training-time mode after a checkpoint (so evaluation leaves no trace on training).

:class:`PlainStepper` trains one network (k = 1) with its own optimizer (SGD or SAM);
:class:`sharpcomp.engine.ensemble.EnsembleStepper` trains k networks of one architecture as one stacked
network. On CUDA (``cuda_graph=auto``) both replay their step as a captured CUDA graph
(:mod:`sharpcomp.engine.cuda_graphs`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from sharpcomp.data.datasets import Dataset
from sharpcomp.engine.cuda_graphs import graphs_apply, try_capture
from sharpcomp.engine.evaluation import compute_sample_metrics, evaluate
from sharpcomp.losses import batch_loss, loss_target
from sharpcomp.optim import SAM
from sharpcomp.results.run_state import load_resume
from sharpcomp.settings import Settings


def make_optimizer(s: Settings, model: nn.Module) -> torch.optim.Optimizer:
    if s.optim_name == "sam":
        return SAM(model.parameters(), lr=s.lr, rho=s.optim["rho"], adaptive=s.optim["adaptive"])
    return torch.optim.SGD(model.parameters(), lr=s.lr, momentum=0.0, weight_decay=0.0)


class PlainStepper:
    """One network and its optimizer: the plain PyTorch step (``optimizer.step()``, or SAM's
    ``step(closure)``), captured as a CUDA graph where possible."""

    k = 1

    def __init__(self, model: nn.Module, s: Settings, data: Dataset, num_outputs: int, resume: dict | None = None):
        self.model, self.settings = model, s
        self.optimizer = make_optimizer(s, model)
        if resume is not None:
            load_resume(model, self.optimizer, resume)
        self.x = data.train_x
        self.targets = loss_target(s.loss, data.train_y, num_outputs, data.train_x.dtype)
        self.sam = s.optim_name == "sam"
        self.modes = [(m, m.training) for m in model.modules()]  # the modes training runs in
        self.graphed = None
        reason = "SAM synchronises with the host inside its step" if self.sam else None
        self.try_graph = graphs_apply(self.x.device, s.cuda_graph, reason, "single run")

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
        return self.model.state_dict(), self.optimizer.state_dict()

    def keep(self, members: Sequence[int]) -> None:
        pass  # one network: a diverged run ends the loop

    def train(self) -> None:
        for m, training in self.modes:
            m.training = training
