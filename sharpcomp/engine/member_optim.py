"""The optimisers of an ensemble's members: each member's own torch optimiser, over views of the stacked
parameters.

Member j's parameters are the slices ``P[j]`` of the stacked tensors ``P`` (k, ...) of
:class:`sharpcomp.engine.ensemble.StackedSGD`: views that share their storage, so an optimiser that
updates its parameters in place (every ``torch.optim`` optimiser does) updates the stack. Each member's
optimiser is built by the same factory as a separate run's (:func:`sharpcomp.engine.steppers.make_optimizer`,
over the member's parameters in the network's order), receives the member's gradient slice ``G[j]`` as
``.grad`` and takes its step at the member's own learning rate for that iteration (its ``lr`` and the shared
schedule). The update is therefore the separate run's update, term for term; the state (momentum buffers,
Adam's moments and step count) is the member's own and its ``state_dict`` is the one a separate run saves,
so a run started in an ensemble resumes on its own and vice versa.

Only optimisers whose step needs nothing but the parameters and their gradients are batched this way
(``sgd``, ``adam``, ``adamw``); SAM (a second gradient at a perturbed point) and a user's own optimiser
train as separate runs (:func:`sharpcomp.engine.ensemble.unbatchable`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from sharpcomp.engine.steppers import cloned, make_optimizer
from sharpcomp.results.run_state import CHECKPOINT_FILE
from sharpcomp.settings import ConfigError, Settings


class MemberOptimizers:
    """One torch optimiser per member over its slices of ``params`` (name -> stacked (k, ...) tensor)."""

    def __init__(self, params: Mapping[str, Tensor], settings: Sequence[Settings],
                 resumes: Sequence[dict | None]):
        self.settings = list(settings)
        self.names = list(params)
        self.opts = [make_optimizer(s, self._views(params, j)) for j, s in enumerate(self.settings)]
        for opt, state in zip(self.opts, resumes):
            if state is not None:
                _load(opt, state["optimizer_state"])

    def _views(self, params: Mapping[str, Tensor], j: int) -> list[Tensor]:
        return [params[n].detach()[j] for n in self.names]

    @torch.no_grad()
    def step(self, grads: Mapping[str, Tensor], it: int) -> None:
        """Every member's step ``it`` with its gradient slices (name -> (k, ...) gradients)."""
        for j, (opt, s) in enumerate(zip(self.opts, self.settings)):
            lr = s.lr_at(it)
            for group in opt.param_groups:
                group["lr"] = lr
            for view, name in zip(opt.param_groups[0]["params"], self.names):
                view.grad = grads[name][j]
            opt.step()

    def state(self, j: int) -> dict:
        """Member ``j``'s optimizer state, as a separate run's ``optimizer.state_dict()`` (a copy)."""
        return cloned(self.opts[j].state_dict())

    def keep(self, params: Mapping[str, Tensor], members: Sequence[int]) -> None:
        """Keep the members at these positions, over the new stack ``params`` (their states carried)."""
        states = [self.opts[j].state_dict() for j in members]
        self.settings = [self.settings[j] for j in members]
        self.opts = [make_optimizer(s, self._views(params, pos)) for pos, s in enumerate(self.settings)]
        for opt, state in zip(self.opts, states):
            opt.load_state_dict(state)


def _load(opt: torch.optim.Optimizer, state: dict) -> None:
    try:
        opt.load_state_dict(state)
    except (RuntimeError, ValueError, KeyError, TypeError, IndexError) as exc:
        why = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise ConfigError(f"the saved optimizer state in {CHECKPOINT_FILE} does not fit this run's optimizer "
                          f"({why}); move it away to restart the run") from None
