"""The metrics run in full float32 (TF32 off for CUDA matmuls and cuDNN), whatever the caller set,
and give the caller's settings back afterwards, also when they raise."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn

from sharpcomp.measures import registry
from sharpcomp.measures.curvature import fisher_trace, quotient_trace
from sharpcomp.measures.curvature.quotient_trace import hessian_trace
from sharpcomp.measures.linalg.precision import exact_float32, tf32_settings
from sharpcomp.measures.perturbation import worst_case
from sharpcomp.measures.study.metrics import compute_metrics
from sharpcomp.measures.study.stacked import compute_metrics_stacked
from tests.problems import MLP_N_OUTPUTS, mse

pytestmark = pytest.mark.usefixtures("one_thread")

OFF_LEGACY = {"matmul": "highest", "cudnn": False}


class Spy(nn.Sequential):
    """A small MLP (mlp_n_outputs, N = 3) that records the TF32 settings in force at each forward pass (and
    can raise)."""

    def __init__(self, fail: bool = False):
        super().__init__(*MLP_N_OUTPUTS.variant(outputs=3).model())
        self.seen, self.fail = [], fail

    def forward(self, x):
        if isinstance(x, torch.fx.Proxy):  # traced for its symmetry: no numbers, nothing to record
            return super().forward(x)
        self.seen.append({k: v for k, v in tf32_settings().items() if k in OFF_LEGACY})
        if self.fail:
            raise RuntimeError("boom")
        return super().forward(x)


@pytest.fixture
def tf32_on():
    """The caller trains with TF32 on (legacy flags), and gets its settings back after the test."""
    before = (torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32)
    torch.set_float32_matmul_precision("high")
    torch.backends.cudnn.allow_tf32 = True
    yield tf32_settings()
    torch.set_float32_matmul_precision(before[0])
    torch.backends.cudnn.allow_tf32 = before[1]


def _measures():
    x, y = torch.randn(4, 6), torch.tensor([0, 1, 2, 0])
    gen = torch.Generator().manual_seed(0)
    return {
        "compute_metrics": lambda m: compute_metrics(m, x),
        "compute_metrics_stacked": lambda m: compute_metrics_stacked([m, copy.deepcopy(m)], [x, x]),
        "hessian_trace": lambda m: hessian_trace(m, mse, x, y, probes=2, generator=gen),
        "hutchinson_traces": lambda m: quotient_trace.hutchinson_traces(m, mse, x, y, probes=2, generator=gen),
        "worst_case_sharpness": lambda m: worst_case.worst_case_sharpness(m, mse, [(x, y)], rho=0.01, steps=1),
        "fisher_trace": lambda m: fisher_trace.fisher_trace(m, mse, x, y),
        "compute_measures": lambda m: registry.compute_measures(m, mse, x, y, {"grad_disagreement": {
            "batches": 2, "batch_size": 2}}, gen),
    }


@pytest.mark.parametrize("name", list(_measures()))
def test_every_metric_runs_without_tf32_and_restores_the_settings(name, tf32_on):
    model, run = Spy(), _measures()[name]
    run(model)
    assert model.seen and all(s == OFF_LEGACY for s in model.seen), model.seen
    assert tf32_settings() == tf32_on and tf32_on["cudnn"] is True and tf32_on["matmul"] == "high"
    failing = Spy(fail=True)
    with pytest.raises(RuntimeError, match="boom"):
        run(failing)
    assert failing.seen and all(s == OFF_LEGACY for s in failing.seen) and tf32_settings() == tf32_on


SCENARIOS = textwrap.dedent("""
    import json, sys, torch
    from sharpcomp.measures.linalg.precision import exact_float32, tf32_settings
    b = torch.backends
    setups = {
        "default": lambda: None,
        "legacy_on": lambda: (setattr(b.cuda.matmul, "allow_tf32", True), setattr(b.cudnn, "allow_tf32", True)),
        "medium": lambda: torch.set_float32_matmul_precision("medium"),
        "new_api": lambda: (setattr(b.cuda.matmul, "fp32_precision", "tf32"),
                            setattr(b.cudnn.conv, "fp32_precision", "tf32")),
        "mixed": lambda: (setattr(b.cuda.matmul, "fp32_precision", "tf32"), setattr(b.cudnn, "allow_tf32", True)),
    }
    setups[sys.argv[1]]()
    before = tf32_settings()
    with exact_float32():
        inside = tf32_settings()
    try:
        with exact_float32():
            raise ValueError
    except ValueError:
        pass
    print(json.dumps({"before": before, "inside": inside, "after": tf32_settings()}))
""")


@pytest.mark.skipif(not hasattr(torch.backends.cudnn, "fp32_precision"), reason="torch without fp32_precision")
def test_exact_float32_with_the_legacy_flags_the_new_api_or_both():
    """Each scenario in a fresh process: once the new API set a flag, PyTorch no longer reads the legacy one."""
    for scenario in ("default", "new_api", "mixed"):  # legacy flags alone: the test above, in this process
        out = subprocess.run([sys.executable, "-c", SCENARIOS, scenario], capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        got = json.loads(out.stdout.strip().splitlines()[-1])
        assert got["after"] == got["before"], (scenario, got)
        inside = got["inside"]
        assert inside["cuda.matmul.fp32_precision"] in ("ieee", "none"), (scenario, inside)
        assert inside["cudnn.conv.fp32_precision"] in ("ieee", "none"), (scenario, inside)
        assert inside["cudnn.rnn.fp32_precision"] in ("ieee", "none"), (scenario, inside)
        if "cudnn" in inside:
            assert inside["cudnn"] is False, (scenario, inside)
        if scenario != "default":
            assert got["before"] != inside, scenario  # something was on and was switched off


def test_nested_use_and_decorator():
    before = tf32_settings()

    @exact_float32()
    def inner():
        with exact_float32():
            pass
        return tf32_settings()

    assert {k: v for k, v in inner().items() if k in OFF_LEGACY} == OFF_LEGACY
    assert tf32_settings() == before


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_float32_metrics_match_cpu_float64_with_tf32_on_in_the_caller(tf32_on):
    from sharpcomp.models import build_model

    vgg = build_model("vgg10", num_outputs=10, width=0.25, seed=0).eval()
    x = torch.rand(20, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    cpu = compute_metrics(vgg, x, dtype=torch.float64)
    gpu_model = copy.deepcopy(vgg).cuda()
    gpu = compute_metrics(gpu_model, x.cuda())
    stacked = compute_metrics_stacked([gpu_model, copy.deepcopy(gpu_model)], [x.cuda(), x.cuda()])
    assert tf32_settings() == tf32_on
    for name in ("sharpness", "G", "log_volume", "mls", "local_dim"):
        for got in (gpu[name], stacked[0][name], stacked[1][name]):
            assert got == pytest.approx(cpu[name], rel=1e-6), (name, got, cpu[name])
