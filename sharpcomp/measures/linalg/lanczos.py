"""The Lanczos method for a symmetric operator A given only by products v -> A v (Lanczos 1950).

From a unit start vector q_1, Lanczos builds an orthonormal basis Q_j = [q_1 .. q_j] of the Krylov space
span{q_1, A q_1, .., A^{j-1} q_1} in which A is tridiagonal, T_j = Q_j^T A Q_j (alpha on the diagonal,
beta off it), with A Q_j = Q_j T_j + beta_j q_{j+1} e_j^T. Each step costs one product and an
orthogonalisation; here the new vector, after the three-term recurrence, is orthogonalised against the
whole basis (classical Gram-Schmidt, a second pass where the first cancelled most of it: "full
reorthogonalisation"), which keeps Q_j orthonormal to working precision, so no
spurious copies of converged eigenvalues appear.

Ritz values theta (eigenvalues of T_j = S diag(theta) S^T) approximate the extreme eigenvalues of A;
Ritz pair i has the residual ||A y_i - theta_i y_i|| = beta_j |S_{j,i}| (computed without a product),
and for symmetric A some eigenvalue lies within that residual of theta_i (Weyl / Kahan). :func:`top_eigenvalues`
stops once the k largest Ritz values all have residual <= tol * |theta_i|, i.e. a relative error of at
most ``tol``; when beta_j vanishes the Krylov space is invariant and its Ritz values are exact.

The same tridiagonal matrix gives Gauss quadrature for the spectral measure of A seen from q_1
(Golub & Meurant): q_1^T f(A) q_1 ~ sum_i S_{1,i}^2 f(theta_i), exact for polynomials of degree <= 2j - 1
(used by :mod:`sharpcomp.measures.curvature.hessian_density`).

The basis is kept in the operator's dtype (float32 for float32 models: orthogonal to ~1e-7, ample for
tolerances >= 1e-6 relative); T_j and its eigendecomposition are float64.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from sharpcomp.measures.linalg.matvec import MatVec, dimension
from sharpcomp.measures.linalg.param_space import trainable


@dataclass
class Tridiagonal:
    alpha: Tensor          # (j,) float64
    beta: Tensor           # (j,) float64: beta[i] couples steps i and i+1; beta[-1] is the residual norm
    basis: Tensor | None   # (j, dim) orthonormal Lanczos vectors (None when not kept)

    def ritz(self) -> tuple[Tensor, Tensor]:
        """Ritz values (ascending) and the eigenvectors S of T (columns), float64."""
        j = self.alpha.numel()
        t = torch.diag(self.alpha)
        if j > 1:
            off = self.beta[: j - 1]
            t = t + torch.diag(off, 1) + torch.diag(off, -1)
        return torch.linalg.eigh(t)


def start_vector(dim: int, dtype: torch.dtype, device, generator: torch.Generator | None) -> Tensor:
    """A unit vector uniform on the sphere (a normalised Gaussian), drawn from ``generator`` on the CPU."""
    v = torch.randn(dim, generator=generator, dtype=torch.float64)
    return (v / v.norm()).to(device=device, dtype=dtype)


def _orthogonalise(w: Tensor, basis: Tensor) -> Tensor:
    """w minus its projection on the basis: one classical Gram-Schmidt pass, and a second one only when
    the first removed most of w (Kahan-Parlett "twice is enough": ||w'|| < ||w|| / sqrt(2))."""
    before = float(w.norm())
    w = w.sub_(basis.T @ (basis @ w))
    if float(w.norm()) < 0.7071 * before:
        w = w.sub_(basis.T @ (basis @ w))
    return w


class _Basis:
    """The Lanczos vectors as rows of one tensor, grown by doubling (no memory for unused steps)."""

    def __init__(self, q1: Tensor, cap: int):
        self.rows = torch.empty(min(cap, 16), q1.numel(), dtype=q1.dtype, device=q1.device)
        self.cap, self.n = cap, 0

    def add(self, q: Tensor) -> None:
        if self.n == self.rows.shape[0]:
            more = torch.empty(min(self.cap, 2 * self.n) - self.n, self.rows.shape[1], dtype=q.dtype, device=q.device)
            self.rows = torch.cat([self.rows, more])
        self.rows[self.n] = q
        self.n += 1

    def view(self) -> Tensor:
        return self.rows[: self.n]


def lanczos(matvec: MatVec, q1: Tensor, steps: int, *, keep_basis: bool = False, stop=None,
            reorthogonalise: bool = True) -> tuple[Tridiagonal, bool]:
    """Up to ``steps`` Lanczos steps from the unit vector ``q1`` with full reorthogonalisation (or, with
    ``reorthogonalise=False``, the plain three-term recurrence keeping two vectors).

    ``stop(tridiagonal)`` (optional) is asked after each step whether to end early. Returns the
    tridiagonal matrix and whether the Krylov space became invariant (beta ~ 0: its Ritz values exact).
    """
    dim = q1.numel()
    steps = max(1, min(int(steps), dim))
    basis = _Basis(q1, steps if reorthogonalise or keep_basis else 2)
    prev = None
    alpha = torch.zeros(steps, dtype=torch.float64)
    beta = torch.zeros(steps, dtype=torch.float64)
    q, invariant, j = q1, False, 0
    for j in range(steps):
        if reorthogonalise or keep_basis:
            basis.add(q)
        w = matvec(q)
        alpha[j] = float(torch.dot(w, q))
        w = w.sub_(q, alpha=float(alpha[j]))  # the three-term recurrence, then full reorthogonalisation
        if j:
            w = w.sub_(prev, alpha=float(beta[j - 1]))
        if reorthogonalise:
            w = _orthogonalise(w, basis.view())
        prev = q
        beta[j] = float(w.norm())
        scale = max(float(alpha[: j + 1].abs().max()), float(beta[: j].max()) if j else 0.0, 1e-300)
        invariant = float(beta[j]) <= 32 * torch.finfo(q1.dtype).eps * scale
        tri = Tridiagonal(alpha[: j + 1], beta[: j + 1], basis.view() if keep_basis else None)
        if invariant or j + 1 == steps or (stop is not None and stop(tri)):
            if invariant:
                tri.beta[j] = 0.0
            return tri, invariant
        q = w.div_(float(beta[j]))
    raise AssertionError("unreachable")


@dataclass
class TopEigen:
    values: list[float]      # the k largest eigenvalues, descending
    residuals: list[float]   # their relative residuals ||A y - theta y|| / |theta| (bounds on the relative error)
    iterations: int          # Lanczos steps = operator products
    converged: bool


def _top(tri: Tridiagonal, k: int) -> tuple[Tensor, Tensor]:
    theta, s = tri.ritz()
    idx = torch.argsort(theta, descending=True)[:k]
    res = tri.beta[-1].abs() * s[-1, idx].abs()
    return theta[idx], res / theta[idx].abs().clamp_min(1e-300)


def top_eigenvalues(matvec: MatVec, dim: int, k: int = 1, tol: float = 1e-4, max_iter: int = 100, *,
                    dtype: torch.dtype = torch.float64, device=None,
                    generator: torch.Generator | None = None) -> TopEigen:
    """The ``k`` largest (algebraic) eigenvalues of the symmetric operator, each to relative residual
    ``tol``, by Lanczos from a random start (at most ``max_iter`` products): with full
    reorthogonalisation for k > 1; for k = 1 the plain recurrence (two vectors of memory), whose loss of
    orthogonality only adds copies of converged Ritz values (Paige 1976): the largest one and its
    residual bound stay valid."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    k = min(k, dim)

    def done(tri: Tridiagonal) -> bool:
        if tri.alpha.numel() < k:
            return False
        return bool((_top(tri, k)[1] <= tol).all())

    q1 = start_vector(dim, dtype, device, generator)
    tri, invariant = lanczos(matvec, q1, max(max_iter, k), stop=done, reorthogonalise=k > 1)
    vals, res = _top(tri, k)
    if invariant:
        res = torch.zeros_like(res)
    return TopEigen([float(v) for v in vals], [float(r) for r in res], int(tri.alpha.numel()),
                    bool(invariant or (res <= tol).all()))


def top_of_model(model: nn.Module, matvec: MatVec, k: int, tol: float, max_iter: int,
                 generator: torch.Generator | None) -> TopEigen:
    """:func:`top_eigenvalues` of an operator on ``model``'s parameter space, in its parameters' dtype and device."""
    p = trainable(model)[0]
    return top_eigenvalues(matvec, dimension(model), k, tol, max_iter, dtype=p.dtype, device=p.device,
                           generator=generator)
