"""Building objects from ``{class_path, init_args}`` configs, the format of experiment YAMLs."""

from __future__ import annotations

from typing import Any, TypeVar

from jsonargparse import ArgumentParser

T = TypeVar("T")


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
