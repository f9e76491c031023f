"""What the flatness measures will cost a run, said once, early, when they will dominate it.

The training loop times its SGD steps, its checkpoints and, within them, the measures switched on under
``metrics.flatness``. At the first checkpoint after training has started (one interval of steps and one
computation of the measures behind it), :class:`MeasureCost` projects the whole run from those times:
steps x (seconds per step) + checkpoints x (seconds of the rest of a checkpoint) + flatness checkpoints x
(seconds of the measures). When the measures are more than :data:`DOMINANT` of it (and a minute or more),
one line says so, with the ``metrics.flatness_every`` that brings them to :data:`TARGET` or below::

    sharpcomp: the flatness measures will take about 33 s per checkpoint, 71% of the run (about 28 min of
    39 min); metrics.flatness_every=10 makes it 23% (about 15 min)
"""

from __future__ import annotations

import math

# The measures dominate a run above this share of its time; a cadence is suggested that brings them to TARGET.
# A run whose measures take less than MIN_SECONDS in all is not worth a line.
DOMINANT = 0.5
TARGET = 0.25
MIN_SECONDS = 60.0


def flatness_checkpoints(steps: int, log_every: int, every: int) -> tuple[int, int]:
    """(checkpoints, flatness checkpoints) of a run: iteration 0, every ``log_every``, and ``steps``; the
    measures at every ``every``-th checkpoint and at ``steps`` (``every`` 0: at ``steps`` only). Counted,
    never listed."""
    last = -(-steps // log_every)  # the index of the checkpoint at ``steps``
    due = 1 if every == 0 else last // every + 1 + (1 if last % every else 0)
    return last + 1, due


def duration(seconds: float) -> str:
    """``seconds`` as a person reads a duration (42 s, 3.5 min, 2.1 h)."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.2g} min" if seconds < 600 else f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.2g} h"


class MeasureCost:
    """Projects a run's time from its first interval and says when the flatness measures dominate it."""

    def __init__(self, steps: int, log_every: int, flatness_every: int):
        self.steps, self.log_every, self.every = steps, log_every, flatness_every
        self.done = False
        self.checkpoints, self.seconds, self.measured_at = 0, 0.0, set()

    def measured(self, it: int, seconds: float) -> None:
        """Checkpoint ``it``'s measures took ``seconds`` (of one run; an ensemble's runs add up)."""
        self.seconds += seconds
        self.measured_at.add(it)

    def line(self, trained_steps: int, train_seconds: float, checkpoint_seconds: float) -> str | None:
        """At the end of a checkpoint, given the loop's steps and seconds so far: the line to print, once."""
        self.checkpoints += 1
        return self.after_checkpoint(trained_steps, train_seconds, self.checkpoints, checkpoint_seconds,
                                     len(self.measured_at), self.seconds)

    def share(self, every: int, per_step: float, per_checkpoint: float, per_measures: float) -> tuple[float, float]:
        """(the measures' share of the run, the run's seconds) at flatness cadence ``every``."""
        checkpoints, due = flatness_checkpoints(self.steps, self.log_every, every)
        measures = due * per_measures
        total = self.steps * per_step + checkpoints * per_checkpoint + measures
        return (measures / total if total > 0 else 0.0), total

    def advice(self, per_step: float, per_checkpoint: float, per_measures: float) -> str | None:
        """The line to print, or None when the measures will not dominate the run."""
        share, total = self.share(self.every, per_step, per_checkpoint, per_measures)
        if share <= DOMINANT or share * total < MIN_SECONDS:
            return None
        text = (f"the flatness measures will take about {duration(per_measures)} per checkpoint, {share:.0%} of the "
                f"run (about {duration(share * total)} of {duration(total)})")
        if self.every == 0:  # at the last checkpoint only already
            return f"{text}; switch fewer measures on or give them cheaper settings"
        last = -(-self.steps // self.log_every)
        for every in range(self.every + 1, last + 1):
            new_share, new_total = self.share(every, per_step, per_checkpoint, per_measures)
            if new_share <= TARGET:
                return f"{text}; metrics.flatness_every={every} makes it {new_share:.0%} (about {duration(new_total)})"
        low, low_total = self.share(0, per_step, per_checkpoint, per_measures)
        if low <= TARGET:
            return (f"{text}; metrics.flatness_every=0 (the last checkpoint only) makes it {low:.0%} (about "
                    f"{duration(low_total)})")
        return (f"{text}; even metrics.flatness_every=0 (the last checkpoint only) leaves them {low:.0%}: switch "
                f"fewer measures on or give them cheaper settings")

    def after_checkpoint(self, trained_steps: int, train_seconds: float, checkpoints: int, checkpoint_seconds: float,
                         measured: int, measure_seconds: float) -> str | None:
        """At a checkpoint: the line to print, once, as soon as steps and measures have both been timed."""
        if self.done or trained_steps <= 0 or measured <= 0 or checkpoints <= 0:
            return None
        self.done = True
        per_measures = measure_seconds / measured
        per_checkpoint = max(checkpoint_seconds - measure_seconds, 0.0) / checkpoints
        line = self.advice(train_seconds / trained_steps, per_checkpoint, per_measures)
        return None if line is None or not math.isfinite(per_measures) else line
