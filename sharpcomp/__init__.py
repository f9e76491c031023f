"""sharpcomp: loss flatness (sharpness) next to representation compression, along SGD training.

The command line (``sharpcomp train``, ``sharpcomp figures``, ``sharpcomp reparam``) runs studies; this
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

Example::

    import sharpcomp
    run = sharpcomp.load_run("outputs/runs/cifar10_2class-vgg10/default")
    rows = sharpcomp.read_metrics("outputs/runs/cifar10_2class-vgg10/default")
    now = sharpcomp.compute_metrics(run.model, run.sample_x)
"""

__version__ = "0.1.0"

from typing import TYPE_CHECKING

# public name -> the module it lives in; loaded on first use, so `import sharpcomp` (and the command
# line's --help and --version) stays quick and imports neither torch nor matplotlib by itself
_HOMES = {
    "ConfigError": "sharpcomp.settings",
    "LoadedRun": "sharpcomp.engine.loading",
    "compute_metrics": "sharpcomp.measures.metrics",
    "extra_metrics": "sharpcomp.measures.flatness",
    "fisher_trace": "sharpcomp.measures.gradient_stats",
    "gradient_disagreement": "sharpcomp.measures.gradient_stats",
    "hessian_trace": "sharpcomp.measures.metrics",
    "hutchinson_traces": "sharpcomp.measures.quotient_trace",
    "load_run": "sharpcomp.engine.loading",
    "quotient_hessian_trace": "sharpcomp.measures.quotient_trace",
    "quotient_trace_gap": "sharpcomp.measures.quotient_trace",
    "read_metrics": "sharpcomp.results.records",
    "train": "sharpcomp.engine.train",
    "train_ensemble": "sharpcomp.engine.ensemble",
    "worst_case_sharpness": "sharpcomp.measures.worst_case",
}
__all__ = [  # written out, for readers and linters; the same names as _HOMES
    "ConfigError", "LoadedRun", "__version__", "compute_metrics", "extra_metrics", "fisher_trace",
    "gradient_disagreement", "hessian_trace", "hutchinson_traces", "load_run", "quotient_hessian_trace",
    "quotient_trace_gap", "read_metrics", "train", "train_ensemble", "worst_case_sharpness",
]

if TYPE_CHECKING:  # pragma: no cover - for type checkers and editors
    from sharpcomp.engine.ensemble import train_ensemble
    from sharpcomp.engine.loading import LoadedRun, load_run
    from sharpcomp.engine.train import train
    from sharpcomp.measures.flatness import extra_metrics
    from sharpcomp.measures.gradient_stats import fisher_trace, gradient_disagreement
    from sharpcomp.measures.metrics import compute_metrics, hessian_trace
    from sharpcomp.measures.quotient_trace import hutchinson_traces, quotient_hessian_trace, quotient_trace_gap
    from sharpcomp.measures.worst_case import worst_case_sharpness
    from sharpcomp.results.records import read_metrics
    from sharpcomp.settings import ConfigError


def __getattr__(name: str):
    """Load a public name from its module on first use (PEP 562)."""
    if name not in _HOMES:
        raise AttributeError(f"module 'sharpcomp' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(_HOMES[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    """The public names (:data:`__all__`) besides the module's own."""
    return sorted(set(globals()) | set(__all__))
