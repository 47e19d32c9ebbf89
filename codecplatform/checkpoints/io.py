"""THE checkpoint reader: every checkpoint or weights file the package opens is read here.

:func:`read_checkpoint` reads with ``torch.load(weights_only=True)``: tensors and plain data only,
so a file that would build other objects (and could run code while unpickling, see
https://pytorch.org/docs/stable/generated/torch.load.html) is refused, not run. Every failure is
a one-line :class:`CheckpointError` (a ValueError) naming the file: missing, unreadable, refused,
or not the kind of checkpoint the caller asked for.

The codec-checkpoint helpers live beside it (:func:`load_codec_state`, :func:`check_codec_state`,
:func:`key_list`): they need nothing of the model classes, so the models import them and not the
other way round.
"""

from __future__ import annotations

import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "CheckpointError",
    "CheckpointNotFoundError",
    "check_codec_state",
    "key_list",
    "load_codec_state",
    "read_checkpoint",
]


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used; the message is one line and names the file."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """The checkpoint file does not exist (both a :class:`CheckpointError` and a FileNotFoundError,
    so callers catching either see it)."""


def read_checkpoint(
    path: str | Path,
    what: str,
    map_location: str | torch.device = "cpu",
    *,
    required: Mapping[str, type | tuple[type, ...]] | None = None,
    missing: str | None = None,
) -> dict[str, Any]:
    """The content of the checkpoint file ``path``, a dict, read with ``torch.load(weights_only=True)``.

    Args:
        path: the file.
        what: what the caller expects, for the messages (``"codec checkpoint"``).
        map_location: where tensors go (``torch.load``'s argument).
        required: keys the dict must hold, each with the type its value must have
            (``{"state_dict": dict}``): the check that this is the kind of checkpoint asked for.
        missing: the message for a missing file (a caller names its config field and what to
            do); default ``"<what> not found: <path>"``.

    Raises (all one line):
        CheckpointNotFoundError: no file at ``path``.
        CheckpointError: ``"<path> is not a <what>: ..."``: torch refuses it (an object that is not
            tensors and plain data: ``torch.load(weights_only=True) refuses it (<torch's reason>)``),
            cannot read it (text, empty, truncated), it holds no dict, or lacks a ``required`` key.
        OSError: the file exists but cannot be opened (permissions): not a property of the file's content.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointNotFoundError(missing or f"{what} not found: {path}")
    try:
        content = torch.load(path, map_location=map_location, weights_only=True)
    except OSError:
        raise
    except pickle.UnpicklingError as error:  # weights_only refused an object, or not a pickle at all
        raise CheckpointError(
            f"{path} is not a {what}: torch.load(weights_only=True) refuses it "
            f"({load_error_detail(error)}): it is not tensors and plain data only, so it is not loaded"
        ) from error
    except Exception as error:  # noqa: BLE001  (text, empty, truncated, a zip of something else: any failure)
        raise CheckpointError(
            f"{path} is not a {what}: torch.load cannot read it ({type(error).__name__}: {load_error_detail(error)})"
        ) from error
    if not isinstance(content, dict):
        raise CheckpointError(f"{path} is not a {what}: it holds a {type(content).__name__}, not a dict")
    for key, kind in (required or {}).items():
        if key not in content:
            raise CheckpointError(f"{path} is not a {what}: it has no {key!r}")
        if not isinstance(content[key], kind):
            expected = " or ".join(k.__name__ for k in kind) if isinstance(kind, tuple) else kind.__name__
            raise CheckpointError(
                f"{path} is not a {what}: its {key!r} is a {type(content[key]).__name__}, not a {expected}"
            )
    return content


def load_error_detail(error: BaseException, limit: int = 200) -> str:
    """The informative part of a ``torch.load`` error on one line, at most ``limit`` characters:
    for a refusal, the reason after ``WeightsUnpickler error:`` (``Unsupported global: GLOBAL ...``)
    without torch's advice to turn the safe loading off; otherwise the message without
    its boilerplate lines."""
    text = str(error)
    if "WeightsUnpickler error:" in text:
        text = text.split("WeightsUnpickler error:", 1)[1]
        text = text.split("Please use `torch.serialization", 1)[0].split("Check the documentation of torch.load", 1)[0]
        lines = [text]
    else:
        boilerplate = ("Weights only load failed", "Check the documentation of torch.load", "Please file an issue")
        lines = [line.strip() for line in text.splitlines()]
        lines = [line for line in lines if line and not line.startswith(boilerplate)]
    detail = " ".join(" ".join(lines).split()) or ("unexpected end of file" if isinstance(error, EOFError) else "")
    detail = detail or type(error).__name__
    return detail if len(detail) <= limit else detail[: limit - 3] + "..."


# -- codec checkpoints ---------------------------------------------------------------------------
def load_codec_state(
    path: str | Path, map_location: str | torch.device = "cpu", weights: str = "auto"
) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """(codec config, codec state dict) of a training checkpoint or an imported one.

    Both hold ``codec_config`` (``{class_path, init_args}``) and a ``state_dict`` whose
    ``codec.`` entries are the codec's trained (raw) weights. A training run with generator EMA
    (``GANCodecModule(generator_ema=...)``) also stores ``codec_ema.`` entries (the EMA of every
    weight and codebook) and ``ema_updates`` (how many updates they average). ``weights`` picks:

    - ``"auto"``: the EMA weights when present and updated at least once (what that run
      validated and tested with), else the raw ones;
    - ``"raw"``: the ``codec.`` entries;
    - ``"ema"``: the ``codec_ema.`` entries, or ValueError when the checkpoint has none.

    The prefix is removed here. Read by :func:`read_checkpoint`: checkpoints of ``codecplatform
    fit`` (hyperparameters as plain config data, callback, optimizer, scheduler, loop and
    data-module states) and of ``import-checkpoint`` need nothing beyond tensors and plain data.
    Errors: :class:`CheckpointNotFoundError`; :class:`CheckpointError` ``"<path> is not a codec
    checkpoint: ..."`` for a file that is refused, unreadable or lacks ``codec_config`` /
    ``state_dict``.
    """
    if weights not in ("auto", "raw", "ema"):
        raise ValueError(f"weights must be 'auto', 'raw' or 'ema', got {weights!r}")
    checkpoint = read_checkpoint(
        path,
        "codec checkpoint",
        map_location,
        required={"codec_config": dict, "state_dict": dict},
        missing=f"checkpoint not found: {path}",
    )
    config, full = checkpoint["codec_config"], checkpoint["state_dict"]
    has_ema = any(k.startswith("codec_ema.") for k in full)
    if weights == "ema" and not has_ema:
        raise ValueError(f"{path} holds no generator EMA weights ('codec_ema.'): load weights='raw'")
    updates = full.get("ema_updates")
    updated = updates is None or int(updates) > 0
    prefix = "codec_ema." if weights == "ema" or (weights == "auto" and has_ema and updated) else "codec."
    state = {k[len(prefix) :]: v for k, v in full.items() if k.startswith(prefix)}
    return config, state


def key_list(keys: list[str], limit: int = 12) -> str:
    """The first ``limit`` of ``keys``, comma-separated, and how many more (for error messages)."""
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


def check_codec_state(codec: torch.nn.Module, state: dict[str, Tensor], what: str = "state dict") -> None:
    """Raise ValueError naming missing and unexpected keys and shape mismatches of ``state``
    against ``codec``'s own state dict (what a strict ``load_state_dict`` would refuse), on one
    line, so that a wrong file is named before any weight is copied."""
    own = codec.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [
        f"{k} {tuple(state[k].shape)} (expected {tuple(v.shape)})"
        for k, v in own.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    problems = []
    if missing:
        problems.append(f"missing keys ({len(missing)}): {key_list(missing)}")
    if unexpected:
        problems.append(f"unexpected keys ({len(unexpected)}): {key_list(unexpected)}")
    if shapes:
        problems.append(f"shape mismatches ({len(shapes)}): {key_list(shapes)}")
    if problems:
        raise ValueError(f"the {what} does not fit this codec (different architecture): " + "; ".join(problems))
