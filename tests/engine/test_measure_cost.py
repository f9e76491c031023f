"""The cost estimate printed early in a run whose flatness measures will dominate it: the counts it
projects from (checked against the checkpoint schedule listed out), the shares (against the run's time
written out by hand), the cadence it suggests, and the line a real run prints."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from sharpcomp.engine import cost
from sharpcomp.engine.cost import MeasureCost, flatness_checkpoints
from sharpcomp.engine.train import train
from tests.conftest import SHRINK, compose_train, random_images


@pytest.mark.parametrize("steps, log_every, every", [(12, 4, 1), (12, 4, 2), (13, 4, 2), (1000, 7, 3), (5, 10, 1),
                                                     (50000, 1000, 5), (50000, 1000, 7), (12, 4, 0)])
def test_counts_agree_with_the_schedule_listed_out(steps, log_every, every):
    checkpoints = sorted(set(range(0, steps, log_every)) | {steps})
    due = [c for i, c in enumerate(checkpoints) if (every and i % every == 0) or c == steps]
    assert flatness_checkpoints(steps, log_every, every) == (len(checkpoints), len(due))


def test_share_and_suggested_cadence_by_hand():
    """mlp4 at the quick scale: 50,000 steps, a checkpoint every 1,000 (51), 3 ms a step, 1.3 s for the
    rest of a checkpoint, 40 s of measures at each: 51 x 40 = 2,040 s of 150 + 66.3 + 2,040 s."""
    c = MeasureCost(50000, 1000, 1)
    share, total = c.share(1, 0.003, 1.3, 40.0)
    assert total == pytest.approx(150 + 51 * 1.3 + 51 * 40.0)
    assert share == pytest.approx(2040 / total)
    line = c.advice(0.003, 1.3, 40.0)
    assert line.startswith("the flatness measures will take about 40 s per checkpoint, 90% of the run (about 34 min "
                           "of 38 min)")
    # every 25th checkpoint: 0, 25, 50 = 3 of them: 120 s of 150 + 66.3 + 120 s, 36% > 25%; the 50th: 2, 80 s, 27%
    # still above; at the last checkpoint only (0): 40 s of 256.3 s, 16%
    assert line.endswith("metrics.flatness_every=0 (the last checkpoint only) makes it 16% (about 4.3 min)")
    line = c.advice(0.0003, 0.13, 40.0)  # ten times faster steps and checkpoints: 40 s of 61.6 s even at the last
    assert line.endswith("even metrics.flatness_every=0 (the last checkpoint only) leaves them 65%: switch fewer "
                         "measures on or give them cheaper settings")
    assert MeasureCost(50000, 1000, 0).advice(0.0003, 0.13, 100.0).endswith("switch fewer measures on or give "
                                                                           "them cheaper settings")
    line = c.advice(0.003, 1.3, 4.0)  # 204 s of 420 s: 49%, not dominating
    assert line is None
    assert MeasureCost(100, 10, 1).advice(0.001, 0.1, 1.0) is None  # 11 s of 12.2 s: dominating, but seconds
    line = c.advice(0.003, 1.3, 10.0)  # 510 s of 726 s: 70%; every 4th: 14 x 10 = 140 s of 356 s, 39%; 9th: 7, 70 s
    assert line.endswith("metrics.flatness_every=9 makes it 24% (about 4.8 min)")


def test_one_line_once_steps_and_measures_are_timed():
    c = MeasureCost(1000, 10, 1)
    assert c.after_checkpoint(0, 0.0, 1, 5.0, 1, 4.9) is None  # checkpoint 0: no step timed yet
    line = c.after_checkpoint(10, 0.01, 2, 10.0, 2, 9.8)
    assert line is not None and "metrics.flatness_every=" in line
    assert c.after_checkpoint(20, 0.02, 3, 15.0, 3, 14.7) is None  # said once


def test_a_run_whose_measures_dominate_says_so(tmp_path, capsys, monkeypatch):
    """A real run: its measures (switched on at every checkpoint) are made to dominate by lowering the
    threshold, and the line names the cadence that would bring them down."""
    monkeypatch.setattr(cost, "DOMINANT", 0.0)
    monkeypatch.setattr(cost, "MIN_SECONDS", 0.0)  # a tiny run: its measures take seconds
    monkeypatch.setattr(cost, "TARGET", 1e-9)  # no cadence reaches it: the line says so
    cfg = compose_train([*SHRINK, "model.width=0.05", "metrics.flatness.grad_norm={n: 16}"])
    OmegaConf.set_struct(cfg, False)
    assert train(cfg, tmp_path / "run", data=random_images(64, 32)).status == "finished"
    err = capsys.readouterr().err
    (line,) = [x for x in err.splitlines() if "flatness measures will take" in x]
    assert line.startswith("sharpcomp: the flatness measures will take about ")
    assert "even metrics.flatness_every=0 (the last checkpoint only)" in line
