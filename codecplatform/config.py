"""Experiment configs: ``_base_`` composition and building objects from ``{class_path, init_args}``.

The one place configs are read. Experiment YAMLs hold changes only: a YAML may start with
``_base_: [paths]`` (relative to the file); those are applied first, in order, then the file
itself. A later file's mappings merge key by key into the earlier ones (a ``reconstruction_losses``
that sets only ``mel`` keeps the base's ``time``); a mapping that names a different ``class_path``
replaces the earlier part whole (its arguments belong to another class); lists are replaced whole, so
each list (discriminators, callbacks) lives in exactly one file. A file's chain reaches the parser
as one composed config (jsonargparse would replace a dict-typed argument whole at every file). The
codec's sample rate is one setting: rates and bandwidths a file wrote for its codec rate follow a
later file's codec rate (:func:`follow_codec_rate`). Nothing here imports Lightning.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from jsonargparse import ArgumentParser

T = TypeVar("T")
BASE_KEY = "_base_"


def expand_config(path: str | Path) -> list[str]:
    """``--config`` values for ``path``: the file itself when it has no ``_base_``, else one YAML
    string, its bases (recursively, in order) and its own content composed with :func:`merge_config`.
    """
    items = _chain(path)
    if len(items) == 1 and not items[0].count("\n") and Path(items[0]).is_file():
        return items
    merged: dict[str, Any] = {}
    history: list[tuple[dict[str, Any], Any]] = []
    for item in items:
        data = _load(item)
        merged = merge_config(merged, data)
        history.append((data, _get(merged, CODEC_RATE)))
    return [yaml.safe_dump(follow_codec_rate(merged, history), sort_keys=False)]


CODEC_RATE = "model.init_args.codec.init_args.sample_rate"
CODEC_BANDWIDTHS = "model.init_args.codec.init_args.bandwidths"
RATE_PARTS = ("model.init_args.reconstruction_losses", "model.init_args.metrics", "model.init_args.test_metrics")


def _get(data: Any, key: str) -> Any:
    for part in key.split("."):
        data = data.get(part) if isinstance(data, dict) else None
    return data


def _put(data: dict[str, Any], key: str, value: Any) -> None:
    *path, last = key.split(".")
    for part in path:
        data = data[part]
    data[last] = value


def rate_keys(config: Any, get: Any = _get) -> list[str]:
    """Dotted keys of the ``sample_rate`` values that must equal the codec's: the data module's and each
    reconstruction loss's and metric's that has one (``get(config, key)`` reads a key)."""
    keys = ["data.init_args.sample_rate"] if get(config, "data.init_args.sample_rate") is not None else []
    for parts in RATE_PARTS:
        found = get(config, parts)
        for name in found or {}:
            if get(config, f"{parts}.{name}.init_args.sample_rate") is not None:
                keys.append(f"{parts}.{name}.init_args.sample_rate")
    return keys


def follow_codec_rate(merged: dict[str, Any], history: list[tuple[dict[str, Any], Any]]) -> dict[str, Any]:
    """The sample rate is one setting: a data, loss or metric ``sample_rate`` written in a file for the
    codec rate of that point of the chain (equal to it) follows a later file's codec ``sample_rate``,
    and ``bandwidths`` written then are scaled by the same ratio (same codebook counts). ``history``:
    (each file's content, the codec's rate after it), in order."""
    rate = _get(merged, CODEC_RATE)
    if not isinstance(rate, int):
        return merged
    for key in [*rate_keys(merged), CODEC_BANDWIDTHS]:
        then = next((r for data, r in reversed(history) if _get(data, key) is not None), None)
        value = _get(merged, key)
        if not isinstance(then, int) or then == rate or value is None:
            continue
        if key == CODEC_BANDWIDTHS:
            _put(merged, key, [round(bw * rate / then, 6) for bw in value])
        elif value == then:
            _put(merged, key, rate)
    return merged


def _load(item: str) -> dict[str, Any]:
    """A config file's (or an inline YAML string's) mapping."""
    text = Path(item).read_text() if not item.count("\n") and Path(item).is_file() else item
    return yaml.safe_load(text) or {}


def _chain(path: str | Path) -> list[str]:
    """``path``'s bases (recursively, in order) then its own content: file paths, or YAML strings
    for files with a ``_base_`` key (without that key)."""
    return [
        str(file) if content is None else yaml.safe_dump(content, sort_keys=False)
        for file, content in config_chain(path)
    ]


def config_chain(path: str | Path, _seen: tuple[Path, ...] = ()) -> list[tuple[Path, dict[str, Any] | None]]:
    """``path``'s bases (recursively, in order) then the file itself, each as (file, content): the
    content without ``_base_`` for a file that has bases (None for a file without: read it whole)."""
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
        return [(path, None)]
    if isinstance(bases, str):
        bases = [bases]
    expanded: list[tuple[Path, dict[str, Any] | None]] = []
    for base in bases:
        expanded += config_chain(path.parent / base, (*_seen, resolved))
    if content:
        expanded.append((path, content))
    return expanded


def merge_config(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """``a`` with ``b``'s values: nested mappings merged key by key, everything else (lists too)
    replaced; a mapping of ``b`` naming another ``class_path`` than ``a``'s replaces it whole."""
    out = dict(a)
    for key, value in b.items():
        both = isinstance(value, dict) and isinstance(out.get(key), dict)
        if both and "class_path" in value and value["class_path"] != out[key].get("class_path", value["class_path"]):
            both = False
        out[key] = merge_config(out[key], value) if both else value
    return out


