"""Writes what ``codecplatform predict`` reconstructs as audio files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import soundfile as sf
import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import BasePredictionWriter


class ReconstructionWriter(BasePredictionWriter):
    """Saves each predicted (B, C, T) reconstruction as ``<out_dir>/r<rank>_b<batch>_<i>.wav``
    (float, the codec's sample rate), and the input beside it as ``..._input.wav`` when
    ``write_inputs``. Every rank writes its own shard of the data.

    Args:
        out_dir: folder for the files (created).
        write_inputs: also write the input windows, for listening side by side.
    """

    def __init__(self, out_dir: str = "outputs/predictions", write_inputs: bool = True):
        super().__init__(write_interval="batch")
        self.out_dir = Path(out_dir)
        self.write_inputs = write_inputs

    def write_on_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        prediction: torch.Tensor,
        batch_indices: Any,
        batch: torch.Tensor,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        sample_rate = int(pl_module.codec.sample_rate)
        pairs = [("", prediction)] + ([("_input", batch)] if self.write_inputs else [])
        for suffix, audio in pairs:
            for i, clip in enumerate(audio.detach().float().cpu()):
                path = self.out_dir / f"r{trainer.global_rank}_b{batch_idx:05d}_{i:02d}{suffix}.wav"
                sf.write(path, clip.t().numpy(), sample_rate, subtype="FLOAT")  # (C, T) -> (T, C)
