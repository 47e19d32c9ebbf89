"""What every importer shares: reading an official weights file and renaming its state dict into ours."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import Tensor

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
