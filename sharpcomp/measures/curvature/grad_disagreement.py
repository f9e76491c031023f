"""Gradient disagreement: how far minibatch gradients point apart.

E over ordered pairs (a != b) of M minibatches of ||g_b|| (1 - cos(g_a, g_b)): how much of batch b's gradient
a step along batch a's direction fails to follow. Parameter-space conventions:
:mod:`sharpcomp.measures.linalg.param_space`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn

from sharpcomp.measures.declaration import Column, Measure, setting
from sharpcomp.measures.linalg.param_space import Batch, LossFn, batch_gradients
from sharpcomp.measures.linalg.precision import exact_float32


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


# ---------------------------------------------------------------------------------------------------
# the declaration


@dataclass(frozen=True)
class Settings:
    """``metrics.flatness.grad_disagreement``."""

    batches: int = setting(8, above=0, doc="disjoint minibatches of the training set")
    batch_size: int = setting(20, above=0, doc="their size")


MEASURE = Measure(
    function=gradient_disagreement,
    name="grad_disagreement", family="curvature", settings=Settings,
    compute=lambda sample, s: {"grad_disagreement": gradient_disagreement(
        sample.model, sample.loss_fn, sample.batches(s.batches, s.batch_size))},
    summary="gradient disagreement: mean over pairs of minibatches of ||g_b|| (1 - cos(g_a, g_b))",
    columns=(Column("grad_disagreement"),), aliases=("disagreement",), id_key="disagreement",
    reparam={"grad_disagreement": "moves"}, reparam_settings={"batches": 5}, in_every_id=True)
