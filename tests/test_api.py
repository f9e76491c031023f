"""The public names of ``sharpcomp``: importable from the package itself, cheaply, and ``load_run``."""

from __future__ import annotations

import subprocess
import sys

import torch

import sharpcomp
from tests.conftest import REPO


def test_import_is_light_and_every_public_name_resolves():
    """``import sharpcomp`` loads neither torch nor matplotlib (nor the command line); each name of
    ``__all__`` is there on first use, from the module it lives in."""
    code = ("import sys, sharpcomp; heavy = [m for m in ('torch', 'matplotlib', 'sharpcomp.cli') if m in sys.modules]; "
            "sharpcomp.compute_metrics; sharpcomp.read_metrics; sharpcomp.train; sharpcomp.load_run; "
            "print(heavy, 'matplotlib' in sys.modules)")
    res = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.split() == ["[]", "False"]
    assert set(sharpcomp.__all__) == {"__version__", *sharpcomp._HOMES}
    for name in sharpcomp.__all__:
        value = getattr(sharpcomp, name)
        assert name == "__version__" or value.__module__ == sharpcomp._HOMES[name], name
    assert set(sharpcomp.__all__) <= set(dir(sharpcomp))


def test_load_run_gives_back_the_trained_network(cfg_small, fmnist_small, tmp_path, monkeypatch):
    """The network ``load_run`` builds from a run folder is the trained one: the same weights and outputs."""
    import sharpcomp.engine.train as engine

    trained = {}
    make_stepper = engine.plain_stepper

    def keep_stepper(m, data):
        trained["stepper"] = make_stepper(m, data)
        return trained["stepper"]

    monkeypatch.setattr(engine, "plain_stepper", keep_stepper)
    result = sharpcomp.train(cfg_small, tmp_path / "run", data=fmnist_small)
    run = sharpcomp.load_run(tmp_path / "run", data=fmnist_small)
    assert run.iteration == 12 and result.status == "finished"
    model = trained["stepper"].model.eval()
    with torch.no_grad():
        assert torch.equal(run.model(fmnist_small.test_x), model(fmnist_small.test_x))
    assert run.settings.lr == cfg_small.lr and run.config["model"]["name"] == "mlp4"
    assert len(run.sample_x) == cfg_small.metrics.n and not run.model.training
    # the same weights as the last checkpoint's state, and the same outputs
    state = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)["model_state"]
    for name, value in run.model.state_dict().items():
        assert torch.equal(value, state[name].cpu()), name
    rows = sharpcomp.read_metrics(tmp_path / "run")
    last = rows[(rows.iteration == 12) & (rows.sample_set == "train")].iloc[0]
    with torch.no_grad():
        out = run.model(run.sample_x)
        loss = run.loss_fn(out, run.sample_y).item()
    assert loss == last.sample_loss or abs(loss - last.sample_loss) <= 1e-6 * abs(last.sample_loss)
    metrics = sharpcomp.compute_metrics(run.model, run.sample_x)
    assert abs(metrics["G"] - last.G) <= 1e-5 * abs(last.G)
