"""AudioReconstructionLogger: wav pairs and spectrogram PNGs of the same validation examples, every
N validations, as MLflow artifacts, or under the log dir without MLflow."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import artifact_files, download, fit_tiny
from matplotlib.image import imread
from test_gan_codec import SR, NoiseAudio

from callbacks.audio_logger import AudioReconstructionLogger


def expected_files(folder: str, n: int) -> list[str]:
    names = [f"example_{i}{suffix}" for i in range(n) for suffix in ("_original.wav", "_reconstruction.wav", ".png")]
    return sorted(f"{folder}/{name}" for name in names)


def test_every_second_validation_logs_the_same_examples_to_mlflow(mlflow_logger, tmp_path):
    callback = AudioReconstructionLogger(
        every_n_validations=2, num_examples=3, examples_per_batch=2, n_fft=256, n_mels=16
    )
    # 4 batches, a validation after each (2 batches of 2 examples): logs after batches 2 and 4.
    fit_tiny([callback], mlflow_logger, tmp_path, batches=4, val_every=1, val_batches=2)
    assert callback.validations == 4
    files = artifact_files(mlflow_logger, "audio")
    assert files == expected_files("audio/val_0000002", 3) + expected_files("audio/val_0000004", 3)

    val = NoiseAudio(n=4, length=2048)
    folders = [download(mlflow_logger, f"audio/val_{b:07d}", tmp_path / "dl" / str(b)) for b in (2, 4)]
    for i in range(3):
        originals = []
        for folder in folders:
            original, rate = sf.read(folder / f"example_{i}_original.wav", dtype="float32", always_2d=True)
            reconstruction, rate_hat = sf.read(folder / f"example_{i}_reconstruction.wav", always_2d=True)
            assert rate == rate_hat == SR
            assert original.shape == reconstruction.shape == (2048, 1)  # (T, C)
            assert np.isfinite(reconstruction).all() and not np.allclose(original, reconstruction)
            image = imread(folder / f"example_{i}.png")
            assert image.ndim == 3 and image.shape[1] > 1.5 * image.shape[0]  # two panels side by side
            originals.append(original)
        # the first validation examples, the same at both validations
        np.testing.assert_array_equal(originals[0], originals[1])
        np.testing.assert_array_equal(originals[0][:, 0], val[i][0].numpy())
    assert callback.state_dict() == {"validations": 4}


def test_without_a_logger_files_go_under_the_log_dir(tmp_path):
    # one example from each of the 2 validation batches (of 2): examples 0 and 2 of the set
    callback = AudioReconstructionLogger(num_examples=2, max_seconds=0.1, n_fft=128, n_mels=8)
    trainer = fit_tiny([callback], False, tmp_path, batches=1, val_batches=2)
    folder = tmp_path / "artifacts" / "audio" / "val_0000001"
    assert trainer.log_dir == str(tmp_path)
    assert sorted(f"{folder.name}/{p.name}" for p in folder.iterdir()) == expected_files(folder.name, 2)
    val = NoiseAudio(n=4)
    for i, index in enumerate((0, 2)):
        original, _ = sf.read(folder / f"example_{i}_original.wav", dtype="float32")
        np.testing.assert_array_equal(original, val[index][0, : int(0.1 * SR)].numpy())  # cropped to max_seconds


def test_log_mel_shape_and_stereo_figure_rows():
    callback = AudioReconstructionLogger(n_fft=256, hop_length=64, n_mels=20)
    x = torch.randn(2, 1000)  # (C, T)
    spec = callback.log_mel(x, 16000)
    assert spec.shape == (2, 20, 1 + 1000 // 64)
    from callbacks.audio_logger import spectrogram_figure

    fig = spectrogram_figure([spec, spec - 3], ["original", "reconstruction"], 16000, 64)
    panels = [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]
    assert len(panels) == 4 and [ax.get_title() for ax in panels[:2]] == [
        "original, channel 0",
        "reconstruction, channel 0",
    ]


@pytest.mark.parametrize(
    "kwargs", [{"every_n_validations": 0}, {"num_examples": 0}, {"examples_per_batch": 0}, {"max_seconds": 0.0}]
)
def test_bad_arguments_are_refused(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        AudioReconstructionLogger(**kwargs)
