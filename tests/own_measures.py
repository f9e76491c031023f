"""Measures of a user's own, declared outside sharpcomp as ``docs/measures.md`` describes, for the tests:
``'metrics.flatness.margin={_target_: tests.own_measures.MEASURE}'`` switches on :data:`MEASURE`.

* :data:`MEASURE` (``margin``): the mean classification margin f_y(x) - max_{k != y} f_k(x) on ``n`` training
  points drawn at each checkpoint, with its standard error; a function of the network's outputs alone, so it
  stays under the ReLU rescaling;
* :data:`BROKEN` (``broken``): raises at every checkpoint;
* :data:`NOISY` (``noisy``): draws from torch's, numpy's and Python's global random streams;
* :data:`KILLER` (``killer``): kills its own process (SIGKILL) at its k-th call, k written in the file named by
  ``$SHARPCOMP_TEST_KILL_FILE`` (deleted first): a kill in the middle of a checkpoint;
* :data:`CLASH`, :data:`TAKEN`, :data:`ON_REQUEST`: declarations the registry refuses (a column another measure
  of one's own writes, a column sharpcomp writes, a cadence other than ``flatness``).
"""

from __future__ import annotations

import math
import os
import random
import signal
from dataclasses import dataclass

import numpy as np
import torch

from sharpcomp.measures.declaration import Column, Estimate, Measure, NoSettings, setting
from sharpcomp.measures.sample import Sample


def margin(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> Estimate:
    """The mean margin f_y - max_{k != y} f_k over (x, y) and its standard error (the model in eval mode)."""
    with torch.no_grad():
        out = model(x).double()
    true = out.gather(1, y[:, None]).squeeze(1)
    others = out.scatter(1, y[:, None], -math.inf).amax(dim=1)
    m = true - others
    se = float(m.std() / math.sqrt(len(m))) if len(m) > 1 else math.nan
    return Estimate(float(m.mean()), se=se, samples=len(m))


@dataclass(frozen=True)
class Settings:
    """``metrics.flatness.margin``."""

    n: int = setting(64, above=0, doc="training points, drawn anew at each checkpoint")


def compute(sample: Sample, s: Settings) -> dict[str, float]:
    x, y = sample.subset(s.n)
    est = margin(sample.model, x, y)
    return {"margin": est.value, "margin_se": est.se}


MEASURE = Measure(
    name="margin", family="baseline", settings=Settings, compute=compute, stochastic=True,
    summary="the mean classification margin f_y - max_k f_k on n training points",
    columns=(Column("margin"), Column("margin_se", role="se", of="margin")), reparam={"margin": "stays"})


def _broken(sample: Sample, s) -> dict:
    raise ValueError("no margin here\nsecond line")


BROKEN = Measure(name="broken", family="baseline", summary="raises", columns=(Column("broken"),),
                 compute=_broken, settings=NoSettings)


def _noisy(sample: Sample, s) -> dict:
    return {"noisy": float(torch.rand(1)) + float(np.random.rand()) + random.random()}


NOISY = Measure(name="noisy", family="baseline", summary="draws from the global random streams",
                columns=(Column("noisy"),), compute=_noisy, settings=NoSettings)


_calls = [0]


def _killer(sample: Sample, s) -> dict:
    """SIGKILL at the k-th call, k read from the file ``$SHARPCOMP_TEST_KILL_FILE`` (deleted first)."""
    _calls[0] += 1
    flag = os.environ.get("SHARPCOMP_TEST_KILL_FILE")
    if flag and os.path.exists(flag) and int(open(flag).read()) == _calls[0]:
        os.unlink(flag)
        os.kill(os.getpid(), signal.SIGKILL)
    return {"killer": 1.0}


KILLER = Measure(name="killer", family="baseline", summary="kills its process once", columns=(Column("killer"),),
                 compute=_killer, settings=NoSettings)


# ---- declarations the registry refuses or that clash ------------------------------------------------------

CLASH = Measure(name="clash", family="baseline", summary="writes margin, as margin does",
                columns=(Column("clash"), Column("margin", role="diagnostic", of="clash")),
                compute=lambda sample, s: {"clash": 0.0, "margin": 0.0}, settings=NoSettings)
TAKEN = Measure(name="taken", family="baseline", summary="writes a column sharpcomp writes",
                columns=(Column("taken"), Column("sharpness", role="diagnostic", of="taken")),
                compute=lambda sample, s: {}, settings=NoSettings)
ON_REQUEST = Measure(name="on_request", family="baseline", summary="computed on request only", cadence="request",
                     columns=(Column("on_request"),), compute=lambda sample, s: {}, settings=NoSettings)
