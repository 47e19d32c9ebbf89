"""Lhotse data pipeline: manifests, fixed-length audio windows, the Lightning data module.

- :mod:`datamodules.manifests`: scan an audio folder (bad files reported, not fatal), split
  train/val/test by a stable hash, write lhotse manifests (``codecplatform prepare``).
- :mod:`datamodules.dataset`: ``AudioWindowDataset``, a ``CutSet`` batch -> (B, C, T) float32.
- :mod:`datamodules.lhotse_audio`: ``LhotseAudioDataModule`` (rank-sharded lhotse samplers).
- :mod:`datamodules.demo`: the quickstart's synthesized dataset (``python -m datamodules.demo``).

``LhotseAudioDataModule`` is imported on first access, so that the command line tools that do not
need Lightning (``prepare``, the demo) start quickly.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from datamodules.dataset import AudioWindowDataset
from datamodules.manifests import (
    FileProblem,
    load_cuts,
    prepare_main,
    prepare_manifests,
    scan_audio_dir,
    split_recordings,
)

if TYPE_CHECKING:
    from datamodules.lhotse_audio import LhotseAudioDataModule


def __getattr__(name: str) -> Any:
    if name == "LhotseAudioDataModule":
        from datamodules.lhotse_audio import LhotseAudioDataModule

        return LhotseAudioDataModule
    raise AttributeError(f"module 'datamodules' has no attribute {name!r}")


__all__ = [
    "AudioWindowDataset",
    "FileProblem",
    "LhotseAudioDataModule",
    "load_cuts",
    "prepare_main",
    "prepare_manifests",
    "scan_audio_dir",
    "split_recordings",
]
