"""Which iterations a run keeps its weights at (``save_every``), by arithmetic and without torch.

``save_every=N`` keeps iterations 0, N, 2N, ... below ``steps``, and ``steps``; ``save_every=[i, j, ...]``
keeps exactly those (each in [0, steps]). Membership, counts and the next kept iteration are computed, never
listed, so a schedule of millions of iterations costs nothing. The files themselves:
:mod:`sharpcomp.results.kept_weights`.
"""

from __future__ import annotations

import math


class KeptError(ValueError):
    """A bad ``save_every`` or an unusable kept-weights file; the message is one line for the user."""


def check_save_every(value, steps: int) -> int | tuple[int, ...] | None:
    """``save_every`` checked against a run of ``steps``: None, a positive N, or a sorted tuple of
    distinct iterations in [0, steps]."""
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 1:
            raise KeptError(f"save_every must be a positive number of iterations or a list of iterations, "
                            f"got {value}")
        return value
    if isinstance(value, (list, tuple)) and value and all(
            isinstance(v, int) and not isinstance(v, bool) for v in value):
        bad = [v for v in value if not 0 <= v <= steps]
        if bad:
            raise KeptError(f"save_every lists iteration {bad[0]}, outside the run's [0, {steps}]")
        return tuple(sorted(set(value)))
    raise KeptError(f"save_every must be null, a positive integer N or a list of iterations, got {value!r}")


def kept_count(save_every, steps: int) -> int:
    """How many iterations a run of ``steps`` keeps."""
    if save_every is None:
        return 0
    if isinstance(save_every, tuple):
        return len(save_every)
    return math.ceil(steps / save_every) + 1


def is_kept(save_every, steps: int, it: int) -> bool:
    """Whether iteration ``it`` is kept."""
    if save_every is None:
        return False
    if isinstance(save_every, tuple):
        return it in save_every
    return it == steps or (it % save_every == 0 and 0 <= it < steps)


def next_kept(save_every, steps: int, after: int) -> int | None:
    """The first kept iteration after ``after`` (None: none left)."""
    if save_every is None:
        return None
    if isinstance(save_every, tuple):
        return next((it for it in save_every if it > after), None)
    nxt = (after // save_every + 1) * save_every
    return nxt if nxt < steps else (steps if after < steps else None)
