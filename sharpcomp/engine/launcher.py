"""The Hydra launcher ``hydra/launcher=ensemble``: compatible jobs of a sweep train as vectorised
ensembles (:mod:`sharpcomp.engine.ensemble`), the rest one by one.

Hydra discovers launchers in its ``hydra_plugins`` namespace: the class registered there is
``hydra_plugins.sharpcomp_ensemble.EnsembleLauncher`` (``sharpcomp/hydra_plugin``, shipped under that
name by pyproject), a subclass of :class:`EnsembleLauncher` below.

Settings (``conf/hydra/launcher/ensemble.yaml``): ``max_members`` (largest ensemble; larger groups are
split into near-equal parts), ``compile`` (``torch.compile`` the training step) and ``impl``
(``StackedSGD``: auto, grouped or vmap). Job folders and their ``.hydra`` files are made exactly as by
Hydra's basic launcher.
"""

from __future__ import annotations

import copy
import logging
import os
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobStatus, configure_log, filter_overrides, setup_globals
from hydra.core.utils import run_job as run_hydra_job
from hydra.plugins.launcher import Launcher
from omegaconf import OmegaConf, open_dict

log = logging.getLogger(__name__)


class EnsembleLauncher(Launcher):
    """Hydra launcher: compatible jobs of a sweep train as vectorised ensembles; the rest one by one."""

    def __init__(self, max_members: int = 32, compile: bool = False, impl: str = "auto", **_ignored) -> None:
        super().__init__()
        self.max_members = int(max_members)
        self.compile = bool(compile)
        self.impl = str(impl)
        self.config = self.task_function = self.hydra_context = None

    def setup(self, *, hydra_context, task_function, config) -> None:
        self.config, self.hydra_context, self.task_function = config, hydra_context, task_function

    def _job_config(self, overrides, idx):
        cfg = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
        with open_dict(cfg):
            cfg.hydra.job.id = idx
            cfg.hydra.job.num = idx
        return cfg

    @staticmethod
    def _resolved(sweep_config) -> tuple[dict, Path]:
        """The job's plain train config and output folder, resolved as ``run_job`` resolves them."""
        hc = HydraConfig.instance()
        orig = hc.cfg
        try:
            cfg = copy.deepcopy(sweep_config)
            hc.set_config(cfg)
            out = Path(str(OmegaConf.select(cfg, "hydra.sweep.dir"))) / str(OmegaConf.select(cfg, "hydra.sweep.subdir"))
            plain = OmegaConf.to_container(cfg, resolve=False)
            plain.pop("hydra", None)
            plain = OmegaConf.to_container(OmegaConf.create(plain), resolve=True)
        finally:
            hc.cfg = orig
        return plain, Path(os.path.abspath(out))

    def _run(self, sweep_config, task_function):
        ret = run_hydra_job(hydra_context=self.hydra_context, task_function=task_function, config=sweep_config,
                            job_dir_key="hydra.sweep.dir", job_subdir_key="hydra.sweep.subdir")
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        return ret

    def _launch_group(self, jobs: list, group: list[int], results: dict) -> None:
        """One ensemble: folders and .hydra files as the basic launcher makes them, then training."""
        prepared = []
        for i in group:
            idx, overrides, sweep_config, _, _ = jobs[i]
            log.info(f"\t#{idx} : {' '.join(filter_overrides(overrides))} (ensemble)")
            ret = self._run(sweep_config, lambda cfg: None)
            prepared.append((i, ret, Path(ret.hydra_cfg.hydra.runtime.output_dir)))
        outcome = run_group([jobs[i][3] for i in group], [p[2] for p in prepared], self.compile, self.impl)
        for (i, ret, _), status in zip(prepared, outcome):
            # COMPLETED with the status as its value, as a job of the basic launcher returns it (a FAILED
            # job's value must be an exception, which Hydra raises and so ends the whole sweep); the
            # sweep's tally reports every job that did not finish
            ret.status = JobStatus.COMPLETED
            ret.return_value = status
            results[i] = ret

    def launch(self, job_overrides, initial_job_idx):
        # lazy: Hydra imports this module to discover its plugins whenever it composes a config
        # (sharpcomp --help too), so torch is loaded only once a sweep launches
        from sharpcomp.engine.ensemble_groups import group_compatible

        setup_globals()
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        jobs = []
        for i, overrides in enumerate(job_overrides):
            sweep_config = self._job_config(overrides, initial_job_idx + i)
            jobs.append((initial_job_idx + i, list(overrides), sweep_config, *self._resolved(sweep_config)))
        try:
            groups, singles = group_compatible([j[3] for j in jobs], self.max_members)
        except Exception:
            groups, singles = [], list(range(len(jobs)))
        log.info(f"Launching {len(jobs)} jobs locally: {len(groups)} ensemble(s) "
                 f"({', '.join(str(len(g)) for g in groups) or '-'} runs), {len(singles)} run(s) one by one")
        results: dict = {}
        for group in groups:
            self._launch_group(jobs, group, results)
        for i in singles:
            idx, overrides, sweep_config, _, _ = jobs[i]
            log.info(f"\t#{idx} : {' '.join(filter_overrides(overrides))}")
            results[i] = self._run(sweep_config, self.task_function)
        return [results[i] for i in range(len(jobs))]


def run_group(cfgs: list[dict], run_dirs: list[Path], compile: bool, impl: str) -> list[str]:
    """Train one group as an ensemble; per job the status, reported like any job (:mod:`sharpcomp.engine.jobs`)."""
    # lazy: Hydra imports this module whenever it composes a config (see launch)
    from sharpcomp.engine.ensemble import train_ensemble
    from sharpcomp.engine.jobs import run_job

    return run_job(lambda: train_ensemble(cfgs, run_dirs, compile=compile, impl=impl), run_dirs, multirun=True)
