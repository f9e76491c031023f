"""The curvature-spectrum measures of ``metrics.flatness`` at one checkpoint: their default settings and
the call that turns the switched-on ones into parquet columns (:func:`curvature_metrics`, used by
:func:`sharpcomp.measures.flatness.extra_metrics`).

The Hessian measures (``hessian_max``, ``ggn_max``, ``nonuniformity``, ``hessian_density``) use a fixed
subset of the training set, the same images at every checkpoint (the first ``n`` of one permutation
drawn from a constant seed), so that a curve over training follows one matrix's evolution; the random
start vectors and the minibatches of ``batch_sharpness`` come from the checkpoint's generator.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import Tensor, nn

from sharpcomp.measures.curvature.batch_sharpness import batch_sharpness
from sharpcomp.measures.curvature.hessian_density import hessian_density
from sharpcomp.measures.curvature.hessian_spectrum import ggn_top, hessian_top
from sharpcomp.measures.curvature.nonuniformity import nonuniformity_top
from sharpcomp.measures.linalg.param_space import LossFn

CURVATURE_DEFAULTS: dict[str, dict] = {
    # the k largest Hessian eigenvalues on n fixed training points, to relative residual tol (Lanczos)
    # (k = 1 by default: the top 5 to 1e-3 take ~5x the Lanczos steps of lambda_max alone on vgg10)
    "hessian_max": {"k": 1, "n": 1000, "tol": 1e-3, "max_iter": 100, "chunk_size": None},
    # the largest eigenvalue of the Gauss-Newton matrix, likewise
    "ggn_max": {"n": 1000, "tol": 1e-3, "max_iter": 100, "chunk_size": None},
    # mean of g_B^T H_B g_B / |g_B|^2 over `batches` minibatches of batch_size (null: the run's batch)
    "batch_sharpness": {"batches": 16, "batch_size": None},
    # sqrt(lambda_max((1/n) sum_i H_i^2 - H^2)) on n fixed training points
    "nonuniformity": {"n": 32, "tol": 1e-2, "max_iter": 30},
    # SLQ spectral density: probes x steps Hessian-vector products on n fixed training points
    "hessian_density": {"n": 256, "probes": 2, "steps": 40, "chunk_size": None},
}
FIXED_SUBSET_SEED = 0


def fixed_subset(n_total: int, n: int) -> Tensor:
    """The indices of the same ``n`` training points at every checkpoint."""
    perm = torch.randperm(n_total, generator=torch.Generator().manual_seed(FIXED_SUBSET_SEED))
    return perm[: min(int(n), n_total)]


def _batches(x: Tensor, y: Tensor, count: int, size: int, generator) -> list:
    n = x.shape[0]
    size = max(1, min(int(size), n))
    count = max(1, min(int(count), n // size))
    idx = torch.randperm(n, generator=generator)[: count * size].view(count, size)
    return [(x[i], y[i]) for i in idx]


def curvature_metrics(model: nn.Module, loss_fn: LossFn, train_x: Tensor, train_y: Tensor,
                      cfg: Mapping[str, dict], generator: torch.Generator | None,
                      batch_size: int | None = None) -> dict:
    """The columns of the switched-on curvature measures in ``cfg`` (resolved settings, by measure):
    hessian_max, hessian_max_residual, hessian_max_iterations, hessian_top (list, descending) |
    ggn_max, ggn_max_residual, ggn_max_iterations | batch_sharpness, batch_sharpness_se |
    nonuniformity, nonuniformity_iterations | hessian_density (list: masses on DENSITY_EDGES).
    ``batch_size``: the run's batch size (batch_sharpness's default)."""
    out: dict = {}

    def subset(c):
        idx = fixed_subset(train_x.shape[0], c["n"])
        return train_x[idx], train_y[idx]

    if "hessian_max" in cfg:
        c = cfg["hessian_max"]
        r = hessian_top(model, loss_fn, *subset(c), k=int(c["k"]), tol=float(c["tol"]),
                        max_iter=int(c["max_iter"]), generator=generator, chunk_size=c["chunk_size"])
        out.update(hessian_max=r.values[0], hessian_max_residual=max(r.residuals),
                   hessian_max_iterations=r.iterations, hessian_top=[float(v) for v in r.values])
    if "ggn_max" in cfg:
        c = cfg["ggn_max"]
        r = ggn_top(model, loss_fn, *subset(c), k=1, tol=float(c["tol"]), max_iter=int(c["max_iter"]),
                    generator=generator, chunk_size=c["chunk_size"])
        out.update(ggn_max=r.values[0], ggn_max_residual=r.residuals[0], ggn_max_iterations=r.iterations)
    if "batch_sharpness" in cfg:
        c = cfg["batch_sharpness"]
        size = c["batch_size"] if c["batch_size"] is not None else (batch_size or train_x.shape[0])
        batches = _batches(train_x, train_y, int(c["batches"]), int(size), generator)
        out["batch_sharpness"], out["batch_sharpness_se"] = batch_sharpness(model, loss_fn, batches)
    if "nonuniformity" in cfg:
        c = cfg["nonuniformity"]
        r = nonuniformity_top(model, loss_fn, *subset(c), tol=float(c["tol"]), max_iter=int(c["max_iter"]),
                              generator=generator)
        out.update(nonuniformity=math.sqrt(max(r.values[0], 0.0)), nonuniformity_iterations=r.iterations)
    if "hessian_density" in cfg:
        c = cfg["hessian_density"]
        d = hessian_density(model, loss_fn, *subset(c), probes=int(c["probes"]), steps=int(c["steps"]),
                            generator=generator, chunk_size=c["chunk_size"])
        out["hessian_density"] = [float(v) for v in d.masses]
    return out
