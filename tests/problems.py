"""Named test problems: the small networks, data stand-ins and losses the tests share.

Modelled on BackPACK's ``test/core/derivatives/problem.py`` and curvlinops' test cases: a
:class:`Problem` is a frozen description (a network builder and its arguments, a data sampler, the
input shape, the number of outputs and of samples, a seed, the loss, the precision its numbers are
drawn in), and :meth:`Problem.make` builds ``(model, loss_fn, x, y)`` fresh on every call:
``torch.manual_seed(seed)``, the network, then its data from the same global random stream (or from a
generator of its own, where the sampler is given one). The construction order is the one the tests
pinned their numbers with, so a problem gives the very same weights and samples as the helper it
replaced (checked bit for bit when they moved here); only where a helper drew no labels does ``make``
draw some after the samples.

``make(torch.float32)`` or ``make(torch.float64)`` gives the same problem in either precision: built in
its own ``dtype``, then cast (float64 numbers rounded to float32, float32 numbers widened exactly), so
that both precisions see one problem. ``model()`` builds the network alone (no data drawn);
``variant(...)`` derives a problem with other fields or builder arguments (``variant(seed=1)``,
``variant(n=4)``, ``variant(depth=1)``). :data:`PROBLEMS` lists them by name.

``tests/nets.py`` stays where it is: commands name its ``SmallResNet`` by its dotted path.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tests.nets import SmallResNet

# ---- losses -----------------------------------------------------------------------------------------------


def mse(out: Tensor, y: Tensor) -> Tensor:
    """The study's loss: MSE against one-hot targets, averaged over batch and outputs."""
    return F.mse_loss(out, F.one_hot(y, out.shape[1]).to(out.dtype))


def sq_loss(out: Tensor, y: Tensor) -> Tensor:
    """Mean squared error against real-valued targets of the outputs' shape."""
    return ((out - y) ** 2).mean()


def half_sq_loss(out: Tensor, y: Tensor) -> Tensor:
    """1/2 ||f - y||^2, summed over outputs, averaged over samples."""
    return 0.5 * ((out - y) ** 2).sum() / out.shape[0]


def linear_loss(out: Tensor, y: Tensor) -> Tensor:
    """The outputs' sum over the batch size: affine in the last layer's weights, y unused."""
    return out.sum() / len(out)


# ---- networks: ``builder(dtype, shape, outputs, **arguments)``, drawing from the global random stream -----

ACTIVATIONS = {"relu": nn.ReLU, "tanh": lambda inplace: nn.Tanh()}


def mlp(dt: torch.dtype, shape: tuple[int, ...], outputs: int, widths: tuple[int, ...] = (),
        acts: str | tuple[str, ...] = "relu", flatten: bool = True, named: bool = False, inplace: bool = False,
        bias: bool = True, eval: bool = False) -> nn.Sequential:
    """Linear layers prod(shape) -> *widths -> outputs, an activation after each hidden one (``acts``: one
    name for all or one per hidden layer); ``named``: children flatten, fc1, relu1, fc2, ..."""
    dims = (math.prod(shape), *widths, outputs)
    acts = (acts,) * len(widths) if isinstance(acts, str) else acts
    layers = [("flatten", nn.Flatten())] if flatten else []
    for i, (d_in, d_out) in enumerate(zip(dims, dims[1:]), 1):
        layers.append((f"fc{i}", nn.Linear(d_in, d_out, bias=bias)))
        if i <= len(widths):
            layers.append((f"{acts[i - 1]}{i}", ACTIVATIONS[acts[i - 1]](inplace)))
    model = nn.Sequential(OrderedDict(layers)) if named else nn.Sequential(*(m for _, m in layers))
    model = model.to(dt)
    return model.eval() if eval else model


