"""Worst-case sharpness on the quotient by the ReLU rescaling symmetry.

The normalised ascent of :func:`sharpcomp.measures.perturbation.worst_case.worst_case_sharpness` restricted
to the orthogonal complement of the symmetry orbits at w (``quotient=True``; the projector P of
:mod:`sharpcomp.measures.symmetry.orbits`): u = P grad L(w + delta_k), delta_{k+1} = P(delta_k + step u / ||u||),
rescaled into the rho-ball. On the same minibatches as the plain worst case.
"""

from __future__ import annotations

from dataclasses import dataclass

from sharpcomp.measures.declaration import Measure, setting
from sharpcomp.measures.perturbation.worst_case import compute_variant, variant_columns, worst_case_sharpness


@dataclass(frozen=True)
class Settings:
    """``metrics.flatness.worst_case_quotient``."""

    rho: float = setting(0.05, at_least=0, doc="radius of the l2 ball")
    steps: int = setting(5, above=0, doc="ascent steps")
    batches: int = setting(4, above=0, doc="disjoint minibatches of the training set")
    batch_size: int = setting(128, above=0, doc="their size")
    step_size: float = setting(None, kind=float, above=0, doc="ascent step (null: rho)")


MEASURE = Measure(
    function=worst_case_sharpness,
    name="worst_case_quotient", family="perturbation", settings=Settings,
    compute=lambda sample, s: compute_variant(sample, s, "worst_case_quotient", quotient=True),
    summary="l2 worst-case sharpness with the ascent kept off the symmetry orbits",
    columns=variant_columns("worst_case_quotient"), aliases=("quotient_worst",), id_key="quotient_worst",
    column_aliases={"sharpness_worst_quotient": "worst_case_quotient",
                    "sharpness_worst_quotient_rel": "worst_case_quotient_rel"},
    in_every_id=True, symmetry=True)
