"""sharpcomp: loss flatness (sharpness) next to representation compression, along SGD training.

The command line (``sharpcomp train``, ``figures``, ``measure``, ``landscape``, ``reparam``) runs studies; this
package's names below are what a notebook needs to do the same by hand or to look at the results:

Train and load
    :func:`train` (one run into a folder, resuming), :func:`train_ensemble` (runs in lockstep),
    :func:`load_run` (a run folder's trained network, settings, data and train sample set),
    :func:`read_metrics` (a run's rows: one per checkpoint and sample set), :class:`ConfigError`.
Measures of a network (the study's; definitions in ``docs/science.md``)
    :func:`compute_metrics` (G, log volume, maximum local sensitivity, local dimensionality, sharpness
    and the bounds, per sample and averaged), :func:`hessian_trace` (Hutchinson's estimate of Tr H).
Flatness measures beyond the study (``metrics.flatness``)
    :func:`quotient_hessian_trace`, :func:`hutchinson_traces`, :func:`quotient_trace_gap` (the trace of
    the Hessian off the ReLU rescaling orbits), :func:`worst_case_sharpness`,
    :func:`gradient_disagreement`, :func:`fisher_trace`, and :func:`extra_metrics`, which computes every
    measure a ``metrics.flatness`` mapping switches on.
The curvature spectrum (``docs/curvature.md``)
    :func:`hessian_max`, :func:`hessian_top`, :func:`ggn_max` (Lanczos), :func:`batch_sharpness`,
    :func:`nonuniformity`, :func:`hessian_density` (stochastic Lanczos quadrature).
Network-wide compression (``docs/science-network-wide.md``)
    :func:`network_wide` (NMLS, NVR and their bounds), :func:`estimate_metrics` (matrix-free estimates
    with standard errors, for large models).
The flatness debate (``docs/flatness.md``)
    :func:`average_sharpness`, :func:`keskar_sharpness`, :func:`pacbayes_sigma`,
    :func:`contrastive_flatness`, :func:`regret_kl`; loss landscapes :func:`surface_2d`, :func:`line_1d`,
    :func:`interpolation`. A sweep's rows: :func:`read_runs`.

Example::

    import sharpcomp
    run = sharpcomp.load_run("outputs/runs/cifar10_2class-vgg10/default")
    rows = sharpcomp.read_metrics("outputs/runs/cifar10_2class-vgg10/default")
    now = sharpcomp.compute_metrics(run.model, run.sample_x)
"""

import importlib
from typing import TYPE_CHECKING

from sharpcomp._version import __version__

