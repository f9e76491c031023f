"""The ranking statistics: how well a measure mu orders a grid of runs by a target g (the generalisation gap).

Every statistic is a function of pairs of runs. For runs r, r' write

    s(r, r') = sign(mu(r) - mu(r')) * sign(g(r) - g(r'))   in {-1, 0, 1}

(sign(0) = 0: a tie on either side is neither agreement nor disagreement). A run's hyperparameters are its
values on the axes of the grid (the settings that vary between the runs; the seed is not an axis). Two runs
form a *single-axis pair along axis a* when they differ on axis a and agree on every other axis (their
seeds may differ).

* **Kendall's tau** (Jiang et al. 2020, Eq. 3; tau-a): the mean of s over the n (n - 1) / 2 pairs of distinct
  runs, (concordant - discordant) / (n (n - 1) / 2). It equals scipy's tau-b where there are no ties.
* **The granulated Kendall coefficient** (Jiang et al. 2020, Eq. 4-5): for axis a, the runs are grouped by
  their values on the other axes; tau of a group is the mean of s over its single-axis pairs along a; psi_a
  is the mean of the groups' tau over the groups that have such pairs, and Psi the mean of psi_a over the
  axes. With one run per configuration this is Jiang et al.'s coefficient (each group's tau over the runs
  that differ in hyperparameter a only); with seeds, a group holds every seed of every value of a, and two
  runs of one configuration (differing in the seed only) are not a single-axis pair.
* **The conditional mutual information** (Jiang et al. 2020, Sec. 6): over the ordered pairs (r, r') of
  distinct runs, V_g = sign(g(r) - g(r')) and V_mu = sign(mu(r) - mu(r')), each discretised to {-1, 0, +1};
  for a set S of axes, U_S = (theta_S(r), theta_S(r')), the pair's values on S. With p the empirical
  distribution of (U_S, V_g, V_mu) over the pairs::

      I(V_mu; V_g | U_S) = sum_u p(u) sum_{a,b} p(a, b | u) log[p(a, b | u) / (p(a | u) p(b | u))]
      H(V_g | U_S)       = -sum_u p(u) sum_a p(a | u) log p(a | u)
      K_S(mu)            = I(V_mu; V_g | U_S) / H(V_g | U_S)   in [0, 1]

  and the coefficient is the minimum of K_S over every set S of ``size`` axes (Jiang et al. condition on
  |S| = 2; the scoring code of their PGDL competition takes the minimum over pairs of hyperparameters the
  same way, weighing the U_S values alike, which is p(u) on a complete grid). K = 1: within every U_S the
  measure orders the pairs as the target does; K_S = 0: it tells nothing the hyperparameters in S do not.
* **The sign-error distribution** (Dziugaite et al. 2020): an environment is an axis a, two of its values
  v < v' and values of the other axes; its pairs are the single-axis pairs between the two configurations
  (every seed at v against every seed at v'). A pair's sign error is (1 - s) / 2 (1/2 for a tie), an
  environment's the mean over its pairs; the distribution over the environments is summarised by its mean
  and its maximum (the robust, worst-case error), over all environments and per axis.

Every statistic takes run weights w (default 1: the statistic itself): a pair counts w_r w_r' (a
bootstrap draw's counts, :mod:`sharpcomp.analysis.bootstrap`), and groups and environments of weight 0
drop out. Measures are columns: one call computes every coefficient of every measure.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
from scipy import sparse

ALL = None  # the "axis" of a coefficient taken over every pair, group or environment


@dataclass(frozen=True)
class Pairs:
    """The unordered pairs (i < j) of a grid's runs and how they differ; computed once per grid.

    ``group`` (groups x pairs) and ``env`` (environments x pairs) are 0/1 matrices of the single-axis pairs;
    ``group_axis``, ``env_axis``: the axis of each. ``conditioning``: for each set S of axes the CMI
    conditions on, the cell of every pair in both orders and the number of cells.
    """

    i: np.ndarray
    j: np.ndarray
    axes: int
    group: sparse.csr_matrix
    group_axis: np.ndarray
    env: sparse.csr_matrix
    env_axis: np.ndarray
    conditioning: tuple[tuple[tuple[int, ...], np.ndarray, np.ndarray, int], ...]


def pairs_of(codes: np.ndarray, size: int = 2) -> Pairs:
    """The pairs of the runs whose axis values are the integer ``codes`` (runs x axes, each column 0..k-1).

    ``size``: how many axes the conditional mutual information conditions on (at most the number of axes
    less one, so that some axis is left to vary).
    """
    codes = np.asarray(codes, dtype=np.int64).reshape(len(codes), -1)
    n, a = codes.shape
    i, j = np.triu_indices(n, 1)
    differ = codes[i] != codes[j]
    single = np.nonzero(differ.sum(1) == 1)[0]
    axis = differ[single].argmax(1)
    others = codes[i[single]].copy()
    others[np.arange(len(single)), axis] = -1
    lo = np.minimum(codes[i[single], axis], codes[j[single], axis])
    hi = np.maximum(codes[i[single], axis], codes[j[single], axis])
    group, group_axis = _indicator(np.column_stack([axis, others]), single, len(i))
    env, env_axis = _indicator(np.column_stack([axis, others, lo, hi]), single, len(i))
    return Pairs(i, j, a, group, group_axis, env, env_axis, _conditioning(codes, i, j, min(size, max(a - 1, 0))))


def _indicator(keys: np.ndarray, rows: np.ndarray, n_pairs: int) -> tuple[sparse.csr_matrix, np.ndarray]:
    """The 0/1 matrix (distinct keys x pairs) of pairs ``rows`` by their key, and each key's first column."""
    if len(rows) == 0:
        return sparse.csr_matrix((0, n_pairs)), np.zeros(0, dtype=np.int64)
    uniq, ids = np.unique(keys, axis=0, return_inverse=True)
    matrix = sparse.csr_matrix((np.ones(len(rows)), (ids.ravel(), rows)), shape=(len(uniq), n_pairs))
    return matrix, uniq[:, 0]


