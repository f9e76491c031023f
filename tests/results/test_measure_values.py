"""Which columns of the records the figures draw as measures: the rule of ``results.columns.measure_values``."""

from __future__ import annotations

import numpy as np
import pandas as pd

from sharpcomp.figures.panels import flatness_panels
from sharpcomp.results.columns import FLATNESS_MEASURES, measure_values, se_column


def frame() -> pd.DataFrame:
    n = 3
    return pd.DataFrame({
        "run_id": ["r"] * n, "iteration": [0, 1, 2], "sample_set": ["train"] * n, "lr": [0.1] * n,
        "sharpness": np.ones(n), "G": np.ones(n),                                      # the study's: not measures here
        "average": np.ones(n), "average_se": np.ones(n), "average_err": np.ones(n),  # built-in: value, se, diagnostic
        "hessian_max": np.ones(n), "hessian_max_iterations": np.ones(n),               # built-in: value, diagnostic
        "hessian_top": [[1.0]] * n,                                                   # built-in: a list
        "margin": np.ones(n), "margin_se": np.ones(n),                                 # one's own: value and its se
        "count": np.arange(n), "lonely_se": np.ones(n),                                # one's own: values
        "note": ["a"] * n, "flag": [True] * n, "_run": ["x"] * n,                      # text, bool, bookkeeping
        "measure_errors": [None] * n, "sqrt_sharpness": np.ones(n),                    # known, not measures
    })


def test_known_measures_by_their_declarations_then_the_numeric_columns_the_schema_does_not_name():
    values = measure_values(frame())
    known = [c for c in FLATNESS_MEASURES if c in ("average", "hessian_max")]
    assert values == (*known, "margin", "count", "lonely_se")
    assert se_column("margin", frame().columns) == "margin_se"
    assert se_column("average", frame().columns) == "average_se"
    assert se_column("count", frame().columns) is None and se_column("hessian_max", frame().columns) is None


def test_the_flatness_figure_draws_them_with_their_standard_errors():
    panels = flatness_panels(frame())
    assert [p.columns[0] for p in panels][1:] == list(measure_values(frame()))
    assert {p.columns[0]: p.se for p in panels}["margin"] == "margin_se"
