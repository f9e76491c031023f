"""The ``train`` options as ``conf/`` defines them, for ``sharpcomp --help``.

Every key of the composed default config by its full dotted path (the path an override takes, e.g.
``metrics.flatness.fisher``), its default resolved and written as an override's value, and the comment
beside it in its YAML file (continuation lines joined). Nothing here is typed by hand: a key added to
``conf/`` appears in the help as it is.
"""

from __future__ import annotations

import re
from importlib import resources

from omegaconf import OmegaConf

from sharpcomp.settings import CONFIG_MODULE, compose

PACKAGED_GROUPS = ("data", "model", "optim", "schedule")  # groups whose keys sit under their own name
GROUPS_WITH_FILES = (*PACKAGED_GROUPS, "scale")  # scale's keys are global (@package _global_)
ENV_DEFAULT = re.compile(r"^\$\{oc\.env:(\w+)(?:,(.*))?\}$")
WIDTH = 38


def group_options(group: str) -> list[str]:
    """The option names of a config group (``conf/<group>/*.yaml``)."""
    folder = resources.files(CONFIG_MODULE) / group
    if not folder.is_dir():
        return []
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))


def yaml_comments(text: str, prefix: str = "") -> dict[str, str]:
    """Dotted key -> the comment on its line in a YAML text, with the comment-only lines indented under it."""
    out: dict[str, str] = {}
    stack: list[tuple[int, str]] = []
    last, last_indent = None, 0
    for raw in text.splitlines():
        stripped = raw.strip()
        indent = len(raw) - len(raw.lstrip())
        if stripped.startswith("#") and last is not None and indent > last_indent:
            out[last] = f"{out[last]} {stripped[1:].strip()}".strip()
            continue
        m = re.match(r"([A-Za-z_]\w*):(.*)$", stripped)
        if not m:
            last = None
            continue
        key, rest = m.groups()
        while stack and stack[-1][0] >= indent:
            stack.pop()
        stack.append((indent, key))
        last, last_indent = prefix + ".".join(k for _, k in stack), indent
        out[last] = rest.split("#", 1)[1].strip() if "#" in rest else ""
    return out


def _comments() -> dict[str, str]:
    """Comments of ``train.yaml`` and of the default option of every group."""
    conf = resources.files(CONFIG_MODULE)
    found = yaml_comments((conf / "train.yaml").read_text())
    for entry in OmegaConf.load(conf / "train.yaml")["defaults"]:
        if not hasattr(entry, "items"):
            continue
        for group, name in entry.items():
            path = conf / group / f"{name}.yaml"
            if group in GROUPS_WITH_FILES and path.is_file():
                prefix = f"{group}." if group in PACKAGED_GROUPS else ""
                found = {**yaml_comments(path.read_text(), prefix), **found}
    return found


def value_text(value) -> str:
    """A value as an override writes it (``null``, ``true``, ``[train,test]``, ``{n:256}``)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(map(value_text, value)) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{value_text(v)}" for k, v in value.items()) + "}"
    text = str(value)
    return text if re.fullmatch(r"[\w./:+-]+", text) else "'" + text.replace("'", "\\'") + "'"


def options() -> list[tuple[str, str | None, str]]:
    """``(key, default, comment)`` of every option of the default config, in ``conf/``'s order; a mapping
    with a comment of its own comes first as ``(key + ".*", None, comment)``."""
    cfg = compose()
    comments = _comments()
    rows: list[tuple[str, str | None, str]] = []

    def walk(node: dict, path: str) -> None:
        for k, v in node.items():
            key = path + str(k)
            if isinstance(v, dict) and v:
                if comments.get(key):
                    rows.append((key + ".*", None, comments[key]))
                walk(v, key + ".")
                continue
            comment = comments.get(key, "")
            env = ENV_DEFAULT.match(v) if isinstance(v, str) else None
            if env:  # an environment variable's value when it is set: show the meaning, not the syntax
                var, fallback = env.groups()
                v = OmegaConf.create({"v": fallback}).v if fallback is not None else None
                comment = f"{comment} (default: ${var} when set)".strip()
            elif isinstance(v, str) and "${" in v:
                v = OmegaConf.select(cfg, key)
            rows.append((key, value_text(v), comment))

    walk(OmegaConf.to_container(cfg, resolve=False), "")
    return rows


def option_lines() -> list[str]:
    """The options as ``--help`` shows them: ``  key=default   comment``."""
    lines = []
    for key, value, comment in options():
        head = key if value is None else f"{key}={value}"
        head = f"{head:<{WIDTH}}" if len(head) < WIDTH else head + "  "
        lines.append(f"  {head}{comment}".rstrip())
    return lines
