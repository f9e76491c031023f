"""The Hessian trace on the quotient by the rescaling symmetry.

Tr(PHP), its exact gap to Tr(H), and paired Hutchinson estimates of both.

P projects onto the orthogonal complement of the symmetry orbits' tangents (:mod:`sharpcomp.measures.symmetry.orbits`,
where the derivation of the closed-form gap Tr(H) - Tr(PHP) = -Tr(Gm^{-1} Mq) is written out).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from sharpcomp.measures.linalg.hutchinson import hutchinson
from sharpcomp.measures.linalg.param_space import LossFn, loss_and_grad, preserved, to_device, trainable
from sharpcomp.measures.linalg.precision import exact_float32
from sharpcomp.measures.symmetry.orbits import quotient_projector


@exact_float32()
def quotient_trace_gap(model: nn.Module, loss_fn: LossFn, inputs: Tensor, targets: Tensor,
                       ridge: float = 1e-10) -> float:
    """Closed form Tr(H) - Tr(PHP) = Tr(QHQ) = -Tr(Gm^{-1} Mq), Mq_ij = v_i^T (D_j grad L).

    Exact (no probes); it needs one gradient. Uses H v_j = -D_j g, which holds because L is constant
    along each orbit. Leaves the model as it was.
    """
    with preserved(model):
        x, y = to_device(model, inputs), to_device(model, targets)
        params = trainable(model)
        _, g = loss_and_grad(model, loss_fn, x, y, params)
        proj = quotient_projector(model, ridge)
        if proj.V.r == 0:
            return 0.0
        mq = proj.V.gram_like(g)
        return float(-torch.trace(proj.solve(mq)))


@exact_float32()
def hutchinson_traces(model: nn.Module, loss_fn: LossFn, inputs: Tensor, targets: Tensor, probes: int = 20,
                      generator: torch.Generator | None = None, *, ridge: float = 1e-10,
                      chunk_size: int | None = None) -> dict[str, float]:
    """Paired Hutchinson estimates of Tr(PHP) and Tr(H) from the same Rademacher probes z.

    Tr(PHP) = E_z[(Pz)^T H (Pz)], Tr(H) = E_z[z^T H z]; est = mean over probes, se = std(ddof=1)/sqrt(k).
    Also reports the paired difference Tr(H) - Tr(PHP) (``gap``, ``gap_se``), which should agree with
    :func:`quotient_trace_gap`. With ``chunk_size``, H is accumulated over input chunks as
    sum_c (n_c / n) H_c (valid for a loss that is a mean over samples).
    Returns keys quotient, quotient_se, full, full_se, gap, gap_se.
    """
    if probes < 1:
        raise ValueError(f"probes must be >= 1, got {probes}")
    with preserved(model):
        x_all, y_all = to_device(model, inputs), to_device(model, targets)
        params = trainable(model)
        proj = quotient_projector(model, ridge)
        seed = int(torch.randint(0, 2**62, (1,), generator=generator).item())
        n = x_all.shape[0]
        step = n if chunk_size is None else max(1, int(chunk_size))
        qv = torch.zeros(probes, dtype=torch.float64)
        fv = torch.zeros(probes, dtype=torch.float64)
        for start in range(0, n, step):
            x, y = x_all[start:start + step], y_all[start:start + step]
            weight = x.shape[0] / n
            _, g = loss_and_grad(model, loss_fn, x, y, params, create_graph=True)
            gen = torch.Generator().manual_seed(seed)  # the same probes for every chunk
            full, projected = hutchinson(g, params, probes, gen, proj)
            fv += weight * full
            qv += weight * projected
            del g

    def stats(v: Tensor) -> tuple[float, float]:
        se = float(v.std(unbiased=True) / math.sqrt(len(v))) if len(v) > 1 else float("nan")
        return float(v.mean()), se

    q, q_se = stats(qv)
    f, f_se = stats(fv)
    d, d_se = stats(fv - qv)
    return {"quotient": q, "quotient_se": q_se, "full": f, "full_se": f_se, "gap": d, "gap_se": d_se}


@exact_float32()
def quotient_hessian_trace(model: nn.Module, loss_fn: LossFn, inputs: Tensor, targets: Tensor,
                           probes: int = 20, generator: torch.Generator | None = None,
                           **kwargs) -> tuple[float, float]:
    """Hutchinson estimate of Tr(PHP) with projected probes u = P z: (estimate, standard error)."""
    r = hutchinson_traces(model, loss_fn, inputs, targets, probes, generator, **kwargs)
    return r["quotient"], r["quotient_se"]
