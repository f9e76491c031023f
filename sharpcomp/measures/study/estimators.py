r"""Matrix-free estimators of the study's metrics, with standard errors, for networks whose N x M input
Jacobians per sample are too costly to form (an ImageNet classifier: N = 1,000, M = 150,528).

Index conventions as in :mod:`sharpcomp.measures.study.metrics`. Only products with the Jacobians are used:
``J_i^T u`` (a vector-Jacobian product, one backward pass for all samples at once, samples being
independent in eval mode), ``J_i v`` (a Jacobian-vector product, ``torch.func.jvp``) and
``(d f_i / d theta)^T u`` (one backward pass). Probes ``u`` are Rademacher vectors (entries +-1).

* ``G = mean_i ||J_i||_F^2``: ``E_u ||J_i^T u||^2 = Tr(J_i J_i^T)`` (Hutchinson over the N outputs);
  probe s gives ``g_s = mean_i ||J_i^T u_is||^2``, the estimate is ``mean_s g_s``, its standard error
  ``std_s(g_s) / sqrt(P)``.
* ``S = mean_i sum_k ||d f_k(x_i) / d theta||^2``: with independent probes ``u_i`` for every sample,
  ``E ||sum_i (d f_i / d theta)^T u_i||^2 = sum_i ||d f_i / d theta||_F^2`` (cross terms have mean 0),
  so one backward pass of ``sum_i u_i . f(x_i)`` per probe gives an unbiased estimate of ``n S``.
* ``local_dim = mean_i (Tr K_i)^2 / Tr K_i^2`` with ``Tr K_i^2 = ||K_i||_F^2 = E_u ||J_i J_i^T u||^2``
  (a VJP then a JVP per probe) and ``Tr K_i`` from the same probes; the ratio is estimated from the
  probe means and its standard error by the jackknife over probes (a ratio of means is biased at
  O(1/P); the jackknife error covers that order).
* ``mls = mean_i ||J_i||_2``: power iteration ``v <- J_i^T J_i v / ||.||`` (a JVP and a VJP per step,
  batched over samples) from a random start; ``sqrt`` of the Rayleigh quotient is a lower bound of
  ``||J_i||_2`` converging to it. Its error estimate ``mls_err`` is the mean over samples of
  ``||r_i|| / (2 sigma_i)`` with ``r_i = J_i^T J_i v - rho_i v`` the residual (an eigenvalue of
  ``J_i^T J_i`` lies within ``||r_i||`` of ``rho_i``; a bound on the distance to *some* singular value,
  so it is a convergence diagnostic, not a statistical error).

Not estimated (NaN): ``log_volume`` (stochastic Lanczos quadrature of log det is not implemented) and the
bounds. :func:`choose` picks the exact engine below ``EXACT_MAX_ENTRIES`` Jacobian entries per sample.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor, nn
from torch.func import jvp

from sharpcomp.measures.linalg.precision import exact_float32
from sharpcomp.results.columns import ESTIMATE_COLUMNS

__all__ = ["ESTIMATE_COLUMNS", "choose", "estimate_metrics"]

# N * M (Jacobian entries per sample) above which ``choose`` picks the estimators.
EXACT_MAX_ENTRIES = 20_000_000


def choose(model: nn.Module, inputs: Tensor) -> str:
    """``"exact"`` or ``"estimate"``: the estimators when one sample's Jacobian has more than
    ``EXACT_MAX_ENTRIES`` entries."""
    with torch.no_grad():
        n_out = model(inputs[:1]).numel()
    return "estimate" if n_out * inputs[0].numel() > EXACT_MAX_ENTRIES else "exact"


def _rademacher(shape, gen: torch.Generator, like: Tensor) -> Tensor:
    return (torch.randint(0, 2, shape, generator=gen) * 2 - 1).to(dtype=like.dtype, device=like.device)


def _vjp(model: nn.Module, x: Tensor, u: Tensor) -> Tensor:
    """``J_i^T u_i`` for every sample (n, M)."""
    xr = x.detach().requires_grad_()
    f = model(xr).reshape(len(x), -1)
    (g,) = torch.autograd.grad(f, xr, u)
    return g.detach().reshape(len(x), -1)


def _jvp(model: nn.Module, x: Tensor, v: Tensor) -> Tensor:
    """``J_i v_i`` for every sample (n, N)."""
    _, out = jvp(lambda inp: model(inp), (x.detach(),), (v.detach().reshape(x.shape),))
    return out.detach().reshape(len(x), -1)


def _jackknife_ratio(num: np.ndarray, den: np.ndarray) -> tuple[float, float]:
    """mean_i (mean_s num_si)^2 / mean_s den_si and its jackknife standard error over probes s.
    ``num``, ``den``: (P, n)."""
    p = num.shape[0]

    def stat(a, b):
        return float(np.mean(a.mean(0) ** 2 / b.mean(0)))

    full = stat(num, den)
    loo = np.array([stat(np.delete(num, s, 0), np.delete(den, s, 0)) for s in range(p)])
    se = math.sqrt((p - 1) / p * float(np.sum((loo - loo.mean()) ** 2)))
    return p * full - (p - 1) * float(loo.mean()), se  # bias-corrected


def _power_mls(model: nn.Module, x: Tensor, iters: int, gen: torch.Generator) -> tuple[float, float]:
    v = torch.randn(x.reshape(len(x), -1).shape, generator=gen).to(x)
    v = v / v.norm(dim=1, keepdim=True)
    rho = torch.zeros(len(x), dtype=x.dtype, device=x.device)
    w = v
    for _ in range(iters):
        jv = _jvp(model, x, v)
        w = _vjp(model, x, jv)  # J^T J v
        rho = (w * v).sum(1)
        norm = w.norm(dim=1, keepdim=True)
        v = torch.where(norm > 0, w / norm.clamp_min(torch.finfo(x.dtype).tiny), v)
    jv = _jvp(model, x, v)
    w = _vjp(model, x, jv)
    rho = (w * v).sum(1).clamp_min(0)
    resid = (w - rho[:, None] * v).norm(dim=1)
    sigma = rho.sqrt()
    err = torch.where(sigma > 0, resid / (2 * sigma.clamp_min(torch.finfo(x.dtype).tiny)), torch.zeros_like(sigma))
    return float(sigma.double().mean()), float(err.double().mean())


@exact_float32()
def estimate_metrics(model: nn.Module, inputs: Tensor, *, probes: int = 32, power_iters: int = 30,
                     generator: torch.Generator | None = None) -> dict:
    """Estimates of sharpness, G, mls and local_dim (module docstring) with their standard errors
    (``*_se``, ``mls_err``); ``log_volume`` and the bounds are NaN. ``model`` in eval mode."""
    if probes < 2:
        raise ValueError(f"need at least 2 probes for a standard error, got {probes}")
    gen = generator or torch.Generator().manual_seed(0)
    x = inputs.detach().to(next(model.parameters()).device)
    n = len(x)
    params = [p for p in model.parameters() if p.requires_grad]
    with torch.no_grad():
        n_out = model(x[:1]).numel()
    g_vals, s_vals, tr_k, tr_k2 = [], [], [], []
    with torch.enable_grad():
        for _ in range(probes):
            u = _rademacher((n, n_out), gen, x)
            xr = x.detach().requires_grad_()
            f = model(xr).reshape(n, -1)
            grads = torch.autograd.grad(f, [xr, *params], u, allow_unused=True)
            jtu = grads[0].reshape(n, -1)
            sq = jtu.double().square().sum(1)
            tr_k.append(sq.detach().cpu().numpy())
            g_vals.append(float(sq.mean()))
            s_vals.append(sum(float(g.double().square().sum()) for g in grads[1:] if g is not None) / n)
            tr_k2.append(_jvp(model, x, jtu.detach()).detach().double().square().sum(1).cpu().numpy())  # ||J J^T u||^2
        mls, mls_err = _power_mls(model, x, power_iters, gen)
    g_vals, s_vals = np.array(g_vals), np.array(s_vals)
    tr_k, tr_k2 = np.stack(tr_k), np.stack(tr_k2)
    local_dim, local_dim_se = _jackknife_ratio(tr_k, tr_k2)
    nan = float("nan")
    return {
        "sharpness": float(s_vals.mean()), "sharpness_se": float(s_vals.std(ddof=1) / math.sqrt(probes)),
        "G": float(g_vals.mean()), "G_se": float(g_vals.std(ddof=1) / math.sqrt(probes)),
        "log_volume": nan, "mls": mls, "mls_err": mls_err, "local_dim": local_dim, "local_dim_se": local_dim_se,
        "bound_b": nan, "bound_c": nan, "bound_d": nan, "probes": probes,
        "bounds_reason": "estimated metrics (matrix-free): the bounds need the exact engine",
    }
