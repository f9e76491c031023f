"""Command line: ``sharpcomp [-m] <command> [overrides...]``.

``train`` is a Hydra application (config ``conf/train.yaml``, shipped as the package
``sharpcomp.conf``); ``-m`` runs a Hydra multirun sweep with any launcher. Overrides are checked
before Hydra starts, so a typo gets one clear line and a non-zero exit instead of a traceback.
"""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path

import hydra
import hydra.core.utils
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode

from sharpcomp._version import __version__
from sharpcomp.options import group_options, option_lines
from sharpcomp.overrides import (
    GROUPS,
    check_composes,
    check_overrides,
    expand,
    implied_custom,
    known_keys,
    overrides_by_name,
)
from sharpcomp.results.hydra_files import defer_save, discard_held
from sharpcomp.results.run_names import register_resolvers
from sharpcomp.settings import CONFIG_MODULE
from sharpcomp.terminal import escaped_output
from sharpcomp.usage import EXIT_USAGE, UsageError, check_text, did_you_mean, report
from sharpcomp.warning_lines import one_line_warnings

CONFIG_PATH = f"pkg://{CONFIG_MODULE}"
COMMANDS = ("train", "figures", "reparam", "measure", "runs", "landscape", "rank")
# Hydra's flags for looking at the composed config (e.g. `sharpcomp train --cfg job`)
HYDRA_VIEW_FLAGS = ("--cfg", "-c", "--package", "-p", "--info", "-i", "--resolve")
INFO_TOPICS = ("all", "config", "defaults", "defaults-tree", "plugins", "searchpath")
RERUN_FLAG = "--experimental-rerun"  # Hydra's: unpickles a config file; refused in every form


def usage() -> str:
    """The text of ``sharpcomp --help``: commands, config groups and every option with its default."""
    groups = "\n".join(f"  {('+' if g == 'experiment' else '') + g + '=':<14}{' | '.join(group_options(g))}"
                       for g in GROUPS)
    return f"""usage: sharpcomp [-m] <command> [key=value ...]
       sharpcomp --version

Train small networks with SGD and log loss flatness (sharpness) next to representation
compression (G, log volume, maximum local sensitivity, local dimensionality, bounds).

commands:
  train     train one run; with -m, a Hydra multirun sweep (lr=0.05,0.1,0.2 seed=0,1,2)
  figures   draw the study's figures from result folders (sharpcomp figures --help)
  reparam   rescale one layer of a trained run and compare every metric (sharpcomp reparam --help)
  measure   every measure on trained networks (run folders, timm/torchvision/own models + weights),
            without training (sharpcomp measure --help)
  runs      one row per run under a folder: differing settings, status, accuracy, metrics (sharpcomp runs DIR)
  landscape loss landscape of a run, or the interpolation between two (sharpcomp landscape --help)
  rank      which measure predicts generalisation over a sweep: Kendall, granulated Kendall, conditional
            mutual information, sign errors, with bootstrap intervals (sharpcomp rank --help)

examples:
  sharpcomp train lr=0.1 batch=20
  sharpcomp train data=fashion_mnist model=mlp4 lr=0.1 batch=8
  sharpcomp -m train lr=0.05,0.1,0.2 seed=0,1,2,3,4
  sharpcomp -m train +experiment=fig1 scale=quick hydra/launcher=ensemble   # 15 runs in lockstep
  sharpcomp figures outputs

config groups (train):
{groups}
  hydra/launcher= basic | joblib | ensemble | submitit_local | slurm

options (train, with the defaults of the default groups):
{chr(10).join(option_lines())}

Every command takes key=value options (--key VALUE and --key=VALUE mean the same) after its folders;
`sharpcomp <command> --help` lists them. Hydra's view flags pass through, e.g. `sharpcomp train --cfg job`
prints the composed config (resolved).
Results: outputs/runs/<data>-<model>/<overrides>/metrics.parquet (multirun: outputs/multirun/...)."""


# ---------------------------------------------------------------------------------------------
# the train job


def _train_job(cfg) -> str:
    # lazy: --help and --version stay free of torch and pandas
    from sharpcomp.engine.jobs import JobExit, run_job
    from sharpcomp.engine.train import train

    hc = HydraConfig.get()
    run_dir = Path(hc.runtime.output_dir)
    try:
        return run_job(lambda: [train(cfg, run_dir)], [run_dir], hc.mode == RunMode.MULTIRUN)[0]
    except JobExit as exc:
        sys.exit(exc.code)
    finally:
        discard_held(run_dir)  # a run refused before it opened its folder leaves no .hydra files there


