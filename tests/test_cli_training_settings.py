"""The command line's optimiser, schedule and weight-keeping settings: bad input is one line and exit 2
before anything loads; new settings at their defaults leave run folders and ids as they were."""

from __future__ import annotations

import pytest

from sharpcomp.cli import main
from sharpcomp.overrides import implied_custom_optim
from sharpcomp.settings import compose, run_identity, settings
from tests.conftest import TINY

BAD = [
    (["optim=lion"], "unknown optim 'lion' (choose from adam, adamw, custom, sam, sgd)"),
    (["schedule=exponential"], "unknown schedule 'exponential' (choose from constant, cosine, linear, step)"),
    (["optim._target_=collections.OrderedDict"], "optim._target_ 'collections.OrderedDict' is not an optimiser"),
    (["optim._target_=nowhere.Adam"], "cannot import optim._target_ 'nowhere.Adam'"),
    (["optim.weight_decay=-1e-4"], "optim.weight_decay must be >= 0, got optim.weight_decay=-0.0001"),
    (["optim.momentum=1.0"], "optim.momentum must be in [0, 1)"),
    (["optim.momentum=-0.5"], "optim.momentum must be in [0, 1), got optim.momentum=-0.5"),
    (["optim.nesterov=true"], "optim.nesterov=true needs optim.momentum > 0"),
    (["optim=adamw", "optim.betas=[0.9,1.5]"], "optim.betas must be in [0, 1), got optim.betas=1.5"),
    (["+optim.alpha=0.9"], "optim=sgd has no setting 'optim.alpha'"),
    (["optim=sam", "optim.base=lion"], "unknown optim.base 'lion'"),
    (["optim._target_=torch.optim.RMSprop", "+optim.colour=red"], "torch.optim.RMSprop(lr=0.1, colour='red') failed"),
    (["schedule=cosine", "schedule.warmup=4"], "schedule.warmup=4 is not shorter than the run (steps=4)"),
    (["schedule=step"], "schedule=step needs schedule.milestones"),
    (["save_every=0"], "save_every must be a positive number of iterations"),
    (["save_every=[0,9]"], "save_every lists iteration 9, outside the run's [0, 4]"),
    (["model.width=1", "steps=100000", "save_every=1"], "save_every=1 would keep 100,001 copies of the weights"),
]


@pytest.mark.parametrize("extra,message", BAD)
def test_bad_training_settings_one_line_exit_2(extra, message, capsys, in_tmp):
    rc = main(["train", *TINY, *extra])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert message in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (in_tmp / "outputs").exists()  # refused before any folder or data


def test_a_confirmed_size_passes_the_check(capsys, in_tmp):
    assert main(["train", *TINY, "save_every=1", "save_max_gb=0.0001", "hydra.run.dir=R"]) == 2
    assert "would keep 5 copies of the weights" in capsys.readouterr().err and not (in_tmp / "R").exists()
    assert main(["train", *TINY, "save_every=1", "save_max_gb=0.01", "hydra.run.dir=R"]) == 0
    assert sorted(p.name for p in (in_tmp / "R" / "weights").iterdir()) == ["0.pt", "1.pt", "2.pt", "3.pt", "4.pt"]


def test_a_target_implies_a_custom_optimizer():
    assert implied_custom_optim(["optim._target_=torch.optim.RMSprop"])[0] == "optim=custom"
    assert implied_custom_optim(["optim=sam", "optim.base=custom", "optim._target_=x.Y"])[0] == "optim=sam"
    assert implied_custom_optim(["lr=0.1"]) == ["lr=0.1"]


def test_default_training_settings_keep_run_ids():
    """Written out at their defaults, the new keys change no run id (nor the study's folders, which come
    from the same comparison with the defaults)."""
    base = run_identity(settings(compose([])))["run_id"]
    same = ["optim.momentum=0", "optim.nesterov=false", "optim.weight_decay=0.0", "schedule=constant",
            "schedule.warmup=0", "save_every=100", "save_max_gb=5"]
    assert run_identity(settings(compose(same)))["run_id"] == base
    sam = run_identity(settings(compose(["optim=sam"])))
    assert sam["settings"]["optim"] == {"name": "sam", "rho": 0.05, "adaptive": False}
    assert run_identity(settings(compose(["optim=sam", "optim.base=sgd", "optim.momentum=0.0"])))["run_id"] == \
        sam["run_id"]
    for other in (["optim.momentum=0.9"], ["optim.weight_decay=5e-4"], ["schedule=cosine"], ["schedule.warmup=10"],
                  ["optim=adamw"], ["optim=sam", "optim.base=adamw"]):
        assert run_identity(settings(compose(other)))["run_id"] != base, other
    # a schedule spanning the steps makes the steps part of the run: a longer one is another run
    cos = [run_identity(settings(compose(["schedule=cosine", f"steps={n}"])))["run_id"] for n in (100, 200)]
    const = [run_identity(settings(compose([f"steps={n}"])))["run_id"] for n in (100, 200)]
    assert cos[0] != cos[1] and const[0] == const[1]


def test_run_folder_names_of_training_settings():
    """Defaults name nothing; a schedule choice names itself; steps are named only under a schedule that
    spans them (where a larger steps is another run, not an extension); the size confirmation and the kept
    weights name nothing."""
    from sharpcomp.results.run_names import canonical_name
    from sharpcomp.settings import plain

    base = {"data": "cifar10_2class", "model": "vgg10", "scale": "quick", "optim": "sgd", "schedule": "constant"}

    def name(overrides, **choices):
        return canonical_name(plain(compose(overrides)), {**base, **choices})

    assert name(["optim.momentum=0.0", "schedule.warmup=0", "save_max_gb=5"]) == "default"
    assert name(["save_every=100"]) == "default"  # weights kept along the way: the same run
    assert name(["optim.momentum=0.9", "optim.weight_decay=5e-4", "steps=100"]) == \
        "optim.momentum=0.9,optim.weight_decay=0.0005"
    assert name(["optim=adamw"], optim="adamw") == "optim=adamw"
    assert name(["schedule=cosine", "schedule.warmup=10", "steps=100"], schedule="cosine") == \
        "schedule.warmup=10,schedule=cosine,steps=100"
    assert name(["schedule=step", "schedule.milestones=[50]", "steps=100"], schedule="step") == \
        "schedule.milestones=[50],schedule=step"
