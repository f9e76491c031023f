"""The training engine: one loop that trains a list of runs in lockstep (a single run is a list of one).

A run lives in one output folder (:mod:`sharpcomp.results.run_state`): ``metrics.parquet`` with one row per
(checkpoint, sample set), appended at every checkpoint (``records``), and ``checkpoint.pt``, the
resume point, written after that checkpoint's rows. The same command resumes. Runs are opened for the
loop by :mod:`sharpcomp.engine.opening` (``open_runs``, ``Member``, ``close_all``, used from here).

The loop (:class:`_Loop`) owns what every run shares -- the checkpoint schedule (iteration 0, every
``log_every``, and ``steps``), the epoch loop, the running losses, divergence, the progress bar and
summary line -- and drives a stepper (:mod:`sharpcomp.engine.steppers`), which owns the networks: a plain
module and its optimizer for one run, or k stacked networks for an ensemble (:mod:`sharpcomp.engine.ensemble`).

Data order and the train sample set are functions of each run's seed alone (``data``), so a resumed
run sees exactly the batches an uninterrupted one would: no random state needs saving. The training
loop never waits for the device: indices are gathered there, running losses are summed there, and
the host reads them once per checkpoint.

At a checkpoint, a run whose running loss (or whole-set train loss) is not finite is recorded
``diverged`` (its last row holds NaN) and dropped; the others go on. A run with a stopping rule
(``stop``, :class:`sharpcomp.settings.StopRule`) that reaches it is ``finished`` there: that checkpoint
evaluates the whole sets and computes every switched-on measure, its rows carry ``stop_reason`` and
``stop_iteration`` (``steps`` at the cap when the rule was never reached), and its saved state says so,
so a rerun, even with a larger ``steps``, does not continue it. Any other exception marks the runs
``failed``; Ctrl-C leaves them ``running``, resumable.
"""

from __future__ import annotations

import math
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from sharpcomp.data.datasets import Dataset
from sharpcomp.data.order import epoch_permutation, steps_per_epoch
from sharpcomp.engine.cost import MeasureCost
from sharpcomp.engine.evaluation import checkpoint_rows, sample_losses, sample_sets
from sharpcomp.engine.opening import Member, close_all, open_runs
from sharpcomp.engine.setup import build, initial_network
from sharpcomp.engine.steppers import PlainStepper
from sharpcomp.kept_schedule import is_kept, next_kept
from sharpcomp.results.kept_weights import keep_weights
from sharpcomp.results.records import RecordError
from sharpcomp.results.run_state import RunResult
from sharpcomp.settings import STOP_CRITERIA, ConfigError

# Timings of the last loop (seconds), for benchmarks: train, checkpoint, eval, metrics, write.
LAST_TIMINGS: dict[str, float] = {}


def by_start(members: Sequence[Member]) -> list[list[Member]]:
    """The runs still to train, split by their starting point (fresh first).

    Runs left at different iterations (an interrupt between two members' writes) train as separate
    lockstep groups, so a run is never advanced to a point where a run alone would not have checkpointed.
    """
    groups: dict[int, list[Member]] = {}
    for m in members:
        if m.run.result is None:
            groups.setdefault(-1 if m.run.fresh else m.run.start, []).append(m)
    return [groups[k] for k in sorted(groups)]


# ---------------------------------------------------------------------------------------------
# the loop