def maxpool_cnn(dt: torch.dtype, shape: tuple[int, ...], outputs: int, channels: tuple[int, int] = (2, 3),
                hidden: int = 4, padding: tuple[int, int] = (1, 1), bias_std: float | None = None,
                eval: bool = False) -> nn.Sequential:
    """conv1 (3x3), relu1, pool1 (2x2 max), conv2, relu2, pool2, flatten, fc1, relu3, fc2; ``bias_std``:
    biases redrawn from N(0, bias_std) after the cast (non-zero biases exercise their share)."""
    side = ((shape[1] + 2 * padding[0] - 2) // 2 + 2 * padding[1] - 2) // 2
    model = nn.Sequential(OrderedDict(
        conv1=nn.Conv2d(shape[0], channels[0], 3, padding=padding[0]), relu1=nn.ReLU(), pool1=nn.MaxPool2d(2),
        conv2=nn.Conv2d(channels[0], channels[1], 3, padding=padding[1]), relu2=nn.ReLU(), pool2=nn.MaxPool2d(2),
        flatten=nn.Flatten(), fc1=nn.Linear(channels[1] * side * side, hidden), relu3=nn.ReLU(),
        fc2=nn.Linear(hidden, outputs))).to(dt)
    if bias_std is not None:
        with torch.no_grad():
            for mod in model:
                if isinstance(mod, (nn.Linear, nn.Conv2d)):
                    mod.bias.normal_(0, bias_std)
    return model.eval() if eval else model


def warm_batchnorm(model: nn.Module, shape: tuple[int, ...], dt: torch.dtype, scale: float = 1.0,
                   shift: float = 0.0) -> nn.Module:
    """One training-mode pass over 16 (``randn * scale + shift``) samples: BatchNorm's running statistics
    away from their initial values; left in training mode."""
    model.train()
    with torch.no_grad():
        warm = torch.randn(16, *shape, dtype=dt)
        model(warm if (scale, shift) == (1.0, 0.0) else warm * scale + shift)
    return model


def conv_batchnorm(dt: torch.dtype, shape: tuple[int, ...], outputs: int, channels: int = 3, dropout: bool = False,
                   warm: tuple[float, float] = (1.0, 0.0), eval: bool = True) -> nn.Sequential:
    """Conv2d (3x3, no padding), BatchNorm2d, ReLU, [Dropout(0.5)], Flatten, Linear; the running statistics
    warmed by :func:`warm_batchnorm` (``warm``: its scale and shift); eval or training mode."""
    side = shape[1] - 2
    model = nn.Sequential(nn.Conv2d(shape[0], channels, 3), nn.BatchNorm2d(channels), nn.ReLU(),
                          *([nn.Dropout(0.5)] if dropout else []), nn.Flatten(),
                          nn.Linear(channels * side * side, outputs)).to(dt)
    warm_batchnorm(model, shape, dt, *warm)
    return model.eval() if eval else model


def residual(dt: torch.dtype, shape: tuple[int, ...], outputs: int, width: int = 3, depth: int = 2) -> nn.Module:
    """tests.nets.SmallResNet in eval mode, its BatchNorm statistics and affine parameters away from 0 / 1."""
    model = SmallResNet(num_outputs=outputs, input_shape=shape, width=width, depth=depth).to(dt)
    with torch.no_grad():
        model.train()
        model(torch.randn(32, *shape, dtype=dt) * 2 + 0.5)
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
    return model.eval()


def strided_grouped_cnn(dt: torch.dtype, shape: tuple[int, ...], outputs: int) -> nn.Sequential:
    """A strided convolution, a grouped one (padding 2), ReLU and Tanh, max-pooling, a Linear readout."""
    side = ((shape[1] - 1) // 2 + 1 + 2) // 2
    return nn.Sequential(nn.Conv2d(shape[0], 4, 3, padding=1, stride=2), nn.ReLU(),
                         nn.Conv2d(4, 4, 3, padding=2, groups=2), nn.Tanh(), nn.MaxPool2d(2), nn.Flatten(),
                         nn.Linear(4 * side * side, outputs)).to(dt).eval()


def inplace_relu_cnn(dt: torch.dtype, shape: tuple[int, ...], outputs: int) -> nn.Sequential:
    """A convolution followed by an in-place ReLU, max-pooling, a second convolution, a Linear readout."""
    side = shape[1] // 2 - 2
    return nn.Sequential(nn.Conv2d(shape[0], 3, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
                         nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * side * side, outputs)).to(dt).eval()


def tanh_two_weights(dt: torch.dtype, shape: tuple[int, ...], outputs: int,
                     weights: tuple[float, float] = (0.8, -1.3)) -> nn.Sequential:
    """w2 * tanh(w1 x): two parameters, set to ``weights``."""
    model = mlp(dt, shape, outputs, widths=(1,), acts="tanh", flatten=False, bias=False)
    with torch.no_grad():
        model[0].weight.fill_(weights[0])
        model[2].weight.fill_(weights[1])
    return model


def tiny_vit(dt: torch.dtype, shape: tuple[int, ...], outputs: int, fused: bool = True) -> nn.Module:
    """sharpcomp's vit (patch 4, dim 8, one block of 2 heads) with its class token and position
    embeddings redrawn from N(0, 1) (timm starts them at zero and tiny); attention fused or plain."""
    from sharpcomp.models import vit

    model = vit(outputs, input_shape=shape, patch=4, dim=8, depth=1, heads=2).to(dt)
    with torch.no_grad():
        model.cls_token.normal_()
        model.pos_embed.normal_()
    for block in model.blocks:
        block.attn.fused_attn = fused
    return model.eval()


class ResidualMLP(nn.Module):
    """fc2(relu(fc1(x)) + x): a skip connection, not an ``nn.Sequential``."""

    def __init__(self, d: int = 6, outputs: int = 3):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(d, d), nn.Linear(d, outputs)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)) + x)


