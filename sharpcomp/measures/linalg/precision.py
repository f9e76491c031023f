"""Numerical precision of the metrics: full float32 arithmetic, whatever the training uses.

On NVIDIA GPUs PyTorch may run float32 matmuls and cuDNN convolutions in TF32 (cuDNN does by
default), which carries about 1e-3 relative error into every product. The metrics are the study's
product, so ``compute_metrics``, ``compute_metrics_stacked`` and the flatness measures run inside
``exact_float32``: TF32 off for cuBLAS matmuls and cuDNN (convolutions and RNNs), the caller's
settings restored afterwards, also when the body raises. No effect on CPU arithmetic.

PyTorch has two ways to set these flags: the legacy ``torch.backends.cuda.matmul.allow_tf32`` /
``torch.backends.cudnn.allow_tf32`` (with ``torch.set_float32_matmul_precision``) and, in newer
releases, ``torch.backends.*.fp32_precision``. PyTorch refuses to read a legacy flag once the new
API has set it, so ``exact_float32`` works through the legacy flags while they can be read and
through the new API otherwise: it never switches the caller to the other API.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

__all__ = ["exact_float32", "tf32_settings"]

# Each switch: how to read and write it through the legacy API (None where PyTorch refuses to read it,
# because the new API set it), its TF32-off value there, and the new API's attributes it stands for.


def _read_matmul() -> str | None:
    try:
        torch.backends.cuda.matmul.allow_tf32  # noqa: B018 - raises once the new API set the flag
    except RuntimeError:
        return None
    return torch.get_float32_matmul_precision()


def _read_cudnn() -> bool | None:
    try:
        return bool(torch.backends.cudnn.allow_tf32)
    except RuntimeError:
        return None


def _write_matmul(value: str) -> None:
    torch.set_float32_matmul_precision(value)


def _write_cudnn(value: bool) -> None:
    torch.backends.cudnn.allow_tf32 = value


# name: (legacy reader, legacy writer, legacy TF32-off value, new-API attributes)
_SWITCHES = {
    "matmul": (_read_matmul, _write_matmul, "highest", ("cuda.matmul",)),
    "cudnn": (_read_cudnn, _write_cudnn, False, ("cudnn.conv", "cudnn.rnn")),
}


def _backend(path: str):
    obj = torch.backends
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def _new_api(paths: tuple[str, ...]) -> bool:
    try:
        return all(hasattr(_backend(p), "fp32_precision") for p in paths)
    except AttributeError:
        return False


def tf32_settings() -> dict:
    """The TF32 settings in force, as a plain mapping (for logs and records): each legacy flag
    where it can be read, and the new API's ``fp32_precision`` values where this PyTorch has them."""
    out: dict[str, object] = {}
    for name, (read, _, _, paths) in _SWITCHES.items():
        legacy = read()
        if legacy is not None:
            out[name] = legacy
        if _new_api(paths):
            out.update({f"{p}.fp32_precision": _backend(p).fp32_precision for p in paths})
    return out


def _switch_off() -> list:
    """Turn TF32 off, each switch through the API the caller uses; returns how to undo it."""
    undo = []
    for read, write, off, paths in _SWITCHES.values():
        legacy = read()
        if legacy is not None:
            if legacy != off:  # already off: leave it exactly as it is
                undo.append((write, legacy))
                write(off)
        else:
            for p in paths:
                undo.append((lambda v, p=p: setattr(_backend(p), "fp32_precision", v), _backend(p).fp32_precision))
                _backend(p).fp32_precision = "ieee"
    return undo


@contextmanager
def exact_float32() -> Iterator[None]:
    """TF32 off for CUDA matmuls and cuDNN inside; the caller's settings back afterwards, also when
    the body raises. Usable as a decorator too (``@exact_float32()``)."""
    undo = _switch_off()
    try:
        yield
    finally:
        for write, value in reversed(undo):
            write(value)