class _Loop:
    """Trains ``members`` (all at the same starting point) with ``stepper`` to ``steps``.

    ``isolate``: a member whose folder cannot take its rows or resume point (removed, replaced, unwritable)
    is recorded ``failed`` with the reason and dropped; the others go on (else the error ends the loop).
    """

    def __init__(self, members: list[Member], stepper, data: Dataset, callback, isolate: bool = False):
        self.members, self.stepper, self.data, self.callback = list(members), stepper, data, callback
        self.isolate = isolate
        self.s = members[0].settings
        self.spe = steps_per_epoch(len(data.train_x), self.s.batch)
        self.device = data.train_x.device
        self.t0 = time.perf_counter()
        self.timing = dict.fromkeys(("train", "checkpoint", "eval", "metrics", "write"), 0.0)
        self.start, self.cost = members[0].run.start, MeasureCost(self.s.steps, self.s.log_every,
                                                                  self.s.metrics.flatness_every)
        self._reset_running()
        self._carry_running()
        for m in self.members:  # said once the stepper holds the saved state (it fits the network)
            if not m.run.fresh:
                print(f"sharpcomp: {m.run.run_dir}: resumed at iteration {m.run.start}", file=sys.stderr, flush=True)
        first = members[0].run
        total = len(members)
        desc = first.run_id[:40] if total == 1 else f"ensemble of {total}"
        self.bar = tqdm(total=self.s.steps, initial=first.start, desc=desc, unit="it", dynamic_ncols=True,
                        disable=None if self.s.progress else True, mininterval=0.5, smoothing=0.05)

    def _reset_running(self) -> None:
        self.running_sum = torch.zeros(len(self.members), device=self.device)
        self.running_count = 0

    def _carry_running(self) -> None:
        """Resume from the end checkpoint of a shorter run (an iteration off the ``log_every`` schedule).

        The running loss goes on from the sum saved there, so the next checkpoint's
        ``train_loss_running`` is exactly an uninterrupted run's (the same float32 sums, in order).
        """
        states = [m.run.resume for m in self.members]
        if all(st is not None and "running_sum" in st for st in states):
            self.running_sum = torch.stack([st["running_sum"].to(torch.float32) for st in states]).to(self.device)
            self.running_count = int(states[0]["running_count"])

    def _running_state(self, pos: int, it: int) -> dict | None:
        """What an off-schedule end checkpoint saves of the running loss (see :meth:`_carry_running`)."""
        if it % self.s.log_every == 0 or not self.running_count:
            return None
        return {"running_sum": self.running_sum[pos].detach().clone().cpu(), "running_count": self.running_count}

    def wall(self, m: Member) -> float:
        return time.perf_counter() - self.t0 + m.run.wall_offset

    def _perms(self, epoch: int) -> torch.Tensor:
        n = len(self.data.train_x)
        return torch.stack([epoch_permutation(m.seed, epoch, n) for m in self.members]).to(self.device)

    def _next_keep(self, it: int) -> int | None:
        """The next iteration after ``it`` at which some member keeps its weights."""
        due = [k for m in self.members if (k := next_kept(m.settings.save_every, self.s.steps, it)) is not None]
        return min(due, default=None)

    def _keep(self, it: int) -> int | None:
        """Write the weights of the members that keep iteration ``it``; the next iteration to keep."""
        w0 = time.perf_counter()
        for pos, m in enumerate(self.members):
            if is_kept(m.settings.save_every, self.s.steps, it):
                keep_weights(m.run.run_dir, m.run.run_id, it, self.stepper.weights(pos))
        self.timing["write"] += time.perf_counter() - w0
        return self._next_keep(it)

    def run(self) -> None:
        s, start = self.s, self.members[0].run.start
        try:
            next_keep = self._next_keep(start - 1 if self.members[0].run.fresh else start)
            if next_keep == start:
                next_keep = self._keep(start)
            if self.members[0].run.fresh:
                self.checkpoint(0)
            due = s.checkpoints.after(start)
            next_ckpt, epoch, perms, it = next(due), -1, None, start
            t_train = time.perf_counter()
            while it < s.steps and self.members:
                e, kb = divmod(it, self.spe)
                if e != epoch:
                    epoch, perms = e, self._perms(e)
                self.running_sum += self.stepper.step(perms[:, kb * s.batch:(kb + 1) * s.batch])
                self.running_count += 1
                it += 1
                self.bar.update(1)
                if it == next_keep:
                    next_keep = self._keep(it)
                if it == next_ckpt:
                    self.timing["train"] += time.perf_counter() - t_train
                    before = len(self.members)
                    self.checkpoint(it)
                    if len(self.members) != before and self.members:
                        perms = self._perms(epoch)
                    next_ckpt = next(due, None)
                    t_train = time.perf_counter()
        except KeyboardInterrupt:
            raise
        except BaseException:
            for m in self.members:
                m.run.fail()
            raise
        finally:
            self.bar.close()
            LAST_TIMINGS.clear()
            LAST_TIMINGS.update(self.timing)

    def _evaluations(self, whole: bool) -> tuple[list, list]:
        """Whole-set (train, test) evaluations of every network, or Nones off their cadence."""
        if not whole:
            return [None] * len(self.members), [None] * len(self.members)
        e0 = time.perf_counter()
        d = self.data
        out = self.stepper.evaluate(d.train_x, d.train_y), self.stepper.evaluate(d.test_x, d.test_y)
        self.timing["eval"] += time.perf_counter() - e0
        return out

    def _diverged(self, it: int, run_losses: list[float], train_evals: list) -> list[int]:
        """Record the runs whose losses are not finite; the positions of the others."""
        keep = []
        for j, m in enumerate(self.members):
            bad = (it > 0 and not math.isfinite(run_losses[j])) or (
                train_evals[j] is not None and not math.isfinite(train_evals[j][0]))
            if not bad:
                keep.append(j)
                continue
            m.run.diverge(it, it / self.spe, self.wall(m), *self.stepper.states(j))
            m.run.result = self._result(m, "diverged", it)
            self.bar.write(f"{m.run.run_id}: diverged (non-finite loss) at iteration {it}; recorded as diverged")
            sys.stdout.flush()
        return keep

    def checkpoint(self, it: int) -> None:
        c0 = time.perf_counter()
        s = self.s
        run_losses = ((self.running_sum.double() / self.running_count).tolist() if self.running_count
                      else [math.nan] * len(self.members))
        whole = s.whole_set_due(it) or self._running_stop(run_losses)
        train_evals, test_evals = self._evaluations(whole)
        keep = self._diverged(it, run_losses, train_evals)
        if len(keep) != len(self.members):
            self.stepper.keep(keep)
            self.members = [self.members[j] for j in keep]
        if not self.members:
            self.timing["checkpoint"] += time.perf_counter() - c0
            return
        m0 = time.perf_counter()
        models = self.stepper.models()
        correct = [test_evals[j][2] if whole else None for j in keep]
        if "misclassified" in s.metrics.sample_sets and not whole:
            correct = [e[2] for e in self.stepper.evaluate(self.data.test_x, self.data.test_y)]
        sets = [sample_sets(s, self.data, m.sample_idx, c) for m, c in zip(self.members, correct)]
        metrics = self.stepper.sample_metrics(models, sets)
        losses = sample_losses(models, sets, s.loss)
        self.timing["metrics"] += time.perf_counter() - m0
        new_rows, lost = {}, []
        stops = [self._stop_reason(m, it, run_losses[j], train_evals[j]) for j, m in zip(keep, self.members)]
        for pos, (j, m) in enumerate(zip(keep, self.members)):
            base = {"iteration": it, "epoch": it / self.spe, "train_loss_running": run_losses[j],
                    "lr_now": m.settings.lr_at(it)}
            if whole:
                (base["train_loss"], base["train_acc"], _), (base["test_loss"], base["test_acc"], _) = \
                    train_evals[j], test_evals[j]
            if stops[pos]:
                base.update(stop_reason=stops[pos], stop_iteration=it)
            stopped = {"stopped": stops[pos]} if stops[pos] in STOP_CRITERIA else {}
            try:
                new_rows[m.run.run_dir] = self._commit(pos, m, it, base, sets[pos], metrics[pos], losses[pos],
                                                       models[pos], {**(self._running_state(j, it) or {}), **stopped}
                                                       or None)
            except (OSError, RecordError, ConfigError) as exc:  # this member's folder, not the others'
                if not self.isolate:
                    raise
                m.run.result = m.run.failed(it, exc)
                lost.append(pos)
        self.stepper.train()
        self._drop_stopped(it, stops, lost)
        self._reset_running()
        self.timing["checkpoint"] += time.perf_counter() - c0
        if it == s.steps:
            for m in self.members:
                m.run.result = self._result(m, "finished", it)
            self.members = []
        if new_rows:
            _summary(self.bar, it, s.steps, new_rows)
            line = self.cost.line(it - self.start, self.timing["train"], self.timing["checkpoint"])
            if line:  # the measures will dominate the run: said once, early
                self.bar.write(f"sharpcomp: {line}", file=sys.stderr)
        if self.callback is not None:
            self.callback(it, new_rows)

    def _running_stop(self, run_losses: list[float]) -> bool:
        """Whether a run reached its ``stop.running_loss`` (its last checkpoint then evaluates the whole sets)."""
        return any(m.settings.stop.running_loss is not None and loss <= m.settings.stop.running_loss
                   for m, loss in zip(self.members, run_losses))

    def _stop_reason(self, m: Member, it: int, run_loss: float, train_eval) -> str | None:
        """The criterion run ``m`` reached at checkpoint ``it``, ``steps`` at the cap without one, else None."""
        rule = m.settings.stop
        if not rule or it == 0:
            return None
        train_loss, train_acc = (None, None) if train_eval is None else train_eval[:2]
        return rule.reached(run_loss, train_loss, train_acc) or ("steps" if it == self.s.steps else None)

    def _drop_stopped(self, it: int, stops: list[str | None], lost: Sequence[int] = ()) -> None:
        """Finish the runs that reached their criterion at checkpoint ``it`` (before the cap).

        Those whose folder failed them (``lost``: their outcome is set) are dropped too; the others go on.
        """
        done = [pos for pos, why in enumerate(stops) if why in STOP_CRITERIA and it < self.s.steps and pos not in lost]
        if not done and not lost:
            return
        for pos in done:
            m = self.members[pos]
            m.run.result = self._result(m, "finished", it)
            limit = getattr(m.settings.stop, stops[pos])
            self.bar.write(f"{m.run.run_id}: stopped at iteration {it}: {stops[pos]} <= stop.{stops[pos]}={limit:g}")
        rest = [pos for pos in range(len(self.members)) if pos not in done and pos not in lost]
        self.stepper.keep(rest)
        self.members = [self.members[pos] for pos in rest]

    def _commit(self, pos: int, m: Member, it: int, base: dict, sets: dict, metrics: dict, losses: dict,
                model: nn.Module, extra: dict | None = None) -> list:
        """Write one run's rows of checkpoint ``it``.

        ``extra``: what its saved state adds (the running loss of an end checkpoint off the schedule, the
        criterion it stopped at).
        """
        m0 = time.perf_counter()
        stopped = bool(extra and extra.get("stopped"))
        spent: dict[str, float] = {}
        rows = checkpoint_rows(model, m.settings, m.plan, self.data, sets, m.loss_fn, base, it, metrics, losses,
                               final=stopped, seconds=spent,
                               initial=lambda: initial_network(m.settings, self.data, self.data.train_x.device))
        if spent:
            self.cost.measured(it, sum(spent.values()))
        self.timing["metrics"] += time.perf_counter() - m0
        for r in rows:
            r["wall_time"] = self.wall(m)
        w0 = time.perf_counter()
        status = "finished" if it == self.s.steps or stopped else "running"
        m.run.commit(it, rows, status, self.wall(m), *self.stepper.states(pos), running=extra)
        m.logger.log(it, rows)  # live monitoring mirrors the recorded rows; never stops the run
        self.timing["write"] += time.perf_counter() - w0
        return rows

    def _result(self, m: Member, status: str, it: int) -> RunResult:
        return RunResult(m.run.run_dir, status, it, m.run.rows, time.perf_counter() - self.t0,
                         self.timing["checkpoint"], m.run.checkpoints)


