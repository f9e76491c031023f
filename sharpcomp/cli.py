"""Command line: ``sharpcomp [-m] <command> [overrides...]``.

``train`` is a Hydra application (config ``conf/train.yaml``, shipped as the package
``sharpcomp.conf``); ``-m`` runs a Hydra multirun sweep with any launcher. Overrides are checked
before Hydra starts, so a typo gets one clear line and a non-zero exit instead of a traceback.
"""

from __future__ import annotations

import importlib
import itertools
import os
import re
import sys
from pathlib import Path

import hydra
import hydra.core.utils
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.types import RunMode
from omegaconf import OmegaConf

from sharpcomp._version import __version__
from sharpcomp.options import group_options, option_lines
from sharpcomp.results.own_files import probe_writable
from sharpcomp.results.run_names import register_resolvers
from sharpcomp.settings import CONFIG_MODULE, ConfigError, _yaml_keys, overrides_by_name
from sharpcomp.terminal import escaped_output
from sharpcomp.usage import EXIT_USAGE, UsageError, report

CONFIG_PATH = f"pkg://{CONFIG_MODULE}"
GROUPS = ("data", "model", "scale", "optim", "logger", "experiment")
COMMANDS = ("train", "figures", "reparam", "measure", "runs", "landscape")
# Hydra's flags for looking at the composed config (e.g. `sharpcomp train --cfg job`)
HYDRA_VIEW_FLAGS = ("--cfg", "-c", "--package", "-p", "--info", "-i", "--resolve")


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

Hydra flags pass through, e.g. `sharpcomp train --cfg job` prints the composed config (resolved).
Results: outputs/runs/<data>-<model>/<overrides>/metrics.parquet (multirun: outputs/multirun/...)."""


# ---------------------------------------------------------------------------------------------
# override checks


def _expand(overrides: list[str]) -> list[list[str]]:
    """Override lists to compose for checking: every value of every sweep at least once."""
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except Exception as exc:
        raise UsageError(str(exc).strip().splitlines()[0]) from None
    choices = []
    for ov in parsed:
        if ov.is_sweep_override():
            key = ov.get_key_element()
            try:
                values = list(ov.sweep_string_iterator())
            except Exception:
                raise UsageError(f"cannot expand sweep '{ov.input_line}'") from None
            choices.append([f"{key}={v}" for v in values])
        else:
            choices.append([ov.input_line])
    combos = list(itertools.islice(itertools.product(*choices), 64))
    # sweeps longer than the first 64 combinations: still check each of their values once
    width = max((len(c) for c in choices), default=1)
    for i in range(width):
        combos.append(tuple(c[min(i, len(c) - 1)] for c in choices))
    return [list(c) for c in dict.fromkeys(combos)]


def _explain(exc: Exception, overrides: list[str]) -> str:
    msg = str(exc).strip()
    first = msg.splitlines()[0] if msg else type(exc).__name__
    m = re.search(r"Could not find '(hydra/[^/']+)/([^']+)'", msg) or re.search(
        r"Could not find '([^/']+)/([^']+)'", msg)
    if m:
        group, name = m.groups()
        if group.startswith("hydra/"):
            options = _hydra_options(group)
            return f"unknown {group} '{name}'" + (f" (choose from {', '.join(options)})" if options else "")
        options = group_options(group)
        if options:
            return f"unknown {group} '{name}' (choose from {', '.join(options)})"
        return f"unknown option '{group}={name}'"
    m = re.search(r"Could not override '([^']+)'", msg) or re.search(r"Key '([^']+)' is not in struct", msg)
    if m:
        return f"unknown option '{m.group(1)}' (see `sharpcomp --help`; a new key needs a leading +)"
    m = re.search(r"Could not append to config. An item is already at '([^']+)'", msg)
    if m:
        return f"option '{m.group(1)}' already exists: set it without the leading +"
    return first


def _hydra_options(group: str) -> list[str]:
    """Options of a Hydra config group (e.g. hydra/launcher): sharpcomp's and installed plugins'."""
    try:
        return sorted(GlobalHydra.instance().config_loader().get_group_options(group))
    except Exception:
        return []


def _check_writable(folder: str) -> None:
    """Prove the output folder can be made and written (then remove what the check made)."""
    path = Path(folder).absolute()
    existing = path
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise UsageError(f"cannot create output folder {path}: {existing} is not a folder")
    made = []
    try:
        for p in reversed([path, *path.parents]):
            if not p.exists():
                p.mkdir()
                made.append(p)
        probe_writable(path)  # a nameless file: no link at a guessable name is followed
    except OSError as exc:
        raise UsageError(f"cannot write to output folder {path}: {exc.strerror or exc}") from None
    finally:
        for p in reversed(made):
            try:
                p.rmdir()
            except OSError:
                pass


def implied_custom(overrides: list[str]) -> list[str]:
    """``model._target_=X`` without a ``model=`` choice means one's own network: ``model=custom`` is
    implied (its ``outputs: classes``, label ``custom``), so vgg10's keys do not reach X. A ``_target_``
    naming a built-in's own callable keeps that built-in."""
    # lazy: --help and --version stay free of torch and pandas
    from sharpcomp.models import BUILTIN

    keys = [o.split("=", 1) for o in overrides if "=" in o]
    targets = [v for k, v in keys if k.lstrip("+~") == "model._target_"]
    chosen = any(k.lstrip("+~") == "model" for k, _ in keys) or any(
        k.lstrip("+~") == "experiment" for k, _ in keys)
    if not targets or chosen or all(t in (b[0] for b in BUILTIN.values()) for t in targets):
        return overrides
    return ["model=custom", *overrides]