def _conditioning(codes: np.ndarray, i: np.ndarray, j: np.ndarray, size: int) -> tuple:
    """For every set S of ``size`` axes: the cell (theta_S(r), theta_S(r')) of each pair in both orders."""
    out = []
    for subset in itertools.combinations(range(codes.shape[1]), size):
        radix = [int(codes[:, a].max()) + 1 for a in subset]
        cell = np.zeros(len(codes), dtype=np.int64)
        for a, k in zip(subset, radix):
            cell = cell * k + codes[:, a]
        cells = int(np.prod(radix)) if subset else 1
        out.append((subset, cell[i] * cells + cell[j], cell[j] * cells + cell[i], cells * cells))
    return tuple(out)


# ---------------------------------------------------------------------------------------------------------
# the coefficients of every measure, for any weighting of the runs


class Statistics:
    """Every coefficient of every measure (columns of ``mu``, runs x measures) against the target ``g``.

    What does not depend on the run weights (the pairs' signs, the CMI's cells) is computed once; calling the
    object with weights ``w`` (default: every run once) gives a dict with keys ``(name, axis)`` and arrays over
    the measures as values: ``("kendall", ALL)``; ``("granulated", a)`` psi_a for each axis index a and
    ``("granulated", ALL)`` Psi; ``("cmi", ALL)`` the minimum over the conditioning sets and ``("cmi", S)``
    each K_S; ``("sign_error_mean", a | ALL)`` and ``("sign_error_max", a | ALL)``.
    """

    def __init__(self, mu: np.ndarray, g: np.ndarray, pairs: Pairs):
        g = np.asarray(g, dtype=np.float64)
        mu = np.asarray(mu, dtype=np.float64).reshape(len(g), -1)
        self.pairs, self.n, self.k = pairs, len(g), mu.shape[1]
        vm = np.sign(mu[pairs.i] - mu[pairs.j]).astype(np.int64)
        vg = np.sign(g[pairs.i] - g[pairs.j]).astype(np.int64)
        self.agree = (vm * vg[:, None]).astype(np.float64)
        self.cells = [(subset, cmi_counter(vm, vg, fw, bw, cells), cells)
                      for subset, fw, bw, cells in pairs.conditioning]

    def __call__(self, w: np.ndarray | None = None) -> dict:
        w = np.ones(self.n) if w is None else np.asarray(w, dtype=np.float64)
        weight = w[self.pairs.i] * w[self.pairs.j]
        total = weight.sum()
        out = {("kendall", ALL): weight @ self.agree / total if total > 0 else np.full(self.k, np.nan)}
        out.update(granulated(self.agree, weight, self.pairs))
        out.update(sign_errors(self.agree, weight, self.pairs))
        if self.cells:
            per_set = {subset: conditional_mi((counter @ weight).reshape(self.k, cells, 3, 3))
                       for subset, counter, cells in self.cells}
            out.update({("cmi", subset): k for subset, k in per_set.items()})
            out[("cmi", ALL)] = _nanmin(np.stack(list(per_set.values())))
        return out