def _summary(bar, it: int, steps: int, rows: dict[Path, list[dict]]) -> None:
    """One line per checkpoint: the run's numbers, or the range over an ensemble's runs."""
    first = [r[0] for r in rows.values()]

    def rng(key, spec=".4g"):
        vals = [r[key] for r in first if r.get(key) is not None and math.isfinite(r[key])]
        if not vals:
            return "-"
        lo, hi = format(min(vals), spec), format(max(vals), spec)
        return lo if lo == hi else f"{lo}..{hi}"

    for r in first:
        sharp = r.get("sharpness")
        if sharp is not None and math.isfinite(sharp):
            r["_sqrt_s"] = math.sqrt(max(sharp, 0.0))
    runs = "" if len(first) == 1 else f"{len(first)} runs: "
    bar.set_postfix_str(f"loss={rng('train_loss_running')} acc={rng('train_acc', '.3f')}", refresh=False)
    bar.write(f"[{it:>7d}/{steps}] {runs}loss(run)={rng('train_loss_running')} train_acc={rng('train_acc', '.4f')} "
              f"test_acc={rng('test_acc', '.4f')} sqrtS={rng('_sqrt_s')} G={rng('G')} "
              f"logvol={rng('log_volume')} local_dim={rng('local_dim')} t={first[0]['wall_time']:.1f}s")
    for r in first:
        r.pop("_sqrt_s", None)
    sys.stdout.flush()  # summaries reach logs (SLURM, pipes) as they happen


