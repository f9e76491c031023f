"""A ranking as text: what was ranked, and its coefficients as readable tables (``sharpcomp rank`` prints them).

Measures are listed by |Kendall's tau| with the target, largest first; each coefficient as its value and,
where there are intervals, ``[low, high]``.
"""

from __future__ import annotations

import math

import pandas as pd

from sharpcomp.analysis.grid import TARGETS
from sharpcomp.analysis.protocol import Ranking


def order(ranking: Ranking) -> list[str]:
    """The measures by |tau| with the target, largest first (undefined ones last, then by name)."""
    t = ranking.table
    tau = t[(t.coefficient == "kendall") & (t.axis == "all")].set_index("measure")["value"]
    return sorted(tau.index, key=lambda m: (-abs(tau[m]) if math.isfinite(tau[m]) else math.inf, m))


def _cell(row, signed: bool) -> str:
    if row is None or not math.isfinite(row["value"]):
        return "-"
    spec = "+.2f" if signed else ".2f"
    text = format(row["value"], spec)
    if math.isfinite(row["low"]) and math.isfinite(row["high"]):
        text += f" [{format(row['low'], spec)}, {format(row['high'], spec)}]"
    return text


def _lookup(ranking: Ranking) -> dict:
    return {(r.measure, r.coefficient, r.axis): r._asdict() for r in ranking.table.itertuples(index=False)}


def header(ranking: Ranking) -> list[str]:
    """What was ranked: the runs, the target, the axes, what was left out, how the intervals were drawn."""
    g = ranking.grid
    per_config = pd.Series(g.configs).value_counts()
    seeds = f"{per_config.min()}" if per_config.min() == per_config.max() else f"{per_config.min()}-{per_config.max()}"
    lines = [f"ranked {len(g.runs)} runs ({len(per_config)} configurations, {seeds} seeds each) by their "
             f"{TARGETS[g.target]}",
             "axes: " + "; ".join(f"{name} ({', '.join(values)})" for name, values in g.axes.items())]
    lines += g.notes
    if ranking.boot:
        lines.append(f"intervals: {ranking.level:.0%} percentile bootstrap over {ranking.scheme} "
                     f"({ranking.boot} draws)")
    else:
        lines.append("no intervals (boot=0)")
    lines.append(f"CMI: the minimum over the sets of {ranking.cmi_size} axes it is conditioned on" if ranking.cmi_size
                 else "CMI: not conditioned (one axis): I(V_mu; V_g) / H(V_g)")
    lines.append("sign error: mean and worst case over single-axis environments (0.5 is chance)")
    return lines


def main_table(ranking: Ranking) -> str:
    """One row per measure: tau, Psi, the CMI (and the set where it is smallest), the sign error's mean and worst."""
    cells, rows = _lookup(ranking), []
    for m in order(ranking):
        get = lambda c, a="all", m=m: cells.get((m, c, a))  # noqa: E731
        rows.append({"measure": m, "family": ranking.grid.families[m], "tau": _cell(get("kendall"), True),
                     "Psi (granulated)": _cell(get("granulated"), True), "CMI": _cell(get("cmi"), False),
                     "CMI smallest given": (ranking.argmin_set(m) or "-") if ranking.cmi_size else "-",
                     "sign error (mean)": _cell(get("sign_error_mean"), False),
                     "sign error (worst)": _cell(get("sign_error_max"), False)})
    return pd.DataFrame(rows).to_string(index=False)


def axis_tables(ranking: Ranking) -> str:
    """Per axis: the granulated psi_a, and the sign error's mean / worst case."""
    cells, psi, err = _lookup(ranking), [], []
    for m in order(ranking):
        psi.append({"measure": m, **{a: _cell(cells.get((m, "granulated", a)), True) for a in ranking.grid.axes}})
        err.append({"measure": m, **{a: "/".join(_cell(cells.get((m, c, a)), False).split(" [")[0]
                                                  for c in ("sign_error_mean", "sign_error_max"))
                                     for a in ranking.grid.axes}})
    return ("granulated Kendall psi per axis\n" + pd.DataFrame(psi).to_string(index=False)
            + "\n\nsign error per axis (mean/worst over its environments)\n" + pd.DataFrame(err).to_string(index=False))


def run_table(ranking: Ranking) -> pd.DataFrame:
    """One row per ranked run: its name, seed, values on the axes, target and measures."""
    g = ranking.grid
    out = pd.concat([g.runs, g.values], axis=1)
    out.index.name = "run"
    return out.reset_index()
