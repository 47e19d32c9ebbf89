"""Channel mapping of decoded audio (pure function, numpy only: the command-line coders import it
without the data pipeline)."""

from __future__ import annotations

import numpy as np


def map_channels(audio: np.ndarray, channels: int, name: str) -> np.ndarray:
    """Give ``audio`` (C_in, N) exactly ``channels`` channels: (C_in, N) -> (channels, N).

    Mono is repeated; more channels than wanted are averaged (``channels == 1``) or the first
    ``channels`` are kept; fewer channels (but more than one) is an error naming ``name``.
    """
    c_in = audio.shape[0]
    if c_in == channels:
        return audio
    if c_in == 1:
        return np.repeat(audio, channels, axis=0)
    if c_in > channels:
        return audio.mean(axis=0, keepdims=True) if channels == 1 else audio[:channels]
    raise ValueError(
        f"{name} has {c_in} channels, cannot make {channels} of them "
        f"(only mono is repeated); set channels <= {c_in} or drop the file"
    )