class _Survivor:
    """Standard output that never fails a run: once its reader has gone (``sharpcomp train | head -1``),
    output is dropped (the descriptor then points at the null device, so exit flushes stay quiet)."""

    def __init__(self, stream):
        self._stream, self._gone = stream, False

    def _lost(self) -> None:
        self._gone = True
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), self._stream.fileno())
        except (OSError, ValueError):
            pass

    def write(self, text):
        if not self._gone:
            try:
                return self._stream.write(text)
            except (OSError, ValueError):
                self._lost()
        return len(text)

    def flush(self):
        if not self._gone:
            try:
                self._stream.flush()
            except (OSError, ValueError):
                self._lost()

    def __getattr__(self, name):
        return getattr(self._stream, name)


class TrainTask:
    """Hydra's task function for ``train``. Launchers that run jobs in other processes (joblib, submitit)
    unpickle it there through :func:`train_task`, which registers the config's resolvers first: the
    job's output folder is resolved in that process."""

    def __call__(self, cfg) -> str:
        with escaped_output():  # in a launcher's worker process too
            return _train_job(cfg)

    def __reduce__(self):
        return (train_task, ())


def train_task() -> TrainTask:
    """The ``train`` task function, with the resolvers of ``conf/train.yaml`` registered and Hydra's
    ``.hydra`` writer held back until the run owns its folder (:mod:`sharpcomp.results.hydra_files`): in
    a launcher's worker process too, where this runs when the task is unpickled, before the job starts."""
    register_resolvers()
    hydra.core.utils._save_config = defer_save
    return TrainTask()


def _run_hydra_train(args: list[str], multirun: bool) -> int:
    # lazy: --help and --version stay free of torch and pandas
    from sharpcomp.engine.joblib_sweep import install
    from sharpcomp.engine.jobs import close_outcomes, open_outcomes, sweep_summary

    install()  # a killed joblib worker does not take the sweep down
    app = hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="train")(train_task())
    argv0 = sys.argv[0]
    sys.argv = [argv0] + (["--multirun"] if multirun else []) + args
    outcomes = open_outcomes() if multirun else None
    stdout = sys.stdout
    sys.stdout = _Survivor(stdout)
    try:
        app()
        return sweep_summary(outcomes) if outcomes else 0
    except SystemExit as exc:  # a single job's exit status (its line printed), or Hydra's own
        return exc.code if isinstance(exc.code, int) else 1
    finally:
        sys.stdout = stdout
        sys.argv = [argv0]
        if outcomes:
            close_outcomes(outcomes)


# ---------------------------------------------------------------------------------------------


def _train(rest: list[str], multirun: bool) -> int:
    """``sharpcomp [-m] train [key=value ...]``: check every override, then run Hydra."""
    for arg in rest:
        check_text(arg)
    rest = overrides_by_name(rest)
    if "-m" in rest or "--multirun" in rest:
        multirun = True
        rest = [a for a in rest if a not in ("-m", "--multirun")]
    if any(a in ("-h", "--help") for a in rest):
        print(usage())
        return 0
    refuse_rerun(rest)
    if any(a.split("=")[0] in HYDRA_VIEW_FLAGS for a in rest):  # a view of the config: Hydra reads its own flags
        return _view(rest, multirun)
    flags = [i for i, a in enumerate(rest) if a.startswith("-")]
    if flags:
        raise UsageError(_flag_hint(rest, flags[0]))
    rest = implied_custom(rest)
    check_overrides(rest, multirun)
    return _run_hydra_train(rest, multirun)


def _flag_hint(args: list[str], i: int) -> str:
    """The line for a flag ``train`` does not take; where it names a setting (``--lr 0.1``), the right form."""
    name, eq, value = args[i].lstrip("-").partition("=")
    key = name.replace("-", "_")
    if key in known_keys():
        value = value if eq else (args[i + 1] if i + 1 < len(args) and "=" not in args[i + 1] else "VALUE")
        return f"unknown flag '{args[i]}': train takes key=value, write {key}={value} (see `sharpcomp --help`)"
    return f"unknown flag '{args[i]}'{did_you_mean(key, known_keys())} (options are key=value; see `sharpcomp --help`)"


def refuse_rerun(args: list[str]) -> None:
    """UsageError for Hydra's ``--experimental-rerun`` in any form argparse would take (``--exp``,
    ``--experimental-rerun=FILE``): it unpickles a file, and a results folder's ``.hydra/config.pickle``
    is no file to unpickle."""
    for arg in args:
        flag = arg.split("=", 1)[0]
        if len(flag) >= 3 and RERUN_FLAG.startswith(flag):
            raise UsageError(f"{flag} is refused: it loads a pickle (a results folder's config.pickle could run code); "
                             f"to run a run again, give its command line again (it resumes)")


