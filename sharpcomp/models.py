"""Networks, built from a model config through Hydra's ``_target_``.

A model config (``conf/model/*.yaml``) names a callable and its arguments::

    name: vgg10                      # the label in run ids, folders and records
    _target_: sharpcomp.models.vgg10 # any importable callable returning an nn.Module
    width: 1.0                       # every other key is a keyword argument of the callable
    outputs: 10                      # number of outputs N, or "classes" (the data's class count)

``name`` and ``outputs`` are sharpcomp's own keys; every other key reaches the callable as a keyword
argument (nested ``_target_`` nodes are instantiated first, Hydra-style). Two arguments come from the
data and are passed when the callable's signature names them (``**kwargs`` does not count):
``num_outputs`` (int, N) and ``input_shape`` (tuple, one sample's shape, e.g. ``(3, 32, 32)``).
``torch.manual_seed(seed)`` runs just before the call, so initial weights are a function of the seed.
After building, one forward pass on one (zero) sample in eval mode checks that the output has shape
``(1, N)``, which the loss needs; this also materialises lazy modules.

The study's two networks are plain functions returning named ``nn.Sequential`` models, so a
middle-layer representation is picked by name (``compute_metrics(model, x, layer="fc1")``):

- ``vgg10``: five 3x3 convolutions (padding 2; 16, 16, 32, 64, 64 channels), each followed by
  ReLU and 2x2 max-pooling, then Linear(256, 128), ReLU, Linear(128, N). Conv weights are drawn
  from N(0, 2 / (9 * out_channels)), conv biases are zero; linear layers keep PyTorch's default
  initialisation. 97,018 parameters for N = 10.
- ``mlp4``: 784-500-500-500-N with ReLU and biases, PyTorch default initialisation.
  898,510 parameters for N = 10.

``width`` multiplies every hidden width (channels or units); width 1 is the paper's network.

- ``vit`` (``model=vit``, not built in to the study): timm's ``VisionTransformer`` at the data's image
  size, patch 4, embedding 64, 2 blocks of 4 heads (75,082 parameters for 32x32 RGB, N = 10).
"""

from __future__ import annotations

import inspect
import math
import os
import sys
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import torch
from hydra._internal.utils import _locate
from hydra.utils import instantiate
from torch import nn

VGG10_CHANNELS = (16, 16, 32, 64, 64)
MLP4_HIDDEN = (500, 500, 500)
# the built-in networks: name -> (_target_, default input shape)
BUILTIN = {"vgg10": ("sharpcomp.models.vgg10", (3, 32, 32)), "mlp4": ("sharpcomp.models.mlp4", (1, 28, 28))}
MODEL_NAMES = tuple(BUILTIN)
OWN_KEYS = ("name", "outputs")  # sharpcomp's keys in a model config, not arguments of the callable
BUILTIN_KEYS = ("width",)  # a built-in's own arguments: dropped when model._target_ names another callable
DATA_ARGS = ("num_outputs", "input_shape")  # arguments that come from the data


class ModelError(ValueError):
    """A model config that cannot give a usable network; the message is one line for the user."""


def _scaled(width_units: int, width: float) -> int:
    return max(1, int(round(width_units * width)))


def vgg10(num_outputs: int = 10, width: float = 1.0, input_shape=(3, 32, 32)) -> nn.Sequential:
    if len(input_shape) != 3:
        raise ModelError(f"vgg10 needs image inputs (C, H, W), got shape {tuple(input_shape)}")
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    c_in, h, w = input_shape
    for i, c in enumerate(VGG10_CHANNELS, start=1):
        c_out = _scaled(c, width)
        conv = nn.Conv2d(c_in, c_out, kernel_size=3, padding=2)
        nn.init.normal_(conv.weight, mean=0.0, std=math.sqrt(2.0 / (9 * c_out)))
        nn.init.zeros_(conv.bias)
        layers[f"conv{i}"] = conv
        layers[f"relu{i}"] = nn.ReLU()
        layers[f"pool{i}"] = nn.MaxPool2d(2)
        c_in, h, w = c_out, (h + 2) // 2, (w + 2) // 2
    hidden = _scaled(128, width)
    layers["flatten"] = nn.Flatten()
    layers["fc1"] = nn.Linear(c_in * h * w, hidden)
    layers["relu6"] = nn.ReLU()
    layers["fc2"] = nn.Linear(hidden, num_outputs)
    return nn.Sequential(layers)


