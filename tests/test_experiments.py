"""conf/experiment/*.yaml: each figure's sweep composes to exactly the study's runs (docs/figures.md)."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

hydra = pytest.importorskip("hydra")
from hydra import compose, initialize_config_dir  # noqa: E402
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper  # noqa: E402
from hydra.core.global_hydra import GlobalHydra  # noqa: E402
from hydra.core.override_parser.overrides_parser import OverridesParser  # noqa: E402

CONF = Path(__file__).resolve().parents[1] / "conf"
SEEDS5 = (0, 1, 2, 3, 4)
SEEDS4 = (0, 1, 2, 3)
CIFAR = ("cifar10_2class", "vgg10")
FMNIST = ("fashion_mnist", "mlp4")


def _grid(lrs, batches, seeds):
    return {(lr, b, s) for lr in lrs for b in batches for s in seeds}


# experiment -> (data, model, expected (lr, batch, seed) runs, expected metrics.sample_sets)
EXPERIMENTS = {
    "fig1": (*CIFAR, _grid((0.05, 0.1, 0.2), (20,), SEEDS5), ["train"]),
    "fig2": (*CIFAR, _grid((0.1,), (8, 20, 32), SEEDS5), ["train"]),
    "fig3": (*CIFAR, _grid((0.1,), (20,), SEEDS5), ["train", "test", "misclassified"]),
    "figD4": (*FMNIST, _grid((0.1,), (20,), SEEDS5), ["train"]),
    "figD5": (*CIFAR, _grid((0.05, 0.1, 0.2), (20,), SEEDS4), ["train"]),
    "figD5_batch": (*CIFAR, _grid((0.1,), (8, 32), SEEDS4), ["train"]),
    "figD6": (*FMNIST, _grid((0.05, 0.1, 0.2), (20,), SEEDS4), ["train"]),
    "figD6_batch": (*FMNIST, _grid((0.1,), (8, 32), SEEDS4), ["train"]),
    "figE7": (*FMNIST, _grid((0.1,), (8, 20, 32), SEEDS5), ["train"]),
    "figE8": (*FMNIST, _grid((0.05, 0.1, 0.2), (20,), SEEDS5), ["train"]),
}
SCALES = {"quick": 25000, "paper": 500000}
# experiments beyond the study's figures
BEYOND = ("eos", "rank")


@pytest.fixture(scope="module")
def hydra_conf():
    if not (CONF / "train.yaml").exists():
        pytest.skip("conf/train.yaml not written yet")
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        yield
    GlobalHydra.instance().clear()


def sweep_jobs(experiment: str, extra: list[str] = ()) -> list[list[str]]:
    """The override lists Hydra's basic sweeper launches for `sharpcomp -m train +experiment=X ...`."""
    cfg = compose("train", overrides=[f"+experiment={experiment}", *extra], return_hydra_config=True)
    params = cfg.hydra.sweeper.params or {}
    # what BasicSweeper.sweep does: sweeper params first, then the command line (which wins)
    lines = [f"{k}={v}" for k, v in params.items()] + [f"+experiment={experiment}", *extra]
    parsed = OverridesParser.create().parse_overrides(lines)
    (jobs,) = BasicSweeper.split_arguments(parsed, None)
    return jobs


def test_every_figure_has_an_experiment():
    names = {p.stem for p in (CONF / "experiment").glob("*.yaml")}
    assert {"fig1", "fig2", "fig3", "figD4", "figD5", "figD6", "figE7", "figE8"} <= names
    assert names - set(BEYOND) == set(EXPERIMENTS)
    for p in (CONF / "experiment").glob("*.yaml"):
        assert p.read_text().startswith("# @package _global_\n"), p


def job_setting(job: list[str]) -> tuple[float, int, int]:
    values = dict(o.split("=", 1) for o in job)
    return float(values["lr"]), int(values["batch"]), int(values["seed"])


@pytest.mark.parametrize("experiment", sorted(EXPERIMENTS))
def test_experiment_sweep_is_specs_runs(hydra_conf, experiment):
    from sharpcomp.settings import validate_config

    data, model, expected, sample_sets = EXPERIMENTS[experiment]
    for scale, steps in SCALES.items():
        cfg = compose("train", overrides=[f"+experiment={experiment}", f"scale={scale}"], return_hydra_config=True)
        assert cfg.data.name == data and cfg.model.name == model
        assert cfg.steps == (steps if scale != "quick" else {"cifar10_2class": 25_000, "fashion_mnist": 50_000}[data])
        assert list(cfg.metrics.sample_sets) == sample_sets  # also for a single (non -m) run
    jobs = sweep_jobs(experiment, ["scale=paper"])
    assert len(jobs) == len(expected)
    assert {job_setting(j) for j in jobs} == {(float(lr), b, s) for lr, b, s in expected}
    # compose the first and last job as the sweeper would, and check them like `sharpcomp train`
    for job in (jobs[0], jobs[-1]):
        run = compose("train", overrides=job)
        assert (run.data.name, run.model.name, run.steps) == (data, model, SCALES["paper"])
        assert (float(run.lr), int(run.batch), int(run.seed)) == job_setting(job)
        assert list(run.metrics.sample_sets) == sample_sets
        plain = OmegaConf.to_container(run, resolve=False)
        validate_config(OmegaConf.to_container(OmegaConf.create(plain), resolve=True))


