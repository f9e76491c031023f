"""The training engine: one loop that trains a list of runs in lockstep (a single run is a list of one).

A run lives in one output folder (:mod:`sharpcomp.results.run_state`): ``metrics.parquet`` with one row per
(checkpoint, sample set), appended at every checkpoint (``records``), and ``checkpoint.pt``, the
resume point, written after that checkpoint's rows. The same command resumes.

The loop (:class:`_Loop`) owns what every run shares -- the checkpoint schedule (iteration 0, every
``log_every``, and ``steps``), the epoch loop, the running losses, divergence, the progress bar and
summary line -- and drives a stepper (:mod:`sharpcomp.engine.steppers`), which owns the networks: a plain
module and its optimizer for one run, or k stacked networks for an ensemble (:mod:`sharpcomp.engine.ensemble`).

Data order and the train sample set are functions of each run's seed alone (``data``), so a resumed
run sees exactly the batches an uninterrupted one would: no random state needs saving. The training
loop never waits for the device: indices are gathered there, running losses are summed there, and
the host reads them once per checkpoint.

At a checkpoint, a run whose running loss (or whole-set train loss) is not finite is recorded
``diverged`` (its last row holds NaN) and dropped; the others go on. Any other exception marks the
runs ``failed``; Ctrl-C leaves them ``running``, resumable.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from sharpcomp.data.datasets import Dataset, known_shape, load_from_config
from sharpcomp.data.order import epoch_permutation, steps_per_epoch, train_sample_indices
from sharpcomp.engine.evaluation import checkpoint_rows, sample_losses, sample_sets
from sharpcomp.engine.steppers import PlainStepper
from sharpcomp.losses import make_loss
from sharpcomp.models import ModelError, build_from_config, build_model, check_buildable
from sharpcomp.results.loggers import Logger, make_logger
from sharpcomp.results.records import RecordError
from sharpcomp.results.run_state import CHECKPOINT_FILE, RunResult, RunState, identity_columns, read_checkpoint
from sharpcomp.settings import BUILTIN_MODELS, ConfigError, Settings, run_identity, select_device, settings

# Timings of the last loop (seconds), for benchmarks: train, checkpoint, eval, metrics, write.
LAST_TIMINGS: dict[str, float] = {}


# ---------------------------------------------------------------------------------------------
# runtime, data, networks


def load_data(s: Settings, device: torch.device) -> Dataset:
    """The run's dataset, loaded (or read from the cache) onto ``device``."""
    return load_from_config(s.data, s.raw["data_dir"], s.raw["cache_dir"], device=device)


def build(s: Settings, data: Dataset, device: torch.device) -> nn.Module:
    """The run's network (seeded initial weights) on ``device``.

    ConfigError (one line) when the model config cannot give one that fits the data and the loss.
    """
    try:
        return build_from_config(s.model, s.num_outputs(data.num_classes), data.input_shape, seed=s.seed,
                                 device=device, num_classes=data.num_classes)
    except ModelError as exc:
        raise ConfigError(str(exc)) from None


def check_layer(s: Settings, model: nn.Module) -> None:
    """ConfigError unless ``metrics.layer`` names a submodule of ``model``."""
    names = [n for n, _ in model.named_modules() if n]
    if s.metrics.layer is not None and s.metrics.layer not in names:
        raise ConfigError(f"metrics.layer '{s.metrics.layer}' is not a layer of {s.model['name']} "
                          f"(choose from {', '.join(names)})")


def check_config(cfg) -> Settings:
    """Every check that needs no data (one line each).

    The settings, and the network built on the meta device (without data, for a dataset of known
    shape): its arguments, output shape and representation layer.
    """
    s = settings(cfg)
    shape, classes = known_shape(s.data)
    try:
        model = check_buildable(s.model, s.num_outputs(classes or 10), shape, classes)
    except ModelError as exc:
        raise ConfigError(str(exc)) from None
    if s.metrics.layer is not None and model is None and s.model["name"] in BUILTIN_MODELS:
        with torch.device("meta"):
            model = build_model(s.model["name"], 10, s.model.get("width", 1.0))
    if s.metrics.layer is not None and model is not None:
        check_layer(s, model)
    if model is not None:
        check_symmetry(s, model)
    return s


def check_symmetry(s: Settings, model: nn.Module) -> None:
    """Check the network for the measures on the quotient by the rescaling symmetry.

    ConfigError when the network cannot be traced; one line naming the modules the analysis cannot see
    through (their units count as without symmetry).
    """
    on = [k for k in ("quotient_trace", "quotient_worst") if s.metrics.flatness.get(k) is not None]
    if not on:
        return
    from sharpcomp.measures.symmetry_graph import TraceError, analyse

    try:
        _, unknown = analyse(model)
    except TraceError as exc:
        raise ConfigError(f"metrics.flatness.{on[0]}: {exc}") from None
    if unknown:
        print(f"sharpcomp: metrics.flatness.{on[0]}: the rescaling symmetry analysis cannot see through "
              f"{', '.join(unknown)}; their units count as without symmetry", file=sys.stderr, flush=True)


