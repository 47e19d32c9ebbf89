"""benchmarks/mucodec_tiny_end_to_end.py, small: every MuCodec stage trains briefly (chained by checkpoint
paths) on generated tracks (harmonic tones and noise), two of them held out whole; the chain decoding a
held-out window from its own codes must beat the same chain fed the other held-out track's codes."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import soundfile as sf
from benchmark_scripts import load_benchmark


def write_tracks(folder, n: int = 6, seconds: float = 2.0, rate: int = 48000) -> None:
    """Even tracks: harmonic tones (f0 rising with the index); odd tracks: white noise. Stereo."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    t = np.arange(int(seconds * rate)) / rate
    for i in range(n):
        if i % 2 == 0:
            x = 0.3 * sum(np.sin(2 * math.pi * 110 * 2 ** (i / 5) * k * t) / k for k in range(1, 5))
        else:
            x = 0.1 * (1 + 0.1 * i) * rng.standard_normal(t.size)
        audio = np.stack([x, 0.8 * x + 0.01 * rng.standard_normal(t.size)], axis=1)
        sf.write(folder / f"track{i}.wav", audio.astype(np.float32), rate)


@pytest.mark.slow
def test_mucodec_chain_beats_another_tracks_codes(in_tmp_dir):
    benchmark = load_benchmark("mucodec_tiny_end_to_end")
    write_tracks(in_tmp_dir / "audio")  # held out: track1 (noise) and track4 (tone)
    out = in_tmp_dir / "e2e.json"
    stages = {"muencoder_stage2": 20, "tokenizer": 20, "melvae": 100, "flow": 100}
    result = benchmark.main(
        [
            "--data_dir",
            str(in_tmp_dir / "audio"),
            "--test_tracks",
            "2",
            "--batches",
            "1",
            "--stage_batches",
            json.dumps(stages),
            "--num_steps",
            "4",
            "--eval_seconds",
            "1.0",
            "--windows_per_track",
            "2",
            "--threads",
            "1",
            "--work_dir",
            str(in_tmp_dir / "work"),
            "--out",
            str(out),
        ]
    )
    rows = result["mel_distance"]
    assert set(rows) == {
        benchmark.CHAIN,
        benchmark.CONSTANT,
        benchmark.MISMATCHED,
        benchmark.DROPPED,
        benchmark.VOCODER,
    }
    assert result["tracks"]["test"] == ["track1.wav", "track4.wav"]  # whole tracks, never trained on
    assert not set(result["tracks"]["test"]) & set(result["tracks"]["train"])
    assert rows[benchmark.VOCODER]["latent_mel"] == 0.0
    # the codes carry the track: its own codes decode closer to it than the other track's
    assert rows[benchmark.CHAIN]["latent_mel"] < rows[benchmark.MISMATCHED]["latent_mel"]
    assert result["gain_percent"][benchmark.MISMATCHED]["latent_mel"] > 0
    assert json.loads(out.read_text())["batches"]["flow"] == 100
