"""The bins of a stored Hessian spectral density: the grid that the masses of a ``hessian_density``
column lie on (:mod:`sharpcomp.measures.curvature.hessian_density` writes them, figures draw them).

The grid (:data:`DENSITY_EDGES`) is symmetric and logarithmic in |t|: 8 bins per decade for
1e-4 <= |t| <= 1e4 on either side, one bin (-1e-4, 1e-4) around zero and one overflow bin beyond 1e4 on
either side (131 bins), the same for every run, so densities compare across checkpoints and runs.
Plain numbers: reading it needs no torch.
"""

from __future__ import annotations

import math

import numpy as np

_LO, _HI, _PER_DECADE = -4, 4, 8
_POS = np.logspace(_LO, _HI, (_HI - _LO) * _PER_DECADE + 1)
DENSITY_EDGES: np.ndarray = np.concatenate([[-np.inf], -_POS[::-1], _POS, [np.inf]])


def density_centres() -> np.ndarray:
    """A representative value of each bin of :data:`DENSITY_EDGES` (geometric centre; 0 for the
    middle bin, +-1e4 x 10^(1/16) for the overflow bins), for drawing."""
    e = DENSITY_EDGES
    out = np.zeros(len(e) - 1)
    for i in range(len(e) - 1):
        a, b = e[i], e[i + 1]
        if np.isinf(a) or np.isinf(b):
            edge = b if np.isinf(a) else a
            out[i] = edge * 10 ** (1 / (2 * _PER_DECADE))
        elif a < 0 < b:
            out[i] = 0.0
        else:
            out[i] = math.copysign(math.sqrt(a * b), a)
    return out
