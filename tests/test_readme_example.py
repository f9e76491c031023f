"""The README's "Your own network and data" example, run as written: its module file and config are
written into an empty folder, then its commands run there (the sweep with tiny sizes appended, as the
README says)."""

from __future__ import annotations

import re
import shlex
import sys

import pandas as pd

from sharpcomp.cli import main
from sharpcomp.results.records import read_metrics
from tests.conftest import REPO

TINY_SWEEP = ["steps=2", "log_every=2", "metrics.n=2", "progress=false"]


def readme_example() -> tuple[dict[str, str], list[list[str]]]:
    """The section's files (from blocks whose first line is ``# <path>``) and its sharpcomp commands."""
    text = (REPO / "README.md").read_text()
    section = text.split("## Your own network and data", 1)[1].split("\n## ", 1)[0]
    files, commands = {}, []
    for lang, body in re.findall(r"```(\w+)\n(.*?)```", section, flags=re.S):
        first, _, rest = body.partition("\n")
        if lang == "bash":
            commands += [shlex.split(line)[1:] for line in body.splitlines() if line.startswith("sharpcomp ")]
        else:
            files[first.removeprefix("# ").strip()] = rest
    return files, commands


def test_readme_example_runs_as_written(in_tmp, monkeypatch, capsys):
    files, commands = readme_example()
    assert set(files) == {"mynets.py", "conf/model/smallresnet.yaml"} and len(commands) == 2
    for path, body in files.items():
        (in_tmp / path).parent.mkdir(parents=True, exist_ok=True)
        (in_tmp / path).write_text(body)
    monkeypatch.setattr(sys, "path", list(sys.path))  # the working folder is added for mynets: undone after
    sweep, figures = commands
    try:
        assert main(sweep + TINY_SWEEP) == 0
    finally:
        sys.modules.pop("mynets", None)
    runs = sorted((in_tmp / "outputs" / "multirun").rglob("metrics.parquet"))
    assert len(runs) == 4
    # named by what differs from the model's own config (width 8 is smallresnet.yaml's): readable, integers as such
    assert sorted(r.parent.name for r in runs) == sorted(  # lr=0.1 is the default
        f"data.classes=[3,5],log_every=2,{lr}metrics.n=2,scale=demo{width}"
        for lr in ("lr=0.05,", "") for width in ("", ",width=4"))
    rows = pd.concat([read_metrics(r) for r in runs])
    assert (rows.model == "smallresnet").all() and (rows.status == "finished").all()
    assert set(zip(rows.width, rows.lr)) == {(4.0, 0.05), (4.0, 0.1), (8.0, 0.05), (8.0, 0.1)}
    assert (rows.outputs == 2).all() and set(rows.data_source) <= {"image_folder:cifar10-jpeg", "torchvision:cifar10"}
    assert sorted(rows.iteration.unique()) == [0, 2] and rows.sharpness.gt(0).all()
    assert main(figures) == 0
    assert (in_tmp / "figures" / "runs.png").exists(), capsys.readouterr()
