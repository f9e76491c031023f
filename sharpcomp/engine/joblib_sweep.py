"""Sweeps under Hydra's joblib launcher that survive a killed worker process.

Joblib's process pool breaks when one worker dies (killed by the kernel for memory, or by hand): every
job still running is stopped and the sweep ends with ``TerminatedWorkerError``. :func:`launch` wraps the
launcher's own ``launch``: when the pool breaks, every job runs again on its own, one at a time (a
finished job is found finished, a stopped one resumes from its checkpoint), so only the job whose
worker dies again is lost; it is reported ``failed`` in the sweep's tally, with its folder.
``sharpcomp train`` installs it (:func:`install`) when the joblib launcher plugin is present.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from concurrent.futures.process import BrokenProcessPool

from hydra.core.utils import JobReturn, JobStatus

from sharpcomp.engine.jobs import _record
from sharpcomp.engine.launcher import EnsembleLauncher

try:  # the joblib launcher plugin (and joblib with it) may be missing: then there is nothing to wrap
    from hydra_plugins.hydra_joblib_launcher import _core
    from joblib.externals.loky.process_executor import TerminatedWorkerError
except ImportError:  # pragma: no cover - the plugin is a dependency
    _core = None


def install() -> None:
    """Wrap the joblib launcher plugin's ``launch`` (a no-op where the plugin is not installed)."""
    if _core is None:
        return
    if getattr(_core.launch, "sharpcomp", False):
        return
    original = _core.launch

    def launch(launcher, job_overrides: Sequence[Sequence[str]], initial_job_idx: int):
        return _launch(original, launcher, job_overrides, initial_job_idx)

    launch.sharpcomp = True
    _core.launch = launch


def _launch(original, launcher, job_overrides, initial_job_idx: int):
    broken = (TerminatedWorkerError, BrokenProcessPool)
    try:
        return original(launcher, job_overrides, initial_job_idx)
    except broken:
        print("sharpcomp: a worker process of the sweep was killed; running every job again on its own "
              "(finished jobs are kept, stopped ones resume)", file=sys.stderr, flush=True)
    results = []
    for i, overrides in enumerate(job_overrides):
        try:
            results += original(launcher, [overrides], initial_job_idx + i)
        except broken:
            results.append(_killed(launcher, list(overrides)))
    return results


def _killed(launcher, overrides: list[str]):
    """The JobReturn of a job whose worker was killed, recorded ``failed`` for the sweep's tally."""
    cfg = launcher.hydra_context.config_loader.load_sweep_config(launcher.config, overrides)
    _, run_dir = EnsembleLauncher._resolved(cfg)
    why = "its worker process was killed"
    print(f"sharpcomp: run {run_dir} failed: {why}", file=sys.stderr, flush=True)
    _record("failed", run_dir, why)  # the tally: "failed: <folder> (its worker process was killed)"
    ret = JobReturn(overrides=overrides, cfg=cfg, hydra_cfg=cfg)
    ret.status = JobStatus.COMPLETED  # a FAILED job's value would have to be an exception, ending the sweep
    ret.return_value = "failed"
    return ret
