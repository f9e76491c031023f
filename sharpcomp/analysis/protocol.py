"""The ranking protocol over a grid of runs: every coefficient of every measure, with bootstrap intervals.

:func:`rank` computes, for each measure of a :class:`sharpcomp.analysis.grid.Grid` against its target,
Kendall's tau, the granulated Kendall coefficient (per axis and their mean), the conditional mutual
information (its minimum over the conditioning sets, and each set's value) and the sign-error distribution
(mean and worst case, per axis and over every environment) of :mod:`sharpcomp.analysis.ranking`, each with a
bootstrap interval (:mod:`sharpcomp.analysis.bootstrap`), as one long table:

    measure, family, coefficient, axis, value, low, high

``coefficient`` is ``kendall``, ``granulated``, ``cmi``, ``cmi_given``, ``sign_error_mean`` or
``sign_error_max``; ``axis`` an axis of the grid, ``all`` (over every pair, the mean over the axes for
``granulated``, the minimum over the sets for ``cmi``) or, for ``cmi_given``, the conditioning set.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from sharpcomp.analysis.bootstrap import MIN_RUNS, draws, percentile_interval, seeds_per_configuration
from sharpcomp.analysis.grid import Grid, RankingError
from sharpcomp.analysis.ranking import ALL, Statistics, pairs_of

COEFFICIENTS = ("kendall", "granulated", "cmi", "cmi_given", "sign_error_mean", "sign_error_max")
COLUMNS = ("measure", "family", "coefficient", "axis", "value", "low", "high")


@dataclass
class Ranking:
    """The coefficients of a grid's measures (:attr:`table`, see the module docstring).

    ``scheme``: how the intervals were drawn (``seeds``, ``runs``, or None without intervals); ``boot``: the
    number of draws; ``cmi_size``: how many axes the conditional mutual information conditions on.
    """

    grid: Grid
    table: pd.DataFrame
    scheme: str | None
    boot: int
    cmi_size: int
    level: float

    def value(self, measure: str, coefficient: str, axis: str = "all") -> float:
        """One coefficient's value."""
        t = self.table
        hit = t[(t.measure == measure) & (t.coefficient == coefficient) & (t.axis == axis)]
        return float(hit["value"].iloc[0]) if len(hit) else float("nan")

    def argmin_set(self, measure: str) -> str | None:
        """The conditioning set where the measure's conditional mutual information is smallest."""
        t = self.table
        given = t[(t.measure == measure) & (t.coefficient == "cmi_given")].dropna(subset=["value"])
        return None if given.empty else str(given.loc[given["value"].idxmin(), "axis"])


def rank(grid: Grid, boot: int = 1000, seed: int = 0, cmi_size: int = 2, level: float = 0.95,
         bootstrap: str = "runs") -> Ranking:
    """Every coefficient of every measure of ``grid``, with ``boot`` bootstrap draws (0: no intervals) over
    ``bootstrap`` (``runs`` or ``seeds``, :mod:`sharpcomp.analysis.bootstrap`).

    RankingError (one line) for fewer than two runs, fewer than :data:`MIN_RUNS` runs with intervals, or a
    bootstrap over seeds with a configuration of one run.
    """
    n = len(grid.runs)
    if n < 2:
        raise RankingError(f"{n} run to rank: a ranking compares at least two runs")
    if boot and n < MIN_RUNS:
        raise RankingError(f"{n} runs are too few for bootstrap intervals (at least {MIN_RUNS}; boot=0 ranks "
                           f"without intervals)")
    if boot and bootstrap == "seeds" and seeds_per_configuration(grid.configs) < 2:
        raise RankingError("a bootstrap over seeds needs two runs or more of every configuration "
                           "(some have one; bootstrap=runs resamples the runs)")
    pairs = pairs_of(grid.codes, cmi_size)
    mu, g = grid.values.to_numpy(dtype=np.float64), grid.runs["target"].to_numpy(dtype=np.float64)
    stats = Statistics(mu, g, pairs)
    point = stats()
    how = None
    bounds = {key: (np.full(mu.shape[1], np.nan), np.full(mu.shape[1], np.nan)) for key in point}
    if boot:
        how = bootstrap
        weights = draws(grid.configs, boot, np.random.default_rng(seed), how)
        reps = [stats(w) for w in weights]
        bounds = {key: percentile_interval(np.stack([r[key] for r in reps]), level) for key in point}
    table = _long_table(grid, point, bounds, list(grid.axes))
    size = len(pairs.conditioning[0][0]) if pairs.conditioning else 0
    return Ranking(grid, table, how, int(boot), size, level)


def _axis_label(axis, names: list[str]) -> str:
    if axis is ALL:
        return "all"
    if isinstance(axis, tuple):
        return " & ".join(names[a] for a in axis) or "none"
    return names[axis]


def _long_table(grid: Grid, point: dict, bounds: dict, names: list[str]) -> pd.DataFrame:
    rows = []
    measures = list(grid.values.columns)
    for (name, axis), values in point.items():
        coefficient = "cmi_given" if name == "cmi" and axis is not ALL else name
        lo, hi = bounds[(name, axis)]
        label = _axis_label(axis, names)
        for k, m in enumerate(measures):
            rows.append((m, grid.families[m], coefficient, label, values[k], lo[k], hi[k]))
    table = pd.DataFrame(rows, columns=list(COLUMNS))
    order = {c: i for i, c in enumerate(COEFFICIENTS)}
    table["_c"] = table["coefficient"].map(order)
    return table.sort_values(["_c"], kind="stable").drop(columns="_c").reset_index(drop=True)