def prepare_runtime(s: Settings, data: Dataset | None) -> tuple[torch.device, Dataset]:
    """Device, threads, determinism and training precision as the settings say.

    Returns the device and the dataset loaded onto (or moved to) it.
    """
    device = select_device(s.device)
    if s.threads:
        torch.set_num_threads(s.threads)
    if s.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
    if device.type == "cuda" and s.allow_tf32 is not None:
        torch.backends.cuda.matmul.allow_tf32 = s.allow_tf32
        torch.backends.cudnn.allow_tf32 = s.allow_tf32
    return device, load_data(s, device) if data is None else prepare_runtime_data(data, device)


def prepare_runtime_data(data: Dataset, device: torch.device) -> Dataset:
    """``data`` with its tensors on ``device``."""
    moved = (t.to(device) for t in (data.train_x, data.train_y, data.test_x, data.test_y))
    return Dataset(data.name, *moved, data.num_classes, data.source)


def check_writable(run_dir: Path) -> None:
    """Create ``run_dir`` and prove it writable, or raise ConfigError with one line."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise ConfigError(f"cannot write to output folder {run_dir}: {exc.strerror or exc}") from None


@dataclass
class Member:
    """A run in the loop: its folder state, fixed train sample indices and loss function."""

    run: RunState
    settings: Settings
    sample_idx: torch.Tensor
    loss_fn: Callable
    logger: Logger = field(default_factory=Logger)

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
    members: list[Member] = []
    try:
        for s, d in zip(all_settings, run_dirs):
            settings(s.raw, n_train=len(data.train_x))
            n_out = s.num_outputs(data.num_classes)
            run_id = run_identity(s)["run_id"]
            try:
                state = RunState(s, Path(d), identity_columns(s, run_id, n_out, data.source, device)).open(device)
            except (ConfigError, RecordError) as exc:
                if blocked is None:
                    raise
                blocked.append((Path(d), exc))
                continue
            idx = train_sample_indices(s.seed, len(data.train_x), s.metrics.n).to(device)
            logger = Logger() if state.result is not None else make_logger(
                s.raw.get("logger"), Path(d), run_id, {**run_identity(s)["settings"], "steps": s.steps})
            members.append(Member(state, s, idx, make_loss(s.loss, n_out), logger))
    except BaseException:
        for m in members:
            m.run.close()
        raise
    for m in members:
        if m.run.result is None and not m.run.fresh:
            print(f"sharpcomp: {m.run.run_dir}: resumed at iteration {m.run.start}", file=sys.stderr, flush=True)
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
        state.get("status") == "diverged" or int(state.get("iteration", -1)) >= s.steps)


def _open_ended(all_settings: Sequence[Settings], run_dirs: Sequence) -> list[Member]:
    """Open runs that have ended, without their data: each says so in one line."""
    members: list[Member] = []
    try:
        for s, d in zip(all_settings, run_dirs):
            run_id = run_identity(s)["run_id"]
            state = RunState(s, Path(d), {"run_id": run_id}).open(torch.device("cpu"))
            members.append(Member(state, s, torch.empty(0, dtype=torch.long), make_loss(s.loss, 1)))
            if state.result is not None:
                print(f"sharpcomp: {d}: {state.result.status} at iteration {state.start}; nothing to train",
                      file=sys.stderr, flush=True)
    except BaseException:
        for m in members:
            m.run.close()
        raise
    return members


def note_small_sets(s: Settings, data: Dataset) -> None:
    """One line when ``metrics.n`` exceeds a set its sample sets are drawn from (the sets are cut)."""
    sizes = {"train": len(data.train_x), "test": len(data.test_x)}
    cut = [f"{name} {sizes[name]}" for name in s.metrics.sample_sets if s.metrics.n > sizes.get(name, s.metrics.n)]
    if cut:
        print(f"sharpcomp: metrics.n={s.metrics.n} is more than the data holds; sample sets cut to "
              f"{', '.join(cut)} samples", file=sys.stderr, flush=True)


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
    """Trains ``members`` (all at the same starting point) with ``stepper`` to ``steps``."""

    def __init__(self, members: list[Member], stepper, data: Dataset, callback):
        self.members, self.stepper, self.data, self.callback = list(members), stepper, data, callback
        self.s = members[0].settings
        self.spe = steps_per_epoch(len(data.train_x), self.s.batch)
        self.device = data.train_x.device
        self.t0 = time.perf_counter()
        self.timing = dict.fromkeys(("train", "checkpoint", "eval", "metrics", "write"), 0.0)
        self._reset_running()
        self._carry_running()
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

    def run(self) -> None:
        s, start = self.s, self.members[0].run.start
        try:
            if self.members[0].run.fresh:
                self.checkpoint(0)
            due = iter([c for c in s.checkpoints if c > start])
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
        whole = s.whole_set_due(it)
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
        new_rows = {}
        for pos, (j, m) in enumerate(zip(keep, self.members)):
            base = {"iteration": it, "epoch": it / self.spe, "train_loss_running": run_losses[j]}
            if whole:
                (base["train_loss"], base["train_acc"], _), (base["test_loss"], base["test_acc"], _) = \
                    train_evals[j], test_evals[j]
            new_rows[m.run.run_dir] = self._commit(pos, m, it, base, sets[pos], metrics[pos], losses[pos], models[pos],
                                                   self._running_state(j, it))
        self.stepper.train()
        self._reset_running()
        self.timing["checkpoint"] += time.perf_counter() - c0
        if it == s.steps:
            for m in self.members:
                m.run.result = self._result(m, "finished", it)
            self.members = []
        if new_rows:
            _summary(self.bar, it, s.steps, new_rows)
        if self.callback is not None:
            self.callback(it, new_rows)

    def _commit(self, pos: int, m: Member, it: int, base: dict, sets: dict, metrics: dict, losses: dict,
                model: nn.Module, running: dict | None = None) -> list:
        m0 = time.perf_counter()
        rows = checkpoint_rows(model, m.settings, self.data, sets, m.loss_fn, base, it, metrics, losses)
        self.timing["metrics"] += time.perf_counter() - m0
        for r in rows:
            r["wall_time"] = self.wall(m)
        w0 = time.perf_counter()
        status = "finished" if it == self.s.steps else "running"
        m.run.commit(it, rows, status, self.wall(m), *self.stepper.states(pos), running=running)
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


def train_members(members: list[Member], data: Dataset, make_stepper, callback=None) -> None:
    """Train every group of ``members`` (:func:`by_start`) with ``make_stepper(group)``."""
    for group in by_start(members):
        _Loop(group, make_stepper(group), data, callback).run()


def close_all(members: Sequence[Member]) -> None:
    """Close (unlock) every member's run folder."""
    for m in members:
        m.logger.close()
        m.run.close()


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


