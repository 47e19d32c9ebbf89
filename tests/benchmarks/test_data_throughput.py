"""benchmarks/data_throughput.py on a tiny config and a small generated corpus: one row per worker
count, rates consistent with the batches delivered, the ratio against the measured training step."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from benchmark_scripts import load_benchmark

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_data_throughput_table(in_tmp_dir, capsys):
    benchmark = load_benchmark("data_throughput")
    out = in_tmp_dir / "throughput.json"
    experiments = ROOT / "experiments"
    results = benchmark.main(
        [
            "--config",
            str(experiments / "encodec" / "24khz_mono.yaml"),
            "--config",
            str(experiments / "tiny" / "encodec.yaml"),
            "--workers",
            "0",
            "1",
            "--batches",
            "4",
            "--model_batches",
            "1",
            "--corpus_files",
            "3",
            "--corpus_seconds",
            "2",
            "--corpus_rate",
            "32000",  # resampled to the model's 24 kHz on load
            "--out",
            str(out),
            "--",
            "--data.init_args.batch_size=3",
        ]
    )
    assert json.loads(out.read_text()) == results
    assert results["batch_shape"] == [3, 1, 12000]  # tiny: 0.5 s windows at 24 kHz, mono from stereo files
    assert results["batch_audio_s"] == pytest.approx(1.5)
    consumed = results["model"]["consumed_audio_s_per_s"]
    assert consumed == pytest.approx(1.5 / results["model"]["step_s"])
    assert [row["workers"] for row in results["rows"]] == [0, 1]
    for row in results["rows"]:
        # 3 files x 2 s = 12 windows of 0.5 s = 4 batches of 3 per epoch: full batches, epochs restart
        assert row["audio_s_per_s"] == pytest.approx(row["batches_per_s"] * 1.5)
        assert row["ratio"] == pytest.approx(row["audio_s_per_s"] / consumed)
        assert row["epoch_restarts"] >= 1
    table = capsys.readouterr().out
    assert "delivered/consumed" in table and f"{results['rows'][1]['ratio']:.2f}" in table
