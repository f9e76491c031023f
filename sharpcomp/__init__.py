"""sharpcomp: loss flatness (sharpness) next to representation compression, along SGD training.

The command line (``sharpcomp train``, ``figures``, ``measure``, ``landscape``, ``reparam``) runs studies; this
package's names are what a notebook needs to do the same by hand or to look at the results:

Train and load
    :func:`train` (one run into a folder, resuming), :func:`train_ensemble` (runs in lockstep),
    :func:`load_run` (a run folder's trained network, settings, data and train sample set),
    :func:`read_metrics` (a run's rows: one per checkpoint and sample set), :func:`read_runs` (a sweep's),
    :class:`ConfigError`.
Your own training loop
    :class:`Tracker` (the measures and records of ``sharpcomp train`` at the checkpoints of a loop of one's
    own; each checkpoint's :class:`CheckpointReport`); a Lightning callback in
    :mod:`sharpcomp.tracking.lightning`.
Measures
    Every measure's own function, under the name its declaration gives (``docs/measures.md`` lists them:
    :func:`compute_metrics` for the study's metrics, :func:`network_wide`, :func:`hessian_max`,
    :func:`worst_case_sharpness`, :func:`average_sharpness`, ...); :func:`compute_measures`, every measure a
    ``metrics.flatness`` mapping switches on at once; :class:`Measure`, :class:`Column`, :func:`setting`,
    :class:`Result`, :class:`Estimate` and :class:`Sample` to declare a measure of one's own.
Beyond one value per measure
    :func:`hessian_trace`, :func:`hutchinson_traces`, :func:`quotient_trace_gap` (Tr H and Tr(PHP)),
    :func:`hessian_top` (the top k eigenvalues), :func:`estimate_metrics` (matrix-free estimates with
    standard errors, for large models); loss landscapes :func:`surface_2d`, :func:`line_1d`,
    :func:`interpolation`.

Example::

    import sharpcomp
    run = sharpcomp.load_run("outputs/runs/cifar10_2class-vgg10/default")
    rows = sharpcomp.read_metrics("outputs/runs/cifar10_2class-vgg10/default")
    now = sharpcomp.compute_metrics(run.model, run.sample_x)
"""

import importlib

from sharpcomp._version import __version__
from sharpcomp.measure_index import MEASURES  # plain data: importing it loads no torch

# public name -> the module it lives in; loaded on first use, so `import sharpcomp` (and the command
# line's --help and --version) stays quick and imports neither torch nor matplotlib by itself
_HOMES = {
    "train": "sharpcomp.engine.train",
    "train_ensemble": "sharpcomp.engine.ensemble",
    "load_run": "sharpcomp.engine.loading",
    "LoadedRun": "sharpcomp.engine.loading",
    "read_metrics": "sharpcomp.results.records",
    "read_runs": "sharpcomp.results.sweep",
    "ConfigError": "sharpcomp.settings",
    "Tracker": "sharpcomp.tracking.tracker",
    "CheckpointReport": "sharpcomp.tracking.report",
    "compute_measures": "sharpcomp.measures.registry",
    "extra_metrics": "sharpcomp.measures.registry",
    "Measure": "sharpcomp.measures.declaration",
    "Column": "sharpcomp.measures.declaration",
    "setting": "sharpcomp.measures.declaration",
    "Result": "sharpcomp.measures.declaration",
    "Estimate": "sharpcomp.measures.declaration",
    "Sample": "sharpcomp.measures.sample",
    "hessian_trace": "sharpcomp.measures.curvature.quotient_trace",
    "hutchinson_traces": "sharpcomp.measures.curvature.quotient_trace",
    "quotient_trace_gap": "sharpcomp.measures.curvature.quotient_trace",
    "hessian_top": "sharpcomp.measures.curvature.hessian_max",
    "estimate_metrics": "sharpcomp.measures.study.estimators",
    "surface_2d": "sharpcomp.measures.landscape.slices",
    "line_1d": "sharpcomp.measures.landscape.slices",
    "interpolation": "sharpcomp.measures.landscape.slices",
    # every measure's own function, as its declaration names it
    **{m["function"][0]: m["function"][1] for m in MEASURES.values() if m.get("function")},
}
__all__ = ["__version__", *_HOMES]


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
