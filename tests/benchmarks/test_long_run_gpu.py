"""benchmarks/long_run_gpu.py on the CPU: --prepare decodes generated 44.1 kHz stereo tones into the
short-run split at the small SpectroStream's 24 kHz; two variants of the tiny SpectroStream each train
one batch in their own process and are evaluated at every codebook count and with the quantizer
bypassed; the summary, the printed tables and the float16 weights come back."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from benchmark_scripts import load_benchmark
from synthetic_audio import write_tones

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_prepare_then_train_two_variants(in_tmp_dir, capsys):
    benchmark = load_benchmark("long_run_gpu")
    data = in_tmp_dir / "audio"
    write_tones(data, 44100, 2, n_files=8, seconds=2.0)
    audio = in_tmp_dir / "audio.pt"
    common = ["--audio", str(audio), "--extra_config", str(ROOT / "experiments" / "tiny" / "spectrostream.yaml")]
    benchmark.main(["--prepare", str(data), *common])
    splits = torch.load(audio)
    assert {"train", "test"} <= set(splits)
    for split, x in splits.items():
        assert x.dtype == torch.int16 and x.shape[0] == 2 and x.shape[-1] % (2 * 24000) == 0, split  # 2 s files

    out = in_tmp_dir / "out"
    benchmark.main(
        [*common, "--variants", "base", "noD", "--train_seconds", "0", "--eval_seconds", "--window_seconds", "1.0"]
        + ["--threads", "1", "--out", str(out)]
    )
    summary = json.loads((out / "summary.json").read_text())
    assert [r["variant"] for r in summary] == ["base", "noD"]
    for result in summary:
        assert result["changes"] == benchmark.VARIANTS[result["variant"]]
        (row,) = result["history"]  # train_seconds 0: one batch, then the final evaluation
        assert row["batch"] == 1
        for which in (result["untrained"], row):
            for split in ("test", "train"):
                assert set(which[split]) == {"1", "2", "4", "latent"}  # the tiny quantizer's 4 codebooks
                assert all(math.isfinite(v) and v > 0 for v in which[split].values())
            assert len(which["distinct_codes"]) == 4 and all(1 <= n <= 16 for n in which["distinct_codes"])
        assert row["test"] != result["untrained"]["test"]  # one step changed the model
        assert "train/g/mel" in row["train_means"]
        state = torch.load(out / f"{result['variant']}.pt")
        floats = [v for v in state.values() if v.is_floating_point()]
        assert floats and all(v.dtype == torch.float16 for v in floats)
        assert sum(v.numel() for k, v in state.items() if "quantizer" not in k) <= result["codec_parameters"]
    printed = capsys.readouterr().out
    assert "noD (" in printed and "| batch | s | test 1 | test 2 | test 4 | test latent |" in printed
    assert not (out / "base.json").exists()  # folded into summary.json