# ---------------------------------------------------------------------------------------------
# entry points


def plain_stepper(m: Member, data: Dataset) -> PlainStepper:
    """The stepper of one run on its own: its network (resumed where it has a saved state) and optimizer."""
    model = build(m.settings, data, data.train_x.device)
    return PlainStepper(model, m.settings, data, m.settings.num_outputs(data.num_classes), m.run.resume)


def train_members(members: list[Member], data: Dataset, make_stepper, callback=None, isolate: bool = False) -> None:
    """Train every group of ``members`` (:func:`by_start`) with ``make_stepper(group)``.

    ``isolate`` (an ensemble): a member whose folder fails it is recorded ``failed`` and the others go on
    (:class:`_Loop`); a group that fails as a whole records its members ``failed`` and the next groups train.
    """
    for group in by_start(members):
        try:
            _Loop(group, make_stepper(group), data, callback, isolate).run()
        except Exception as exc:
            if not isolate:
                raise
            trace = "" if isinstance(exc, (ConfigError, RecordError)) else traceback.format_exc()
            for m in group:
                if m.run.result is None:
                    m.run.result = m.run.failed(m.run.start, exc, trace)


def train(cfg, run_dir: str | Path, *, callback: Callable[[int, list[dict]], None] | None = None,
          data: Dataset | None = None) -> RunResult:
    """Train one run into ``run_dir``, resuming from its checkpoint when there is one.

    ``cfg``: the resolved ``train`` config (DictConfig or mapping). ``callback(iteration, rows)``
    is called after each checkpoint is safely written. ``data`` may be passed to skip loading.
    """
    t_call = time.perf_counter()
    run_dir = Path(run_dir)
    members, data = open_runs([cfg], [run_dir], data)
    m = members[0]
    per_run = None if callback is None else lambda it, rows: callback(it, rows.get(run_dir, []))
    try:
        train_members(members, data, lambda group: plain_stepper(group[0], data), per_run)
    finally:
        close_all(members)
    res = m.run.outcome()
    res.seconds = time.perf_counter() - t_call
    return res