HYDRA_FILES = (".hydra", ".hydra/config.yaml", ".hydra/hydra.yaml", ".hydra/overrides.yaml")


def _check_links(job_dir: str, names: tuple[str, ...] | None = None) -> None:
    """UsageError when a file the command would write in the job's folder (``names``: a run's files) is a
    symbolic link (Hydra's ``.hydra`` files are written before any sharpcomp code runs)."""
    # lazy: --help and --version stay free of torch and pandas
    from sharpcomp.results.run_state import MEMBERS

    for name in names or dict.fromkeys((*HYDRA_FILES, *MEMBERS)):
        p = Path(job_dir) / name
        if p.is_symlink():
            raise UsageError(f"refusing run folder {job_dir}: {name} is a symbolic link (to {os.readlink(p)}); "
                             f"a run folder's files must be its own (move the link away)")


def _job_dir(cfg, multirun: bool) -> str | None:
    try:
        if not multirun:
            return str(cfg.hydra.run.dir)
        return str(Path(str(cfg.hydra.sweep.dir)) / str(cfg.hydra.sweep.subdir))
    except Exception:  # a folder name Hydra only knows once the job runs
        return None


def _check_appended(overrides: list[str]) -> None:
    """UsageError for an appended key (``+key=value``) that no part of the program reads: anything
    but a config group (``+experiment=fig1``), a model's own keyword argument (``+model.depth=3``,
    read by the model's callable) or Hydra's own settings."""
    top, metrics = _yaml_keys()
    for ov in OverridesParser.create().parse_overrides(overrides):
        if not ov.is_add():
            continue
        key = ov.get_key_element().lstrip("+")
        head, _, rest = key.partition(".")
        if key.startswith("hydra") or head == "model" or (not rest and key in GROUPS):
            continue
        known = (head in top and not rest) or (head == "metrics" and rest.split(".")[0] in metrics and
                                                 rest.count(".") == 0)
        hint = " (set it without the leading +)" if known else ""
        raise UsageError(f"unknown option '+{key}': no part of sharpcomp reads it{hint}; see `sharpcomp --help`")


