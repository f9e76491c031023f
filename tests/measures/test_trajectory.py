"""The trajectory's principal plane (sharpcomp.measures.landscape.trajectory) on a quadratic whose gradient-
descent path is known in closed form: w_t - w* = Q diag((1 - lr a)^t) Q^T (w_0 - w*). Started in the span of
two eigenvectors, the path stays in their plane, so the two principal directions must span it, explain all
of the variance and give back the path exactly; started in three, the directions and their fractions of
variance must equal a dense float64 SVD of the centred path (numpy). The loss on the plane must equal the
quadratic's value at every grid point."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from sharpcomp.measures.landscape.trajectory import flatten, pca_plane, plane_grid, trajectory_surface, unflatten

pytestmark = pytest.mark.usefixtures("one_thread")

P, LR, T = 7, 0.1, 40
CURVATURES = torch.tensor([0.5, 3.0, 1.5, 2.0, 4.0, 0.3, 1.0], dtype=torch.float64)


def basis(seed: int = 0) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(P, P, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    return q


class Quadratic(nn.Module):
    """Outputs sqrt(a) Q^T (w - w*) for every sample, so that half the mean squared output sum is the loss
    L(w) = 1/2 (w - w*)^T Q diag(a) Q^T (w - w*)."""

    def __init__(self, w: torch.Tensor, w_star: torch.Tensor, q: torch.Tensor):
        super().__init__()
        self.w = nn.Parameter(w.clone())
        self.register_buffer("w_star", w_star.clone())
        self.register_buffer("scale", q * CURVATURES.sqrt())

    def forward(self, x):
        return ((self.w - self.w_star) @ self.scale).expand(x.shape[0], P) + 0 * x[:, :1]


def half_mean_square(out, y):
    return 0.5 * (out ** 2).sum(dim=1).mean()


def exact_loss(w: torch.Tensor, w_star: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    d = (w - w_star) @ q
    return 0.5 * (CURVATURES * d * d).sum(-1)


def gd_path(start: torch.Tensor, q: torch.Tensor, w_star: torch.Tensor) -> torch.Tensor:
    """The iterates w_0 ... w_T of gradient descent from w_0 = w* + start, in closed form (T + 1, P)."""
    steps = torch.arange(T + 1, dtype=torch.float64)[:, None]
    decay = (1 - LR * CURVATURES)[None, :] ** steps
    return w_star + (decay * (q.T @ start)[None, :]) @ q.T


def test_a_path_in_a_plane_is_found_exactly():
    q, w_star = basis(), torch.linspace(-1, 1, P, dtype=torch.float64)
    path = gd_path(q[:, [0, 1]] @ torch.tensor([2.0, -1.5], dtype=torch.float64), q, w_star)  # two eigenvectors
    plane = pca_plane(path)
    projector = plane.directions.T @ plane.directions
    torch.testing.assert_close(projector, q[:, :2] @ q[:, :2].T, rtol=0, atol=1e-10)
    assert float(plane.explained.sum()) == pytest.approx(1.0, abs=1e-12)
    torch.testing.assert_close(plane.coords @ plane.directions, path - path[-1], rtol=0, atol=1e-12)
    assert float(plane.off_plane.max()) < 1e-6 and (plane.coords[0] >= 0).all()
    torch.testing.assert_close(plane.coords[-1], torch.zeros(2, dtype=torch.float64))


def test_directions_and_variance_equal_a_dense_svd():
    q, w_star = basis(1), torch.zeros(P, dtype=torch.float64)
    path = gd_path(q[:, [0, 1, 5]] @ torch.tensor([1.0, 2.0, 0.7], dtype=torch.float64), q, w_star)
    plane = pca_plane(path)
    d = (path - path[-1]).numpy()
    centred = d - d.mean(axis=0)
    _, s, vt = np.linalg.svd(centred, full_matrices=False)
    np.testing.assert_allclose(plane.explained.numpy(), (s**2 / (s**2).sum())[:2], rtol=1e-10)
    assert 0.5 < float(plane.explained.sum()) < 1 - 1e-6  # a third direction holds some of it
    for k in range(2):
        assert abs(float(np.dot(plane.directions[k].numpy(), vt[k]))) == pytest.approx(1.0, abs=1e-10)
    np.testing.assert_allclose(plane.coords.numpy(), d @ plane.directions.numpy().T, rtol=0, atol=1e-13)
    residual = np.linalg.norm(d - plane.coords.numpy() @ plane.directions.numpy(), axis=1)[:-1]
    np.testing.assert_allclose(plane.off_plane.numpy()[:-1], residual / np.linalg.norm(d[:-1], axis=1), rtol=1e-6,
                               atol=1e-9)
    assert float(plane.off_plane[:-1].max()) > 1e-3  # the third direction is off the plane


def test_the_loss_on_the_plane_is_the_quadratic():
    q, w_star = basis(2), torch.linspace(0.5, -0.5, P, dtype=torch.float64)
    path = gd_path(q[:, [2, 4]] @ torch.tensor([1.5, 1.0], dtype=torch.float64), q, w_star)
    plane = pca_plane(path)
    model = Quadratic(path[-1], w_star, q)
    x, y = torch.zeros(5, 1, dtype=torch.float64), torch.zeros(5, dtype=torch.long)
    surf = trajectory_surface(model, half_mean_square, x, y, plane, points=9, margin=0.5)
    a, b = plane_grid(plane.coords, 9, 0.5)
    assert torch.equal(surf["a"], a) and float(a[0]) < float(plane.coords[:, 0].min())
    ga, gb = torch.meshgrid(a, b, indexing="ij")
    points = path[-1] + ga[..., None] * plane.directions[0] + gb[..., None] * plane.directions[1]
    torch.testing.assert_close(surf["loss"], exact_loss(points, w_star, q), rtol=1e-10, atol=1e-14)
    on_plane = path[-1] + plane.coords @ plane.directions
    torch.testing.assert_close(surf["path_loss"], exact_loss(on_plane, w_star, q), rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(surf["path_loss"], exact_loss(path, w_star, q), rtol=1e-8, atol=1e-12)
    assert torch.equal(model.w.detach(), path[-1])  # the model is left as it was


def test_flatten_and_unflatten_are_inverse_and_short_paths_are_refused():
    net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    names = [n for n, _ in net.named_parameters()]
    flat = flatten(net.state_dict(), names)
    back = unflatten(flat, dict(net.named_parameters()))
    assert all(torch.equal(back[n], p.detach()) for n, p in net.named_parameters())
    with pytest.raises(ValueError, match="at least 3 points"):
        pca_plane(torch.zeros(2, 5))
    with pytest.raises(ValueError, match="on a line"):
        pca_plane(torch.outer(torch.arange(4.0), torch.ones(5)))
