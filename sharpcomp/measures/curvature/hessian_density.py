"""The spectral density of the loss Hessian by stochastic Lanczos quadrature (SLQ; Lin, Saad & Yang 2016,
Ghorbani, Krishnan & Xiao 2019, PyHessian's ``density``).

The density of H (P x P, eigenpairs (lambda_j, u_j)) is phi(t) = (1/P) sum_j delta(t - lambda_j). For a
vector v uniform on the unit sphere (a normalised Rademacher or Gaussian vector), E[v^T f(H) v] =
Tr f(H) / P = integral f dphi, and v^T f(H) v = sum_j (v^T u_j)^2 f(lambda_j) is approximated by m-point
Gauss quadrature from m Lanczos steps started at v: nodes theta_i (Ritz values) and weights
tau_i = S_{1,i}^2 (:mod:`sharpcomp.measures.linalg.lanczos`), exact for polynomials of degree <= 2m - 1. SLQ
averages the quadrature over ``probes`` start vectors. Consequences used as checks: per probe,
sum_i tau_i = 1, sum_i tau_i theta_i = v^T H v and sum_i tau_i theta_i^2 = ||H v||^2 (m >= 2) exactly,
so the density's first two moments are unbiased estimates of Tr H / P and Tr H^2 / P, with standard
errors std(ddof=1)/sqrt(probes) over the probes.

Stored as a histogram: the mass sum_i tau_i of the nodes in each bin of a fixed grid, averaged over the
probes (the masses add up to 1). The grid is :data:`sharpcomp.results.density_bins.DENSITY_EDGES`, the
same for every run, so densities compare across checkpoints and runs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from sharpcomp.measures.declaration import Column, Measure, setting
from sharpcomp.measures.linalg.hutchinson import rademacher
from sharpcomp.measures.linalg.lanczos import lanczos
from sharpcomp.measures.linalg.matvec import dimension, hessian_matvec
from sharpcomp.measures.linalg.param_space import LossFn, preserved, trainable
from sharpcomp.measures.linalg.precision import exact_float32
from sharpcomp.measures.sample import Sample
from sharpcomp.results.density_bins import DENSITY_EDGES


def histogram(nodes: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """The weights of the nodes summed in each bin of :data:`DENSITY_EDGES`."""
    idx = np.clip(np.searchsorted(DENSITY_EDGES, nodes, side="right") - 1, 0, len(DENSITY_EDGES) - 2)
    return np.bincount(idx, weights=weights, minlength=len(DENSITY_EDGES) - 1).astype(float)


@dataclass
class Density:
    masses: np.ndarray        # histogram on DENSITY_EDGES, sums to 1
    nodes: list[np.ndarray]   # per probe: Gauss nodes theta_i
    weights: list[np.ndarray]  # per probe: weights tau_i
    moment1: float            # estimate of Tr H / P
    moment1_se: float
    moment2: float            # estimate of Tr H^2 / P
    moment2_se: float


def _stats(v: np.ndarray) -> tuple[float, float]:
    return float(v.mean()), (float(v.std(ddof=1) / math.sqrt(len(v))) if len(v) > 1 else float("nan"))


@exact_float32()
def hessian_density(model: nn.Module, loss_fn: LossFn, inputs: Tensor, targets: Tensor, probes: int = 4,
                    steps: int = 60, generator: torch.Generator | None = None,
                    chunk_size: int | None = None) -> Density:
    """The SLQ density of the Hessian of the mean loss over ``inputs``: ``probes`` normalised
    Rademacher start vectors, ``steps`` Lanczos steps each. The model is left as it was."""
    if probes < 1 or steps < 1:
        raise ValueError(f"probes and steps must be >= 1, got {probes} and {steps}")
    with preserved(model):
        mv = hessian_matvec(model, loss_fn, inputs, targets, chunk_size)
        params = trainable(model)
        dim = dimension(model)
        nodes, weights = [], []
        for _ in range(probes):
            z = torch.cat([t.reshape(-1) for t in rademacher(params, generator)])
            tri, _ = lanczos(mv, z / math.sqrt(dim), steps)
            theta, s = tri.ritz()
            nodes.append(theta.numpy())
            weights.append((s[0] ** 2).numpy())
    masses = sum(histogram(t, w) for t, w in zip(nodes, weights)) / probes
    m1 = np.array([float(w @ t) for t, w in zip(nodes, weights)])
    m2 = np.array([float(w @ t ** 2) for t, w in zip(nodes, weights)])
    return Density(masses, nodes, weights, *_stats(m1), *_stats(m2))


# ---------------------------------------------------------------------------------------------------
# the declaration


@dataclass(frozen=True)
class Settings:
    """``metrics.flatness.hessian_density``."""

    n: int = setting(128, above=0, doc="fixed training points (the same at every checkpoint)")
    probes: int = setting(1, above=0, doc="start vectors")
    steps: int = setting(40, above=0, doc="Lanczos steps per start vector")
    chunk_size: int = setting(None, kind=int, above=0, doc="points per Hessian-vector product (memory)")


def compute(sample: Sample, s: Settings) -> dict:
    """The density's bin masses on :data:`DENSITY_EDGES`, on ``s.n`` fixed points."""
    d = hessian_density(sample.model, sample.loss_fn, *sample.fixed(s.n), probes=s.probes, steps=s.steps,
                        generator=sample.generator, chunk_size=s.chunk_size)
    return {"hessian_density": [float(v) for v in d.masses]}


MEASURE = Measure(
    earlier_defaults={"n": 256, "probes": 2},
    function=hessian_density,
    name="hessian_density", family="curvature", settings=Settings, compute=compute, stochastic=True,
    summary="the Hessian's spectral density by stochastic Lanczos quadrature, as bin masses on a fixed grid",
    columns=(Column("hessian_density", kind="list", doc="masses of the bins of DENSITY_EDGES"),))
