"""The mean of Monte-Carlo samples and its standard error, as every stochastic measure reports them.

For samples v_1..v_n (float64): value = mean(v), se = std(v, ddof=1) / sqrt(n), NaN from a single sample.
"""

from __future__ import annotations

import math

from torch import Tensor

from sharpcomp.measures.declaration import Estimate


def sample_mean(values: Tensor) -> Estimate:
    """The mean of the 1-D tensor ``values`` with its standard error and sample count."""
    se = float(values.std(unbiased=True) / math.sqrt(len(values))) if len(values) > 1 else math.nan
    return Estimate(float(values.mean()), se=se, samples=len(values))
