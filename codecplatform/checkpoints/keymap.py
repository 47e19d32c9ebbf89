"""What every importer shares: reading an official weights file and renaming its state dict into ours."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.nn import Module

from codecplatform.checkpoints.io import key_list, read_checkpoint


def load_weights_file(source: str | Path, family: str) -> dict[str, Any]:
    """The content of an official ``family`` weights file, through :func:`read_checkpoint`
    (tensors and plain data only: a file that needs arbitrary code is refused). Errors are one
    line and name the file: missing (also a FileNotFoundError), refused, unreadable, not a dict."""
    return read_checkpoint(source, f"{family} weights file", missing=f"{family} weights file not found: {source}")


def rename_state_dict(
    official: dict[str, Tensor],
    convert_key: Callable[[str], str | None],
    family: str,
    convert_value: Callable[[str, Tensor], Tensor] = lambda key, value: value,
) -> dict[str, Tensor]:
    """Official keys -> ours through ``convert_key`` (None: not a key of this model).

    Raises ValueError naming every unknown key and every entry given twice (old- and new-style
    weight norm together); nothing is dropped silently.
    """
    out: dict[str, Tensor] = {}
    unknown: list[str] = []
    duplicates: list[str] = []
    for key, value in official.items():
        new = convert_key(key)
        if new is None:
            unknown.append(key)
        elif new in out:
            duplicates.append(key)
        else:
            out[new] = convert_value(key, value)
    if unknown:
        raise ValueError(f"unknown keys in the official {family} state dict ({len(unknown)}): {key_list(unknown)}")
    if duplicates:
        raise ValueError(f"entries given twice (old- and new-style weight norm?): {key_list(duplicates)}")
    return out


def check_converted(
    model: Module,
    converted: dict[str, Tensor],
    source: str | Path,
    what: str,
    official_key: Callable[[str], str] = lambda key: key,
) -> None:
    """Raise ValueError before anything is written when ``converted`` does not fit ``model``: one line
    naming ``source``, ``what`` it should be, the first missing entries, the unexpected ones and the
    shape mismatches, each named by ``official_key`` (our key -> the file's name)."""
    own = model.state_dict()
    missing = [official_key(k) for k in own if k not in converted]
    unexpected = [official_key(k) for k in converted if k not in own]
    shapes = [
        f"{official_key(k)} {tuple(converted[k].shape)} (expected {tuple(v.shape)})"
        for k, v in own.items()
        if k in converted and tuple(converted[k].shape) != tuple(v.shape)
    ]
    problems = [f"missing keys ({len(missing)}): {key_list(missing)}"] if missing else []
    problems += [f"unexpected keys ({len(unexpected)}): {key_list(unexpected)}"] if unexpected else []
    problems += [f"shape mismatches ({len(shapes)}): {key_list(shapes)}"] if shapes else []
    if problems:
        raise ValueError(f"{source} is not {what}: " + "; ".join(problems))


def write_codec_checkpoint(
    codec: Module, config: dict[str, Any], source: str | Path, family: str, variant: str | None, out: str | Path
) -> Path:
    """Write ``{"codec_config", "state_dict": {"codec.<key>"}, "source", "family", "variant"}`` at ``out``
    (what ``Codec.from_checkpoint`` and ``AudioCodec.from_checkpoint`` read); returns ``out``."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(
        {
            "codec_config": config,
            "state_dict": {f"codec.{k}": v.detach().cpu().clone().contiguous() for k, v in codec.state_dict().items()},
            "source": str(Path(source).resolve()),
            "family": family,
            "variant": variant,
        },
        out,
    )
    return out