def residual_mlp(dt: torch.dtype, shape: tuple[int, ...], outputs: int) -> nn.Module:
    return ResidualMLP(math.prod(shape), outputs).to(dt).eval()


# ---- data: ``sampler(model, n, shape, outputs, dtype, **arguments) -> (x, y)`` -----------------------------


def inputs(n: int, shape: tuple[int, ...], dt: torch.dtype = torch.float32, *, uniform: bool = False,
           offset: float = 0.0, generator: torch.Generator | None = None) -> Tensor:
    """n samples of ``shape``: N(0, 1) or (``uniform``) U[0, 1), plus ``offset``."""
    x = (torch.rand if uniform else torch.randn)(n, *shape, dtype=dt, generator=generator)
    return x + offset if offset else x


def sample(model: nn.Module, n: int, shape: tuple[int, ...], outputs: int, dt: torch.dtype, *,
           uniform: bool = False, offset: float = 0.0, generator: int | None = None,
           targets: str | tuple[int, ...] = "classes") -> tuple[Tensor, Tensor]:
    """x: :func:`inputs`, from the global stream or from a generator seeded ``generator``; then y from the
    same source: ``"classes"`` random labels below ``outputs``, a tuple: those labels, ``"regression"``:
    N(0, 1) targets (n, outputs), ``"fit"``: the network's own argmax (training error 0), ``"zeros"``: n
    zeros."""
    gen = None if generator is None else torch.Generator().manual_seed(generator)
    x = inputs(n, shape, dt, uniform=uniform, offset=offset, generator=gen)
    if isinstance(targets, tuple):
        y = torch.tensor(targets)
    elif targets == "classes":
        y = torch.randint(0, outputs, (n,), generator=gen)
    elif targets == "regression":
        y = torch.randn(n, outputs, dtype=dt, generator=gen)
    elif targets == "fit":
        with torch.no_grad():
            y = model(x).argmax(1)
    elif targets == "zeros":
        y = torch.zeros(n)
    else:
        raise ValueError(f"unknown targets {targets!r}")
    return x, y


def sine(model: nn.Module, n: int, shape: tuple[int, ...], outputs: int, dt: torch.dtype) -> tuple[Tensor, Tensor]:
    """n points evenly spaced on [-2, 2] and targets sin(2 x)."""
    x = torch.linspace(-2, 2, n, dtype=dt)[:, None]
    return x, torch.sin(2 * x)


# ---- the problem ----------------------------------------------------------------------------------------


class Case(NamedTuple):
    model: nn.Module
    loss_fn: Callable[[Tensor, Tensor], Tensor]
    x: Tensor
    y: Tensor


def _cast(t: Tensor, dtype: torch.dtype) -> Tensor:
    return t.to(dtype) if t.is_floating_point() and t.dtype != dtype else t