def mlp4(num_outputs: int = 10, width: float = 1.0, input_shape=(1, 28, 28)) -> nn.Sequential:
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    layers["flatten"] = nn.Flatten()
    d_in = math.prod(input_shape)
    for i, h in enumerate(MLP4_HIDDEN, start=1):
        d_out = _scaled(h, width)
        layers[f"fc{i}"] = nn.Linear(d_in, d_out)
        layers[f"relu{i}"] = nn.ReLU()
        d_in = d_out
    layers[f"fc{len(MLP4_HIDDEN) + 1}"] = nn.Linear(d_in, num_outputs)
    return nn.Sequential(layers)


def vit(num_outputs: int = 10, input_shape=(3, 32, 32), patch: int = 4, dim: int = 64, depth: int = 2,
        heads: int = 4, mlp_ratio: float = 2.0) -> nn.Module:
    """A small vision transformer: timm's ``VisionTransformer`` (patch embedding by a convolution, class
    token, learned position embeddings, pre-norm blocks of multi-head attention and a GELU MLP, final
    LayerNorm, linear head on the class token), no dropout, PyTorch's fused attention where timm uses it."""
    # lazy: timm takes over a second to import; only this model needs it, the config checks do not
    from timm.models.vision_transformer import VisionTransformer

    if len(input_shape) != 3 or input_shape[1] != input_shape[2] or input_shape[1] % patch:
        raise ModelError(f"vit needs square images whose side is a multiple of patch={patch}, "
                         f"got shape {tuple(input_shape)}")
    return VisionTransformer(img_size=input_shape[1], patch_size=patch, in_chans=input_shape[0],
                             num_classes=num_outputs, embed_dim=dim, depth=depth, num_heads=heads,
                             mlp_ratio=mlp_ratio)


# ---------------------------------------------------------------------------------------------
# model configs


def target_of(model_cfg: Mapping) -> str:
    """The dotted path of the callable that builds this model (built-ins without ``_target_`` too)."""
    target = model_cfg.get("_target_")
    if target is None and model_cfg.get("name") in BUILTIN:
        return BUILTIN[model_cfg["name"]][0]
    if not isinstance(target, str) or not target or target == "???":
        raise ModelError(f"model '{model_cfg.get('name')}' needs model._target_ (the dotted path of a callable "
                         f"returning an nn.Module, e.g. model._target_=mypkg.nets.SmallResNet)")
    return target


def locate(path: str, what: str = "model._target_"):
    """Import ``path`` (``pkg.module.attr``) as Hydra does; modules in the working folder are found too.

    ModelError (one line, naming the setting ``what``) when it cannot be imported.
    """
    try:
        return _locate(path)
    except ImportError as exc:
        cwd = os.getcwd()
        if isinstance(exc.__cause__, ModuleNotFoundError) and cwd not in sys.path:
            sys.path.append(cwd)  # as `python -m` would: the user's own module beside the command
            try:
                return _locate(path)
            except ImportError as again:
                exc = again
        detail = " ".join(line.strip() for line in str(exc).splitlines()[1:]) or str(exc)
        raise ModelError(f"cannot import {what} '{path}': {detail}") from None
    except Exception as exc:  # the module itself fails on import
        raise ModelError(f"cannot import {what} '{path}': {type(exc).__name__}: {_first_line(exc)}") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else ""


def check_model_config(model_cfg: Mapping) -> None:
    """Raise ModelError with one line for a model config no run can use (the callable is imported)."""
    name = model_cfg.get("name")
    if not isinstance(name, str) or not name:
        raise ModelError(f"model.name must be a non-empty string, got {name!r}")
    outputs = model_cfg.get("outputs", 10)
    if outputs != "classes" and (isinstance(outputs, bool) or not isinstance(outputs, int) or outputs < 1):
        raise ModelError(f"model.outputs must be a positive integer or 'classes', got {outputs!r}")
    if "width" in model_cfg:
        width = model_cfg["width"]
        if isinstance(width, bool) or not isinstance(width, (int, float)) or not width > 0:
            raise ModelError(f"model.width must be a number > 0, got {width!r}")
    taken = [k for k in DATA_ARGS if k in model_cfg]
    if taken:
        raise ModelError(f"model.{taken[0]} comes from the data; remove it (model.outputs sets the number of outputs)")
    if not callable(locate(target_of(model_cfg))):
        raise ModelError(f"model._target_ '{target_of(model_cfg)}' is not callable")


