"""The norm of the weights, ||theta||_2, over every trainable parameter (biases included).

The simplest of the norm-based complexity measures the generalisation literature ranks flatness against
(Jiang et al. 2020 list it with its variants, Frobenius and spectral products, as ``l2``). It needs no
data. Under the ReLU rescaling of a hidden layer by alpha (incoming weights and biases times alpha, the next
layer's weights over alpha) it moves, the function staying the same.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from sharpcomp.measures.declaration import Column, Measure
from sharpcomp.measures.linalg.param_space import trainable
from sharpcomp.measures.sample import Sample


@torch.no_grad()
def param_norm(model: nn.Module) -> float:
    """||theta||_2 of the trainable parameters, summed in float64."""
    return math.sqrt(sum(float(p.detach().double().pow(2).sum()) for p in trainable(model)))


def compute(sample: Sample, s) -> dict[str, float]:
    """||theta|| of the checkpoint's network."""
    return {"param_norm": param_norm(sample.model)}


MEASURE = Measure(
    function=param_norm,
    name="param_norm", family="baseline", compute=compute,
    summary="the norm of the weights ||theta||_2 (every trainable parameter)",
    columns=(Column("param_norm"),), reparam={"param_norm": "moves"})
