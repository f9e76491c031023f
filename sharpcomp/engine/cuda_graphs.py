"""Training steps replayed as captured CUDA graphs (a small network's SGD step is launch-bound).

A step function ``fn(idx) -> losses`` (gather the minibatch by index, forward, backward, update the
parameters in place) is captured once into a ``torch.cuda.CUDAGraph`` with a static index buffer; each
training step copies the next indices into that buffer and replays the graph. Data order is unchanged:
the indices are the ones the eager path would use.

Capture follows PyTorch's "whole network capture" recipe: a few warm-up calls on a side stream (they
change the parameters, so every state tensor is saved before and restored after), gradients set to
None before capture (the captured backward then writes them into the graph's own memory at each
replay), and the loss returned as a static output read after each replay. Warm-up and capture run on
the same side stream (libraries that keep per-stream handles or workspaces, e.g. cuBLAS(Lt), set them
up during warm-up, not mid-capture).

What a replay does not redo: anything the step does on the host. Python values are baked in at
capture (the learning rate, the optimizer's hyper-parameters, the training precision (TF32) and the
model's train/eval mode); tensors are used by address, so the parameters must be updated in place
(``copy_``, ``sub_``; never rebound with ``p.data = ...``) and any change of shapes (an ensemble
dropping members) needs a new capture. Only state-free optimizers are safe: plain SGD without
momentum holds no per-parameter state (warm-up would otherwise advance it).

Anything that cannot be captured (a host synchronisation in the step, e.g. SAM's gradient norm; an
unsupported kernel) raises during warm-up or capture; :func:`try_capture` then says so in one line and
the caller keeps its eager step.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

WARMUP = 3


class GraphedStep:
    """``fn`` captured as a CUDA graph; ``step(idx)`` replays it on new indices, returns the losses."""

    def __init__(self, fn: Callable[[Tensor], Tensor], state: Callable[[], Sequence[Tensor]], idx: Tensor):
        self.static_idx = idx.clone()
        saved = [t.detach().clone() for t in state()]
        self.stream = side = torch.cuda.Stream(device=idx.device)  # kept: the graph's memory was allocated on it
        side.wait_stream(torch.cuda.current_stream(idx.device))
        with torch.cuda.stream(side):
            for _ in range(WARMUP):
                fn(self.static_idx)
        torch.cuda.current_stream(idx.device).wait_stream(side)
        with torch.no_grad():
            for t, v in zip(state(), saved):
                t.copy_(v)
        del saved
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph, stream=side):
            self.static_out = fn(self.static_idx)

    def step(self, idx: Tensor) -> Tensor:
        if idx.shape != self.static_idx.shape:  # copy_ would broadcast a smaller index tensor silently
            raise ValueError(f"a captured step takes indices of shape {tuple(self.static_idx.shape)}, "
                             f"got {tuple(idx.shape)}")
        self.static_idx.copy_(idx)
        self.graph.replay()
        return self.static_out


def try_capture(fn: Callable[[Tensor], Tensor], state: Callable[[], Sequence[Tensor]], idx: Tensor,
                what: str) -> GraphedStep | None:
    """A :class:`GraphedStep`, or None (with one line on stderr) when the step cannot be captured.
    The state tensors are restored either way."""
    saved = [t.detach().clone() for t in state()]
    try:
        return GraphedStep(fn, state, idx)
    except Exception as exc:  # capture errors come as RuntimeError or CUDA errors of several kinds
        try:
            torch.cuda.synchronize(idx.device)
        except Exception:  # noqa: S110  (an invalidated capture may report its error again here)
            pass
        with torch.no_grad():
            for t, v in zip(state(), saved):
                t.copy_(v)
        first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        print(f"sharpcomp: {what}: CUDA graph capture failed ({first}); training eagerly", file=sys.stderr)
        return None


def graphs_apply(device: torch.device, setting: str, reason: str | None = None, what: str = "step") -> bool:
    """Whether to capture: on CUDA with ``cuda_graph=auto`` and nothing that rules it out (``reason``,
    said in one line)."""
    if device.type != "cuda" or setting != "auto":
        return False
    if reason is not None:
        print(f"sharpcomp: {what}: no CUDA graph ({reason}); training eagerly", file=sys.stderr)
        return False
    return True