def code_keys(node, where: str) -> str | None:
    """The first place in ``node`` that would choose code when instantiated or resolved: a
    ``_target_``-like key (any key starting with ``_``) or an interpolation ``${...}``."""
    if isinstance(node, Mapping):
        for k, v in node.items():
            if str(k).startswith("_"):
                return f"{where}.{k}"
            found = code_keys(v, f"{where}.{k}")
            if found:
                return found
    elif isinstance(node, (list, tuple)):
        for i, v in enumerate(node):
            found = code_keys(v, f"{where}[{i}]")
            if found:
                return found
    elif isinstance(node, str) and "${" in node:
        return where
    return None


def stored_model_config(model_cfg, target: str | None = None) -> dict:
    """A model config read from a file the user did not write (a checkpoint's stored config), made safe
    to build: a stored config never chooses what is imported. A built-in network is built by its name
    alone; any other network only from ``target``, a dotted path the user names on the command line.
    Keys that Hydra would act on (``_target_``, ``_args_``, ``_partial_``, nested ``_target_`` nodes) and
    interpolations are refused. ModelError (one line) otherwise."""
    if not isinstance(model_cfg, Mapping) or not isinstance(model_cfg.get("name"), str):
        raise ModelError("the stored config has no model name")
    name, stored = model_cfg["name"], model_cfg.get("_target_")
    rest = {k: v for k, v in model_cfg.items() if k != "_target_"}
    bad = code_keys(rest, "model")
    if bad:
        raise ModelError(f"refusing the stored config: {bad} would choose code; a stored config never does")
    if target is not None:
        return {**rest, "_target_": target}
    if name in BUILTIN and stored in (None, BUILTIN[name][0]):
        return {**rest, "_target_": BUILTIN[name][0]}
    shown = str(stored)[:120]
    raise ModelError(f"the stored config names model._target_ '{shown}' for model '{name[:40]}'; a stored config "
                     f"never chooses code: if you trust it, name it yourself with model._target_={shown}")


def identity_view(model_cfg: Mapping) -> dict:
    """The model config less keys at their built-in defaults (a built-in's own ``_target_``), so a run's
    identity hash is the one it had before ``_target_`` was written into ``conf/model/*.yaml``."""
    out = dict(model_cfg)
    if model_cfg.get("name") in BUILTIN and out.get("_target_") == BUILTIN[model_cfg["name"]][0]:
        del out["_target_"]
    return out


def _accepts(fn, arg: str) -> bool:
    """Whether ``fn`` names the parameter ``arg`` (``**kwargs`` does not count: builders such as
    torchvision's ``resnet18(**kwargs)`` forward them to a constructor that may not take them)."""
    try:
        return arg in inspect.signature(fn).parameters
    except (TypeError, ValueError):  # no signature to read
        return False


def foreign_keys(model_cfg: Mapping, fn=None) -> list[str]:
    """The built-in network's own keys (``width``) left in a config whose ``_target_`` replaces it (e.g.
    ``model._target_=torchvision.models.resnet18`` over the default vgg10) and that the new callable does
    not name: they belong to the network replaced, not to the new one."""
    builtin = BUILTIN.get(model_cfg.get("name"))
    target = model_cfg.get("_target_")
    if builtin is None or target in (None, builtin[0]):
        return []
    fn = fn if fn is not None else locate(target_of(model_cfg))
    return [k for k in BUILTIN_KEYS if k in model_cfg and not _accepts(fn, k)]


def check_buildable(model_cfg: Mapping, num_outputs: int, input_shape: tuple[int, ...] | None,
                    num_classes: int | None = None) -> nn.Module | None:
    """Build the network on the meta device (no memory, no data): ModelError (one line) when the callable
    refuses its arguments or gives outputs of the wrong shape, before any data is loaded. A forward pass
    that the meta device cannot run is left to the real check after loading. Returns the meta network
    (None when ``input_shape`` is unknown before loading, e.g. an image folder)."""
    check_model_config(model_cfg)
    if input_shape is None:
        return None
    if num_classes is not None and num_outputs < num_classes:
        raise ModelError(f"model.outputs={num_outputs} is fewer than the data's {num_classes} classes")
    with torch.device("meta"):
        model = _construct(model_cfg, num_outputs, input_shape)
        if not isinstance(model, nn.Module):
            raise ModelError(f"model._target_ '{target_of(model_cfg)}' returned a {type(model).__name__}, "
                             f"not a torch.nn.Module")
        try:
            check_output_shape(model, num_outputs, input_shape, model_cfg["name"])
        except ModelError as exc:
            if "gives outputs of shape" in str(exc):
                raise
    return model


