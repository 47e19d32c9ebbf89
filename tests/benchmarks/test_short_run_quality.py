"""benchmarks/short_run_quality.py on generated stereo 44.1 kHz tones (prepared at each family's 24 kHz
mono: resampled and down-mixed) with the tiny overrides: per family a fit of 2 batches, the trained
and untrained per-bitrate test tables, the JSON and the printed table; without data it skips.
Two families (one whose discriminator starts late, one from batch 0) cover the script's paths; every
family's small config trains in tests/smoke/test_experiments.py."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
from benchmark_scripts import load_benchmark
from synthetic_audio import write_tones

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_short_run_quality_tables(in_tmp_dir, capsys, empty_mlflow_store):
    benchmark = load_benchmark("short_run_quality")
    (in_tmp_dir / "work").mkdir()
    shutil.copyfile(empty_mlflow_store, in_tmp_dir / "work" / "mlflow.db")  # empty, made once per session
    audio = in_tmp_dir / "audio"
    write_tones(audio, 44100, 2, n_files=8, seconds=2.0)
    out = in_tmp_dir / "quality.json"
    results = benchmark.main(
        [
            "--data_dir",
            str(audio),
            "--families",
            "encodec",
            "dac",
            "--batches",
            "2",
            "--extra_config",
            str(ROOT / "experiments" / "tiny" / "{family}.yaml"),
            "--work_dir",
            str(in_tmp_dir / "work"),
            "--out",
            str(out),
        ]
    )
    assert json.loads(out.read_text()) == results
    assert not any((audio / name).exists() for name in ("manifests", "cuts_train.jsonl.gz"))  # data left alone
    assert set(results["families"]) == {"encodec", "dac"}
    for family, result in results["families"].items():
        assert (result["sample_rate"], result["channels"]) == (24000, 1)
        assert result["batches"] == 2
        assert result["checkpoint"]["kind"] == "best" and Path(result["checkpoint"]["path"]).is_file()
        assert result["mlflow"]["tracking_uri"] == f"sqlite:///{in_tmp_dir / 'work' / 'mlflow.db'}"
        for which in ("untrained", "trained"):
            table = result[which]
            assert table["stage"] == "test" and table["columns"], (family, which)
            for name in benchmark.METRICS:
                values = table["rows"][name]
                assert len(values) == len(table["columns"]) and all(math.isfinite(v) for v in values)
        assert result["untrained"]["batches"] == 0
        assert result["trained"]["batches"] == result["checkpoint"]["batch"] >= 1
    # the small DAC's discriminators train from batch 0; the quickstart's join later (generator-only
    # warm-up), so after 2 batches it has logged nothing
    assert set(results["families"]["dac"]["discriminator_last_batch"]) >= {"loss", "real_score", "fake_score"}
    assert results["families"]["encodec"]["discriminator_last_batch"] == {}
    printed = capsys.readouterr().out
    assert "encodec (experiments/quickstart.yaml)" in printed and "dac (experiments/dac/small.yaml)" in printed
    assert "codebook_efficiency" in printed and "discriminator, last batch: loss" in printed


def test_short_run_quality_skips_without_data(in_tmp_dir, capsys):
    args = ["--data_dir", str(in_tmp_dir / "missing"), "--out", str(in_tmp_dir / "q.json")]
    results = load_benchmark("short_run_quality").main(args)
    assert "skipped" in results
    assert "does not exist" in capsys.readouterr().out
    assert not (in_tmp_dir / "q.json").exists()