@dataclasses.dataclass(frozen=True)
class Problem:
    """A named test problem; see the module docstring."""

    name: str
    net: Callable[..., nn.Module]  # builder(dtype, shape, outputs, **net_args)
    shape: tuple[int, ...]  # one sample's input shape
    outputs: int  # number of outputs (classes)
    n: int  # number of samples
    seed: int = 0
    dtype: torch.dtype = torch.float64  # the precision its numbers are drawn in
    loss_fn: Callable[[Tensor, Tensor], Tensor] = mse
    data: Callable[..., tuple[Tensor, Tensor]] = sample  # sampler(model, n, shape, outputs, dtype, **data_args)
    net_args: tuple[tuple[str, Any], ...] = ()
    data_args: tuple[tuple[str, Any], ...] = ()

    def __str__(self) -> str:
        return self.name

    def _new(self) -> nn.Module:
        return self.net(self.dtype, self.shape, self.outputs, **dict(self.net_args))

    def _build(self) -> nn.Module:
        torch.manual_seed(self.seed)
        return self._new()

    def model(self, dtype: torch.dtype | None = None) -> nn.Module:
        """The network alone, in ``dtype`` (default: the problem's own); no data drawn."""
        model = self._build()
        return model if dtype in (None, self.dtype) else model.to(dtype)

    def make(self, dtype: torch.dtype | None = None) -> Case:
        """A fresh (model, loss_fn, x, y), in ``dtype`` (default: the problem's own)."""
        model = self._build()
        x, y = self.data(model, self.n, self.shape, self.outputs, self.dtype, **dict(self.data_args))
        if dtype not in (None, self.dtype):
            model, x, y = model.to(dtype), _cast(x, dtype), _cast(y, dtype)
        return Case(model, self.loss_fn, x, y)

    def members(self, k: int) -> list[nn.Module]:
        """k networks built one after another after one seed (an ensemble's members)."""
        torch.manual_seed(self.seed)
        return [self._new() for _ in range(k)]

    def variant(self, name: str | None = None, **changes) -> Problem:
        """The problem with other fields (``seed``, ``n``, ``shape``, ...) or builder arguments: a key the
        network builder takes goes to it, one the sampler takes to the sampler."""
        fields = {f.name for f in dataclasses.fields(self)}
        net_args, data_args = dict(self.net_args), dict(self.data_args)
        own = {k: v for k, v in changes.items() if k in fields}
        net_keys = inspect.signature(own.get("net", self.net)).parameters
        data_keys = inspect.signature(own.get("data", self.data)).parameters
        for key, value in changes.items():
            if key in fields:
                continue
            if key in net_keys:
                net_args[key] = value
            elif key in data_keys:
                data_args[key] = value
            else:
                raise TypeError(f"{self.name}: no field or builder argument {key!r}")
        label = ",".join(f"{k}={v}" for k, v in changes.items())
        return dataclasses.replace(self, name=name or f"{self.name}[{label}]", **own,
                                   net_args=tuple(net_args.items()), data_args=tuple(data_args.items()))


def problem(name: str, net: Callable[..., nn.Module], shape: tuple[int, ...], outputs: int, n: int,
            data: Callable[..., tuple[Tensor, Tensor]] = sample, data_args: dict | None = None, **fields) -> Problem:
    """A Problem; ``fields`` that are not Problem fields are the builder's arguments."""
    own = {f.name for f in dataclasses.fields(Problem)}
    net_args = {k: v for k, v in fields.items() if k not in own}
    return Problem(name, net, shape, outputs, n, data=data, net_args=tuple(net_args.items()),
                   data_args=tuple((data_args or {}).items()), **{k: v for k, v in fields.items() if k in own})


# ---- the named problems (float64 unless said) ------------------------------------------------------------

# a ReLU MLP 4-3-3-2 (flatten, fc1, relu1, fc2, relu2, fc3), 6 samples, 2 classes
MLP_CLASSIFICATION = problem("mlp_classification", mlp, (4,), 2, 6, widths=(3, 3), named=True,
                             data_args={"targets": (0, 1, 1, 0, 1, 0)})
# 6-5-4-3, 7 samples, 3 random classes
MLP_3_CLASSES = problem("mlp_3_classes", mlp, (6,), 3, 7, widths=(5, 4), named=True)
# 8-12-12-3 (303 parameters), 24 samples
MLP_MEDIUM = problem("mlp_medium", mlp, (8,), 3, 24, widths=(12, 12), named=True)
# two convolutions with max-pooling on 1x8x8 images, biases from N(0, 0.3), 5 samples, 2 classes
CNN_MAXPOOL = problem("cnn_maxpool", maxpool_cnn, (1, 8, 8), 2, 5, bias_std=0.3,
                      data_args={"targets": (0, 1, 1, 0, 1)})
CNN_MAXPOOL_3_CLASSES = problem("cnn_maxpool_3_classes", maxpool_cnn, (1, 8, 8), 3, 6, bias_std=0.3)
# 3 and 4 channels, fc 16-8-3 (305 parameters), 16 samples
CNN_MAXPOOL_MEDIUM = problem("cnn_maxpool_medium", maxpool_cnn, (1, 8, 8), 3, 16, channels=(3, 4), hidden=8)
# flatten, Linear(5, 3): the MSE is exactly quadratic in theta
LINEAR_MODEL = problem("linear_model", mlp, (5,), 3, 12)
# Linear(2, 2) alone: 6 parameters, 7 samples
LINEAR_SIX_PARAMETERS = problem("linear_six_parameters", mlp, (2,), 2, 7, flatten=False,
                                data_args={"targets": (0, 1, 1, 0, 1, 0, 0)})
# Linear(4, 3) under a loss affine in the weights
LINEAR_SUM_LOSS = problem("linear_sum_loss", mlp, (4,), 3, 7, flatten=False, loss_fn=linear_loss,
                          data_args={"generator": 1, "targets": "zeros"})
