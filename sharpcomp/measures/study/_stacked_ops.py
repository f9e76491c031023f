"""Stacked execution of k copies of one ``nn.Sequential`` (Conv2d / Linear / ReLU / MaxPool2d / Flatten):
the members' layers run as single grouped operations instead of ``vmap`` over ``functional_call``.

Why: on a CPU, ``vmap``'s batching rule for a convolution with batched weights spends most of its time
in layout copies and in a slow grouped weight-gradient kernel; running the k members' convolutions as
one ``conv2d(groups=k)`` on activations kept in the (batch, k * channels, H, W) layout, and their
linear layers as one ``baddbmm``, is several times cheaper per member-step (see
``scripts/bench_ensemble.py``). The results are the members' own forward passes (float round-off
aside): no operation mixes members, so the gradient of the sum of the members' losses with respect to
member j's parameters is the gradient of member j's loss.

Layouts of the activation ``h`` between layers:
- ``"kb"``: (k, batch, ...), members first (linear layers, the inputs, the output);
- ``"bk"``: (batch, k * C, H, W), members as channel groups (convolution stacks);
- ``"shared"``: (batch, ...), one input for all members (whole-set evaluation): the first parametrised
  layer then runs as one wide layer (k * out channels / features) on the shared input.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Plan = list[tuple[str, str, dict]]


def make_plan(model: nn.Module, reorder: bool = True) -> Plan | None:
    """The layer plan of a supported ``nn.Sequential``; None when some layer is not supported.
    ``reorder``: run ReLU-then-max-pooling as max-pooling-then-ReLU (same outputs, cheaper); off
    where the plan must stop at a named layer (:mod:`sharpcomp.measures.study.stacked`)."""
    if not isinstance(model, nn.Sequential):
        return None
    plan: Plan = []
    for name, m in model.named_children():
        if isinstance(m, nn.Conv2d):
            if m.groups != 1 or m.padding_mode != "zeros" or isinstance(m.padding, str):
                return None
            plan.append(("conv", name, {"stride": m.stride, "padding": m.padding, "dilation": m.dilation,
                                        "bias": m.bias is not None}))
        elif isinstance(m, nn.Linear):
            plan.append(("linear", name, {"bias": m.bias is not None}))
        elif isinstance(m, nn.ReLU):
            plan.append(("relu", name, {}))
        elif isinstance(m, nn.MaxPool2d):
            if m.return_indices:
                return None
            plan.append(("maxpool", name, {"kernel_size": m.kernel_size, "stride": m.stride, "padding": m.padding,
                                           "dilation": m.dilation, "ceil_mode": m.ceil_mode}))
        elif isinstance(m, nn.Flatten):
            if m.start_dim != 1 or m.end_dim != -1:
                return None
            plan.append(("flatten", name, {}))
        else:
            return None
    # ReLU then max-pooling == max-pooling then ReLU (both monotone; same values, same argmax, same
    # gradients), and the pooled tensor is 4x smaller for the ReLU and its backward pass
    for i in range(len(plan) - 1 if reorder else 0):
        if plan[i][0] == "relu" and plan[i + 1][0] == "maxpool":
            plan[i], plan[i + 1] = plan[i + 1], plan[i]
    return plan


def _to_bk(h: Tensor, layout: str, k: int, channels_last: bool = True) -> Tensor:
    if layout == "bk":
        return h
    # (k, b, C, H, W) -> (b, k * C, H, W); channels-last on a CPU, where oneDNN's grouped convolutions
    # and max-pooling are markedly faster in that layout for training (same values)
    h = h.transpose(0, 1).reshape(h.shape[1], k * h.shape[2], *h.shape[3:])
    cl = channels_last and h.device.type == "cpu" and h.dim() == 4
    return h.contiguous(memory_format=torch.channels_last) if cl else h


def _to_kb(h: Tensor, layout: str, k: int) -> Tensor:
    if layout == "kb":
        return h
    # (b, k * C, ...) -> (k, b, C, ...)
    return h.reshape(h.shape[0], k, h.shape[1] // k, *h.shape[2:]).transpose(0, 1)


def stacked_forward(plan: Plan, params: Mapping[str, Tensor], x: Tensor, k: int, shared: bool = False,
                    record: Callable[[str, Tensor, Tensor], None] | None = None, stop: str | None = None,
                    channels_last: bool = True) -> Tensor:
    """Outputs (k, batch, ...) of the k members on inputs ``x``: (k, batch, ...) per member, or
    (batch, ...) shared by all when ``shared``.

    ``record(name, input, output)`` is called for every convolution (input (batch, k * Ci, H, W),
    output (batch, k * Co, H', W')) and linear layer (input (k, batch, in), output (k, batch, out));
    ``stop``: return the output of the layer of that name instead (not with ``shared``).
    ``channels_last``: the convolution stack's layout on a CPU (off for the metrics, whose per-output
    backward passes reshape the layer gradients: measured ~10% faster that way)."""
    h, layout = x, "shared" if shared else "kb"
    for kind, name, opt in plan:
        if kind == "conv":
            w = params[f"{name}.weight"]  # (k, Co, Ci, kh, kw)
            b = params[f"{name}.bias"].reshape(-1) if opt["bias"] else None
            conv = dict(stride=opt["stride"], padding=opt["padding"], dilation=opt["dilation"])
            if layout == "shared":
                h = F.conv2d(h, w.reshape(-1, *w.shape[2:]), b, **conv)
            else:
                a = _to_bk(h, layout, k, channels_last)
                h = F.conv2d(a, w.reshape(-1, *w.shape[2:]), b, groups=k, **conv)
                if record is not None:
                    record(name, a, h)
            layout = "bk"
        elif kind == "linear":
            w = params[f"{name}.weight"]  # (k, out, in)
            if layout == "shared":
                flat = h.reshape(h.shape[0], -1)
                out = flat @ w.reshape(-1, w.shape[-1]).T  # (b, k * out)
                if opt["bias"]:
                    out = out + params[f"{name}.bias"].reshape(-1)
                h = out.reshape(flat.shape[0], k, -1).transpose(0, 1)
            else:
                a = _to_kb(h, layout, k)
                if opt["bias"]:
                    h = torch.baddbmm(params[f"{name}.bias"].unsqueeze(1), a, w.transpose(1, 2))
                else:
                    h = torch.bmm(a, w.transpose(1, 2))
                if record is not None:
                    record(name, a, h)
            layout = "kb"
        elif kind == "relu":
            h = F.relu(h)
        elif kind == "maxpool":
            pool = dict(kernel_size=opt["kernel_size"], stride=opt["stride"], padding=opt["padding"],
                        dilation=opt["dilation"], ceil_mode=opt["ceil_mode"])
            if layout == "kb":
                s = h.shape
                out = F.max_pool2d(h.reshape(s[0] * s[1], *s[2:]), **pool)
                h = out.reshape(s[0], s[1], *out.shape[1:])
            else:
                h = F.max_pool2d(h, **pool)
        elif kind == "flatten":
            if layout == "shared":
                h = h.reshape(h.shape[0], -1)
            elif layout == "bk":
                h = h.reshape(h.shape[0], k, -1).transpose(0, 1)  # member j's channels, flattened in order
                layout = "kb"
            else:
                h = h.reshape(h.shape[0], h.shape[1], -1)
        if name == stop:
            break
    if layout == "shared":  # no parametrised layer at all
        h = h.unsqueeze(0).expand(k, *h.shape)
    return _to_kb(h, layout, k)

