"""Learning-rate schedules: the rate of every training step as a function of the step alone.

A schedule config (``conf/schedule/*.yaml``) names a shape and an optional linear warm-up of W steps. Step
t (0-based; the step that takes the weights from iteration t to t + 1) is taken at ``lr * factor(t)``:

    warm-up, t < W:      (t + 1) / W                                  (reaches 1 at t = W - 1)
    constant:            1
    cosine:              final + (1 - final) (1 + cos(pi u / T)) / 2  u = t - W, T = steps - W
    linear:              1 + (final - 1) min(u, T) / T
    step:                gamma ** (number of milestones m <= t)       (milestones: iterations, > W)

These are torch's schedulers stepped once per iteration: ``LinearLR(start_factor=1/W, total_iters=W - 1)``
for the warm-up, then ``CosineAnnealingLR(T_max=T, eta_min=final * lr)``, ``LinearLR(1, final, T)`` or
``MultiStepLR([m - W ...], gamma)``, joined by ``SequentialLR(milestones=[W])`` (the tests build that
loop from torch and compare). The rate is a function of t, so a resumed run takes exactly the rates an
uninterrupted one takes: the iteration saved in ``checkpoint.pt`` is the schedule's whole state.

``cosine`` and ``linear`` span the run's ``steps``: their run identity holds the horizon (``steps``), so a
longer run with such a schedule is another run, never an extension of a shorter one. ``constant`` and
``step`` do not depend on ``steps``. The learning rate at each checkpoint (``factor`` at the checkpoint's
iteration: the rate of the next step) is the column ``lr_now``.

Plain numbers only (no torch): the settings read this module before anything is loaded.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

NAMES = ("constant", "cosine", "linear", "step")
KEYS = {"constant": (), "cosine": ("final",), "linear": ("final",), "step": ("milestones", "gamma")}
SPAN_STEPS = ("cosine", "linear")  # shapes that stretch over the run's steps
DEFAULT = {"name": "constant", "warmup": 0}  # the study's schedule: runs under it keep their identity


class ScheduleError(ValueError):
    """A schedule config no run can use; the message is one line for the user."""


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def check_schedule(sched: Mapping, steps: int) -> dict:
    """The schedule config, checked against a run of ``steps`` steps; ScheduleError (one line) otherwise."""
    if not isinstance(sched, Mapping):
        raise ScheduleError(f"schedule must be a mapping, got {sched!r}")
    sched = dict(sched)
    name = sched.get("name")
    if name not in NAMES:
        raise ScheduleError(f"unknown schedule {name!r} (choose from {', '.join(NAMES)})")
    unknown = sorted(set(sched) - {"name", "warmup", *KEYS[name]})
    if unknown:
        raise ScheduleError(f"schedule={name} has no key '{unknown[0]}' "
                            f"(keys: {', '.join(('warmup', *KEYS[name]))})")
    warmup = sched.get("warmup", 0)
    if not _is_int(warmup) or warmup < 0:
        raise ScheduleError(f"schedule.warmup must be an integer >= 0, got {warmup!r}")
    if warmup and warmup >= steps:
        raise ScheduleError(f"schedule.warmup={warmup} is not shorter than the run (steps={steps})")
    if name in SPAN_STEPS:
        final = sched.get("final", 0.0)
        if not _is_number(final) or not 0 <= final <= 1:
            raise ScheduleError(f"schedule.final must be a number in [0, 1] (a fraction of lr), got {final!r}")
    if name == "step":
        _check_step(sched, warmup)
    return sched


def _check_step(sched: dict, warmup: int) -> None:
    gamma, milestones = sched.get("gamma", 0.1), sched.get("milestones")
    if not _is_number(gamma) or not gamma > 0:
        raise ScheduleError(f"schedule.gamma must be a number > 0, got {gamma!r}")
    if not isinstance(milestones, (list, tuple)) or not milestones:
        raise ScheduleError("schedule=step needs schedule.milestones=[ITERATION,...] (where the rate drops)")
    if not all(_is_int(m) for m in milestones) or list(milestones) != sorted(set(milestones)):
        raise ScheduleError(f"schedule.milestones must be increasing integers, got {list(milestones)}")
    if milestones[0] <= warmup:
        raise ScheduleError(f"schedule.milestones must come after the warm-up (warmup={warmup}), "
                            f"got {milestones[0]}")


def factor(sched: Mapping, steps: int, t: int) -> float:
    """The learning rate of step ``t`` as a multiple of ``lr`` (module docstring)."""
    name, warmup = sched["name"], sched.get("warmup", 0)
    if t < warmup:
        return (t + 1) / warmup
    if name == "constant":
        return 1.0
    if name == "step":
        drops = sum(1 for m in sched["milestones"] if m <= t)
        return float(sched.get("gamma", 0.1)) ** drops
    u, span, final = t - warmup, steps - warmup, float(sched.get("final", 0.0))
    if name == "cosine":
        return final + (1 - final) * (1 + math.cos(math.pi * min(u, span) / span)) / 2
    return 1 + (final - 1) * min(u, span) / span


def learning_rate(sched: Mapping, lr: float, steps: int, t: int) -> float:
    """The learning rate of step ``t``: ``lr * factor``, and exactly ``lr`` where the factor is 1."""
    f = factor(sched, steps, t)
    return lr if f == 1.0 else lr * f


def is_constant(sched: Mapping) -> bool:
    """Whether every step takes ``lr`` (the study's schedule)."""
    return sched.get("name") == "constant" and not sched.get("warmup", 0)


def identity_view(sched: Mapping, steps: int) -> dict | None:
    """What a run's identity holds of its schedule: nothing for the constant rate (runs made before
    schedules existed keep their ids), else the schedule, with its horizon where it spans the steps."""
    if is_constant(sched):
        return None
    view = dict(sched)
    if view["name"] in SPAN_STEPS:
        view["horizon"] = int(steps)
    return view
