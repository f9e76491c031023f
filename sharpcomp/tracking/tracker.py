"""A tracker for a training loop of one's own: sharpcomp's measures and records, one call per step.

::

    with sharpcomp.Tracker("runs/mine", model, "ce", train_samples=(x, y), test_samples=(xt, yt),
                           measures={"hessian_max": {}, "average": {}}, steps=5000, every=100,
                           batch_size=128, optimizer=opt) as tracker:
        for it in range(tracker.start, 5000):    # 0, or where a restarted script left off
            loss = train_step(it)                 # your step: data, augmentation, schedule, precision
            tracker.step(it + 1, loss=loss)       # after the (it+1)-th update; a checkpoint every 100

At iteration 0 (a new folder), every ``every`` iterations and at ``steps``, the tracker evaluates the network
on the samples it was given, computes the study's metrics on the sample sets and the switched-on measures on
the train row (at every ``flatness_every``-th checkpoint), all in eval mode, and appends the rows to the run
folder as ``sharpcomp train`` does: the same parts, identity columns, settings as JSON, status and resume
point (:mod:`sharpcomp.results.run_state`), so ``sharpcomp figures``, ``runs`` and ``read_metrics`` read it
as they read a ``train`` run. A checkpoint leaves the training state as it was
(:func:`sharpcomp.tracking.untouched.untouched`), and its timing comes back as a
:class:`~sharpcomp.tracking.report.CheckpointReport`.

How a restarted script resumes:

* ``at_iteration=None`` (the default): the tracker owns the resume point. It saves the network (and the
  ``optimizer``'s state, and the state of each object of ``extra_state``, e.g. a learning-rate schedule) at
  every checkpoint, loads them back when a script opens the folder again, and ``tracker.start`` says where
  the loop goes on; the rows of an interrupted checkpoint are computed again, never twice.
* ``at_iteration=g``: the script restored its own training to iteration g (a Lightning Trainer's checkpoint).
  Rows past g are dropped and the checkpoint at g is recorded again from the restored network (when g is off
  the tracker's schedule, this adds one checkpoint at g).

Settings are named and checked as in a config (``metrics``: the ``metrics`` block, ``measures``: its
``metrics.flatness`` entries, measures of one's own included); every check is made before training starts,
with one line (:class:`~sharpcomp.settings.ConfigError`). A measure that raises at a checkpoint records
missing values and its reason (``measure_errors``) and the loop goes on; ``fatal=True`` raises instead.
"""

from __future__ import annotations

import io
import math
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from torch import nn

from sharpcomp.data.order import train_sample_indices
from sharpcomp.engine.evaluation import checkpoint_rows, compute_sample_metrics, evaluate, sample_losses, sample_sets
from sharpcomp.engine.setup import check_writable
from sharpcomp.results.run_state import RunState, identity_columns, load_resume
from sharpcomp.settings import ConfigError, run_identity
from sharpcomp.tracking.inputs import (
    Loop,
    check_model,
    check_samples,
    dataset,
    loss_function,
    loss_name,
    run_settings,
)
from sharpcomp.tracking.report import CheckpointReport
from sharpcomp.tracking.untouched import untouched


