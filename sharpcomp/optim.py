"""Optimisers: torch's, named by an ``optim`` config, and sharpness-aware minimisation over any of them.

An ``optim`` config (``conf/optim/*.yaml``) is one of

- ``sgd``: ``torch.optim.SGD(momentum, nesterov, weight_decay)`` (weight decay coupled: g + wd theta);
- ``adam``, ``adamw``: ``torch.optim.Adam`` / ``AdamW(betas, eps, weight_decay)`` (AdamW decoupled);
- ``custom``: any ``torch.optim.Optimizer`` subclass named by ``_target_`` (a dotted path, on the command
  line: a stored config never chooses code), every other key a keyword argument;
- ``sam``: :class:`SAM` over a ``base`` (``sgd``, ``adam``, ``adamw`` or ``custom``), the base's
  settings under the same keys (null: the base's default).

The learning rate is the run's ``lr`` (times its schedule, :mod:`sharpcomp.schedule`), never a key of
the optimiser. :func:`check_optim_config` checks a config as data (no import); :func:`check_optimizer`
imports the class and builds it once on a dummy parameter (ConfigError-style one line, before any data
is loaded); :func:`build_optimizer` builds it for a network.

SAM (Foret et al. 2021) and its adaptive variant (ASAM, Kwon et al. 2021); one step at theta with radius
rho:

    g     = grad L_B(theta)                       (first closure call; its loss is returned)
    e     = rho g / ||g||                         (SAM)
          = rho T^2 g / ||T g||,  T = |theta|     (adaptive: elementwise |w|^2 scaling, as in ASAM)
    g_sam = grad L_B(theta + e)                   (second closure call, same batch)
    theta <- base step from theta with gradient g_sam (plain SGD: theta - lr g_sam)

Norms run over every parameter of every group; ||g|| = 0 gives e = 0 (guarded by 1e-12). The base's
weight decay (coupled or decoupled) acts on theta in its own step; the perturbation uses the plain
gradient. After the step, ``p.grad`` holds g_sam. The closure follows ``torch.optim.SGD.step(closure)``'s
contract: it zeroes the gradients, computes the loss, calls ``backward()`` and returns the loss.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping

import torch

__all__ = ["SAM", "OptimError", "build_optimizer", "check_optim_config", "check_optimizer"]

_EPS = 1e-12
CLASSES = {"sgd": "torch.optim.SGD", "adam": "torch.optim.Adam", "adamw": "torch.optim.AdamW"}
KEYS = {"sgd": ("momentum", "nesterov", "weight_decay"), "adam": ("betas", "eps", "weight_decay"),
        "adamw": ("betas", "eps", "weight_decay")}
BASES = (*CLASSES, "custom")
NAMES = (*CLASSES, "sam", "custom")
SAM_KEYS = ("rho", "adaptive", "base")
# keys at these values change nothing: the study's plain SGD (and SAM over it) keeps its run identity
NEUTRAL = {"momentum": 0.0, "nesterov": False, "weight_decay": 0.0, "base": "sgd"}


class OptimError(ValueError):
    """An optimiser config no run can use; the message is one line for the user."""


# ---------------------------------------------------------------------------------------------
# the config, as data


def _number(key: str, value, low: float, high: float | None = None, low_open: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise OptimError(f"optim.{key} must be a number, got {value!r}")
    ok = math.isfinite(value) and (value > low if low_open else value >= low) and (high is None or value < high)
    if not ok:
        bounds = f"in [{low:g}, {high:g})" if high is not None else f"{'>' if low_open else '>='} {low:g}"
        raise OptimError(f"optim.{key} must be {bounds}, got optim.{key}={value}")


def _check_base_keys(o: Mapping, base: str) -> None:
    """The settings of a built-in optimiser (or of SAM's built-in base); None means the default."""
    if o.get("momentum") is not None:
        _number("momentum", o["momentum"], 0.0, 1.0)
    if o.get("weight_decay") is not None:
        _number("weight_decay", o["weight_decay"], 0.0)
    if o.get("nesterov") is not None and not isinstance(o["nesterov"], bool):
        raise OptimError(f"optim.nesterov must be true or false, got {o['nesterov']!r}")
    if o.get("nesterov") and not o.get("momentum"):
        raise OptimError("optim.nesterov=true needs optim.momentum > 0")
    if o.get("eps") is not None:
        _number("eps", o["eps"], 0.0, low_open=True)
    betas = o.get("betas")
    if betas is not None:
        if not isinstance(betas, (list, tuple)) or len(betas) != 2:
            raise OptimError(f"optim.betas must be two numbers [beta1, beta2], got {betas!r}")
        for b in betas:
            _number("betas", b, 0.0, 1.0)


def _target(o: Mapping, why: str) -> str:
    target = o.get("_target_")
    if not isinstance(target, str) or not target or target == "???" or "${" in target:
        raise OptimError(f"{why} needs optim._target_ (the dotted path of a torch.optim.Optimizer subclass, "
                         f"e.g. optim._target_=torch.optim.RMSprop)")
    return target


def check_optim_config(o) -> dict:
    """The ``optim`` config, checked as data (nothing imported); OptimError (one line) otherwise."""
    if not isinstance(o, Mapping):
        raise OptimError(f"optim must be a mapping, got {o!r}")
    o = dict(o)
    name = o.get("name")
    if name not in NAMES:
        raise OptimError(f"unknown optimizer {name!r} (choose from {', '.join(NAMES)}, or "
                         f"optim._target_=a torch.optim.Optimizer subclass)")
    if "lr" in o:
        raise OptimError("the learning rate is lr= (and schedule=), not optim.lr")
    if name == "custom":
        _target(o, "optim=custom")
        return o
    base = name
    if name == "sam":
        _number("rho", o.get("rho"), 0.0)
        if not isinstance(o.get("adaptive"), bool):
            raise OptimError(f"optim.adaptive must be true or false, got {o.get('adaptive')!r}")
        base = o.get("base", "sgd")
        if base not in BASES:
            raise OptimError(f"unknown optim.base {base!r} (choose from {', '.join(BASES)})")
        if base == "custom":
            _target(o, "optim.base=custom")
            return o
        if o.get("_target_") is not None:
            raise OptimError("optim._target_ names SAM's base optimiser: add optim.base=custom")
    known = (*SAM_KEYS, "_target_") if name == "sam" else ()
    for key, value in o.items():
        if key != "name" and key not in KEYS[base] and key not in known and value is not None:
            raise OptimError(f"{'optim=sam with base ' if name == 'sam' else 'optim='}{base} has no setting "
                             f"'optim.{key}' (settings: {', '.join(KEYS[base])})")
    _check_base_keys(o, base)
    return o


def identity_view(o: Mapping) -> dict:
    """The optimiser config as run identities hold it: keys at values that change nothing (no momentum,
    no weight decay, SAM over plain SGD, a base setting left to its default) are left out, so runs made
    before these settings existed keep their ids."""
    def neutral(k, v) -> bool:
        return k in NEUTRAL and v == NEUTRAL[k] and isinstance(v, bool) == isinstance(NEUTRAL[k], bool)

    return {k: v for k, v in o.items() if v is not None and not neutral(k, v)}


def is_plain_sgd(o: Mapping) -> bool:
    """Whether the config is the study's optimiser: SGD without momentum or weight decay."""
    return o.get("name") == "sgd" and not o.get("momentum") and not o.get("weight_decay")


def base_spec(o: Mapping) -> tuple[str, dict]:
    """(dotted class path, keyword arguments) of the optimiser that takes the steps (SAM's base for SAM)."""
    name = o["name"]
    base = o.get("base", "sgd") if name == "sam" else name
    if base == "custom":
        skip = {"name", "_target_", *(SAM_KEYS if name == "sam" else ())}
        return o["_target_"], {k: v for k, v in o.items() if k not in skip}
    kwargs = {k: o[k] for k in KEYS[base] if o.get(k) is not None}
    if "betas" in kwargs:
        kwargs["betas"] = tuple(float(b) for b in kwargs["betas"])
    return CLASSES[base], kwargs


# ---------------------------------------------------------------------------------------------
# the optimiser


def optimizer_class(path: str) -> type:
    """The class a dotted path names; OptimError unless it is a ``torch.optim.Optimizer`` subclass."""
    # lazy: the model's locator brings Hydra's; only a custom optimiser needs it
    from sharpcomp.models import ModelError, locate

    try:
        cls = locate(path)
    except ModelError as exc:
        raise OptimError(str(exc).replace("model._target_", "optim._target_")) from None
    if not (isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer)):
        raise OptimError(f"optim._target_ '{path}' is not an optimiser (a torch.optim.Optimizer subclass), "
                         f"it is {type(cls).__name__ if not isinstance(cls, type) else 'the class ' + cls.__name__}")
    if issubclass(cls, SAM):
        raise OptimError(f"optim._target_ '{path}' is SAM: use optim=sam (with optim.base=...)")
    return cls


