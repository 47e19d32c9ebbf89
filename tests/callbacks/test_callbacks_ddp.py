"""The callbacks under DDP (two CPU processes, gloo): the codebook counts rank zero writes cover both
ranks' validation data, throughput counts both ranks' audio, and only rank zero writes files."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf
import torch
from test_codebook_logger import direct_counts
from test_gan_codec import NoiseAudio, tiny_module


@pytest.mark.slow
def test_two_ranks_log_the_counts_of_all_validation_data(ddp_fits):
    """Part "callbacks" of tests/ddp_fits.py: a spread-codebook tiny module, CodebookUsageLogger,
    AudioReconstructionLogger(num_examples=2, examples_per_batch=2) and AudioThroughputMonitor; one
    training batch, then 4 validation examples in batches of 2 (the DistributedSampler gives each rank
    one batch)."""
    tmp_path = ddp_fits.part("callbacks")
    module = tiny_module()
    module.load_state_dict(torch.load(tmp_path / "module.pt"))
    expected = direct_counts(module.codec, val_batches=2, size=16)  # all 4 validation examples
    counts = json.loads((tmp_path / "artifacts" / "codebooks" / "val_0000001" / "counts.json").read_text())
    assert [cb["counts"] for cb in counts["codebooks"]] == expected.tolist()
    assert counts["frames"] == 4 * 256  # both ranks' frames, not one rank's 2 * 256

    # rank zero alone wrote the audio: its own first examples
    audio = sorted(p.name for p in (tmp_path / "artifacts" / "audio" / "val_0000001").iterdir())
    assert audio == sorted(f"example_{i}{s}" for i in (0, 1) for s in (".png", "_original.wav", "_reconstruction.wav"))
    val = NoiseAudio(n=4)
    for i, index in enumerate((0, 2)):  # the DistributedSampler gives rank zero examples 0 and 2
        original, _ = sf.read(tmp_path / "artifacts" / "audio" / "val_0000001" / f"example_{i}_original.wav")
        np.testing.assert_allclose(original, val[index][0].numpy(), atol=1e-7)

    metrics = json.loads((tmp_path / "metrics.json").read_text())
    wall = metrics["train/throughput/step_time"] + metrics["train/throughput/data_time"]
    both_ranks = 2 * 2 * 2048 / 8000  # the 4 training examples split over two ranks: 2 x 2048 samples each, 8 kHz
    assert metrics["train/throughput/audio_seconds_per_second"] == pytest.approx(both_ranks / wall, rel=1e-5)
    assert metrics["val/codebook/dead_codes/0"] == float((expected[0] == 0).sum())