def test_figD5_arms_make_specs_twenty_run_grid(hydra_conf):
    """The study's grid: lr 0.05 / 0.1 / 0.2 at batch 20 and batch 8 / 32 at lr 0.1, 4 seeds: 20 distinct runs."""
    for lr_arm, batch_arm in (("figD5", "figD5_batch"), ("figD6", "figD6_batch")):
        runs = [job_setting(j) for exp in (lr_arm, batch_arm) for j in sweep_jobs(exp)]
        assert len(runs) == len(set(runs)) == 20
        settings = {(lr, b) for lr, b, _ in runs}
        assert settings == {(0.05, 20), (0.1, 20), (0.2, 20), (0.1, 8), (0.1, 32)}


def test_command_line_replaces_a_sweep_parameter(hydra_conf):
    jobs = sweep_jobs("fig1", ["seed=0"])
    assert len(jobs) == 3
    assert {job_setting(j)[2] for j in jobs} == {0}


def test_shared_runs_get_the_same_overrides(hydra_conf):
    """lr, batch and seed are sweep parameters in every experiment, so the same run (e.g. lr 0.1,
    batch 20, seed 0 in fig1, fig2 and figD5) gets the same override set, hence the same run folder
    once `experiment` is left out of override_dirname; fig3 (more sample sets) differs."""

    def key(job):
        return tuple(sorted(o for o in job if not o.startswith("+experiment=")))

    shared = "batch=20", "lr=0.1", "seed=0"
    for exp in ("fig1", "fig2", "figD5"):
        assert tuple(shared) in {key(j) for j in sweep_jobs(exp)}, exp
    assert tuple(shared) not in {key(j) for j in sweep_jobs("fig3")}


def test_eos_composes_full_batch_and_sgd(hydra_conf):
    cfg = compose("train", overrides=["+experiment=eos"], return_hydra_config=True)
    assert cfg.data.name == "fashion_mnist" and cfg.data.n_train == 1000 and cfg.model.name == "mlp4"
    assert cfg.model.width == 0.25 and cfg.steps == 400 and cfg.log_every == 20
    on = {k for k, v in cfg.metrics.flatness.items() if v is not None}
    assert on == {"hessian_max", "batch_sharpness", "nonuniformity", "hessian_density"}
    assert "eos-fashion_mnist-mlp4" in cfg.hydra.sweep.dir
    jobs = sweep_jobs("eos")
    assert {job_setting(j) for j in jobs} == _grid((0.5, 1.0, 2.0), (1000, 50), (0,))  # batch 1000 = full batch


def test_rank_composes_a_grid_of_48_runs_trained_to_a_loss(hydra_conf):
    """The ranking experiment (docs/ranking.md): four axes, two seeds, a stopping rule, the measures at the stop."""
    from sharpcomp.settings import settings

    cfg = compose("train", overrides=["+experiment=rank"], return_hydra_config=True)
    assert (cfg.data.name, cfg.model.name, cfg.steps, cfg.log_every) == ("fashion_mnist", "mlp4", 30000, 250)
    assert cfg.stop.train_loss == 0.01 and cfg.metrics.flatness_every == 0
    on = {k for k, v in cfg.metrics.flatness.items() if v is not None}
    assert {"hessian_max", "worst_case", "average", "pacbayes", "param_norm", "dist_init", "grad_noise"} <= on
    assert "rank-fashion_mnist-mlp4" in cfg.hydra.sweep.dir
    jobs = sweep_jobs("rank")
    values = [dict(o.split("=", 1) for o in job if not o.startswith("+")) for job in jobs]
    assert len(jobs) == 48 and len({tuple(sorted(v.items())) for v in values}) == 48
    assert {k: sorted({v[k] for v in values}) for k in values[0]} == {
        "lr": ["0.1", "0.2", "0.4"], "batch": ["128", "32"], "model.width": ["0.25", "1"],
        "data.n_train": ["1000", "4000"], "seed": ["0", "1"]}
    run = compose("train", overrides=jobs[-1])
    s = settings(OmegaConf.to_container(run, resolve=True))
    assert s.stop.train_loss == 0.01 and s.flatness_due(30000) and not s.flatness_due(0)
