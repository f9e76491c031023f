"""Command line: ``sharpcomp [-m] <command> [overrides...]``.

``train`` is a Hydra application (config ``conf/train.yaml``, shipped as the package
``sharpcomp.conf``); ``-m`` runs a Hydra multirun sweep with any launcher. Overrides are checked
before Hydra starts, so a typo gets one clear line and a non-zero exit instead of a traceback.
"""

from __future__ import annotations

import itertools
import os
import re
import shutil
import sys
from importlib import resources
from pathlib import Path

from omegaconf import OmegaConf

CONFIG_MODULE = "sharpcomp.conf"
CONFIG_PATH = f"pkg://{CONFIG_MODULE}"
GROUPS = ("data", "model", "scale", "optim", "experiment")
EXIT_USAGE = 2
# Hydra's flags for looking at the composed config (e.g. `sharpcomp train --cfg job`)
HYDRA_INSPECT_FLAGS = ("--cfg", "-c", "--package", "-p", "--info", "-i", "--resolve")

NAME_MAX = 200  # bytes of a run folder's name (file systems allow 255); longer names get a digest


def run_name(overrides: str) -> str:
    """A run folder's name from Hydra's override_dirname ("default" without overrides); a name over
    ``NAME_MAX`` bytes is cut and ends in a digest of the whole (the full overrides stay in .hydra/)."""
    import hashlib

    name = overrides.replace("/", "_") if overrides else "default"
    raw = name.encode()
    if len(raw) <= NAME_MAX:
        return name
    digest = hashlib.sha1(raw).hexdigest()[:12]
    return raw[:NAME_MAX - 14].decode(errors="ignore") + "--" + digest


OmegaConf.register_new_resolver("sc_run_name", run_name, replace=True)


class UsageError(Exception):
    pass


def _err(msg: str, code: int = EXIT_USAGE) -> int:
    print(f"sharpcomp: error: {msg}", file=sys.stderr)
    return code


# ---------------------------------------------------------------------------------------------
# help


def _group_options(group: str) -> list[str]:
    folder = resources.files(CONFIG_MODULE) / group
    if not folder.is_dir():
        return []
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))


def _option_lines() -> list[str]:
    """Top-level and metrics options of conf/train.yaml with their inline comments."""
    text = (resources.files(CONFIG_MODULE) / "train.yaml").read_text()
    lines, section = [], ""
    for raw in text.splitlines():
        if raw.startswith(("defaults", "hydra", "  -", "#")) or not raw.strip():
            if raw.startswith("hydra"):
                break
            continue
        m = re.match(r"^(\s*)([A-Za-z_]+):\s*([^#]*?)\s*(?:#\s*(.*))?$", raw)
        if not m:
            continue
        indent, key, value, comment = m.groups()
        if not indent and not value:
            section = key + "."
            continue
        name = (section if indent else "") + key
        if not indent:
            section = ""
        lines.append(f"  {name + '=' + value:<28} {comment or ''}".rstrip())
    return lines


def usage() -> str:
    groups = "\n".join(f"  {('+' if g == 'experiment' else '') + g + '=':<14}{' | '.join(_group_options(g))}"
                       for g in GROUPS)
    return f"""usage: sharpcomp [-m] <command> [key=value ...]

Train small networks with SGD and log loss flatness (sharpness) next to representation
compression (G, log volume, maximum local sensitivity, local dimensionality, bounds).

commands:
  train     train one run; with -m, a Hydra multirun sweep (lr=0.05,0.1,0.2 seed=0,1,2)
  figures   draw the study's figures from result folders (sharpcomp figures --help)
  reparam   rescale one layer of a trained run and compare every metric (sharpcomp reparam --help)
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

options (train, with defaults):
{chr(10).join(_option_lines())}

Hydra flags pass through, e.g. `sharpcomp train --cfg job` prints the composed config.
Results: outputs/runs/<data>-<model>/<overrides>/metrics.parquet (multirun: outputs/multirun/...)."""


# ---------------------------------------------------------------------------------------------
# override checks


