"""Text a results folder stores, parsed within bounds: nothing in it grows past its own size when read.

- YAML (Hydra's ``.hydra/*.yaml``): :func:`stored_yaml` reads a regular file of at most ``YAML_LIMIT``
  bytes and refuses anchors and aliases (a few hundred bytes of nested aliases expand to gigabytes; Hydra
  never writes them) before OmegaConf sees the text; :func:`plain_references` tells whether resolving a
  config's interpolations stays as small as the config (only ``${dotted.key}`` references to plain
  values: a string made of several references, or a reference to a list or mapping, can double at every
  level).
- JSON (the ``settings`` column): :func:`settings_json` gives a mapping of bounded size and depth, or None.

Every function here returns None (or False) for what it refuses, and raises nothing but
:class:`~sharpcomp.results.own_files.RecordError` (:func:`stored_yaml`, for what is not a regular file).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

import yaml
from omegaconf import DictConfig, OmegaConf

from sharpcomp.results.own_files import read_regular

YAML_LIMIT = 256 * 1024  # Hydra's files of a run are a few kilobytes
JSON_LIMIT = 1024 * 1024  # a run's settings are a few kilobytes of JSON
MAX_DEPTH = 32  # nesting of settings and of YAML's brackets (a run's are 4 deep)
_REFERENCE = re.compile(r"\$\{([A-Za-z_][\w-]*(?:\.[\w-]+)*)\}")


def stored_yaml(path: Path) -> DictConfig | None:
    """The config in a YAML file of a results folder, or None when it is not a small mapping without
    anchors or aliases (or is not YAML). RecordError for a file that is not regular; FileNotFoundError."""
    text = read_regular(path, YAML_LIMIT).decode("utf-8", errors="replace")
    if _nesting(text) > MAX_DEPTH:  # PyYAML's scanner takes time quadratic in the nesting of [ and {
        return None
    try:
        if any(isinstance(t, (yaml.AliasToken, yaml.AnchorToken)) for t in yaml.scan(text, Loader=yaml.SafeLoader)):
            return None
        cfg = OmegaConf.create(text)
    except Exception:  # not YAML, nested past the recursion limit, keys OmegaConf does not take
        return None
    return cfg if isinstance(cfg, DictConfig) else None


def plain_references(cfg: DictConfig, skip: Iterable[str] = ()) -> bool:
    """Whether every interpolation in ``cfg`` (outside its top-level keys ``skip``) is one whole-value
    ``${dotted.key}`` naming a plain value (a number, a flag, a text without interpolations): then
    resolving it copies values, and the result is no larger than the config."""
    raw = OmegaConf.to_container(cfg, resolve=False)
    skip = set(skip)
    for value in _leaves({k: v for k, v in raw.items() if k not in skip}):
        if not isinstance(value, str) or "${" not in value:
            continue
        match = _REFERENCE.fullmatch(value)
        target = _lookup(raw, match[1]) if match else None
        if target is None or isinstance(target, (dict, list)) or (isinstance(target, str) and "${" in target):
            return False
    return True


def _leaves(node):
    """Every value under ``node`` that is neither a mapping nor a list."""
    for v in node.values() if isinstance(node, dict) else node:
        if isinstance(v, (dict, list)):
            yield from _leaves(v)
        else:
            yield v


def _lookup(raw: dict, dotted: str):
    node = raw
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
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
    """How deep the brackets (``[``, ``{``) of a text nest; brackets in quoted text count too (an upper bound)."""
    depth = deepest = 0
    for ch in re.sub(r"[^][{}]+", "", text):
        depth += 1 if ch in "[{" else -1
        deepest = max(deepest, depth)
    return deepest
