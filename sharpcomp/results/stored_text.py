"""Text a results folder stores, read as data within bounds: nothing in it grows past its own size.

- A config Hydra recorded (``.hydra/config.yaml``, read within bounds by
  :func:`sharpcomp.results.hydra_files.read_recorded`): :func:`plain_references` tells whether resolving
  its interpolations stays as small as the config -- only whole-value ``${dotted.key}`` references to
  plain values; a string made of several references, or a reference to a list or mapping (or to a list
  of references), can double at every level.
- JSON (the ``settings`` column of a run's rows): :func:`settings_json` gives a mapping of bounded size
  and nesting, or None.

Nothing here raises for what it refuses: it answers False or None.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping

JSON_LIMIT = 1024 * 1024  # a run's settings are a few kilobytes of JSON
MAX_DEPTH = 32  # nesting of settings (a run's are 4 deep)
_REFERENCE = re.compile(r"\$\{([A-Za-z_][\w-]*(?:\.[\w-]+)*)\}")


def plain_references(cfg: Mapping) -> bool:
    """Whether every interpolation in the plain config ``cfg`` is one whole-value ``${dotted.key}`` naming a
    plain value of ``cfg`` (a number, a flag, a text without interpolations): then resolving it copies
    values, and the result is no larger than the config."""
    for value in _leaves(cfg):
        if not isinstance(value, str) or "${" not in value:
            continue
        match = _REFERENCE.fullmatch(value)
        target = _lookup(cfg, match[1]) if match else None
        if target is None or isinstance(target, (Mapping, list)) or (isinstance(target, str) and "${" in target):
            return False
    return True


def _leaves(node):
    """Every value under ``node`` that is neither a mapping nor a list."""
    for v in node.values() if isinstance(node, Mapping) else node:
        if isinstance(v, (Mapping, list)):
            yield from _leaves(v)
        else:
            yield v


def _lookup(cfg: Mapping, dotted: str):
    node = cfg
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def settings_json(text) -> Mapping | None:
    """The settings a ``settings`` value holds (JSON text), or None when it is not a mapping of at most
    ``JSON_LIMIT`` characters nested at most ``MAX_DEPTH`` deep."""
    if not isinstance(text, str) or not text.strip() or len(text) > JSON_LIMIT or \
            _nesting(re.sub(r'"(?:[^"\\]|\\.)*"', '""', text)) > MAX_DEPTH:
        return None
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        return None
    return value if isinstance(value, Mapping) else None


def _nesting(text: str) -> int:
    """How deep the brackets (``[``, ``{``) of a text nest."""
    depth = deepest = 0
    for ch in re.sub(r"[^][{}]+", "", text):
        depth += 1 if ch in "[{" else -1
        deepest = max(deepest, depth)
    return deepest
