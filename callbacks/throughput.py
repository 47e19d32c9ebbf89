"""Training speed in audio seconds per second, step and data-loading time, peak GPU memory."""

from __future__ import annotations

import time
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer

from callbacks.artifacts import batch_audio, module_codec

PREFIX = "train/throughput"


def audio_seconds(batch_shape: tuple[int, ...], sample_rate: int, world_size: int = 1) -> float:
    """Seconds of audio in one (B, C, T) batch on each of ``world_size`` ranks: ``B * T / sr * world``
    (channels play at the same time and do not add seconds)."""
    batch, _, samples = batch_shape
    return batch * samples / sample_rate * world_size


class AudioThroughputMonitor(Callback):
    """Logs, for every training batch (Lightning writes every ``log_every_n_steps``-th to the loggers):

    - ``train/throughput/step_time``: seconds from the batch's start to its end on this rank
      (forward, backward passes, optimizer steps; the GPU is synchronized first on CUDA);
    - ``train/throughput/data_time``: seconds from the end of the previous batch (or of the last
      validation, or the start of the epoch, whichever came last) to the start of this batch: data
      loading and the loop's own work (Lightning fetches one batch ahead);
    - ``train/throughput/audio_seconds_per_second``: audio seconds trained on per wall-clock second,
      all ranks together: ``world_size * B * T / sample_rate / (step_time + data_time)`` for a
      (B, C, T) batch;
    - ``train/throughput/max_memory_allocated_gb``: on CUDA only, the peak memory allocated by
      tensors during the batch (GiB; the peak is reset at each batch start). Not logged on CPU.

    Timings are rank zero's (logged without synchronization); ranks run in lock step under DDP.

    Args:
        sample_rate: audio sample rate in Hz (None: ``pl_module.codec.sample_rate``).
        audio_key: the audio's key when batches are mappings.
    """

    def __init__(self, sample_rate: int | None = None, audio_key: str = "audio"):
        super().__init__()
        if sample_rate is not None and sample_rate <= 0:
            raise ValueError(f"sample_rate must be > 0 or null, got {sample_rate}")
        self.sample_rate = sample_rate
        self.audio_key = audio_key
        self._start: float | None = None
        self._previous_end: float | None = None

    def _rate(self, pl_module: LightningModule) -> int:
        if self.sample_rate is not None:
            return self.sample_rate
        return int(module_codec(pl_module, "AudioThroughputMonitor (without sample_rate)").sample_rate)

    @staticmethod
    def _synchronize(pl_module: LightningModule) -> None:
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._previous_end = time.perf_counter()

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        self._synchronize(pl_module)
        if pl_module.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(pl_module.device)
        self._start = time.perf_counter()

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self._start is None:
            return
        self._synchronize(pl_module)
        end = time.perf_counter()
        step_time = end - self._start
        data_time = 0.0 if self._previous_end is None else self._start - self._previous_end
        self._previous_end, self._start = end, None

        x = batch_audio(batch, self.audio_key)
        seconds = audio_seconds(tuple(x.shape), self._rate(pl_module), trainer.world_size)
        values = {
            f"{PREFIX}/step_time": step_time,
            f"{PREFIX}/data_time": data_time,
            f"{PREFIX}/audio_seconds_per_second": seconds / max(step_time + data_time, 1e-9),
        }
        if pl_module.device.type == "cuda":
            values[f"{PREFIX}/max_memory_allocated_gb"] = torch.cuda.max_memory_allocated(pl_module.device) / 2**30
        batch_size = max(1, x.shape[0])
        for key, value in values.items():
            pl_module.log(key, value, on_step=True, on_epoch=False, batch_size=batch_size)

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._previous_end = time.perf_counter()  # the time spent validating is not data loading
