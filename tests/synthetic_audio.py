"""Generated test audio, importable from every test module (``tests/`` is on ``sys.path`` through
the root conftest; a module named ``conftest`` is ambiguous once a subfolder has its own)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import soundfile as sf


def write_tones(folder: Path, sample_rate: int, channels: int, n_files: int = 6, seconds: float = 1.0) -> None:
    """Harmonic tones with a little noise: not silent, different per file and channel."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    for i in range(n_files):
        f0 = 110 * 2 ** (i / 4)
        tone = sum(np.sin(2 * math.pi * f0 * k * t) / k for k in range(1, 5))
        audio = np.stack(
            [0.3 * tone * (1 - 0.2 * c) + 0.01 * rng.standard_normal(t.size) for c in range(channels)], axis=1
        )
        sf.write(folder / f"clip{i}.wav", audio.astype(np.float32), sample_rate)
