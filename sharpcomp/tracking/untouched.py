"""What a checkpoint leaves of a training loop's state: nothing.

:func:`untouched` keeps, around the measures a tracker computes in someone else's loop, everything the
loop's next step depends on, and puts it back as it was:

* every module's train/eval mode (a checkpoint runs in eval mode);
* every parameter's values, its ``requires_grad`` and its gradient (the same tensor object, with its values);
* every buffer (BatchNorm's running statistics and its count of batches);
* the random streams: torch's global CPU generator, each initialised CUDA device's, numpy's global one and
  Python's ``random``;
* whether autograd is on.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager

import numpy
import torch
from torch import nn


def random_streams() -> dict:
    """The state of every global random stream a training loop may draw from."""
    state = {"torch": torch.get_rng_state(), "numpy": numpy.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_random_streams(state: dict) -> None:
    """Put back the streams :func:`random_streams` saved."""
    torch.set_rng_state(state["torch"])
    numpy.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state:
        torch.cuda.set_rng_state_all(state["cuda"])


@contextmanager
def untouched(model: nn.Module) -> Iterator[nn.Module]:
    """``model`` and the global random streams, put back as they were when the block ends (see the module
    docstring), also when it raises."""
    modes = [(m, m.training) for m in model.modules()]
    params = list(model.parameters())
    flags = [p.requires_grad for p in params]
    values = [p.detach().clone() for p in params]
    grads = [(p.grad, None if p.grad is None else p.grad.detach().clone()) for p in params]
    buffers = [(b, b.detach().clone()) for b in model.buffers()]
    streams = random_streams()
    grad_enabled = torch.is_grad_enabled()
    try:
        yield model
    finally:
        with torch.no_grad():
            for p, flag, value, (grad, saved) in zip(params, flags, values, grads):
                p.copy_(value)
                p.requires_grad_(flag)
                if grad is not None:
                    grad.copy_(saved)
                p.grad = grad
            for b, saved in buffers:
                b.copy_(saved)
        for m, training in modes:
            m.training = training
        set_random_streams(streams)
        torch.set_grad_enabled(grad_enabled)
