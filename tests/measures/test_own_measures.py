"""A measure of the user's own (``tests/own_measures.py``, outside the package): switched on by ``_target_`` or
an installed package's entry point; it logs, resumes, appears in ``reparam`` and ``figures``, and a results
folder naming it is read only when the command line names it (or as data)."""

from __future__ import annotations

import math
import subprocess
import sys
import textwrap

import pandas as pd
import pytest
import torch

from sharpcomp.cli import main as cli_main
from sharpcomp.engine.loading import MeasureNotNamed, load_run
from sharpcomp.measures.registry import plan
from sharpcomp.measures.sample import Sample
from sharpcomp.overrides import overrides_by_name
from sharpcomp.results.records import read_metrics
from sharpcomp.settings import ConfigError, flatness_by_name, run_identity, settings
from tests import problems
from tests.conftest import REPO, TINY, compose_train

MARGIN = "{_target_: tests.own_measures.MEASURE, n: 16}"


def margin_by_hand(model, x, y) -> float:
    """The mean of f_y - max_{k != y} f_k, in float64, one sample at a time."""
    total = 0.0
    with torch.no_grad():
        for xi, yi in zip(x.double(), y):
            f = model.double()(xi[None])[0]
            total += float(f[yi] - max(f[k] for k in range(len(f)) if k != yi))
    return total / len(x)


def test_a_measure_of_ones_own_is_planned_and_computed_as_declared():
    chosen = plan({"margin": {"_target_": "tests.own_measures.MEASURE", "n": 1000}, "grad_norm": {}})
    assert chosen.names == ("grad_norm", "margin") and chosen.settings("margin").n == 1000
    case = problems.MLP_3_CLASSES.make()
    out = chosen.compute(Sample(case.model, case.loss_fn, case.x, case.y, torch.Generator().manual_seed(0)))
    assert out["margin"] == pytest.approx(margin_by_hand(case.model, case.x, case.y), rel=1e-12)
    assert out["margin_se"] > 0 and math.isfinite(out["grad_norm"])
    assert plan({"margin": {"_target_": "tests.own_measures"}}).names == ("margin",)  # a module: its MEASURE


REFUSED = [
    ({"mine": {"_target_": "tests.own_measures.MEASURE"}},
     "metrics.flatness.mine: tests.own_measures.MEASURE declares the measure 'margin'; a measure is switched on "
     "under its own name (metrics.flatness.margin)"),
    ({"margin": {"_target_": "tests.own_measures.margin"}},
     "metrics.flatness.margin: tests.own_measures.margin is not a measure's declaration"),
    ({"margin": {"_target_": "tests.nowhere.MEASURE"}}, "cannot import metrics.flatness.margin._target_"),
    ({"margin": {"_target_": "tests.own_measures.MEASURE", "n": 0}}, "metrics.flatness.margin.n must be > 0, got 0"),
    ({"margin": {"_target_": "tests.own_measures.MEASURE", "k": 1}}, "unknown setting metrics.flatness.margin.k"),
    ({"taken": {"_target_": "tests.own_measures.TAKEN"}}, "column 'sharpness' is one sharpcomp writes"),
    ({"on_request": {"_target_": "tests.own_measures.ON_REQUEST"}}, "computed at the flatness cadence"),
    ({"margin": {"_target_": "tests.own_measures.MEASURE"}, "clash": {"_target_": "tests.own_measures.CLASH"}},
     "metrics.flatness.clash and metrics.flatness.margin both write the column 'margin'"),
]


@pytest.mark.parametrize("entry, message", REFUSED, ids=[m[:40] for _, m in REFUSED])
def test_the_registry_refuses_with_one_line(entry, message):
    with pytest.raises(ValueError) as info:
        plan(flatness_by_name(entry))
    assert message in str(info.value) and "\n" not in str(info.value)


def test_the_settings_check_the_structure_without_the_code():
    """No import: a well-formed entry passes the settings, a malformed one is refused there."""
    assert flatness_by_name({"mine": {"_target_": "nowhere.at.all"}}) == {"mine": {"_target_": "nowhere.at.all"}}
    for entry, message in (({"hessian_max": {"_target_": "a.b"}}, "is a built-in measure"),
                           ({"mine": {"_target_": "not dotted"}}, "must be a dotted path"),
                           ({"mine": {}}, "unknown metrics.flatness key 'mine'"),
                           ({"2x": {"_target_": "a.b"}}, "a measure's name is a letter")):
        with pytest.raises(ConfigError, match=message):
            flatness_by_name(entry)
    assert overrides_by_name(["metrics.flatness.mine={_target_: a.b}", "metrics.flatness.average={}"]) == \
        ["+metrics.flatness.mine={_target_: a.b}", "metrics.flatness.average={}"]


def test_run_ids_change_only_with_a_measure_of_ones_own():
    base = compose_train(["data=fashion_mnist", "model=mlp4"])
    plain = run_identity(settings(base))["run_id"]
    own = compose_train(["data=fashion_mnist", "model=mlp4", f"+metrics.flatness.margin={MARGIN}"])
    assert run_identity(settings(own))["run_id"] != plain
    assert run_identity(settings(compose_train(["data=fashion_mnist", "model=mlp4"])))["run_id"] == plain