class Tracker:
    """sharpcomp's measures and records at the checkpoints of a training loop of one's own (module docstring).

    ``folder``: the run folder; ``model``: the network being trained (measured in place, left untouched);
    ``loss_fn``: ``"mse"``, ``"ce"`` or a function (outputs, labels) -> mean loss; ``train_samples``: (inputs,
    class labels) the measures draw from (the study's metrics take ``metrics.n`` of them, chosen by ``seed``,
    as ``sharpcomp train`` chooses its train sample set; the whole-set ``train_loss``/``train_acc`` are over
    all of them); ``test_samples``: the test points (``test_loss``/``test_acc``, the ``test`` and
    ``misclassified`` sample sets); ``steps``: the loop's last iteration (the end checkpoint); ``every``:
    iterations between checkpoints; ``eval_every``: whole-set evaluation at every k-th checkpoint;
    ``batch_size``: the loop's minibatch size (for measures over minibatches); ``data``, ``model_name``,
    ``lr``: how the records name the run (defaults: ``custom``, the network's class, the optimizer's first
    rate); ``steps_per_epoch``: gives the ``epoch`` column; ``progress``: a line per checkpoint on stderr;
    ``rate_from``: the optimizer whose first group's rate the rows record as ``lr_now``, where the tracker is
    not to keep its state (default: ``optimizer``; the Lightning callback gives the Trainer's).
    """

    def __init__(self, folder: str | Path, model: nn.Module, loss_fn: str | Callable, *, train_samples,
                 steps: int, every: int, batch_size: int, test_samples=None, measures: Mapping | None = None,
                 metrics: Mapping | None = None, eval_every: int = 1, seed: int = 0, data: str = "custom",
                 model_name: str | None = None, lr: float | None = None, optimizer=None,
                 extra_state: Mapping | None = None, at_iteration: int | None = None,
                 steps_per_epoch: int | None = None, fatal: bool = False, progress: bool = True, rate_from=None):
        check_model(model)
        loss = loss_name(loss_fn)
        train, test, classes = check_samples(model, train_samples, test_samples)
        loop = Loop(data, model_name, lr, batch_size, seed, steps, every, eval_every)
        self.settings, self.plan = run_settings(loop, model, loss, optimizer, metrics, measures)
        _check_sets(self.settings.metrics.sample_sets, test)
        self.extra_state = dict(extra_state or {})
        _check_extra_state(self.extra_state)
        self.model, self.optimizer, self.fatal, self.progress = model, optimizer, bool(fatal), bool(progress)
        self.rate_from = optimizer if rate_from is None else rate_from
        self.loss, self.loss_fn = loss_fn, loss_function(loss_fn, classes)
        self.data = dataset(data, train, test, classes)
        device = train[0].device
        self.sample_idx = train_sample_indices(seed, len(train[0]), self.settings.metrics.n).to(device)
        self.steps_per_epoch = steps_per_epoch
        self.reports: list[CheckpointReport] = []
        self.start, self.stopped = 0, False
        self._last: int | None = None
        self._reset_running()
        self.folder = Path(folder)
        check_writable(self.folder)
        run_id = run_identity(self.settings)["run_id"]
        ident = identity_columns(self.settings, run_id, classes, "tracked", device)
        self.run = RunState(self.settings, self.folder, ident).open(device)
        self._t0, self._since = time.perf_counter(), time.perf_counter()
        try:
            self._resume(at_iteration)
        except BaseException:
            self.run.close()
            raise

    # ---------------------------------------------------------------------------------------------
    # opening a folder

    def _resume(self, at: int | None) -> None:
        run = self.run
        diverged = run.result is not None and run.result.status == "diverged"
        if at is not None and not diverged:
            self._resume_at(at)
        elif run.result is not None:
            self.start, self.stopped = run.start, True
            self._say(f"{run.result.status} at iteration {run.start}; nothing more is recorded")
        elif not run.fresh:
            load_resume(self.model, self.optimizer, run.resume)
            for name, obj in self.extra_state.items():
                obj.load_state_dict(run.resume.get("extra_state", {})[name])
            self.start = run.start
            loaded = ", ".join(["network", *(["optimizer"] if self.optimizer is not None else []), *self.extra_state])
            self._say(f"resumed at iteration {run.start} ({loaded} loaded)")
        else:
            self._checkpoint(0)
        self._since = time.perf_counter()

    def _resume_at(self, at: int) -> None:
        """Follow a loop that restored its own training to iteration ``at``."""
        if isinstance(at, bool) or not isinstance(at, int) or not 0 <= at <= self.settings.steps:
            raise ConfigError(f"at_iteration must be an integer in [0, steps], got {at!r}")
        run, every = self.run, self.settings.log_every
        if run.fresh:
            if at != 0:
                raise ConfigError(f"{self.folder} holds no records, and the training stands at iteration {at}: a "
                                  f"tracked run is recorded from iteration 0 (a new folder when training starts)")
            self._checkpoint(0)
        elif at < run.start:
            self.start = at
            self._rewind(at)
            self._say(f"resumed at iteration {at}: the records after it are computed again")
        elif min((run.start // every + 1) * every, self.settings.steps) <= at:
            raise ConfigError(f"{self.folder}: the records end at iteration {run.start} and the training stands at "
                              f"{at}: the checkpoints between are missing; resume from an earlier checkpoint "
                              f"of your training, or record into a new folder")
        self.start = at
        self.stopped = at >= self.settings.steps

    def _rewind(self, at: int) -> None:
        """Drop the records past iteration ``at``, where the loop's own resume point is.

        With rows at ``at`` (a checkpoint), they stay: the resume point moves to ``at`` first (the rows past it
        are then dropped, here or by the next opening). Off the schedule, a checkpoint at ``at`` is recorded
        in place of the rows past it.
        """
        if at in self._iterations():
            self.run.commit(at, [], "running", self._wall(), self.model.state_dict(), self._optimizer_state(),
                            running=self._extra())
            self.run.recorder.truncate_after(at)
        else:
            self._checkpoint(at, truncate=True)

    def _iterations(self) -> set[int]:
        frame = self.run.recorder.frame
        return set() if frame is None else {int(i) for i in frame["iteration"]}

    # ---------------------------------------------------------------------------------------------
    # the loop's side

    def step(self, iteration: int, loss=None, epoch: float | None = None) -> CheckpointReport | None:
        """Say that the loop has taken its ``iteration``-th update (1, 2, ...; ``loss``: that step's minibatch
        loss, a float or a tensor). At a checkpoint, measure and record; return its report (else None)."""
        expected = (self.start if self._last is None else self._last) + 1
        if isinstance(iteration, bool) or not isinstance(iteration, int) or iteration != expected:
            raise ConfigError(f"tracker.step({iteration!r}): the next iteration is {expected} (one call per update, "
                              f"counting from tracker.start = {self.start})")
        self._last = iteration
        if loss is not None:
            self._add_loss(loss)
        if self.stopped or iteration > self.settings.steps:
            return None
        if iteration % self.settings.log_every == 0 or iteration == self.settings.steps:
            return self._checkpoint(iteration, epoch=epoch)
        return None

    def _add_loss(self, loss) -> None:
        if torch.is_tensor(loss):
            loss = loss.detach().reshape(())
            self._tensor_sum = loss.clone() if self._tensor_sum is None else self._tensor_sum + loss
        else:
            self._float_sum += float(loss)
        self._count += 1

    def _reset_running(self) -> None:
        self._tensor_sum, self._float_sum, self._count = None, 0.0, 0

    def _running_loss(self) -> float:
        if not self._count:
            return math.nan
        total = self._float_sum + (0.0 if self._tensor_sum is None else float(self._tensor_sum.double()))
        return total / self._count

    # ---------------------------------------------------------------------------------------------
    # a checkpoint

    def _due(self, it: int, every_k: int) -> bool:
        """Whether a part with cadence ``every_k`` (every k-th checkpoint) is due at checkpoint ``it``."""
        s = self.settings
        return it % s.log_every != 0 or (it // s.log_every) % every_k == 0 or it == s.steps

    def _lr_now(self) -> float:
        """The rate ``rate_from``'s first group will use for its next step (a schedule of the loop's own has
        set it by now); NaN without an optimizer."""
        if self.rate_from is None:
            return math.nan
        return float(self.rate_from.param_groups[0]["lr"])

    def _checkpoint(self, it: int, epoch: float | None = None, truncate: bool = False) -> CheckpointReport | None:
        started = time.perf_counter()
        loop_seconds = started - self._since if self.reports else math.nan
        running = self._running_loss()
        if it > 0 and not math.isfinite(running) and self._count:
            return self._diverge(it)
        if epoch is None and self.steps_per_epoch:
            epoch = it / self.steps_per_epoch
        base = {"iteration": it, "epoch": math.nan if epoch is None else float(epoch), "train_loss_running": running,
                "lr_now": self._lr_now()}
        seconds: dict[str, float] = {}
        if self.progress:  # a checkpoint can take minutes: say when it starts
            self._say(f"[{it:>7d}/{self.settings.steps}] checkpoint: measuring ...")
        with untouched(self.model):
            self.model.eval()
            rows = self._rows(it, base, seconds)
        w0 = time.perf_counter()
        if truncate:  # the rows past ``it`` go once this checkpoint's rows are ready to take their place
            self.run.recorder.truncate_after(it)
        wall = self._wall()
        for r in rows:
            r["wall_time"] = wall
        status = "finished" if it == self.settings.steps else "running"
        self.run.commit(it, rows, status, wall, self.model.state_dict(), self._optimizer_state(),
                        running=self._extra())
        seconds["write"] = time.perf_counter() - w0
        report = CheckpointReport(it, self.settings.steps, rows, seconds, loop_seconds)
        self.reports.append(report)
        self._reset_running()
        if status == "finished":
            self.stopped = True
        if self.progress:
            self._say(report.line(tuple(v for m, _ in self.plan.entries for v in m.values[:1])))
        self._since = time.perf_counter()
        return report

    def _rows(self, it: int, base: dict, seconds: dict) -> list[dict]:
        """One checkpoint's rows, built as ``sharpcomp train`` builds them (:mod:`sharpcomp.engine.evaluation`)."""
        s, d, t = self.settings, self.data, time.perf_counter()
        correct = None
        if self._due(it, s.eval_every):
            base["train_loss"], base["train_acc"], _ = evaluate(self.model, d.train_x, d.train_y, self.loss)
            if len(d.test_x):
                base["test_loss"], base["test_acc"], correct = evaluate(self.model, d.test_x, d.test_y, self.loss)
        if correct is None and "misclassified" in s.metrics.sample_sets:
            correct = evaluate(self.model, d.test_x, d.test_y, self.loss)[2]
        seconds["evaluation"] = time.perf_counter() - t
        t = time.perf_counter()
        sets = sample_sets(s, d, self.sample_idx, correct)
        metrics = compute_sample_metrics(self.model, sets, s)
        losses = sample_losses([self.model], [sets], self.loss)[0]
        seconds["metrics"] = time.perf_counter() - t
        return checkpoint_rows(self.model, s, self.plan, d, sets, self.loss_fn, base, it, metrics, losses,
                               due=self._due(it, s.metrics.flatness_every), fatal=self.fatal, seconds=seconds)

    def _diverge(self, it: int) -> None:
        """A loss that is not finite: the NaN row, status diverged (as ``sharpcomp train`` records it)."""
        epoch = it / self.steps_per_epoch if self.steps_per_epoch else math.nan
        self.run.diverge(it, epoch, self._wall(), self.model.state_dict(), self._optimizer_state())
        self.stopped = True
        self._say(f"the loss is not finite at iteration {it}: recorded as diverged; nothing more is recorded")
        return None

    def _wall(self) -> float:
        return time.perf_counter() - self._t0 + self.run.wall_offset

    def _optimizer_state(self) -> dict:
        return {} if self.optimizer is None else self.optimizer.state_dict()

    def _extra(self) -> dict | None:
        if not self.extra_state:
            return None
        return {"extra_state": {k: obj.state_dict() for k, obj in self.extra_state.items()}}

    def _say(self, text: str) -> None:
        print(f"sharpcomp: {self.folder}: {text}", file=sys.stderr, flush=True)

    # ---------------------------------------------------------------------------------------------
    # the end

    def close(self) -> None:
        """Release the folder (its lock); a resume point still in memory is written first."""
        self.run.close()

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, kind, exc, tb) -> None:
        if exc is not None and not isinstance(exc, KeyboardInterrupt):
            self.run.fail()  # Ctrl-C leaves the run running, resumable
        self.close()


def _check_sets(sets: tuple[str, ...], test) -> None:
    needs = [name for name in sets if name in ("test", "misclassified")]
    if needs and test is None:
        raise ConfigError(f"the sample set '{needs[0]}' needs test_samples")


def _check_extra_state(extra: Mapping) -> None:
    """ConfigError (one line) unless each object's ``state_dict()`` can be saved and safely loaded back."""
    for name, obj in extra.items():
        if not (callable(getattr(obj, "state_dict", None)) and callable(getattr(obj, "load_state_dict", None))):
            raise ConfigError(f"extra_state '{name}' has no state_dict() and load_state_dict()")
        buf = io.BytesIO()
        try:
            torch.save(obj.state_dict(), buf)
            buf.seek(0)
            torch.load(buf, weights_only=True)
        except Exception as exc:
            raise ConfigError(f"extra_state '{name}': its state_dict() holds what a safe load refuses "
                              f"({type(exc).__name__}); keep plain numbers, lists and tensors") from None