def coefficients(mu: np.ndarray, g: np.ndarray, pairs: Pairs, w: np.ndarray | None = None) -> dict:
    """Every coefficient of every measure for one weighting of the runs (:class:`Statistics`)."""
    return Statistics(mu, g, pairs)(w)


def _nanmin(stack: np.ndarray) -> np.ndarray:
    """The minimum over the first dimension, ignoring NaN; NaN where every entry is NaN (no warning)."""
    filled = np.where(np.isnan(stack), np.inf, stack).min(0)
    return np.where(np.isinf(filled), np.nan, filled)


def _means(matrix: sparse.csr_matrix, values: np.ndarray, weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each row's weighted mean of ``values`` (pairs x measures) over its pairs, for the rows of weight > 0."""
    den = matrix @ weight
    keep = den > 0
    num = matrix @ (weight[:, None] * values)
    return num[keep] / den[keep, None], keep


def granulated(agree: np.ndarray, weight: np.ndarray, pairs: Pairs) -> dict:
    """psi_a per axis and their mean Psi (see the module docstring), from the pairs' sign products."""
    k = agree.shape[1]
    taus, keep = _means(pairs.group, agree, weight)
    axis_of = pairs.group_axis[keep]
    out = {}
    for a in range(pairs.axes):
        sel = taus[axis_of == a]
        out[("granulated", a)] = sel.mean(0) if len(sel) else np.full(k, np.nan)
    have = [out[("granulated", a)] for a in range(pairs.axes) if not np.isnan(out[("granulated", a)]).all()]
    out[("granulated", ALL)] = np.mean(have, axis=0) if have else np.full(k, np.nan)
    return out


def sign_errors(agree: np.ndarray, weight: np.ndarray, pairs: Pairs) -> dict:
    """The mean and the maximum over environments of the sign error, over all environments and per axis."""
    k = agree.shape[1]
    errors, keep = _means(pairs.env, (1.0 - agree) / 2.0, weight)
    axis_of = pairs.env_axis[keep]
    out = {}
    for a in (*range(pairs.axes), ALL):
        sel = errors if a is ALL else errors[axis_of == a]
        out[("sign_error_mean", a)] = sel.mean(0) if len(sel) else np.full(k, np.nan)
        out[("sign_error_max", a)] = sel.max(0) if len(sel) else np.full(k, np.nan)
    return out


def cmi_counter(vm: np.ndarray, vg: np.ndarray, cell_fw: np.ndarray, cell_bw: np.ndarray,
                cells: int) -> sparse.csr_matrix:
    """The matrix whose product with the pairs' weights counts them by (measure, U_S, V_g, V_mu).

    Rows: measure k, U_S cell u, V_g a, V_mu b as ``((k * cells + u) * 3 + a + 1) * 3 + b + 1``; columns: the
    pairs. Both orders of a pair count: the reverse order has the opposite signs and the swapped cell.
    """
    p, k = vm.shape
    offset = np.arange(k, dtype=np.int64)[None, :] * (cells * 9)
    forward = offset + cell_fw[:, None] * 9 + (vg[:, None] + 1) * 3 + (vm + 1)
    backward = offset + cell_bw[:, None] * 9 + (1 - vg[:, None]) * 3 + (1 - vm)
    rows = np.concatenate([forward.ravel(), backward.ravel()])
    cols = np.tile(np.repeat(np.arange(p), k), 2)
    return sparse.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(k * cells * 9, p))


def conditional_mi(counts: np.ndarray) -> np.ndarray:
    """K_S = I(V_mu; V_g | U_S) / H(V_g | U_S) of each measure from its weighted pair counts.

    ``counts``: measures x U_S cells x V_g x V_mu (:func:`cmi_counter`). NaN where H(V_g | U_S) is 0 (the
    target's order is fixed by U_S).
    """
    in_cell = counts.sum((2, 3))
    total = in_cell.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        joint = counts / in_cell[..., None, None]
        pg, pm = joint.sum(3), joint.sum(2)
        ratio = joint / (pg[..., :, None] * pm[..., None, :])
        info = np.where(joint > 0, joint * np.log(np.where(joint > 0, ratio, 1.0)), 0.0).sum((2, 3))
        entropy = -np.where(pg > 0, pg * np.log(np.where(pg > 0, pg, 1.0)), 0.0).sum(2)
        p_cell = in_cell / total[:, None]
        i_cond = np.nansum(p_cell * info, 1)
        h_cond = np.nansum(p_cell * entropy, 1)
        return np.where(h_cond > 1e-12, i_cond / h_cond, np.nan)
