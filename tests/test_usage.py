"""One argument syntax for every subcommand (``sharpcomp.usage``): ``key=value`` options, the flag forms
``--key VALUE`` and ``--key=VALUE`` meaning the same, folders that look like options (sharpcomp's own run
folders), "did you mean", one line and exit 2 for bad input, and a ``--help`` that shows it all."""

from __future__ import annotations

import importlib
import os

import pytest

from sharpcomp.cli import SUBCOMMANDS, main
from sharpcomp.usage import Option, Syntax, UsageError, did_you_mean, split_paths

SYNTAX = Syntax(command="demo", summary="a demo command", folders="[DIR ...]", most=None,
                options=(Option("out", "where"), Option("last_fraction", "how much"), Option("seed", "a seed"),
                         Option("run", "runs", repeat=True)),
                families=(("arg.", "a keyword argument"),))


def test_one_meaning_in_every_form(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    forms = (["out=figs", "last_fraction=0.5"], ["--out", "figs", "--last-fraction", "0.5"],
             ["--out=figs", "--last-fraction=0.5"], ["last-fraction=0.5", "--out", "figs"])
    for argv in forms:
        parsed = SYNTAX.parse(["a", *argv, "b"])
        assert parsed.folders == ["a", "b"] and parsed.values == {"out": "figs", "last_fraction": "0.5"}, argv
    parsed = SYNTAX.parse(["run=x", "--run", "y", "arg.depth=3", "--", "--out=z"])
    assert parsed.get("run") == ["x", "y"] and parsed.extra == {"depth": "3"} and parsed.folders == ["--out=z"]
    assert SYNTAX.parse(["--last-fraction", "1"]).said("last_fraction") == "--last-fraction"


def test_a_folder_that_looks_like_an_option_is_the_folder(tmp_path, monkeypatch):
    """sharpcomp names run folders ``seed=1`` or ``lr=0.05,seed=1``: such a folder here is a folder while the
    command takes folders; ``--seed=1`` is always the option, ``./seed=1`` always the folder."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "seed=1").mkdir()
    (tmp_path / "lr=0.05,seed=1").mkdir()
    assert SYNTAX.parse(["seed=1", "lr=0.05,seed=1"]).folders == ["seed=1", "lr=0.05,seed=1"]
    assert SYNTAX.parse(["--seed=1"]).values == {"seed": "1"} and SYNTAX.parse(["./seed=1"]).folders == ["./seed=1"]
    one = Syntax(command="one", summary="", folders="RUN", most=1, options=(Option("seed", "a seed"),))
    assert one.parse(["seed=1", "seed=1"]).values == {"seed": "1"}  # the second: no folder left to take


@pytest.mark.parametrize("argv,message", [
    (["seed=1", "seed=2"], "seed is given twice"),
    (["sede=1"], "unknown option 'sede' (did you mean seed?)"),
    (["--ot", "x"], "unknown flag '--ot' (did you mean out?)"),
    (["--out"], "--out needs a value: write out=VALUE"),
    (["-x"], "unknown flag '-x'"),
    (["lr=0.05,seed=1"], "no folder 'lr=0.05,seed=1' either"),
    (["bad\udcffname"], "is not valid UTF-8"),
])
def test_bad_input_is_one_message(argv, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UsageError) as err:
        SYNTAX.parse(argv)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_did_you_mean():
    assert did_you_mean("lr_rate", ["lr", "batch", "seed"]) == " (did you mean lr?)"
    assert did_you_mean("mlp5", ["custom", "mlp4", "vgg10", "vit"]) == " (did you mean mlp4?)"
    assert did_you_mean("metrics.nn", ["metrics.n", "metrics.layer"]) == " (did you mean metrics.n?)"
    assert did_you_mean("zzz", ["lr", "batch"]) == ""


def test_comma_lists_of_folders_that_hold_commas(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in ("a b/lr=0.05,seed=1", "a b/lr=0.1,seed=1", "c"):
        (tmp_path / name).mkdir(parents=True)
    assert split_paths("a b/lr=0.05,seed=1") == ["a b/lr=0.05,seed=1"]
    assert split_paths("a b/lr=0.05,seed=1,a b/lr=0.1,seed=1,c") == ["a b/lr=0.05,seed=1", "a b/lr=0.1,seed=1", "c"]
    assert split_paths("c,a b/lr=0.05,seed=1,nothing,x") == ["c", "a b/lr=0.05,seed=1", "nothing,x"]
    assert split_paths(f"{tmp_path}/c,c") == [f"{tmp_path}/c", "c"]


@pytest.mark.parametrize("command", sorted(SUBCOMMANDS))
def test_every_subcommand_shows_its_syntax_and_options(command, capsys):
    syntax = importlib.import_module(SUBCOMMANDS[command]).SYNTAX
    for flag in ("--help", "-h"):
        assert main([command, "positional", flag]) == 0
        out = capsys.readouterr().out
        assert out.startswith(f"usage: sharpcomp {command}") and "[key=value ...]" in out
        assert "--key VALUE and --key=VALUE mean the same" in out
        for option in syntax.options:
            assert f"  {option.name}={option.metavar}" in out, option.name


@pytest.mark.parametrize("argv,message", [
    (["figures", "onyl=runs"], "unknown option 'onyl' (did you mean only?)"),
    (["figures", "--band", "wide"], "unknown band 'wide'"),
    (["runs", "cvs=x.csv"], "unknown option 'cvs' (did you mean csv?)"),
    (["runs"], "missing DIR"),
    (["reparam", ".", "alhpa=2"], "unknown option 'alhpa' (did you mean alpha?)"),
    (["reparam", ".", "measures=hesian_max"], "unknown measure 'hesian_max' (did you mean hessian_max?)"),
    (["landscape", ".", "pionts=3"], "unknown option 'pionts' (did you mean points?)"),
    (["landscape", ".", "lo=-inf"], "lo must be a finite number"),
    (["landscape", ".", "hi=inf"], "hi must be a finite number"),
    (["landscape", ".", "hi=1e308"], "hi must be <= 100"),
    (["landscape", ".", "span=1e308"], "span must be <= 100"),
    (["landscape", ".", "span=nan"], "span must be a positive number"),
    (["measure", "model=mlp4", "data=fashion_mnist", "smaple_sets=test"], "(did you mean sample_sets?)"),
    (["measure", "model=mlp4", "data=fashion_mnist", "sample_sets=tset"],
     "unknown sample_set 'tset' (did you mean test?)"),
    (["trian"], "unknown command 'trian' (did you mean train?)"),
    (["train", "lr_rate=0.1"], "unknown option 'lr_rate' (did you mean lr?)"),
    (["train", "model=mlp5"], "unknown model 'mlp5' (did you mean mlp4?)"),
    (["train", "model.widht=2"], "unknown option 'model.widht' (did you mean model.width?)"),
    (["train", "+lr_rat=2"], "(did you mean lr?)"),
    (["train", "hydra/launcher=jobib"], "unknown hydra/launcher 'jobib' (did you mean joblib?)"),
    (["train", "--cfg", "job", "lr_rate=0.1"], "unknown option 'lr_rate' (did you mean lr?)"),
    (["train", "--lr", "0.05"], "unknown flag '--lr': train takes key=value, write lr=0.05"),
    (["train", "--metrics.n=5"], "write metrics.n=5"),
])
def test_misspelt_options_and_choices_say_what_was_meant(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0] and err[0].startswith("sharpcomp"), err


def test_figures_of_folders_that_are_not_there_or_empty_exit_2(tmp_path, capsys):
    assert main(["figures", str(tmp_path / "nonexistent")]) == 2
    (tmp_path / "empty").mkdir()
    assert main(["figures", str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "no such folder" in err[0] and "no metrics.parquet files under" in err[1]
    assert not os.path.exists(tmp_path / "empty-figures")