def build_optimizer(o: Mapping, params: Iterable, lr: float) -> torch.optim.Optimizer:
    """The optimiser an ``optim`` config names, over ``params``, at learning rate ``lr``."""
    path, kwargs = base_spec(o)
    cls = optimizer_class(path)
    if o["name"] == "sam":
        return SAM(params, lr=lr, rho=o["rho"], adaptive=o["adaptive"], base=cls, **kwargs)
    return cls(params, lr=lr, **kwargs)


def check_optimizer(o: Mapping, lr: float) -> None:
    """Import the optimiser and build it on one dummy parameter: OptimError (one line) when it refuses."""
    path, kwargs = base_spec(o)
    optimizer_class(path)
    try:
        build_optimizer(o, [torch.zeros(1, requires_grad=True)], lr)
    except OptimError:
        raise
    except Exception as exc:
        args = ", ".join(f"{k}={v!r}" for k, v in {"lr": lr, **kwargs}.items())
        text = (str(exc).strip().splitlines() or [""])[0][:200]
        raise OptimError(f"optimizer {path}({args}) failed: {type(exc).__name__}: {text}") from None


class SAM(torch.optim.Optimizer):
    """SAM / adaptive SAM over a base optimiser (default: plain SGD). ``opt.step(closure)`` returns the loss
    at theta. The base shares SAM's parameter groups and state, so ``state_dict`` holds the base's state
    (momentum buffers, Adam's moments) and a resumed SAM run continues exactly."""

    def __init__(self, params: Iterable, lr: float, rho: float = 0.05, adaptive: bool = False,
                 base: type = torch.optim.SGD, **base_kwargs):
        if not lr > 0:
            raise ValueError(f"learning rate must be > 0, got {lr}")
        if not rho >= 0:
            raise ValueError(f"rho must be >= 0, got {rho}")
        super().__init__(params, {"lr": float(lr), "rho": float(rho), "adaptive": bool(adaptive)})
        self.base = base(self.param_groups, lr=float(lr), **base_kwargs)
        self._link()

    def _link(self) -> None:
        """One set of groups and one state for SAM and its base (the base's defaults filled in)."""
        for group in self.param_groups:
            for key, value in self.base.defaults.items():
                group.setdefault(key, value)
        self.base.param_groups = self.param_groups
        self.base.state = self.state

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)
        self._link()

    def _grad_norm(self) -> torch.Tensor:
        norms = []
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad.detach()
                if group["adaptive"]:
                    g = p.detach().abs() * g
                norms.append(g.norm(2))
        if not norms:
            return torch.tensor(0.0)
        dev = norms[0].device
        return torch.stack([n.to(dev) for n in norms]).norm(2)

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> torch.Tensor:  # type: ignore[override]
        if closure is None:
            raise RuntimeError("SAM.step needs a closure (zero grads, compute the loss, backward, return it)")
        with torch.enable_grad():
            loss = closure()
        norm = float(self._grad_norm())
        saved: list[tuple[torch.Tensor, torch.Tensor]] = []
        for group in self.param_groups:
            scale = group["rho"] / (norm + _EPS)
            for p in group["params"]:
                if p.grad is None:
                    continue
                e = p.grad.detach() * scale
                if group["adaptive"]:
                    e = e * p.detach().pow(2)
                saved.append((p, p.detach().clone()))
                p.add_(e)
        with torch.enable_grad():
            closure()
        for p, theta in saved:
            p.copy_(theta)
        self.base.step()
        return loss
