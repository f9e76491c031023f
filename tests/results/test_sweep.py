"""A sweep read as one table (``read_runs``, ``sharpcomp runs DIR``); a finished run rerun says so
without loading data; a resumed run says where it resumed."""

from __future__ import annotations

import pytest

from sharpcomp.cli import main
from sharpcomp.engine.train import train
from sharpcomp.results.records import read_metrics
from sharpcomp.results.sweep import read_runs, summarize
from tests.conftest import TINY


@pytest.fixture
def sweep(in_tmp, capsys):
    assert main(["-m", "train", *TINY, "lr=0.05,0.2"]) == 0
    capsys.readouterr()
    return in_tmp / "outputs" / "multirun"


def test_read_runs_and_the_summary_of_a_sweep(sweep, capsys, monkeypatch):
    frame = read_runs(sweep)
    runs = sorted(set(frame.run))
    assert runs == ["fashion_mnist-mlp4/log_every=2,lr=0.05,metrics.n=4,width=0.05",
                    "fashion_mnist-mlp4/log_every=2,lr=0.2,metrics.n=4,width=0.05"]
    one = read_metrics(sweep / runs[0])
    assert len(frame) == 2 * len(one) and set(frame.lr) == {0.05, 0.2}
    table = summarize(frame)
    assert list(table.run) == runs and list(table.lr) == [0.05, 0.2] and "seed" not in table
    assert list(table.status) == ["finished"] * 2 and list(table.iteration) == [4, 4]
    last = one[(one.sample_set == "train") & (one.iteration == 4)].iloc[0]
    assert table.iloc[0]["G"] == last["G"] and table.iloc[0]["test_acc"] == last["test_acc"]
    assert main(["runs", str(sweep)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:3] == ["run", "lr", "status"] and len(out) == 3 and "finished" in out[1]
    assert main(["runs", str(sweep / "nothing")]) == 2
    # rerun: finished, without loading any data
    monkeypatch.setattr("sharpcomp.engine.setup.load_from_config",
                        lambda *a, **k: (_ for _ in ()).throw(AssertionError("data loaded")))
    assert main(["-m", "train", *TINY, "lr=0.05,0.2"]) == 0
    err = capsys.readouterr().err
    assert err.count("finished at iteration 4; nothing to train") == 2


class Stop(KeyboardInterrupt):
    pass


def test_a_resumed_run_says_where(cfg_small, fmnist_small, tmp_path, capsys):
    def stop(it, rows):
        if it == 4:
            raise Stop

    with pytest.raises(Stop):
        train(cfg_small, tmp_path / "run", data=fmnist_small, callback=stop)
    capsys.readouterr()
    assert train(cfg_small, tmp_path / "run", data=fmnist_small).status == "finished"
    assert f"{tmp_path / 'run'}: resumed at iteration 4" in capsys.readouterr().err