def _expand(overrides: list[str]) -> list[list[str]]:
    """Override lists to compose for checking: every value of every sweep at least once."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

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
        options = _group_options(group)
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
    from hydra.core.global_hydra import GlobalHydra

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
        probe = path / f".sharpcomp-write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise UsageError(f"cannot write to output folder {path}: {exc.strerror or exc}") from None
    finally:
        for p in reversed(made):
            try:
                p.rmdir()
            except OSError:
                pass


def check_overrides(overrides: list[str], multirun: bool = False) -> None:
    """Compose the train config for every sweep value and validate it; UsageError on the first problem."""
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig

    from sharpcomp.engine.train import check_config
    from sharpcomp.settings import ConfigError

    GlobalHydra.instance().clear()
    try:
        with initialize_config_module(config_module=CONFIG_MODULE, version_base="1.3"):
            for combo in _expand(overrides):
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
    finally:
        GlobalHydra.instance().clear()


# ---------------------------------------------------------------------------------------------
# the train job


def _train_job(cfg) -> str:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from sharpcomp.engine.jobs import JobExit, run_job
    from sharpcomp.engine.train import train

    hc = HydraConfig.get()
    run_dir = Path(hc.runtime.output_dir)
    try:
        return run_job(lambda: [train(cfg, run_dir)], [run_dir], hc.mode == RunMode.MULTIRUN)[0]
    except JobExit as exc:
        sys.exit(exc.code)


def _run_hydra_train(args: list[str], multirun: bool) -> int:
    import hydra

    @hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="train")
    def app(cfg):
        return _train_job(cfg)

    import tempfile

    from sharpcomp.engine.jobs import OUTCOMES_ENV, sweep_summary

    argv0 = sys.argv[0]
    sys.argv = [argv0] + (["--multirun"] if multirun else []) + args
    outcomes = tempfile.mkdtemp(prefix=".sharpcomp-sweep-", dir=".") if multirun and os.access(".", os.W_OK) \
        else tempfile.mkdtemp(prefix="sharpcomp-sweep-") if multirun else None
    if outcomes:
        os.environ[OUTCOMES_ENV] = os.path.abspath(outcomes)
    try:
        app()
        return sweep_summary(Path(outcomes)) if outcomes else 0
    finally:
        sys.argv = [argv0]
        if outcomes:
            os.environ.pop(OUTCOMES_ENV, None)
            shutil.rmtree(outcomes, ignore_errors=True)


# ---------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    multirun = False
    while argv and argv[0] in ("-m", "--multirun"):
        multirun = True
        argv.pop(0)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0 if argv else EXIT_USAGE
    command, rest = argv[0], argv[1:]
    try:
        if command == "train":
            if "-m" in rest or "--multirun" in rest:
                multirun = True
                rest = [a for a in rest if a not in ("-m", "--multirun")]
            if any(a in ("-h", "--help") for a in rest):
                print(usage())
                return 0
            if any(a.split("=")[0] in HYDRA_INSPECT_FLAGS for a in rest):
                return _run_hydra_train(rest, multirun)  # inspection only: Hydra reads its own flags
            flags = [a for a in rest if a.startswith("-")]
            if flags:
                raise UsageError(f"unknown flag '{flags[0]}' (options are key=value; see `sharpcomp --help`)")
            check_overrides(rest, multirun)
            return _run_hydra_train(rest, multirun)
        if multirun:
            raise UsageError(f"-m applies to train only, not '{command}'")
        if command == "figures":
            from sharpcomp.figures.command import main as figures_main

            return figures_main(rest)
        if command == "reparam":
            from sharpcomp.measures.reparam import main as reparam_main

            return reparam_main(rest)
        if command == "landscape":
            from sharpcomp.figures.landscape_command import main as landscape_main

            return landscape_main(rest)
        raise UsageError(f"unknown command '{command}' (choose from train, figures, reparam, landscape; "
                         "see `sharpcomp --help`)")
    except UsageError as exc:
        return _err(str(exc))
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
