"""sharpcomp.schedule: every schedule's rate at every step against torch's own schedulers stepped once per
iteration (SequentialLR of a LinearLR warm-up and CosineAnnealingLR / LinearLR / MultiStepLR), and the
checks of a schedule config."""

from __future__ import annotations

import pytest
import torch
from torch.optim import lr_scheduler as sched

from sharpcomp.schedule import ScheduleError, check_schedule, identity_view, learning_rate

LR, STEPS = 0.1, 60


def torch_rates(config: dict, lr: float = LR, steps: int = STEPS) -> list[float]:
    """The rate of each step of a loop built from torch.optim.lr_scheduler alone (and of the point after the
    last step: the rate at the final checkpoint)."""
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=lr)
    w, name = config.get("warmup", 0), config["name"]
    rest = steps - w
    main = {
        "constant": lambda: sched.ConstantLR(opt, factor=1.0, total_iters=0),
        "cosine": lambda: sched.CosineAnnealingLR(opt, T_max=rest, eta_min=config.get("final", 0.0) * lr),
        "linear": lambda: sched.LinearLR(opt, start_factor=1.0, end_factor=config.get("final", 0.0) or 1e-300,
                                         total_iters=rest),
        "step": lambda: sched.MultiStepLR(opt, milestones=[m - w for m in config.get("milestones", [])],
                                          gamma=config.get("gamma", 0.1)),
    }[name]
    if w:
        warm = sched.LinearLR(opt, start_factor=1 / w, end_factor=1.0, total_iters=w - 1)
        scheduler = sched.SequentialLR(opt, [warm, main()], milestones=[w])
    else:
        scheduler = main()
    rates = []
    for _ in range(steps + 1):
        rates.append(opt.param_groups[0]["lr"])
        opt.step()
        scheduler.step()
    return rates


CASES = [
    {"name": "constant", "warmup": 0},
    {"name": "constant", "warmup": 7},
    {"name": "cosine", "warmup": 0, "final": 0.0},
    {"name": "cosine", "warmup": 10, "final": 0.0},
    {"name": "cosine", "warmup": 3, "final": 0.1},
    {"name": "linear", "warmup": 0, "final": 0.0},
    {"name": "linear", "warmup": 5, "final": 0.25},
    {"name": "step", "warmup": 0, "milestones": [20, 45], "gamma": 0.1},
    {"name": "step", "warmup": 8, "milestones": [9, 30], "gamma": 0.5},
]


@pytest.mark.parametrize("config", CASES, ids=lambda c: "-".join(f"{v}" for v in c.values()))
def test_rates_equal_torch_schedulers(config):
    check_schedule(config, STEPS)
    want = torch_rates(config)
    got = [learning_rate(config, LR, STEPS, t) for t in range(STEPS + 1)]
    assert got == pytest.approx(want, rel=1e-12, abs=1e-15)
    if config["name"] != "constant":
        assert len({round(r, 12) for r in got}) >= 3  # the rate moves: the comparison can fail


def test_constant_rate_is_lr_exactly():
    assert all(learning_rate({"name": "constant", "warmup": 0}, 0.1, 100, t) == 0.1 for t in range(101))
    assert identity_view({"name": "constant", "warmup": 0}, 100) is None
    assert identity_view({"name": "cosine", "warmup": 0, "final": 0.0}, 100)["horizon"] == 100
    assert "horizon" not in identity_view({"name": "step", "warmup": 0, "milestones": [5], "gamma": 0.1}, 100)


BAD = [
    ({"name": "exponential"}, "unknown schedule 'exponential'"),
    ({"name": "cosine", "warmup": 100, "final": 0.0}, "schedule.warmup=100 is not shorter than the run (steps=60)"),
    ({"name": "constant", "warmup": -1}, "schedule.warmup must be an integer >= 0"),
    ({"name": "constant", "warmup": 2.5}, "schedule.warmup must be an integer >= 0"),
    ({"name": "cosine", "warmup": 0, "final": 2.0}, "schedule.final must be a number in [0, 1]"),
    ({"name": "step", "warmup": 0, "milestones": [], "gamma": 0.1}, "needs schedule.milestones"),
    ({"name": "step", "warmup": 0, "milestones": [30, 20], "gamma": 0.1}, "increasing integers"),
    ({"name": "step", "warmup": 10, "milestones": [5], "gamma": 0.1}, "after the warm-up"),
    ({"name": "step", "warmup": 0, "milestones": [5], "gamma": 0.0}, "schedule.gamma must be a number > 0"),
    ({"name": "constant", "warmup": 0, "final": 0.5}, "schedule=constant has no key 'final'"),
]


@pytest.mark.parametrize("config,message", BAD)
def test_bad_schedules_are_refused_with_one_line(config, message):
    with pytest.raises(ScheduleError) as err:
        check_schedule(config, STEPS)
    assert message in str(err.value) and "\n" not in str(err.value)
