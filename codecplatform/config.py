"""Experiment configs: ``_base_`` composition and building objects from ``{class_path, init_args}``.

The one place configs are read. Experiment YAMLs hold changes only: a YAML may start with
``_base_: [paths]`` (relative to the file); those are applied first, in order, then the file
itself. Lists are replaced whole by a later file, so each list (discriminators, callbacks) lives
in exactly one file. Nothing here imports Lightning.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from jsonargparse import ArgumentParser

T = TypeVar("T")
BASE_KEY = "_base_"


def expand_config(path: str | Path, _seen: tuple[Path, ...] = ()) -> list[str]:
    """``--config`` values for ``path``: its bases (recursively, in order) then its own content.

    A file with a ``_base_`` key is passed on as a YAML string without that key.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    resolved = path.resolve()
    if resolved in _seen:
        chain = " -> ".join(str(p) for p in (*_seen, resolved))
        raise ValueError(f"config _base_ cycle: {chain}")
    content = yaml.safe_load(path.read_text()) or {}
    if not isinstance(content, dict):
        raise ValueError(f"{path}: a config file must hold a mapping at the top level")
    bases = content.pop(BASE_KEY, None)
    if bases is None:
        return [str(path)]
    if isinstance(bases, str):
        bases = [bases]
    expanded: list[str] = []
    for base in bases:
        expanded += expand_config(path.parent / base, (*_seen, resolved))
    if content:
        expanded.append(yaml.safe_dump(content, sort_keys=False))
    return expanded


def merge_config(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """``a`` with ``b``'s values: nested mappings merged, everything else (lists too) replaced."""
    out = dict(a)
    for key, value in b.items():
        both = isinstance(value, dict) and isinstance(out.get(key), dict)
        out[key] = merge_config(out[key], value) if both else value
    return out


def compose_config(path: str | Path) -> dict[str, Any]:
    """The config chain of ``path`` merged into plain data (later files win, lists replaced whole),
    without validation: for reading values such as the sample rate or the codec's config."""
    merged: dict[str, Any] = {}
    for item in expand_config(path):
        text = Path(item).read_text() if not item.count("\n") and Path(item).is_file() else item
        merged = merge_config(merged, yaml.safe_load(text) or {})
    return merged


def instantiate(config: dict[str, Any], base: type[T]) -> T:
    """Instantiate ``config`` (``{"class_path": ..., "init_args": {...}}``, nested configs
    allowed) as ``base`` or a subclass of it, validating arguments against type annotations.
    """
    if "class_path" not in config:
        config = {"class_path": f"{base.__module__}.{base.__qualname__}", "init_args": config}
    parser = ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(base, "obj", required=True, fail_untyped=False)
    namespace = parser.parse_object({"obj": config})
    return parser.instantiate_classes(namespace).obj