def _split_view(args: list[str]) -> tuple[list[str], list[str]]:
    """Hydra's view flags (with their values) and the overrides; UsageError for any other flag."""
    flags, overrides, args = [], [], list(args)
    while args:
        arg = args.pop(0)
        name = arg.split("=", 1)[0]
        if name in HYDRA_VIEW_FLAGS:
            flags.append(arg)
            takes = name in ("--cfg", "-c", "--package", "-p") or (name in ("--info", "-i") and args
                                                                  and args[0] in INFO_TOPICS)
            if "=" not in arg and takes and args:
                flags.append(args.pop(0))
        elif arg.startswith("-"):
            raise UsageError(f"unknown flag '{arg}' (with --cfg: {', '.join(HYDRA_VIEW_FLAGS)}; options are "
                             f"key=value; see `sharpcomp --help`)")
        else:
            overrides.append(arg)
    return flags, overrides


def _view(args: list[str], multirun: bool) -> int:
    """``--cfg job`` and the other views of the composed config: the overrides must compose; a sweep's
    (``-m``) first job is shown, with a line saying so (Hydra shows one config, not a sweep)."""
    flags, overrides = _split_view(args)
    overrides = implied_custom(overrides)
    check_composes(overrides)
    if multirun:
        first = expand(overrides)[0]
        if first != overrides:
            print(f"sharpcomp: showing the sweep's first job: {' '.join(first)}", file=sys.stderr, flush=True)
        overrides = first
    return _run_hydra_train(_resolved_view([*flags, *overrides]), multirun=False)


def _resolved_view(args: list[str]) -> list[str]:
    """``--cfg job`` (or ``all``) shows the values a run uses (``steps: 25000``, not ``${data.quick_steps}``):
    Hydra's ``--resolve`` added. A part of the config (``--package``, ``--cfg hydra``) is shown as written:
    it cannot be resolved without the rest."""
    flags = [a.split("=")[0] for a in args]
    shown = next((args[i + 1] if "=" not in args[i] and i + 1 < len(args) else args[i].split("=", 1)[1]
                  for i, f in enumerate(flags) if f in ("--cfg", "-c")), None)
    if shown in ("job", "all") and not {"--package", "-p", "--resolve"} & set(flags):
        return [*args, "--resolve"]
    return args


# subcommands other than train: name -> the module whose ``main(argv)`` runs it
SUBCOMMANDS = {
    "figures": "sharpcomp.commands.figures",
    "reparam": "sharpcomp.commands.reparam",
    "measure": "sharpcomp.commands.measure",
    "runs": "sharpcomp.commands.runs",
    "landscape": "sharpcomp.commands.landscape",
    "rank": "sharpcomp.commands.rank",
}


def _subcommand(command: str, rest: list[str]) -> int:
    if command not in SUBCOMMANDS:
        raise UsageError(f"unknown command '{command}'{did_you_mean(command, COMMANDS)} (choose from "
                         f"{', '.join(COMMANDS)}; see `sharpcomp --help`)")
    return importlib.import_module(SUBCOMMANDS[command]).main(rest)


def main(argv: list[str] | None = None) -> int:
    """``sharpcomp [-m] <command> ...``: the exit status (2 for bad input, with one line on stderr)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    multirun = False
    while argv and argv[0] in ("-m", "--multirun"):
        multirun = True
        argv.pop(0)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0 if argv else EXIT_USAGE
    if argv[0] in ("-V", "--version"):
        print(f"sharpcomp {__version__}")
        return 0
    command, rest = argv[0], argv[1:]
    with escaped_output(), one_line_warnings():  # names read from results folders never drive the terminal
        try:
            if command == "train":
                return _train(rest, multirun)
            if multirun:
                raise UsageError(f"-m applies to train only, not '{command}'")
            return _subcommand(command, rest)
        except UsageError as exc:
            return report(command if command in COMMANDS else None, str(exc))
        except KeyboardInterrupt:
            print("\nsharpcomp: interrupted; every logged checkpoint is saved; rerun the same command to resume",
                  file=sys.stderr)
            return 130


def entry() -> None:  # pragma: no cover - console script wrapper
    try:
        code = main()
    except BrokenPipeError:  # e.g. `sharpcomp --help | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = 0
    sys.exit(code)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
