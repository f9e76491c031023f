"""Runs opened for training: every run's settings checked once, the data loaded once (not at all when every
run has ended), each run folder opened and locked (:class:`sharpcomp.results.run_state.RunState`), and
what a folder already holds taken into account: a resumed run computes its measures with the settings its
rows record (:mod:`sharpcomp.engine.kept_measures`), a run that has ended says so.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from sharpcomp.data.datasets import Dataset
from sharpcomp.data.order import train_sample_indices
from sharpcomp.engine.kept_measures import keep, publish
from sharpcomp.engine.notes import ended_line, note_outputs, note_small_sets
from sharpcomp.engine.setup import build, check_kept_size, check_layer, check_writable, measure_plan, prepare_runtime
from sharpcomp.losses import make_loss
from sharpcomp.measures.registry import Plan
from sharpcomp.results.hydra_files import write_held
from sharpcomp.results.loggers import Logger, make_logger
from sharpcomp.results.records import RecordError
from sharpcomp.results.run_state import CHECKPOINT_FILE, RunState, identity_columns, read_checkpoint
from sharpcomp.settings import ConfigError, Settings, run_identity, settings


@dataclass
class Member:
    """A run in the loop: its folder, train sample indices, loss, live logger and measures.

    ``plan``: the measures it computes beyond the study's, with their settings checked once.
    """

    run: RunState
    settings: Settings
    sample_idx: torch.Tensor
    loss_fn: Callable
    logger: Logger = field(default_factory=Logger)
    plan: Plan = field(default_factory=Plan)

    @property
    def seed(self) -> int:
        """The run's seed."""
        return self.settings.seed


def open_runs(cfgs: Sequence, run_dirs: Sequence[Path], data: Dataset | None,
              blocked: list | None = None) -> tuple[list[Member], Dataset]:
    """Check the settings, load the data once, open (lock) every run folder.

    With ``blocked`` (a list), a folder that cannot be opened (in use, another run's, unreadable) is appended to it as
    ``(run_dir, exception)`` and left out, so the other runs still train.
    """
    all_settings = [settings(c) for c in cfgs]
    for d in run_dirs:
        check_writable(Path(d))
    if data is None and all(_ended(s, Path(d)) for s, d in zip(all_settings, run_dirs)):
        ended = _open_ended(all_settings, run_dirs)
        if all(m.run.result is not None for m in ended):
            return ended, None  # nothing to train: no data to load
        close_all(ended)  # e.g. the rows were lost: the run restarts, with its data
    device, data = prepare_runtime(all_settings[0], data)
    note_small_sets(all_settings[0], data)
    if all_settings[0].metrics.layer is not None:  # any network: build one to look (on the CPU, not the meta device)
        check_layer(all_settings[0], build(all_settings[0], data, torch.device("cpu")))
    keeping = [s for s in all_settings if s.save_every is not None]
    if keeping:  # the size of the kept weights, for data whose shape was unknown before loading
        net = build(keeping[0], data, torch.device("cpu"))
        for s in keeping:
            check_kept_size(s, net)
    members: list[Member] = []
    try:
        for s, d in zip(all_settings, run_dirs):
            settings(s.raw, n_train=len(data.train_x))
            s, kept = keep(s, Path(d))  # a resumed run computes its measures as its rows were computed
            n_out = s.num_outputs(data.num_classes)
            run_id = run_identity(s)["run_id"]
            identity = identity_columns(s, run_id, n_out, data.source, device)
            identity["settings"] = publish(identity["settings"], measure_plan(s))
            try:
                state = RunState(s, Path(d), identity).open(device)
                if blocked is not None and state.resume is not None:  # an ensemble: a saved state that does
                    state.check_fit(build(s, data, torch.device("cpu")))  # not fit fails its run alone
            except (ConfigError, RecordError) as exc:
                if blocked is None:
                    raise
                blocked.append((Path(d), exc))
                continue
            write_held(d)  # the folder is this run's now: Hydra's record of its config goes in
            for line in kept:
                print(line, file=sys.stderr, flush=True)
            if state.result is not None:
                print(ended_line(s, d, state), file=sys.stderr, flush=True)
            idx = train_sample_indices(s.seed, len(data.train_x), s.metrics.n).to(device)
            logger = Logger() if state.result is not None else make_logger(
                s.raw.get("logger"), Path(d), run_id, {**run_identity(s)["settings"], "steps": s.steps})
            members.append(Member(state, s, idx, make_loss(s.loss, n_out), logger, measure_plan(s)))
    except BaseException:
        for m in members:
            m.run.close()
        raise
    if any(m.run.fresh and m.run.result is None for m in members):  # what iteration 0's accuracy means
        note_outputs(all_settings[0], data)
    return members, data


def _ended(s: Settings, run_dir: Path) -> bool:
    """Whether the folder holds this run finished (or diverged): its saved state says so."""
    path = run_dir / CHECKPOINT_FILE
    if not path.exists():
        return False
    try:
        state = read_checkpoint(path)
    except Exception:
        return False
    return state.get("run_id") == run_identity(s)["run_id"] and (
        state.get("status") == "diverged" or int(state.get("iteration", -1)) >= s.steps or bool(state.get("stopped")))


def _open_ended(all_settings: Sequence[Settings], run_dirs: Sequence) -> list[Member]:
    """Open runs that have ended, without their data: each says so in one line."""
    members: list[Member] = []
    try:
        for s, d in zip(all_settings, run_dirs):
            run_id = run_identity(s)["run_id"]
            state = RunState(s, Path(d), {"run_id": run_id}).open(torch.device("cpu"))
            write_held(d)
            members.append(Member(state, s, torch.empty(0, dtype=torch.long), make_loss(s.loss, 1)))
            if state.result is not None:
                print(ended_line(s, d, state), file=sys.stderr, flush=True)
    except BaseException:
        for m in members:
            m.run.close()
        raise
    return members


def close_all(members: Sequence[Member]) -> None:
    """Close (unlock) every member's run folder."""
    for m in members:
        m.logger.close()
        m.run.close()
