"""The checkpoint schedule by arithmetic: equal to the list it stands for (brute force over every small case),
and as cheap for 10**12 steps as for 100 (a bounded process); more steps than any checkpoint can record
are refused with one line."""

from __future__ import annotations

import pytest

from sharpcomp.checkpoints import MAX_STEPS, CheckpointSchedule
from sharpcomp.settings import ConfigError, settings
from tests.conftest import compose_train
from tests.hostile import python


def test_the_schedule_is_the_list_it_stands_for():
    for steps in range(0, 40):
        for every in range(1, 13):
            listed = sorted(set(range(0, steps, every)) | {steps})  # the schedule written out
            schedule = CheckpointSchedule(steps, every)
            assert list(schedule) == listed and len(schedule) == len(listed)
            assert [schedule.index(c) for c in listed] == list(range(len(listed)))
            for it in range(-3, steps + 4):
                assert (it in schedule) == (it in listed)
                assert list(schedule.after(it)) == [c for c in listed if c > it], (steps, every, it)
            with pytest.raises(ValueError):
                schedule.index(steps + 1)


def test_the_cadences_follow_the_schedule():
    s = settings(compose_train(["steps=10", "log_every=3", "eval_every=2", "metrics.flatness_every=3"]))
    listed = [0, 3, 6, 9, 10]
    assert [c for c in listed if s.whole_set_due(c)] == [0, 6, 10]  # positions 0, 2 and the end
    assert [c for c in listed if s.flatness_due(c)] == [0, 9, 10]  # positions 0, 3 and the end


HUGE = """
from sharpcomp.settings import settings
from tests.conftest import compose_train
s = settings(compose_train(["steps=1000000000000", "log_every=1", "eval_every=7", "metrics.flatness_every=5"]))
due = s.checkpoints.after(10**12 - 3)
assert list(due) == [10**12 - 2, 10**12 - 1, 10**12]
assert len(s.checkpoints) == 10**12 + 1 and s.whole_set_due(10**12) and s.whole_set_due(7 * 10**10)
assert s.flatness_due(5 * 10**11) and not s.flatness_due(5 * 10**11 + 1)
print("ok")
"""


def test_a_schedule_of_a_trillion_steps_costs_nothing(tmp_path):
    """The settings of ``steps=10**12`` (the most a checkpoint may record) with a checkpoint every step: in
    a process of 3 GiB; a schedule that listed its checkpoints would need terabytes."""
    from tests.conftest import REPO

    res = python(HUGE, REPO, timeout=120)
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr[-2000:]


@pytest.mark.parametrize("steps", ["1e14", str(MAX_STEPS + 1)])
def test_more_steps_than_a_checkpoint_may_record_are_refused(steps):
    with pytest.raises(ConfigError, match=r"steps must be at most 10\*\*12"):
        settings(compose_train([f"steps={steps}"]))
