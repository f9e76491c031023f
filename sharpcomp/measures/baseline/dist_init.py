"""The distance from initialisation, ||theta - theta_0||_2, over every trainable parameter.

theta_0 is the run's network at iteration 0. It is not stored: the training engine rebuilds it from the
run's seed when the measure asks (:func:`sharpcomp.engine.setup.initial_network`, the very call that made
the network the run started from), and passes it through :attr:`sharpcomp.measures.sample.Sample.initial`.
Nagarajan & Kolter 2019 and Jiang et al. 2020 rank it among the norm-based measures; it is 0 at
iteration 0 and grows as training moves the weights. A network given without its initial point (a
notebook call without ``initial``) is refused with one line.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from sharpcomp.measures.declaration import Column, Measure
from sharpcomp.measures.sample import Sample


@torch.no_grad()
def dist_init(model: nn.Module, initial: nn.Module) -> float:
    """||theta - theta_0||_2 between the trainable parameters of ``model`` and of ``initial`` (by name), in float64.

    ValueError when the two networks do not have the same trainable parameters (names and shapes).
    """
    now = {k: p for k, p in model.named_parameters() if p.requires_grad}
    start = dict(initial.named_parameters())
    if set(now) - set(start) or any(start[k].shape != p.shape for k, p in now.items()):
        raise ValueError("dist_init: the initial network does not have this network's parameters")
    return math.sqrt(sum(float((p.detach().double() - start[k].detach().to(p.device).double()).pow(2).sum())
                         for k, p in now.items()))


def compute(sample: Sample, s) -> dict[str, float]:
    """||theta - theta_0|| of the checkpoint's network, theta_0 from ``sample.initial``."""
    if sample.initial is None:
        raise ValueError("dist_init needs the network at initialisation (compute_measures(..., initial=model0))")
    return {"dist_init": dist_init(sample.model, sample.initial())}


MEASURE = Measure(
    function=dist_init,
    name="dist_init", family="baseline", compute=compute,
    summary="the distance from initialisation ||theta - theta_0||_2 (theta_0 rebuilt from the run's seed)",
    columns=(Column("dist_init"),))
