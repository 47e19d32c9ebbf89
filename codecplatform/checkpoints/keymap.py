"""Renaming an official state dict into ours: the loop shared by every importer."""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor

from codecplatform.models.codec import key_list


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
