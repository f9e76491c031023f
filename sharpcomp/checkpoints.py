"""The iterations at which a run checkpoints, by arithmetic: 0, every ``log_every``, and ``steps``.

The schedule is never written out as a list: membership, position and the checkpoints after a point are
computed from ``steps`` and ``log_every`` alone, so ``steps=10**12`` costs what ``steps=100`` costs.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass

MAX_STEPS = 10**12  # far beyond any run (the paper's is 5 * 10**5); no saved iteration is larger


@dataclass(frozen=True)
class CheckpointSchedule:
    """Checkpoints at 0, every ``log_every`` below ``steps``, and at ``steps`` (the end of the run).

    ``steps`` off the ``log_every`` grid is the end checkpoint of a shorter run (extended later).
    """

    steps: int
    log_every: int

    def _grid(self) -> range:
        return range(0, self.steps, self.log_every)

    def __len__(self) -> int:
        return len(self._grid()) + 1

    def __contains__(self, it: object) -> bool:
        return it == self.steps or it in self._grid()

    def __iter__(self) -> Iterator[int]:
        return itertools.chain(self._grid(), (self.steps,))

    def index(self, it: int) -> int:
        """The position of checkpoint ``it`` (0 for iteration 0); ValueError when ``it`` is not one."""
        if it == self.steps:
            return len(self._grid())
        return self._grid().index(it)

    def after(self, start: int) -> Iterator[int]:
        """The checkpoints past iteration ``start``, in order."""
        first = max(0, start // self.log_every + 1)
        return itertools.chain(range(first * self.log_every, self.steps, self.log_every),
                               (self.steps,) if self.steps > start else ())
