"""The command line: help, bad input (one line, non-zero, no traceback), single runs and sweeps."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from sharpcomp.cli import main
from sharpcomp.results.records import read_metrics
from tests.conftest import REPO, TINY


def test_help_lists_commands_groups_and_options(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for word in ("train", "figures", "reparam", "cifar10_2class", "fashion_mnist", "vgg10", "mlp4", "quick", "paper",
                 "lr=0.1", "batch=20", "seed=0", "log_every", "hydra/launcher", "-m"):
        assert word in out, word


BAD = [
    (["train", "lr=0"], "learning rate must be > 0"),
    (["train", "lr=-0.1"], "learning rate must be > 0"),
    (["train", "lr=fast"], "lr must be a number"),
    (["train", "batch=0"], "batch size must be > 0"),
    (["train", "batch=2.5"], "batch must be an integer"),
    (["train", "steps=0"], "steps must be > 0"),
    (["train", "data=imagenet"], "unknown data 'imagenet' (choose from cifar10, cifar100, cifar10_2class, "
                                 "fashion_mnist, image_folder, mnist, svhn)"),
    (["train", "model=resnet"], "unknown model 'resnet'"),
    (["train", "colour=blue"], "unknown option 'colour'"),
    (["train", "loss=hinge"], "unknown loss 'hinge'"),
    (["train", "--bogus"], "unknown flag '--bogus'"),
    (["fly"], "unknown command 'fly'"),
    (["-m", "train", "lr=0.1,0"], "learning rate must be > 0"),
    (["train", "lr=(0.1"], ""),
]


@pytest.mark.parametrize("argv,message", BAD)
def test_bad_input_one_line_nonzero(argv, message, capsys, in_tmp):
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc != 0
    assert message in err
    assert len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err
    assert not (in_tmp / "outputs").exists()


def test_batch_larger_than_train_set_and_missing_data(capsys, in_tmp, monkeypatch, tmp_path):
    assert main(["train", *TINY, "batch=70000"]) == 2  # refused at composition, before the data load
    err = capsys.readouterr().err.strip()
    assert "larger than the training set (60000 samples)" in err and len(err.splitlines()) == 1
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("SHARPCOMP_DATA", str(empty))
    monkeypatch.setenv("SHARPCOMP_CACHE", str(tmp_path / "nocache"))
    monkeypatch.setenv("SHARPCOMP_OFFLINE", "1")
    assert main(["train", *TINY]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert str(empty) in err and "train-images-idx3-ubyte" in err


def test_unwritable_output_folder(capsys, in_tmp):
    (in_tmp / "afile").write_text("")
    rc = main(["train", *TINY, f"hydra.run.dir={in_tmp}/afile/run"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "is not a folder" in err and len(err.splitlines()) == 1


def test_single_run_and_resume_through_cli(capsys, in_tmp):
    assert main(["train", *TINY]) == 0
    files = list((in_tmp / "outputs").rglob("metrics.parquet"))
    assert len(files) == 1
    df = read_metrics(files[0])
    assert sorted(df.iteration) == [0, 2, 4] and (df.status == "finished").all()
    out = capsys.readouterr().out
    assert "finished" in out and str(files[0]) in out
    assert main(["train", *TINY]) == 0  # same command, same folder: nothing to add
    assert len(read_metrics(files[0])) == 3


def test_two_job_multirun_with_a_diverging_job(capsys, in_tmp):
    assert main(["-m", "train", *TINY, "lr=0.05,1e6"]) == 0
    files = sorted((in_tmp / "outputs" / "multirun").rglob("metrics.parquet"))
    assert len(files) == 2
    status = {read_metrics(f).lr.iloc[0]: read_metrics(f).status.iloc[0] for f in files}
    assert status == {0.05: "finished", 1e6: "diverged"}


def _run_cli(args, cwd, env_extra=None, timeout=600):
    env = {**os.environ, **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "sharpcomp.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


def test_kill_mid_run_keeps_checkpoints_and_rerun_resumes(in_tmp):
    """SIGKILL a real run; the parquet stays readable with whole checkpoints, and the rerun completes it."""
    import signal
    import time

    args = ["train", *TINY, "steps=400", "log_every=10", "model.width=0.2", "eval_every=1000"]
    ref = _run_cli([*args, "hydra.run.dir=ref"], in_tmp)
    assert ref.returncode == 0, ref.stderr
    env = {**os.environ}
    proc = subprocess.Popen([sys.executable, "-m", "sharpcomp.cli", *args, "hydra.run.dir=run"], cwd=in_tmp,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    target = in_tmp / "run" / "metrics.parquet"
    deadline = time.time() + 120
    while time.time() < deadline:
        if target.exists() and len(read_metrics(target)) >= 5:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    partial = read_metrics(target)
    assert 5 <= len(partial) and partial.iteration.is_monotonic_increasing
    again = _run_cli([*args, "hydra.run.dir=run"], in_tmp)
    assert again.returncode == 0, again.stderr
    a = read_metrics(in_tmp / "ref").drop(columns="wall_time")
    b = read_metrics(target).drop(columns="wall_time")
    assert a.equals(b)


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["joblib", "submitit_local"])
def test_multirun_launchers(launcher, in_tmp):
    extra = ["hydra.launcher.n_jobs=2"] if launcher == "joblib" else ["hydra.launcher.timeout_min=10"]
    res = _run_cli(["-m", "train", *TINY, "seed=0,1", f"hydra/launcher={launcher}", *extra], in_tmp)
    assert res.returncode == 0, res.stderr[-3000:]
    files = sorted((in_tmp / "outputs" / "multirun").rglob("metrics.parquet"))
    assert len(files) == 2
    assert {int(read_metrics(f).seed.iloc[0]) for f in files} == {0, 1}
    assert all((read_metrics(f).status == "finished").all() for f in files)


def test_slurm_launcher_config_composes(in_tmp):
    res = _run_cli(["train", "hydra/launcher=slurm", "--cfg", "hydra", "--package", "hydra.launcher"], in_tmp)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "SlurmLauncher" in res.stdout and "timeout_min" in res.stdout


@pytest.mark.slow
def test_configs_found_from_an_installed_wheel(tmp_path, data_dir, cache_dir):
    """Build the wheel, install it outside the checkout, and compose + run from another folder."""
    wheel_dir, site = tmp_path / "wheel", tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(wheel_dir), str(REPO)], check=True, timeout=300)
    wheel = next(wheel_dir.glob("sharpcomp-*.whl"))
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)],
                   check=True, timeout=300)
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site), "SHARPCOMP_DATA": str(data_dir), "SHARPCOMP_CACHE": str(cache_dir)}
    code = ("import sharpcomp, sys; from sharpcomp.cli import main; print(sharpcomp.__file__); "
            "sys.exit(main(sys.argv[1:]))")
    res = subprocess.run([sys.executable, "-c", code, "train", *TINY], cwd=work, env=env, capture_output=True,
                         text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert str(site) in res.stdout
    assert len(list((work / "outputs").rglob("metrics.parquet"))) == 1
    # the ensemble launcher ships in Hydra's plugin namespace and is discovered there, from the wheel
    assert (site / "hydra_plugins" / "sharpcomp_ensemble" / "__init__.py").is_file()
    probe = ("from hydra.core.plugins import Plugins; import hydra_plugins.sharpcomp_ensemble as m; print(m.__file__); "
             "print('hydra_plugins.sharpcomp_ensemble.EnsembleLauncher' in Plugins.instance().class_name_to_class)")
    res = subprocess.run([sys.executable, "-c", probe], cwd=work, env=env, capture_output=True, text=True, timeout=300)
    assert res.stdout.split() == [str(site / "hydra_plugins" / "sharpcomp_ensemble" / "__init__.py"), "True"], res
    res = subprocess.run([sys.executable, "-c", code, "-m", "train", *TINY, "lr=0.05,0.1", "hydra/launcher=ensemble"],
                         cwd=work, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0 and "1 ensemble(s)" in res.stderr + res.stdout, res.stderr[-3000:]


def test_version(capsys):
    from sharpcomp import __version__

    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"sharpcomp {__version__}"


def test_every_option_in_help_is_accepted_as_shown(capsys, in_tmp):
    """Every ``key=default`` line of ``--help`` (read from conf/, so new keys join by themselves) is a
    valid override: the command line composes and checks all of them together."""
    from sharpcomp.cli import check_overrides
    from sharpcomp.options import options

    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    shown = [(key, value) for key, value, _ in options() if value is not None]
    keys = [k for k, _ in shown]
    assert {"lr", "steps", "metrics.n", "metrics.flatness.quotient_trace", "model.width", "data_dir"} <= set(keys)
    assert "metrics.quotient_trace" not in keys  # the path that works, not the section's last word
    assert "steps=25000" in out and "data_dir=null" in out and "${" not in out
    for line in out.splitlines():  # comments are whole: continuation lines joined, nothing cut
        assert line.count("(") == line.count(")"), line
    for key, value in shown:
        assert f"  {key}={value}" in out, key
    check_overrides([f"{k}={v}" for k, v in shown])
    assert not (in_tmp / "outputs").exists()


def test_cfg_job_shows_resolved_values(in_tmp):
    res = _run_cli(["train", "--cfg", "job"], in_tmp)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "steps: 25000" in res.stdout and "${" not in res.stdout


@pytest.mark.parametrize("argv", [["train", "lr=0"], ["train", "--bogus"], ["figures", "--formats", "gif"],
                                  ["figures", "--nosuch"], ["reparam"], ["reparam", ".", "beta=1"]])
def test_every_subcommand_fails_the_same_way(argv, capsys, in_tmp):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"sharpcomp {argv[0]}: error: "), err