# public name -> the module it lives in; loaded on first use, so `import sharpcomp` (and the command
# line's --help and --version) stays quick and imports neither torch nor matplotlib by itself
_HOMES = {
    "average_sharpness": "sharpcomp.measures.perturbation.average",
    "batch_sharpness": "sharpcomp.measures.curvature.batch_sharpness",
    "compute_metrics": "sharpcomp.measures.study.metrics",
    "ConfigError": "sharpcomp.settings",
    "contrastive_flatness": "sharpcomp.measures.curvature.contrastive",
    "estimate_metrics": "sharpcomp.measures.study.estimators",
    "extra_metrics": "sharpcomp.measures.flatness",
    "fisher_trace": "sharpcomp.measures.curvature.gradient_stats",
    "ggn_max": "sharpcomp.measures.curvature.hessian_spectrum",
    "gradient_disagreement": "sharpcomp.measures.curvature.gradient_stats",
    "hessian_density": "sharpcomp.measures.curvature.hessian_density",
    "hessian_max": "sharpcomp.measures.curvature.hessian_spectrum",
    "hessian_top": "sharpcomp.measures.curvature.hessian_spectrum",
    "hessian_trace": "sharpcomp.measures.study.metrics",
    "hutchinson_traces": "sharpcomp.measures.curvature.quotient_trace",
    "interpolation": "sharpcomp.measures.landscape.slices",
    "keskar_sharpness": "sharpcomp.measures.perturbation.keskar",
    "line_1d": "sharpcomp.measures.landscape.slices",
    "load_run": "sharpcomp.engine.loading",
    "LoadedRun": "sharpcomp.engine.loading",
    "network_wide": "sharpcomp.measures.study.network_wide",
    "nonuniformity": "sharpcomp.measures.curvature.nonuniformity",
    "pacbayes_sigma": "sharpcomp.measures.perturbation.pacbayes",
    "quotient_hessian_trace": "sharpcomp.measures.curvature.quotient_trace",
    "quotient_trace_gap": "sharpcomp.measures.curvature.quotient_trace",
    "read_metrics": "sharpcomp.results.records",
    "read_runs": "sharpcomp.results.sweep",
    "regret_kl": "sharpcomp.measures.perturbation.regret_kl",
    "surface_2d": "sharpcomp.measures.landscape.slices",
    "train": "sharpcomp.engine.train",
    "train_ensemble": "sharpcomp.engine.ensemble",
    "worst_case_sharpness": "sharpcomp.measures.perturbation.worst_case",
}
__all__ = [  # written out, for readers and linters; the same names as _HOMES
    "__version__", "average_sharpness", "batch_sharpness", "compute_metrics", "ConfigError",
    "contrastive_flatness", "estimate_metrics", "extra_metrics", "fisher_trace", "ggn_max",
    "gradient_disagreement", "hessian_density", "hessian_max", "hessian_top", "hessian_trace",
    "hutchinson_traces", "interpolation", "keskar_sharpness", "line_1d", "load_run", "LoadedRun",
    "network_wide", "nonuniformity", "pacbayes_sigma", "quotient_hessian_trace", "quotient_trace_gap",
    "read_metrics", "read_runs", "regret_kl", "surface_2d", "train", "train_ensemble", "worst_case_sharpness",
]

if TYPE_CHECKING:  # pragma: no cover - for type checkers and editors
    from sharpcomp.engine.ensemble import train_ensemble
    from sharpcomp.engine.loading import LoadedRun, load_run
    from sharpcomp.engine.train import train
    from sharpcomp.measures.curvature.batch_sharpness import batch_sharpness
    from sharpcomp.measures.curvature.contrastive import contrastive_flatness
    from sharpcomp.measures.curvature.gradient_stats import fisher_trace, gradient_disagreement
    from sharpcomp.measures.curvature.hessian_density import hessian_density
    from sharpcomp.measures.curvature.hessian_spectrum import ggn_max, hessian_max, hessian_top
    from sharpcomp.measures.curvature.nonuniformity import nonuniformity
    from sharpcomp.measures.curvature.quotient_trace import (
        hutchinson_traces,
        quotient_hessian_trace,
        quotient_trace_gap,
    )
    from sharpcomp.measures.flatness import extra_metrics
    from sharpcomp.measures.landscape.slices import interpolation, line_1d, surface_2d
    from sharpcomp.measures.perturbation.average import average_sharpness
    from sharpcomp.measures.perturbation.keskar import keskar_sharpness
    from sharpcomp.measures.perturbation.pacbayes import pacbayes_sigma
    from sharpcomp.measures.perturbation.regret_kl import regret_kl
    from sharpcomp.measures.perturbation.worst_case import worst_case_sharpness
    from sharpcomp.measures.study.estimators import estimate_metrics
    from sharpcomp.measures.study.metrics import compute_metrics, hessian_trace
    from sharpcomp.measures.study.network_wide import network_wide
    from sharpcomp.results.records import read_metrics
    from sharpcomp.results.sweep import read_runs
    from sharpcomp.settings import ConfigError


def __getattr__(name: str):
    """Load a public name from its module on first use (PEP 562)."""
    if name not in _HOMES:
        raise AttributeError(f"module 'sharpcomp' has no attribute {name!r}")
    value = getattr(importlib.import_module(_HOMES[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    """The public names (:data:`__all__`) besides the module's own."""
    return sorted(set(globals()) | set(__all__))
