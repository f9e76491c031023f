"""Reading a results tree never waits, never fills the memory, never follows a link: what stands where a
results file belongs (a FIFO, a link to /dev/zero, a socket, a 200 GB file of holes, a link to a file
elsewhere, another program's parquet) gets one line. Each reader runs in a real process bounded in time
and memory, so a regression fails instead of hanging the suite."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd
import pytest
import yaml

from sharpcomp.results.own_files import RecordError, append_bytes, open_regular, read_regular
from sharpcomp.results.stored_text import MAX_DEPTH, plain_references, settings_json
from tests.hostile import ALIAS_BOMB, LIST_BOMB, TEXT_BOMB, VICTIM_TEXT, python, replace, victim

ROWS = {"run_id": ["r", "r"], "iteration": [0, 2], "sample_set": ["train", "train"], "G": [1.0, 2.0]}

# where: the path under the run folder R that is replaced; what: the hostile thing put there
READS = [
    ("metrics.parquet", "fifo", "is a FIFO, not a regular file"),
    ("metrics.parquet", "zero", "is a symbolic link"),
    ("metrics.parquet", "socket", "is not a regular file"),
    ("metrics.parquet", "sparse", "it is 200 GB, more than such a file can hold"),
    ("metrics.parquet", "outside", "is a symbolic link"),
    ("metrics.parquet/part-000000000.parquet", "sparse", "it is 200 GB, more than such a file can hold"),
    ("metrics.parquet/_status", "fifo", "is not a file"),
]

READER = """
import sys, resource
from sharpcomp.results.records import RecordError, read_metrics
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
for name in sys.argv[1:]:
    try:
        frame = read_metrics(name)
        print(f"{name}: read {len(frame)} rows", flush=True)
    except RecordError as exc:
        print(f"{name}: refused: {exc}", flush=True)
print(f"grew {(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) // 1024} MB", flush=True)
"""


def _run_folder(root: Path, name: str) -> Path:
    run = root / name / "metrics.parquet"
    run.mkdir(parents=True)
    pd.DataFrame(ROWS).to_parquet(run / "part-000000000.parquet")
    (run / "_status").write_text("finished\n")
    return run.parent


def test_every_hostile_results_file_is_refused_at_once_in_bounded_memory(tmp_path):
    runs = []
    for k, (where, what, _) in enumerate(READS):
        run = _run_folder(tmp_path, f"R{k}")
        replace(run / where, what, tmp_path)
        runs.append(run.name)
    good = _run_folder(tmp_path, "good").name
    res = python(READER.replace("sys.argv[1:]", repr([*runs, good])), tmp_path, timeout=90)
    assert res.returncode == 0, res.stderr[-3000:]
    lines = dict(ln.split(": ", 1) for ln in res.stdout.splitlines() if ": " in ln)
    for run, (where, what, message) in zip(runs, READS):
        assert lines[run].startswith("refused") and message in lines[run], (where, what, lines[run])
    assert lines[good] == "read 2 rows"
    # nothing was read whole: the peak grew by little over what the imports took (their size varies by machine)
    assert int(res.stdout.split("grew ")[1].split()[0]) < 250, res.stdout
    assert (tmp_path / "home" / "victim.txt").read_text() == VICTIM_TEXT


def test_a_foreign_parquet_folder_is_no_run(tmp_path):
    """Another program's dataset (Spark's part names) where a run's results belong: not a run of NaNs."""
    from sharpcomp.results.records import read_metrics
    from sharpcomp.results.sweep import read_runs

    folder = tmp_path / "spark" / "metrics.parquet"
    folder.mkdir(parents=True)
    pd.DataFrame({"user": [1, 2], "score": [0.5, 0.7]}).to_parquet(folder / "part-00000-1f2e.c000.snappy.parquet")
    with pytest.raises(RecordError, match="not a sharpcomp results file .missing columns: iteration, run_id"):
        read_metrics(folder)
    _run_folder(tmp_path, "good")
    with pytest.warns(UserWarning, match="skipped .*spark.*not a sharpcomp results file"):
        frame = read_runs(tmp_path)
    assert set(frame["run"]) == {"good"}


def test_a_damaged_file_is_refused_with_a_reason(tmp_path):
    """Whatever pyarrow or the memory says, the line names a reason (never an empty one)."""
    from sharpcomp.results.records import read_metrics

    run = _run_folder(tmp_path, "R")
    (run / "metrics.parquet" / "part-000000000.parquet").write_bytes(b"PAR1" + b"\0" * 64)
    with pytest.raises(RecordError) as exc:
        read_metrics(run)
    why = str(exc.value).split(": ", 1)[1]
    assert str(exc.value).startswith("cannot read results file") and why.strip() and not why.startswith(";")


# --- the primitives --------------------------------------------------------------------------------


@pytest.mark.parametrize("what,message", [("fifo", "a FIFO"), ("zero", "symbolic link"), ("socket", "not a regular"),
                                          ("outside", "symbolic link"), ("folder", "a folder"),
                                          ("sparse", "more than such a file can hold")])
def test_open_regular_refuses_what_is_not_a_small_regular_file(tmp_path, what, message):
    path = tmp_path / "R" / "file"
    replace(path, what, tmp_path)
    res = python(f"from sharpcomp.results.own_files import open_regular\nopen_regular({str(path)!r}, 2**30)",
                 tmp_path, timeout=30)
    assert res.returncode == 1 and "RecordError" in res.stderr and message in res.stderr, res.stderr[-2000:]


