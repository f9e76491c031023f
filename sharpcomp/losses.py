"""The training loss, written once.

``mse``: mean squared error against one-hot targets, averaged over the batch and the outputs (the
reference code's ``MSELoss()``); ``ce``: cross-entropy. Shapes: ``out`` is (b, N) for one network or
(k, b, N) for k stacked networks; a loss *target* is the one-hot float (..., b, N) for MSE and the
labels (..., b) for cross-entropy (:func:`loss_target`, prepared once for a whole dataset, so a
training step only gathers). Every mean is per network: (k, b, N) outputs give (k,) losses.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

LOSSES = ("mse", "ce")


def loss_target(name: str, y: Tensor, num_outputs: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """The loss target of labels ``y``: one-hot rows of ``dtype`` for MSE, the labels for cross-entropy."""
    return y if name == "ce" else F.one_hot(y, num_outputs).to(dtype)


def batch_loss(name: str, out: Tensor, target: Tensor) -> Tensor:
    """Mean loss over a batch: a scalar for (b, N) outputs, (k,) for (k, b, N) stacked outputs."""
    if out.dim() == 2:
        return F.cross_entropy(out, target) if name == "ce" else F.mse_loss(out, target)
    if name == "ce":
        k, b = target.shape
        return F.cross_entropy(out.reshape(k * b, -1), target.reshape(-1), reduction="none").reshape(k, b).mean(1)
    return (out - target).square().mean(dim=(1, 2))


def per_sample_loss(name: str, out: Tensor, y: Tensor) -> Tensor:
    """(b,) loss of each sample of (b, N) outputs against labels ``y``."""
    if name == "ce":
        return F.cross_entropy(out, y, reduction="none")
    return F.mse_loss(out, loss_target(name, y, out.shape[1], out.dtype), reduction="none").mean(dim=1)


def losses_of(loss: str | Callable[[Tensor, Tensor], Tensor], out: Tensor, y: Tensor) -> Tensor:
    """(b,) losses of (b, N) outputs against labels ``y``: each sample's for a named loss (``mse``, ``ce``);
    for a loss function of one's own (the mean over a batch), that mean for every sample of the batch, so
    that a mean over chunks weighs each chunk by its size."""
    if isinstance(loss, str):
        return per_sample_loss(loss, out, y)
    return loss(out, y).detach().reshape(()).expand(out.shape[0])


def make_loss(name: str, num_outputs: int) -> Callable[[Tensor, Tensor], Tensor]:
    """``loss(out, y)``: the mean loss of (b, N) outputs against labels ``y`` (for metrics and analyses)."""
    return lambda out, y: batch_loss(name, out, loss_target(name, y, num_outputs, out.dtype))
