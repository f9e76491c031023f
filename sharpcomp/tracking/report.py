"""What one checkpoint of a tracker recorded, and what it cost the training loop around it."""

from __future__ import annotations

import math
from dataclasses import dataclass, field


@dataclass
class CheckpointReport:
    """One checkpoint of a :class:`~sharpcomp.tracking.tracker.Tracker`.

    ``rows``: the rows appended (one per sample set, as ``sharpcomp train`` writes them); ``seconds``: the
    tracker's time by part (``evaluation``: whole-set losses and accuracies; ``metrics``: the study's metrics
    on the sample sets; each measure by its name; ``write``: the records and the resume point);
    ``loop_seconds``: the loop's own time since the previous checkpoint (the tracker's left out).
    """

    iteration: int
    steps: int
    rows: list[dict]
    seconds: dict[str, float] = field(default_factory=dict)
    loop_seconds: float = math.nan

    @property
    def total(self) -> float:
        """The checkpoint's time, in seconds."""
        return float(sum(self.seconds.values()))

    @property
    def cost(self) -> float:
        """The checkpoint's time as a fraction of the loop's own time since the previous one (NaN at the first)."""
        return self.total / self.loop_seconds if self.loop_seconds > 0 else math.nan

    @property
    def train_row(self) -> dict:
        """The row of the train sample set (the measures' row), or the first row."""
        return next((r for r in self.rows if r.get("sample_set") == "train"), self.rows[0] if self.rows else {})

    def scalars(self) -> dict[str, float]:
        """The finite numbers of the train row and the whole-set columns, by column (for a logger)."""
        row = self.train_row
        skip = ("iteration", "epoch", "wall_time", "n_samples", "lr", "batch", "seed", "width", "outputs")
        return {k: float(v) for k, v in row.items() if k not in skip and isinstance(v, (int, float))
                and not isinstance(v, bool) and math.isfinite(v)}

    def line(self, measures: tuple[str, ...] = ()) -> str:
        """One line for a person watching: where the run is, a few numbers, and what the checkpoint cost."""
        row = self.train_row
        shown = []
        for key, label in (("train_loss_running", "loss(run)"), ("test_acc", "test_acc")):
            if _finite(row.get(key)):
                shown.append(f"{label}={row[key]:.4g}")
        if _finite(row.get("sharpness")):
            shown.append(f"sqrtS={math.sqrt(max(row['sharpness'], 0.0)):.4g}")
        shown += [f"{m}={row[m]:.4g}" for m in measures if _finite(row.get(m))]
        parts = ", ".join(f"{k} {v:.2f}" for k, v in self.seconds.items() if v >= 0.005)
        cost = "" if math.isnan(self.cost) else f" = {self.cost:.0%} of the loop's {self.loop_seconds:.1f} s"
        return (f"[{self.iteration:>7d}/{self.steps}] {' '.join(shown)}; checkpoint {self.total:.2f} s"
                f"{f' ({parts})' if parts else ''}{cost}")


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