# ReLU MLP 3-4-2 against N(0, 1) targets, F.mse_loss
MLP_REGRESSION = problem("mlp_regression", mlp, (3,), 2, 5, widths=(4,), flatten=False, loss_fn=F.mse_loss,
                         data_args={"targets": "regression"})
# Tanh MLP 3-4-2 against N(0, 1) targets, 1/2 ||f - y||^2
TANH_MLP_REGRESSION = problem("tanh_mlp_regression", mlp, (3,), 2, 6, widths=(4,), acts="tanh", flatten=False,
                              loss_fn=half_sq_loss, data_args={"targets": "regression"})
# Tanh MLP 2-4-5: more outputs than inputs, so every J_i J_i^T has zero eigenvalues
TANH_MLP_RANK_DEFICIENT = problem("tanh_mlp_rank_deficient", mlp, (2,), 5, 3, widths=(4,), acts="tanh",
                                  flatten=False)
# Tanh MLP 10-16-12 in eval mode, inputs from a generator of their own
TANH_MLP_WIDE = problem("tanh_mlp_wide", mlp, (10,), 12, 5, widths=(16,), acts="tanh", eval=True,
                        data_args={"generator": 1})
# ReLU MLP 4-16-3 whose labels are its own predictions (training error 0), 200 samples
MLP_INTERPOLATING = problem("mlp_interpolating", mlp, (4,), 3, 200, widths=(16,), flatten=False,
                            data_args={"targets": "fit"})
# w2 tanh(w1 x) against sin(2 x) on 9 points
TANH_TWO_WEIGHTS = problem("tanh_two_weights", tanh_two_weights, (1,), 1, 9, seed=3, loss_fn=sq_loss, data=sine)
# float32, eval mode, positive inputs U[0.1, 1.1) from a generator of their own: the metric engine's
MLP_EVAL = problem("mlp_eval", mlp, (3, 2, 2), 5, 5, widths=(32, 32), named=True, eval=True,
                   dtype=torch.float32, data_args={"uniform": True, "offset": 0.1, "generator": 1})
CNN_PADDED_EVAL = problem("cnn_padded_eval", maxpool_cnn, (2, 8, 8), 4, 5, channels=(4, 5), hidden=24,
                          padding=(2, 1), eval=True, dtype=torch.float32,
                          data_args={"uniform": True, "offset": 0.1, "generator": 1})
# float32 ReLU MLP 6-8-N on U[0, 1) inputs: N (``outputs``) is what varies
MLP_N_OUTPUTS = problem("mlp_n_outputs", mlp, (6,), 5, 3, widths=(8,), dtype=torch.float32,
                        data_args={"uniform": True})
# float32, eval mode, N(0, 1) inputs from a generator of their own
MLP_RELU_TANH = problem("mlp_relu_tanh", mlp, (12,), 4, 5, widths=(9, 7), acts=("relu", "tanh"), eval=True,
                        dtype=torch.float32, data_args={"generator": 3})
CNN_STRIDED_GROUPED = problem("cnn_strided_grouped", strided_grouped_cnn, (2, 8, 8), 3, 5, seed=1,
                              dtype=torch.float32, data_args={"generator": 3})
CNN_INPLACE_RELU = problem("cnn_inplace_relu", inplace_relu_cnn, (2, 8, 8), 3, 5, seed=5, dtype=torch.float32,
                           data_args={"generator": 3})
# BatchNorm with running statistics away from their initial values, in eval mode
CNN_BATCHNORM_EVAL = problem("cnn_batchnorm_eval", conv_batchnorm, (1, 8, 8), 2, 9)
# ... with dropout, left in training mode, float32 on U[0, 1) inputs
CNN_BATCHNORM_DROPOUT = problem("cnn_batchnorm_dropout", conv_batchnorm, (1, 6, 6), 4, 10, dropout=True,
                                warm=(2.0, 1.0), eval=False, dtype=torch.float32, data_args={"uniform": True})
# tests.nets.SmallResNet (width 3, two blocks), BatchNorm in eval mode, U[0, 1) inputs
RESIDUAL = problem("residual", residual, (2, 8, 8), 3, 5, data_args={"uniform": True})
# a skip connection around a Linear layer, float32
RESIDUAL_MLP = problem("residual_mlp", residual_mlp, (6,), 3, 3, dtype=torch.float32, data_args={"uniform": True})
# a one-block vision transformer, float32
VIT_TINY = problem("vit_tiny", tiny_vit, (3, 8, 8), 3, 3, dtype=torch.float32, data_args={"generator": 1})

PROBLEMS = {p.name: p for p in list(globals().values()) if isinstance(p, Problem)}
