"""Adaptive worst-case sharpness (Kwon et al. 2021; Andriushchenko et al. 2023).

max over ||eta|| <= rho of L(w + |w| * eta) - L(w): the perturbation is scaled elementwise by |w|, so the
measure does not move when a ReLU layer is rescaled against the next (the ascent's iterates map onto each
other). Computed by :func:`sharpcomp.measures.perturbation.worst_case.worst_case_sharpness` with
``adaptive=True``, on the same minibatches as the plain worst case.
"""

from __future__ import annotations

from sharpcomp.measures.declaration import Measure
from sharpcomp.measures.perturbation.worst_case import (
    ascent_settings,
    check_search,
    compute_variant,
    variant_columns,
    worst_case_sharpness,
)

Settings = ascent_settings(0.5, "radius of the |w|-scaled ball")

MEASURE = Measure(
    function=worst_case_sharpness,
    name="worst_case_adaptive", family="perturbation", settings=Settings, check=check_search,
    compute=lambda sample, s: compute_variant(sample, s, "worst_case_adaptive", adaptive=True),
    summary="adaptive (|w|-scaled) worst-case sharpness, invariant under the ReLU rescaling",
    columns=variant_columns("worst_case_adaptive"), aliases=("adaptive",), id_key="adaptive",
    column_aliases={"sharpness_adaptive": "worst_case_adaptive", "sharpness_adaptive_rel": "worst_case_adaptive_rel"},
    reparam={"worst_case_adaptive": "stays"}, reparam_settings={"batches": 1}, in_every_id=True)
