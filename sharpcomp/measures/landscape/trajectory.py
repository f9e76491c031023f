"""The optimisation trajectory on its top two principal directions (Li et al. 2018, Section 7 and Fig. 9).

The weights kept along a run, theta_1 ... theta_T (flattened parameters, in the network's order), are taken
relative to the last one: d_t = theta_t - theta_T. As loss-landscape (``setup_PCA_directions``, which fits
scikit-learn's PCA to these rows) does, the rows are centred, C = D - mean_t(d_t), and the two directions
are the top right singular vectors v_1, v_2 of C (unit vectors in parameter space); the fraction of
variance a direction explains is its squared singular value over the sum of all of them. The path is
drawn at the coordinates (d_t . v_1, d_t . v_2): the last point at the origin. A point's distance from
the plane, ||d_t - (d_t . v_1) v_1 - (d_t . v_2) v_2||, relative to ||d_t||, says how much of it the
picture leaves out.

Computed from the T x T Gram matrix C C^T in float64 (in column chunks, so only the T x P matrix of
kept weights is held, in float32 as kept): its eigenvalues are the squared singular values and
v_k = C^T u_k / sigma_k. Each direction's sign is chosen so that the first kept point has a coordinate
>= 0 on it. Every parameter takes part (biases and normalisation parameters too; loss-landscape leaves
them out by default); buffers (BatchNorm statistics) are the last point's.

The loss surface is the loss at theta_T + a v_1 + b v_2 on a grid covering the path with a margin
(:func:`plane_grid`), evaluated by :func:`sharpcomp.measures.landscape.slices.evaluate_points`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from sharpcomp.measures.landscape.slices import evaluate_points
from sharpcomp.measures.linalg.param_space import LossFn

CHUNK = 1 << 20  # columns (parameters) per block of the Gram matrix


@dataclass
class Plane:
    """The top two principal directions of a path and the path on them."""

    directions: Tensor  # (2, P) float64, orthonormal rows
    explained: Tensor  # (2,) the fraction of the centred variance each explains
    coords: Tensor  # (T, 2) the path's coordinates, the last point at the origin
    off_plane: Tensor  # (T,) ||d_t - its projection|| / ||d_t|| (0 for the last point)


def flatten(state: Mapping[str, Tensor], names: Sequence[str]) -> Tensor:
    """The named tensors of a state dict, flattened and concatenated in ``names``' order (float32)."""
    return torch.cat([state[n].detach().reshape(-1).to(torch.float32) for n in names])


def unflatten(vector: Tensor, like: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """A flat vector cut into tensors of the shapes (and dtypes, devices) of ``like``, in its order."""
    out, i = {}, 0
    for name, p in like.items():
        out[name] = vector[i:i + p.numel()].reshape(p.shape).to(device=p.device, dtype=p.dtype)
        i += p.numel()
    return out


def pca_plane(path: Tensor) -> Plane:
    """The plane of the path ``path`` (T x P, the kept weights in order; the last row is the origin)."""
    if path.shape[0] < 3:
        raise ValueError(f"the principal directions of a path need at least 3 points, got {path.shape[0]}")
    t, p = path.shape
    origin = path[-1].double()
    mean = torch.zeros(p, dtype=torch.float64)
    for i in range(t):
        mean += (path[i].double() - origin) / t
    gram = torch.zeros(t, t, dtype=torch.float64)
    for s in range(0, p, CHUNK):
        c = path[:, s:s + CHUNK].double() - origin[s:s + CHUNK] - mean[s:s + CHUNK]
        gram += c @ c.T
    values, vectors = torch.linalg.eigh(gram)  # ascending
    values, vectors = values.flip(0).clamp_min(0.0), vectors.flip(1)
    if not values[1] > 1e-12 * values[0]:
        raise ValueError("the kept weights lie on a line (or a point): no second principal direction")
    directions = torch.zeros(2, p, dtype=torch.float64)
    for s in range(0, p, CHUNK):
        c = path[:, s:s + CHUNK].double() - origin[s:s + CHUNK] - mean[s:s + CHUNK]
        directions[:, s:s + CHUNK] = (vectors[:, :2].T @ c) / values[:2].sqrt()[:, None]
    directions /= directions.norm(dim=1, keepdim=True)  # unit length, round-off aside
    coords, sq = torch.zeros(t, 2, dtype=torch.float64), torch.zeros(t, dtype=torch.float64)
    for s in range(0, p, CHUNK):
        d = path[:, s:s + CHUNK].double() - origin[s:s + CHUNK]
        coords += d @ directions[:, s:s + CHUNK].T
        sq += (d * d).sum(dim=1)
    flip = torch.where(coords[0] < 0, -1.0, 1.0).to(torch.float64)
    directions, coords = directions * flip[:, None], coords * flip + 0.0  # + 0.0: no -0.0
    off = (sq - (coords ** 2).sum(dim=1)).clamp_min(0.0).sqrt() / sq.sqrt().clamp_min(1e-300)
    off[sq == 0] = 0.0
    return Plane(directions, values[:2] / values.sum(), coords, off)


def plane_grid(coords: Tensor, points: int, margin: float = 0.25) -> tuple[Tensor, Tensor]:
    """The grid axes (each ``points`` values) of a box around the path and the origin, widened by
    ``margin`` times its width on every side."""
    axes = []
    for k in range(2):
        lo, hi = min(float(coords[:, k].min()), 0.0), max(float(coords[:, k].max()), 0.0)
        width = hi - lo if hi > lo else 1.0
        axes.append(torch.linspace(lo - margin * width, hi + margin * width, points, dtype=torch.float64))
    return axes[0], axes[1]


def trajectory_surface(model: nn.Module, loss_fn: LossFn, x: Tensor, y: Tensor, plane: Plane, points: int = 41,
                       margin: float = 0.25, chunk: int = 32, batch_size: int = 500) -> dict:
    """Loss and accuracy on the plane of ``plane`` around ``model``'s weights (the path's last point), and at
    the path's points projected on it: {"a", "b", "loss" [i, j] at (a_i, b_j), "acc", "path_loss"}."""
    base = {k: p.detach().clone() for k, p in model.named_parameters()}
    dirs = [unflatten(plane.directions[k], base) for k in range(2)]
    a, b = plane_grid(plane.coords, points, margin)
    ga, gb = torch.meshgrid(a, b, indexing="ij")
    coef = torch.stack([ga.reshape(-1), gb.reshape(-1)], 1)
    loss, acc = evaluate_points(model, loss_fn, x, y, base, dirs, coef, chunk, batch_size)
    path_loss, _ = evaluate_points(model, loss_fn, x, y, base, dirs, plane.coords, chunk, batch_size)
    return {"a": a, "b": b, "loss": loss.view(points, points), "acc": acc.view(points, points),
            "path_loss": path_loss}
