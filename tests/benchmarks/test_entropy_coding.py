"""benchmarks/entropy_coding.py on a tiny codec and a tiny LM over generated tones: the table, the JSON,
lossless coding, and consistent rates."""

from __future__ import annotations

import json

import pytest
from benchmark_scripts import load_benchmark
from code_lm_helpers import save_tiny_codec, tiny_lm
from synthetic_audio import write_tones

from codecplatform.lightning.code_lm import save_lm


def test_entropy_coding_benchmark(tmp_path, capsys):
    codec = save_tiny_codec(tmp_path / "codec.ckpt")
    save_lm(tiny_lm(n_q=codec.n_q, card=max(codec.codebook_sizes), frame_rate=codec.frame_rate), tmp_path / "lm.ckpt")
    write_tones(tmp_path / "audio", 16000, 2, n_files=2, seconds=0.1)  # resampled to 24 kHz, down-mixed
    out = tmp_path / "result.json"
    results = load_benchmark("entropy_coding").main(
        [
            "--codec_checkpoint", str(tmp_path / "codec.ckpt"),
            "--lm_checkpoint", str(tmp_path / "lm.ckpt"),
            "--audio_dir", str(tmp_path / "audio"),
            "--n_q", "2",
            "--segment_seconds", "0.05",
            "--out", str(out),
        ]
    )  # fmt: skip
    assert json.loads(out.read_text()) == results
    printed = capsys.readouterr().out
    assert "saving%" in printed and "TOTAL" in printed and "Table 5" in printed
    assert results["n_q"] == 2 and results["segment_frames"] == 150 and len(results["files"]) == 2
    total = results["total"]
    assert total["lossless"] and total["nominal_kbps"] == pytest.approx(codec.bitrate(2))
    for row in results["files"].values():
        assert row["frames"] == 300 and row["seconds"] == pytest.approx(0.1)
        assert row["entropy_coded_kbps"] == pytest.approx(8 * row["entropy_coded_bytes"] / 0.1 / 1000)
        assert row["saving_percent"] == pytest.approx(100 * (1 - row["entropy_coded_bytes"] / row["nominal_bytes"]))
        assert all(v > 0 for v in row["rtf"].values()) and row["rtf"]["encode_ec"] < row["rtf"]["encode"]
