"""Hutch++ (Meyer, Musco, Musco & Woodruff 2021): a trace estimator that removes the top of the spectrum
exactly before it samples the rest.

For symmetric A (P x P) and a budget of m products: s = m // 3 Rademacher columns S give Q = orth(A S)
(s products), an orthonormal basis close to A's dominant eigenvectors; then

    Tr A = Tr(Q^T A Q) + Tr((I - QQ^T) A (I - QQ^T)),

where the first term is computed exactly (s products) and the second by Hutchinson with the remaining
r = m - 2s Rademacher probes z: (1/r) sum_k z_k^T (I-QQ^T) A (I-QQ^T) z_k. The estimate is unbiased
(Hutchinson is unbiased for any fixed deflated matrix); its standard error is that of the Hutchinson
part given Q, std(ddof=1)/sqrt(r). Plain Hutchinson's variance is 2 ||A||_F^2 - 2 sum_i A_ii^2 per
probe; Hutch++ replaces ||A||_F^2 by that of the deflated matrix, which is far smaller for a Hessian
whose trace is carried by a few outlying eigenvalues (one per class): see the project's benchmark.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from sharpcomp.measures.declaration import Estimate
from sharpcomp.measures.linalg.hutchinson import TracePair
from sharpcomp.measures.linalg.matvec import MatVec, dimension, flatten, hessian_matvec, unflatten
from sharpcomp.measures.linalg.param_space import preserved, trainable
from sharpcomp.measures.linalg.precision import exact_float32
from sharpcomp.measures.symmetry.orbits import quotient_projector


def _rademacher(dim: int, count: int, dtype, device, generator) -> Tensor:
    z = torch.randint(0, 2, (count, dim), generator=generator, dtype=torch.int8) * 2 - 1
    return z.to(device=device, dtype=dtype)


def hutchpp(matvec: MatVec, dim: int, products: int, generator: torch.Generator | None = None, *,
            dtype: torch.dtype = torch.float64, device=None) -> tuple[float, float]:
    """Hutch++ estimate of Tr A with ``products`` (>= 3) products v -> A v: (estimate, standard error;
    nan when only one Hutchinson probe is left)."""
    if products < 3:
        raise ValueError(f"Hutch++ needs at least 3 products, got {products}")
    s = products // 3
    r = products - 2 * s
    sketch = _rademacher(dim, s, dtype, device, generator)
    y = torch.stack([matvec(v) for v in sketch])                 # (s, dim): A S
    q = torch.linalg.qr(y.T.double())[0].T.to(dtype)            # (s, dim) orthonormal rows
    exact = float(sum(float(qi.double() @ matvec(qi).double()) for qi in q))
    vals = []
    for z in _rademacher(dim, r, dtype, device, generator):
        z = z - q.T @ (q @ z)
        vals.append(float(z.double() @ matvec(z).double()))
    v = torch.tensor(vals, dtype=torch.float64)
    se = float(v.std(unbiased=True) / math.sqrt(r)) if r > 1 else float("nan")
    return exact + float(v.mean()), se


def hessian_traces(model, loss_fn, inputs: Tensor, targets: Tensor, products: int = 20,
                   generator: torch.Generator | None = None, *, ridge: float = 1e-10,
                   chunk_size: int | None = None) -> TracePair:
    """Hutch++ estimates of Tr H and Tr(PHP) (P: the quotient projector of
    :mod:`sharpcomp.measures.symmetry.orbits`), ``products`` products each, with standard errors (the
    number of Hutchinson probes left after the sketch is each estimate's ``samples``)."""
    with exact_float32(), preserved(model):
        params = trainable(model)
        mv = hessian_matvec(model, loss_fn, inputs, targets, chunk_size)
        proj = quotient_projector(model, ridge)

        def pmv(v: Tensor) -> Tensor:
            pv = flatten(proj(unflatten(v, params)), params)
            return flatten(proj(unflatten(mv(pv), params)), params)

        kw = {"dtype": params[0].dtype, "device": params[0].device}
        full, full_se = hutchpp(mv, dimension(model), products, generator, **kw)
        quot, quot_se = hutchpp(pmv, dimension(model), products, generator, **kw)
    left = products - 2 * (products // 3)
    return TracePair(quotient=Estimate(quot, se=quot_se, samples=left), full=Estimate(full, se=full_se, samples=left))
