"""benchmarks/mucodec_tiny_end_to_end.py on generated stereo tones: every MuCodec stage trains 2 batches
(chained by checkpoint paths), then the trained, untrained and condition-dropped chains are compared."""

from __future__ import annotations

import json
import math

import pytest
from benchmark_scripts import load_benchmark
from synthetic_audio import write_tones


@pytest.mark.slow
def test_mucodec_tiny_end_to_end(in_tmp_dir):
    benchmark = load_benchmark("mucodec_tiny_end_to_end")
    audio = in_tmp_dir / "audio"
    write_tones(audio, 48000, 2, n_files=6, seconds=2.0)
    out = in_tmp_dir / "e2e.json"
    result = benchmark.main(
        [
            "--data_dir",
            str(audio),
            "--batches",
            "2",
            "--num_steps",
            "2",
            "--eval_seconds",
            "1.0",
            "--eval_windows",
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
        "trained chain",
        "untrained chain",
        "trained, condition dropped",
        "trained vocoder alone, on the input's log-mel",
    }
    assert rows["trained vocoder alone, on the input's log-mel"]["latent_mel"] == 0.0
    assert all(math.isfinite(v) for row in rows.values() for v in row.values())
    assert json.loads(out.read_text())["batches"]["flow"] == 2