def stored_settings(cfg, target: str | None = None) -> Settings:
    """The settings of a config read from a run folder (a checkpoint's), made safe.

    Nothing in it chooses code (:func:`sharpcomp.models.stored_model_config`; ``target``: the user's own model
    ``_target_``, named on the command line), and the data and cache folders are this machine's
    (the environment's), never the stored ones. ConfigError (one line) otherwise.
    """
    from sharpcomp.models import code_keys, stored_model_config

    if not isinstance(cfg, dict):
        raise ConfigError("the stored config is not a mapping")
    bad = code_keys({k: v for k, v in cfg.items() if k != "model"}, "config")
    if bad:
        raise ConfigError(f"refusing the stored config: {bad} would choose code; a stored config never does")
    try:
        model = stored_model_config(cfg.get("model"), target)
    except ModelError as exc:
        raise ConfigError(str(exc)) from None
    here = {k: os.environ.get(f"SHARPCOMP_{k.split('_')[0].upper()}") for k in ("data_dir", "cache_dir")}
    return settings({**cfg, "model": model, **here})  # as conf/train.yaml reads them: the environment


@dataclass
class LoadedRun:
    """A run folder's trained network and what it was trained with (:func:`load_run`)."""

    model: nn.Module  # the network at ``iteration``, in eval mode, on the CPU
    settings: Settings  # the run's checked settings (``settings.raw``: its complete config)
    iteration: int  # the iteration of the saved state
    data: Dataset  # the run's dataset (train and test tensors, number of classes, source)
    sample_x: torch.Tensor  # the train sample set the metrics are computed on (``metrics.n`` points)
    sample_y: torch.Tensor
    loss_fn: Callable  # the training loss, as a function of (outputs, labels)

    @property
    def config(self) -> dict:
        """The run's complete config (a plain dict)."""
        return self.settings.raw


def load_run(run_dir: str | Path, *, data: Dataset | None = None, target: str | None = None) -> LoadedRun:
    """Load the network a run folder holds, with its settings, dataset, train sample set and loss.

    The network is the run's last saved state (its ``checkpoint.pt``).

    ``data`` skips loading the dataset (it must be the one the run was trained on). FileNotFoundError
    when the folder has no checkpoint; ConfigError for a file that is not a sharpcomp checkpoint, or a
    stored config that would choose code (:func:`stored_settings`; ``target``: the user's own model
    ``_target_``, named on the command line, for a network that is not built in).
    """
    from sharpcomp.results.run_state import check_members

    check_members(Path(run_dir))
    path = Path(run_dir) / CHECKPOINT_FILE
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}")
    state = read_checkpoint(path)
    s = stored_settings(state.get("config", {}), target)
    cpu = torch.device("cpu")
    data = load_data(s, cpu) if data is None else prepare_runtime_data(data, cpu)
    model = build(s, data, cpu)
    model.load_state_dict(state["model_state"])
    model.eval()
    idx = train_sample_indices(s.seed, len(data.train_x), s.metrics.n)
    return LoadedRun(model, s, int(state["iteration"]), data, data.train_x[idx], data.train_y[idx],
                     make_loss(s.loss, s.num_outputs(data.num_classes)))