def compose_config(path: str | Path) -> dict[str, Any]:
    """The config chain of ``path`` merged into plain data (later files win, lists replaced whole),
    without validation: for reading values such as the sample rate or the codec's config."""
    merged: dict[str, Any] = {}
    for item in expand_config(path):
        merged = merge_config(merged, _load(item))
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


class ConfigError(ValueError):
    """A mistake in an experiment config or its command-line overrides, reported in one line (the
    console script prints it without usage text or traceback)."""


CONFIG_FLAGS = ("--config", "-c")
#: top-level keys of a LightningCLI subcommand besides model, data and trainer
OTHER_TOP_KEYS = (
    "seed_everything",
    "ckpt_path",
    "optimizer",
    "lr_scheduler",
    "verbose",
    "return_predictions",
    "weights_only",
    "config",
    "print_config",
)


def _did_you_mean(name: str, options: Any) -> str:
    import difflib

    match = difflib.get_close_matches(name, [str(o) for o in options], n=1, cutoff=0.6)
    return f"; did you mean {match[0]}?" if match else ""


def _import_class(class_path: str) -> type | None:
    from importlib import import_module

    module, _, name = class_path.rpartition(".")
    try:
        cls = getattr(import_module(module), name, None) if module else None
    except ImportError:
        return None
    return cls if isinstance(cls, type) else None