def test_read_regular_reads_a_regular_file_and_no_more_than_its_bound(tmp_path):
    (tmp_path / "f").write_bytes(b"x" * 100)
    assert read_regular(tmp_path / "f", 100) == b"x" * 100
    with pytest.raises(RecordError, match="100 bytes, more than such a file can hold .99 bytes at most"):
        read_regular(tmp_path / "f", 99)
    with pytest.raises(FileNotFoundError):
        open_regular(tmp_path / "absent")


@pytest.mark.parametrize("what", ["outside", "fifo", "socket", "folder"])
def test_append_bytes_never_writes_through_a_link_or_into_a_fifo(tmp_path, what):
    path = tmp_path / "R" / "metrics.csv"
    replace(path, what, tmp_path)
    res = python(f"from sharpcomp.results.own_files import append_bytes\nappend_bytes({str(path)!r}, b'row\\n')",
                 tmp_path, timeout=30)
    assert res.returncode == 1 and "RecordError" in res.stderr, res.stderr[-2000:]
    assert (tmp_path / "home" / "victim.txt").read_text() == VICTIM_TEXT if what == "outside" else True


def test_append_bytes_writes_the_header_once(tmp_path):
    for rows in (b"1,2\n", b"3,4\n"):
        append_bytes(tmp_path / "m.csv", rows, header=b"a,b\n")
    assert (tmp_path / "m.csv").read_bytes() == b"a,b\n1,2\n3,4\n"


# --- stored text: YAML and JSON within bounds -------------------------------------------------------

NAMER = """
import resource, sys
from pathlib import Path
from sharpcomp.results.run_names import _recorded_name
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
for name in sys.argv[1:]:
    print(f"{name}: {_recorded_name(Path(name))}", flush=True)
print(f"grew {(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) // 1024} MB", flush=True)
"""

SIBLINGS = {  # a sibling's .hydra/config.yaml (hydra.yaml is the real one)
    "alias_bomb": ALIAS_BOMB, "text_bomb": TEXT_BOMB, "list_bomb": LIST_BOMB,
    "deep": "a: " + "[" * 100_000 + "]" * 100_000 + "\n",
}


def test_sibling_configs_that_would_expand_are_not_read(tmp_path, tiny_run):
    """Run-folder naming reads siblings' recorded settings: a YAML alias bomb, OmegaConf interpolation
    bombs (a text and a list), nesting past the recursion limit, a 200 GB file, a FIFO, a link to
    /dev/zero and a link to a file elsewhere are each passed over, at once and in little memory."""
    names = [*SIBLINGS, "sparse", "fifo", "zero", "outside", "hydra_alias_bomb"]
    for name in names:
        (tmp_path / name / ".hydra").mkdir(parents=True)
        (tmp_path / name / ".hydra" / "hydra.yaml").write_bytes((tiny_run / ".hydra" / "hydra.yaml").read_bytes())
        config = tmp_path / name / ".hydra" / "config.yaml"
        if name in SIBLINGS:
            config.write_text(SIBLINGS[name])
        elif name == "hydra_alias_bomb":
            config.write_bytes((tiny_run / ".hydra" / "config.yaml").read_bytes())
            (tmp_path / name / ".hydra" / "hydra.yaml").write_text(ALIAS_BOMB)
        else:
            replace(config, name, tmp_path)
    (tmp_path / "good").symlink_to(tiny_run)
    res = python(NAMER.replace("sys.argv[1:]", repr([*names, "good"])), tmp_path, timeout=90)
    assert res.returncode == 0, res.stderr[-3000:]
    lines = dict(ln.split(": ", 1) for ln in res.stdout.splitlines() if ": " in ln)
    assert {n: lines[n] for n in names} == dict.fromkeys(names, "None")
    assert lines["good"] == "log_every=2,metrics.n=4,width=0.05"
    assert int(res.stdout.split("grew ")[1].split()[0]) < 250, res.stdout


@pytest.mark.parametrize("text,plain", [
    ("steps: ${data.quick_steps}\ndata: {quick_steps: 5}", True),  # as Hydra stores scale=quick
    ("a: ${b}${b}\nb: x", False), ("a: ${b}\nb: [1, 2]", False), ("a: ${b}\nb: ${c}\nc: 1", False),
    ("a: ['${b}', '${b}']\nb: x", True), ("a: ['${b}', '${b}']\nb: ['${c}', '${c}']\nc: x", False),
    ("a: ${oc.env:HOME}", False), ("a: ${missing}", False), ("a: x${b}\nb: 1", False),
])
def test_only_references_to_plain_values_are_resolved(text, plain):
    assert plain_references(yaml.safe_load(text)) is plain


def test_settings_json_is_bounded_in_depth_and_size():
    assert settings_json('{"lr": 0.1, "model": {"name": "mlp4"}}') == {"lr": 0.1, "model": {"name": "mlp4"}}
    deep = '{"a": ' * (MAX_DEPTH + 1) + "1" + "}" * (MAX_DEPTH + 1)
    assert settings_json(deep) is None
    assert settings_json("[" * 200_000 + "]" * 200_000) is None  # json.loads alone: RecursionError
    assert settings_json('{"a": "' + "[" * 1000 + '"}') == {"a": "[" * 1000}  # brackets inside text are text
    assert settings_json(json.dumps({"k": "x" * 2_000_000})) is None
    assert settings_json("[1]") is None and settings_json(None) is None and settings_json("{bad") is None


def test_a_linked_mlflow_id_or_csv_is_never_read_through(tmp_path):
    target = victim(tmp_path)
    os.symlink(target, tmp_path / "id")
    with pytest.raises(RecordError, match="symbolic link"):
        read_regular(tmp_path / "id", 256)
    assert Path(target).read_text() == VICTIM_TEXT
