"""The per-sample spectral quantities of input Jacobians: G, log volume, MLS and local dimensionality from
the eigenvalues of K_i = J_i J_i^T (float64), with the zero threshold of :mod:`sharpcomp.measures.study.metrics`.
The study's engine takes them of the chosen layer's representation, the network-wide measures of every
layer's input.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def spectral_values(jac: Tensor, rank: int | None) -> dict[str, Tensor]:
    """Per-sample G, log_volume, mls, local_dim from the input Jacobians (n, N, M)."""
    j = jac.detach().double()
    num_out, m = j.shape[1:]
    # K_i = J_i J_i^T; when N > M, J_i^T J_i has the same non-zero eigenvalues and N - M fewer zeros
    gram = j @ j.transpose(1, 2) if num_out <= m else j.transpose(1, 2) @ j
    eig = torch.linalg.eigvalsh(gram).flip(-1).clamp_min(0)  # descending
    eig = torch.nn.functional.pad(eig, (0, num_out - eig.shape[1]))
    g = j.square().sum((1, 2))
    tol = max(num_out * torch.finfo(torch.float64).eps, (num_out * torch.finfo(jac.dtype).eps) ** 2) * eig[:, :1]
    kept = eig[:, :rank]
    logs = torch.where(kept > tol, kept.clamp_min(torch.finfo(torch.float64).tiny).log(),
                       torch.tensor(-math.inf, dtype=torch.float64, device=eig.device))
    sum_sq = gram.square().sum((1, 2))  # sum_k lambda_k^2 = ||K_i||_F^2 = ||J_i^T J_i||_F^2
    local_dim = torch.where(sum_sq > 0, g.square() / sum_sq.clamp_min(torch.finfo(torch.float64).tiny),
                            torch.zeros_like(g))
    return {"G": g, "log_volume": 0.5 * logs.sum(1), "mls": eig[:, 0].sqrt(), "local_dim": local_dim,
            "_rank": (eig > tol).sum(1)}