def test_an_installed_packages_measure_by_its_entry_point(tmp_path):
    """A package declaring ``sharpcomp.measures`` entry points: its measure is switched on by name."""
    (tmp_path / "theirs.py").write_text(textwrap.dedent("""
        import dataclasses
        from tests import own_measures
        MEASURE = dataclasses.replace(own_measures.MEASURE, name="their_margin",
                                      columns=tuple(dataclasses.replace(c, name="their_" + c.name,
                                                    of=c.of and "their_" + c.of)
                                                    for c in own_measures.MEASURE.columns),
                                      reparam={"their_margin": "stays"},
                                      compute=lambda sample, s: {"their_" + k: v for k, v in
                                                                 own_measures.compute(sample, s).items()})
    """))
    info = tmp_path / "theirs-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: theirs\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[sharpcomp.measures]\ntheir_margin = theirs:MEASURE\n")
    code = textwrap.dedent("""
        from sharpcomp.measure_names import plugin_names
        from sharpcomp.measures.registry import plan
        from sharpcomp.overrides import overrides_by_name
        from sharpcomp.settings import flatness_by_name
        chosen = plan(flatness_by_name({"their_margin": {"n": 3}, "hessian_max": None}))
        print(plugin_names(), chosen.names, chosen.settings("their_margin").n,
              overrides_by_name(["metrics.flatness.their_margin={}"]))
    """)
    res = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300,
                         env={**__import__("os").environ, "PYTHONPATH": f"{tmp_path}:{REPO}"})
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip() == "('their_margin',) ('their_margin',) 3 ['+metrics.flatness.their_margin={}']"


# ---------------------------------------------------------------------------------------------------------
# the command line: train, resume, reparam, measure, figures


def run_cli(args: list[str], capsys) -> tuple[int, str, str]:
    try:
        code = cli_main(args)
    except SystemExit as exc:  # a train job ends the process with its status
        code = exc.code
    out = capsys.readouterr()
    return code, out.out, out.err


def test_a_train_run_logs_resumes_and_is_read_with_its_measure_named(in_tmp, capsys, one_thread):
    own = f"metrics.flatness.margin={MARGIN}"
    code, _, err = run_cli(["train", *TINY, own, "hydra.run.dir=run"], capsys)
    assert code == 0, err
    rows = read_metrics(in_tmp / "run")
    train = rows[rows.sample_set == "train"]
    assert list(train.iteration) == [0, 2, 4] and train.margin.notna().all() and train.margin_se.notna().all()
    # resume: the same command with more steps goes on from the checkpoint at 4
    code, _, err = run_cli(["train", *[a for a in TINY if not a.startswith("steps=")], "steps=6", own,
                            "hydra.run.dir=run"], capsys)
    assert code == 0 and "resumed at iteration 4" in err
    rows = read_metrics(in_tmp / "run")
    assert list(rows.iteration) == [0, 2, 4, 6] and rows.margin.notna().all()
    # the command line that does not name it is another run: refused in that folder
    code, _, err = run_cli(["train", *TINY, "hydra.run.dir=run"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "holds another run" in err

    # reparam: refused unless named; named, its row is there and stays
    code, out, err = run_cli(["reparam", "run", "n=4", "probes=0"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert ("the run measured 'margin' with code of its own (tests.own_measures.MEASURE); a stored config never "
            "chooses code: name it on the command line ('metrics.flatness.margin={_target_: "
            "tests.own_measures.MEASURE}')") in err
    code, out, err = run_cli(["reparam", "run", "n=4", "probes=0",
                              "metrics.flatness.margin={_target_: tests.own_measures.MEASURE}"], capsys)
    assert code == 0, err
    line = next(ln for ln in out.splitlines() if ln.startswith("margin "))
    assert line.split()[-2:] == ["False", "stays"]  # not moved, as declared
    assert "margin" in next(ln for ln in out.splitlines() if ln.startswith("unchanged:")).split()

    # measure run=: the same rule
    code, _, err = run_cli(["measure", "run=run", "n=8", "out=measured"], capsys)
    assert code == 2 and "the run measured 'margin' with code of its own" in err
    code, _, err = run_cli(["measure", "run=run", "n=8", "out=measured",
                            "metrics.flatness.margin={_target_: tests.own_measures.MEASURE, n: 8}"], capsys)
    assert code == 0, err
    assert math.isfinite(pd.read_parquet(in_tmp / "measured" / "metrics.parquet").margin.iloc[0])

    # a command that computes none of the run's measures (landscape, a notebook's load_run) leaves it out
    assert load_run(in_tmp / "run").settings.metrics.flatness.get("margin") is None
    with pytest.raises(MeasureNotNamed):
        load_run(in_tmp / "run", measures={})

    # figures: its columns are data
    code, out, err = run_cli(["figures", "run", "--out", "figs", "--only", "flatness"], capsys)
    assert code == 0 and "flatness: wrote" in out and "margin" in out
    drawn = pd.read_csv(in_tmp / "figs" / "flatness.csv")
    assert set(drawn.column) == {"sqrt_sharpness", "margin"} and drawn.se.notna().any()
