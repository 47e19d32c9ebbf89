"""AudioThroughputMonitor: audio seconds per second = batch audio / (step + data time), data time
only where a previous batch exists, no GPU memory on CPU."""

from __future__ import annotations

import time

import pytest
import torch
from conftest import fit_tiny, metric_history
from lightning.pytorch import Callback
from test_gan_codec import SR

from callbacks.throughput import PREFIX, AudioThroughputMonitor, audio_seconds


class ValidationTimer(Callback):
    """Seconds spent validating (Lightning's own hooks, around the monitor's)."""

    def __init__(self):
        self.seconds, self._start = 0.0, 0.0

    def on_validation_start(self, trainer, pl_module):
        self._start = time.perf_counter()

    def on_validation_end(self, trainer, pl_module):
        self.seconds += time.perf_counter() - self._start


def test_audio_seconds_of_a_batch():
    assert audio_seconds((4, 2, 48000), 24000) == 8.0  # channels do not add seconds
    assert audio_seconds((4, 1, 48000), 24000, world_size=3) == 24.0


def test_logged_numbers_are_consistent_with_batch_size_and_time(mlflow_logger, tmp_path):
    start = time.perf_counter()
    # 4 batches of 4 x 2048 samples at 8 kHz, a validation after the second
    validation = ValidationTimer()
    trainer = fit_tiny([AudioThroughputMonitor(), validation], mlflow_logger, tmp_path, batches=4, val_every=2)
    wall = time.perf_counter() - start
    step_time = dict(metric_history(mlflow_logger, f"{PREFIX}/step_time"))
    data_time = dict(metric_history(mlflow_logger, f"{PREFIX}/data_time"))
    speed = dict(metric_history(mlflow_logger, f"{PREFIX}/audio_seconds_per_second"))
    assert len(step_time) == 4 and speed.keys() == step_time.keys() == data_time.keys()
    batch_seconds = 4 * 2048 / SR
    for step in step_time:
        assert 0 < step_time[step] < wall and 0 <= data_time[step] < wall
        assert speed[step] == pytest.approx(batch_seconds / (step_time[step] + data_time[step]), rel=1e-5)
    # the intervals do not overlap and leave out the validation: together less than the fit took
    assert sum(step_time.values()) + sum(data_time.values()) < wall - validation.seconds
    assert not metric_history(mlflow_logger, f"{PREFIX}/max_memory_allocated_gb")  # CPU: not logged
    assert trainer.world_size == 1


def test_a_given_sample_rate_wins_and_bad_rates_are_refused():
    assert AudioThroughputMonitor(sample_rate=16000)._rate(torch.nn.Module()) == 16000
    with pytest.raises(ValueError, match="sample_rate"):
        AudioThroughputMonitor(sample_rate=0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_memory_is_logged_on_cuda(mlflow_logger, tmp_path):
    fit_tiny([AudioThroughputMonitor()], mlflow_logger, tmp_path, batches=2, val_batches=0, accelerator="gpu")
    memory = metric_history(mlflow_logger, f"{PREFIX}/max_memory_allocated_gb")
    assert len(memory) == 2 and all(0 < value < 80 for _, value in memory)
