"""The synthesized quickstart dataset (datamodules/demo.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from datamodules.demo import main, make_demo_dataset, synth_music, synth_speech
from datamodules.manifests import load_cuts


def test_tiny_demo_dataset_has_the_expected_files_and_manifests(tmp_path: Path) -> None:
    paths = make_demo_dataset(tmp_path / "demo", n_music=3, n_speech=3, seconds=1.0, seed=0)

    expected = {  # name: (sample rate, channels)
        "music_000.wav": (24000, 1),
        "music_001.wav": (24000, 1),
        "music_002.flac": (44100, 2),
        "speech_000.wav": (16000, 1),
        "speech_001.wav": (24000, 1),
        "speech_002.wav": (16000, 1),
    }
    audio_dir = tmp_path / "demo" / "audio"
    assert sorted(p.name for p in audio_dir.iterdir()) == sorted(expected)
    for name, (rate, channels) in expected.items():
        audio, sr = sf.read(audio_dir / name, always_2d=True)  # (N, C)
        assert (sr, audio.shape[1], audio.shape[0]) == (rate, channels, rate)
        assert np.isfinite(audio).all()
        assert 0.45 < np.abs(audio).max() <= 0.51, name  # peak-normalized to ~0.5
        assert np.sqrt(np.mean(audio**2)) > 0.01, name  # not silent
    left, right = sf.read(audio_dir / "music_002.flac")[0].T
    assert not np.allclose(left, right)  # stereo files differ between channels

    assert set(paths) == {"train", "val", "test"}
    sizes = {name: len(load_cuts(path)) for name, path in paths.items()}
    assert all(sizes.values()) and sum(sizes.values()) == 6
    assert (tmp_path / "demo" / "manifests" / "problems.json").read_text().strip() == "[]"


def test_synthesis_is_deterministic_and_seed_dependent() -> None:
    def speech(seed: int) -> np.ndarray:
        return synth_speech(1.0, 16000, np.random.default_rng([seed, 1, 0]))

    def music(seed: int) -> np.ndarray:
        return synth_music(1.0, 44100, stereo=True, rng=np.random.default_rng([seed, 0, 2]))

    assert np.array_equal(speech(0), speech(0)) and not np.array_equal(speech(0), speech(1))
    assert np.array_equal(music(0), music(0)) and not np.array_equal(music(0), music(1))
    assert speech(0).shape == (1, 16000) and music(0).shape == (2, 44100)
    assert speech(0).dtype == music(0).dtype == np.float32


def test_speech_has_energy_in_formant_range() -> None:
    x = synth_speech(2.0, 16000, np.random.default_rng(0))[0]
    spectrum = np.abs(np.fft.rfft(x)) ** 2
    f = np.fft.rfftfreq(len(x), 1 / 16000)
    voiced_band = spectrum[(f > 100) & (f < 3500)].sum()
    assert voiced_band / spectrum.sum() > 0.5


def test_main_prints_manifest_paths(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--out_dir", str(tmp_path / "d"), "--n_music", "2", "--n_speech", "1"]
    argv += ["--seconds", "0.5"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert str(tmp_path / "d" / "manifests" / "cuts_train.jsonl.gz") in out


def test_too_few_files_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="at least 3 files"):
        make_demo_dataset(tmp_path, n_music=1, n_speech=1)