def _arguments(cls: type) -> list[str] | None:
    """The names ``cls(...)`` accepts (over its __init__ and, with ``**kwargs`` passed to a base class
    as jsonargparse follows them, its bases'); None when any name goes."""
    import inspect

    names: list[str] = []
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        try:
            parameters = list(inspect.signature(init).parameters.values())[1:]
        except (TypeError, ValueError):
            return None
        names += [p.name for p in parameters if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
        if not any(p.kind == p.VAR_KEYWORD for p in parameters):
            return names
        if klass.__module__.split(".")[0] in ("torch", "lightning", "torchmetrics"):
            return None  # their **kwargs take anything
    return None


def _check_part(node: Any, key: str, where: Any) -> None:
    """Check ``node`` (a value at dotted ``key``): a ``{class_path, init_args}`` mapping's argument
    names against its class, recursively into mappings and lists. ``where(key)``: the file that set a key."""
    if isinstance(node, list):
        for i, item in enumerate(node):
            _check_part(item, f"{key}[{i}]", where)
        return
    if not isinstance(node, dict):
        return
    if "class_path" not in node:
        for name, value in node.items():
            _check_part(value, f"{key}.{name}", where)
        return
    cls = _import_class(str(node["class_path"]))
    if cls is None:
        raise ConfigError(f"{key}.class_path: cannot import {node['class_path']} (set in {where(key + '.class_path')})")
    extra = sorted(set(node) - {"class_path", "init_args", "dict_kwargs", "__path__"})
    if extra:
        raise ConfigError(
            f"{key}.{extra[0]} (set in {where(key + '.' + extra[0])}): a part takes class_path and "
            f"init_args only{_did_you_mean(extra[0], ['init_args'])}"
        )
    arguments = _arguments(cls)
    for name, value in (node.get("init_args") or {}).items():
        if arguments is not None and name not in arguments:
            raise ConfigError(
                f"{key}.init_args.{name} (set in {where(f'{key}.init_args.{name}')}) is not an argument of "
                f"{node['class_path']}{_did_you_mean(name, arguments)}"
            )
        _check_part(value, f"{key}.init_args.{name}", where)


def _leaves(data: Any, prefix: str = "") -> list[str]:
    if isinstance(data, dict) and data:
        return [leaf for k, v in data.items() for leaf in _leaves(v, f"{prefix}.{k}" if prefix else str(k))]
    return [prefix]


def split_cli_args(args: list[str]) -> tuple[list[str], list[tuple[str, str | None]]]:
    """``args`` of a Lightning subcommand (without the subcommand) -> (the ``--config`` values, the
    other ``--key[=value]`` options as (key, value or None) pairs)."""
    configs: list[str] = []
    options: list[tuple[str, str | None]] = []
    i = 0
    while i < len(args):
        arg = args[i]
        if arg in CONFIG_FLAGS and i + 1 < len(args):
            configs.append(args[i + 1])
            i += 2
            continue
        if arg.startswith("--config="):
            configs.append(arg.split("=", 1)[1])
        elif arg.startswith("--"):
            key, eq, value = arg[2:].partition("=")
            if not eq and i + 1 < len(args) and not args[i + 1].startswith("-"):
                value, i = args[i + 1], i + 1
            options.append((key.rstrip("+"), value if (eq or value) else None))
        i += 1
    return configs, options


def compose_args(configs: list[str]) -> tuple[dict[str, Any], dict[str, str]]:
    """The ``--config`` values (files, with their ``_base_`` chains, or inline YAML) composed with
    :func:`merge_config`, and for each leaf key (dotted) the file that set it last."""
    merged: dict[str, Any] = {}
    origin: dict[str, str] = {}
    for value in configs:
        is_file = "\n" not in value and Path(value).is_file()
        chain = config_chain(value) if is_file else [("the inline config", yaml.safe_load(value) or {})]
        for file, content in chain:
            data = content if content is not None else _load(str(file))
            if not isinstance(data, dict):
                raise ConfigError(f"{file}: a config file must hold a mapping at the top level")
            origin.update(dict.fromkeys(_leaves(data), str(file)))
            merged = merge_config(merged, data)
    return merged, origin


def check_config_args(args: list[str], trainer_class: type | None = None) -> None:
    """Refuse, in one line, an unknown key of a Lightning subcommand's config (``args`` without the
    subcommand; files with their ``_base_`` chains, inline YAML, ``--key=value`` overrides): it names
    the key, the file or the command line that set it and the closest valid name. Classes are
    imported to read their arguments; keys that jsonargparse resolves otherwise are left to it."""
    configs, options = split_cli_args(args)
    for value in configs:
        if "\n" not in value and not Path(value).is_file():
            raise ConfigError(f"--config {value}: no such file" + _did_you_mean(value, _nearby_yaml(value)))
    merged, origin = compose_args(configs)

    def where(key: str) -> str:
        found = origin.get(key) or next((f for k, f in origin.items() if k.startswith(key + ".")), None)
        return found or "a config"

    top = ("model", "data", "trainer", *OTHER_TOP_KEYS)
    for name, value in merged.items():
        if name not in top:
            raise ConfigError(f"{name} (set in {where(name)}) is not a config key{_did_you_mean(name, top)}")
        if name == "trainer" and isinstance(value, dict) and trainer_class is not None:
            arguments = _arguments(trainer_class) or []
            for key, item in value.items():
                if arguments and key not in arguments:
                    raise ConfigError(
                        f"trainer.{key} (set in {where('trainer.' + key)}) is not a Trainer argument"
                        f"{_did_you_mean(key, arguments)}"
                    )
                _check_part(item, f"trainer.{key}", where)
        elif name in ("model", "data"):
            _check_part(value, name, where)
    for key, _ in options:
        _check_override(key, merged, trainer_class)


def _nearby_yaml(value: str) -> list[str]:
    folder = Path(value).parent
    return [str(p) for p in folder.glob("*.yaml")] if folder.is_dir() else []


def _check_override(key: str, merged: dict[str, Any], trainer_class: type | None) -> None:
    """A command-line ``--key``: walk it through the composed config, checking names at parts."""
    parts = key.split(".")
    if parts[0] in ("help", "print_config") or parts[0] in OTHER_TOP_KEYS:
        return
    top = ("model", "data", "trainer", *OTHER_TOP_KEYS)
    if parts[0] not in top:
        raise ConfigError(f"--{key} (command line): {parts[0]} is not a config key{_did_you_mean(parts[0], top)}")
    if parts[0] == "trainer" and len(parts) > 1 and trainer_class is not None:
        arguments = _arguments(trainer_class) or []
        if arguments and parts[1] not in arguments:
            raise ConfigError(
                f"--{key} (command line): {parts[1]} is not a Trainer argument{_did_you_mean(parts[1], arguments)}"
            )
        return
    node: Any = merged.get(parts[0])
    i = 1
    while i < len(parts) and isinstance(node, dict):
        if "class_path" in node and parts[i] == "init_args" and i + 1 < len(parts):
            cls = _import_class(str(node["class_path"]))
            arguments = _arguments(cls) if cls is not None else None
            name = parts[i + 1]
            if arguments is not None and name not in arguments:
                raise ConfigError(
                    f"--{key} (command line): {name} is not an argument of {node['class_path']}"
                    f"{_did_you_mean(name, arguments)}"
                )
            node = (node.get("init_args") or {}).get(name)
            i += 2
            continue
        node = node.get(parts[i])
        i += 1