def _construct(model_cfg: Mapping, num_outputs: int, input_shape: tuple[int, ...]):
    """Call the config's ``_target_`` with its keyword arguments and the data's, through Hydra."""
    target = target_of(model_cfg)
    fn = locate(target)
    node = {k: v for k, v in model_cfg.items() if k not in OWN_KEYS and k not in foreign_keys(model_cfg, fn)}
    node.update(_target_=target, _partial_=True)
    node.setdefault("_convert_", "all")
    from_data = {"num_outputs": int(num_outputs), "input_shape": tuple(int(s) for s in input_shape)}
    try:
        factory = instantiate(node)
        return factory(**{k: v for k, v in from_data.items() if _accepts(fn, k)})
    except ModelError:
        raise
    except Exception as exc:
        cause = exc.__cause__ or exc
        args = ", ".join(f"{k}={v!r}" for k, v in node.items() if not k.startswith("_"))
        raise ModelError(f"model {target}({args}) failed: {type(cause).__name__}: {_first_line(cause)}") from None


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """``model`` in eval mode (BatchNorm uses its running statistics and leaves them untouched, dropout
    is off) for the duration; afterwards every module's own train/eval mode is restored."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, training in modes:
            m.training = training


def check_output_shape(model: nn.Module, num_outputs: int, input_shape: tuple[int, ...], name: str = "model") -> None:
    """One forward pass on one zero sample, in eval mode (no BatchNorm statistics change): the output
    must be (1, num_outputs), as the loss needs. Each module's train/eval mode is restored."""
    param = next(model.parameters(), None)
    x = torch.zeros((1, *input_shape), device=param.device if param is not None else "cpu")
    try:
        with eval_mode(model), torch.no_grad():
            out = model(x)
    except Exception as exc:
        raise ModelError(f"model {name} fails on one input of shape {tuple(x.shape)}: "
                         f"{type(exc).__name__}: {_first_line(exc)}") from None
    shape = tuple(out.shape) if torch.is_tensor(out) else type(out).__name__
    if shape != (1, num_outputs):
        raise ModelError(f"model {name} gives outputs of shape {shape} for one input of shape {tuple(x.shape)}; "
                         f"the loss needs (1, {num_outputs}): one value per output (model.outputs)")


def build_from_config(model_cfg: Mapping, num_outputs: int, input_shape: tuple[int, ...], seed: int | None = None,
                      device: torch.device | str | None = None, num_classes: int | None = None) -> nn.Module:
    """The network a model config describes, for data of ``input_shape`` with ``num_outputs`` outputs,
    on ``device``, its output shape checked. ModelError (one line) for anything unusable."""
    check_model_config(model_cfg)
    if not num_outputs >= 1:
        raise ModelError(f"number of outputs must be >= 1, got {num_outputs}")
    if num_classes is not None and num_outputs < num_classes:
        raise ModelError(f"model.outputs={num_outputs} is fewer than the data's {num_classes} classes")
    if seed is not None:
        torch.manual_seed(int(seed))
    model = _construct(model_cfg, num_outputs, input_shape)
    if not isinstance(model, nn.Module):
        raise ModelError(f"model._target_ '{target_of(model_cfg)}' returned a {type(model).__name__}, "
                         f"not a torch.nn.Module")
    if device is not None:
        model = model.to(device)
    check_output_shape(model, num_outputs, input_shape, model_cfg["name"])
    return model


def build_model(name: str, num_outputs: int = 10, width: float = 1.0, input_shape: tuple[int, ...] | None = None,
                seed: int | None = None) -> nn.Module:
    """A built-in network by name (``vgg10``, ``mlp4``); ``input_shape`` defaults to the study's data.
    With ``seed``, the initial weights are a function of the seed alone."""
    if name not in BUILTIN:
        raise ModelError(f"unknown model '{name}' (choose from {', '.join(MODEL_NAMES)})")
    cfg = {"name": name, "_target_": BUILTIN[name][0], "width": width}
    return build_from_config(cfg, num_outputs, input_shape or BUILTIN[name][1], seed)


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
    input (1, ...) on the model's device (``meta`` works). The probing pass runs in eval mode (one sample
    is no batch for BatchNorm, whose statistics stay untouched)."""
    sizes = [sample.numel()]
    leaves = [m for m in model.modules() if next(m.children(), None) is None]
    hooks = [m.register_forward_hook(lambda mod, a, out: sizes.append(out.numel() if torch.is_tensor(out) else 0))
             for m in leaves]
    try:
        with eval_mode(model), torch.no_grad():
            model(sample)
    finally:
        for h in hooks:
            h.remove()
    budget = ACTIVATION_BUDGET.get((device or sample.device).type, ACTIVATION_BUDGET["cuda"])
    return max(1, budget // (members * max(sizes)))

