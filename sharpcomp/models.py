"""The study's two networks, as named ``nn.Sequential`` models (SPEC, "Models").

Every layer has a stable name, so a middle-layer representation is picked by name
(``compute_metrics(model, x, layer="fc1")``) and a rescaling names its layer the same way.

- ``vgg10``: five 3x3 convolutions (padding 2; 16, 16, 32, 64, 64 channels), each followed by
  ReLU and 2x2 max-pooling, then Linear(256, 128), ReLU, Linear(128, N). Conv weights are drawn
  from N(0, 2 / (9 * out_channels)), conv biases are zero; linear layers keep PyTorch's default
  initialisation. 97,018 parameters for N = 10.
- ``mlp4``: 784-500-500-500-N with ReLU and biases, PyTorch default initialisation.
  898,510 parameters for N = 10.

``width`` multiplies every hidden width (channels or units); width 1 is the paper's network.
"""

from __future__ import annotations

import math
from collections import OrderedDict

import torch
from torch import nn

VGG10_CHANNELS = (16, 16, 32, 64, 64)
MLP4_HIDDEN = (500, 500, 500)
MODEL_NAMES = ("vgg10", "mlp4")


def _scaled(width_units: int, width: float) -> int:
    return max(1, int(round(width_units * width)))


def vgg10(num_outputs: int = 10, width: float = 1.0, in_channels: int = 3, image_size: int = 32) -> nn.Sequential:
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    c_in, side = in_channels, image_size
    for i, c in enumerate(VGG10_CHANNELS, start=1):
        c_out = _scaled(c, width)
        conv = nn.Conv2d(c_in, c_out, kernel_size=3, padding=2)
        nn.init.normal_(conv.weight, mean=0.0, std=math.sqrt(2.0 / (9 * c_out)))
        nn.init.zeros_(conv.bias)
        layers[f"conv{i}"] = conv
        layers[f"relu{i}"] = nn.ReLU()
        layers[f"pool{i}"] = nn.MaxPool2d(2)
        c_in, side = c_out, (side + 2) // 2
    hidden = _scaled(128, width)
    layers["flatten"] = nn.Flatten()
    layers["fc1"] = nn.Linear(c_in * side * side, hidden)
    layers["relu6"] = nn.ReLU()
    layers["fc2"] = nn.Linear(hidden, num_outputs)
    return nn.Sequential(layers)


def mlp4(num_outputs: int = 10, width: float = 1.0, in_features: int = 784) -> nn.Sequential:
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    layers["flatten"] = nn.Flatten()
    d_in = in_features
    for i, h in enumerate(MLP4_HIDDEN, start=1):
        d_out = _scaled(h, width)
        layers[f"fc{i}"] = nn.Linear(d_in, d_out)
        layers[f"relu{i}"] = nn.ReLU()
        d_in = d_out
    layers[f"fc{len(MLP4_HIDDEN) + 1}"] = nn.Linear(d_in, num_outputs)
    return nn.Sequential(layers)


def build_model(name: str, num_outputs: int = 10, width: float = 1.0, input_shape: tuple[int, ...] | None = None,
                seed: int | None = None) -> nn.Sequential:
    """Build a model by name. With ``seed``, the initial weights are a function of the seed alone.

    ``input_shape`` is one sample's shape, e.g. (3, 32, 32) or (1, 28, 28).
    """
    if name not in MODEL_NAMES:
        raise ValueError(f"unknown model '{name}' (choose from {', '.join(MODEL_NAMES)})")
    if not num_outputs >= 1:
        raise ValueError(f"number of outputs must be >= 1, got {num_outputs}")
    if not width > 0:
        raise ValueError(f"width must be > 0, got {width}")
    if seed is not None:
        torch.manual_seed(seed)
    if name == "vgg10":
        c, h = (3, 32) if input_shape is None else (input_shape[0], input_shape[-1])
        if input_shape is not None and len(input_shape) != 3:
            raise ValueError(f"vgg10 needs image inputs (C, H, W), got shape {tuple(input_shape)}")
        return vgg10(num_outputs, width, in_channels=c, image_size=h)
    m = 784 if input_shape is None else math.prod(input_shape)
    return mlp4(num_outputs, width, in_features=m)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


# Elements of a network's largest activation per forward pass that a chunk of samples may reach (all
# members of an ensemble together). On a CPU, passes whose activations stay near the cache are faster
# (2 threads: vgg10 evaluation 2x, 15 stacked members' evaluation 3x and metrics 1.4x faster than in
# chunks of 2,000 or of all samples); a GPU wants large operations.
ACTIVATION_BUDGET = {"cpu": 2**22, "cuda": 2**28}


def samples_per_chunk(model: nn.Module, sample: torch.Tensor, members: int = 1,
                      device: torch.device | None = None) -> int:
    """Samples per forward pass so that ``members`` stacked copies of ``model`` keep their largest
    activation within ``ACTIVATION_BUDGET`` of ``device`` (default: the sample's); ``sample``: one
    input (1, ...) on the model's device (``meta`` works)."""
    sizes = [sample.numel()]
    leaves = [m for m in model.modules() if next(m.children(), None) is None]
    hooks = [m.register_forward_hook(lambda mod, a, out: sizes.append(out.numel() if torch.is_tensor(out) else 0))
             for m in leaves]
    try:
        with torch.no_grad():
            model(sample)
    finally:
        for h in hooks:
            h.remove()
    budget = ACTIVATION_BUDGET.get((device or sample.device).type, ACTIVATION_BUDGET["cuda"])
    return max(1, budget // (members * max(sizes)))