def check_overrides(overrides: list[str], multirun: bool = False) -> None:
    """Compose the train config for every sweep value and validate it; UsageError on the first problem."""
    # lazy: --help and --version stay free of torch and pandas
    from sharpcomp.engine.setup import check_config

    register_resolvers()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_module(config_module=CONFIG_MODULE, version_base="1.3"):
            for n, combo in enumerate(_expand(overrides)):
                if n == 0:
                    _check_appended(combo)
                try:
                    cfg = compose("train", overrides=combo, return_hydra_config=True)
                    plain = OmegaConf.to_container(cfg, resolve=False)
                    plain.pop("hydra", None)
                    plain = OmegaConf.to_container(OmegaConf.create(plain), resolve=True)
                except Exception as exc:
                    raise UsageError(_explain(exc, combo)) from None
                try:
                    check_config(plain)
                except ConfigError as exc:
                    raise UsageError(str(exc)) from None
                HydraConfig.instance().set_config(cfg)
                _check_writable(cfg.hydra.sweep.dir if multirun else cfg.hydra.run.dir)
                job_dir = _job_dir(cfg, multirun)
                if job_dir is not None and not multirun:  # in a sweep, a job's own folder fails that job alone
                    _check_links(job_dir)
                if multirun:  # Hydra writes the sweep's config there with a plain open()
                    _check_links(str(cfg.hydra.sweep.dir), ("multirun.yaml",))
    finally:
        GlobalHydra.instance().clear()


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


def _save_config_safely(cfg, filename: str, output_dir: Path) -> None:
    """Hydra's ``.hydra/*.yaml`` writer, made safe: never through a symbolic link (a linked file or
    folder is left alone, and the run then refuses the folder with one line), written whole."""
    # lazy: --help and --version stay free of torch and pandas
    from sharpcomp.results.records import atomic_write_bytes

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    if output_dir.is_symlink() or (output_dir / filename).is_symlink():
        return
    atomic_write_bytes(output_dir / filename, OmegaConf.to_yaml(cfg).encode("utf-8"))


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
    """The ``train`` task function, with the resolvers of ``conf/train.yaml`` registered."""
    register_resolvers()
    return TrainTask()


def _run_hydra_train(args: list[str], multirun: bool) -> int:
    # lazy: --help and --version stay free of torch and pandas
    from sharpcomp.engine.joblib_sweep import install
    from sharpcomp.engine.jobs import close_outcomes, open_outcomes, sweep_summary

    hydra.core.utils._save_config = _save_config_safely  # Hydra's .hydra/ files: never through a link
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
    finally:
        sys.stdout = stdout
        sys.argv = [argv0]
        if outcomes:
            close_outcomes(outcomes)


# ---------------------------------------------------------------------------------------------


def _train(rest: list[str], multirun: bool) -> int:
    """``sharpcomp [-m] train [key=value ...]``: check every override, then run Hydra."""
    rest = overrides_by_name(rest)
    if "-m" in rest or "--multirun" in rest:
        multirun = True
        rest = [a for a in rest if a not in ("-m", "--multirun")]
    if any(a in ("-h", "--help") for a in rest):
        print(usage())
        return 0
    if any(a.split("=")[0] in HYDRA_VIEW_FLAGS for a in rest):  # a view of the config: Hydra reads its own flags
        return _run_hydra_train(_resolved_view(rest), multirun)
    flags = [a for a in rest if a.startswith("-")]
    if flags:
        raise UsageError(f"unknown flag '{flags[0]}' (options are key=value; see `sharpcomp --help`)")
    rest = implied_custom(rest)
    check_overrides(rest, multirun)
    return _run_hydra_train(rest, multirun)


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
}


def _subcommand(command: str, rest: list[str]) -> int:
    if command not in SUBCOMMANDS:
        raise UsageError(f"unknown command '{command}' (choose from {', '.join(COMMANDS)}; see `sharpcomp --help`)")
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
    with escaped_output():  # names read from results folders never drive the terminal
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
