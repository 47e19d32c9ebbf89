"""benchmarks/inference_rtf.py's MuCodec part on an untrained tiny MuCodec bundle: encode/decode rows
and their parts per Euler step count (the parts of a decode add up to about the whole), and the
quality per step count on a folder of audio."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import soundfile as sf
import torch
from benchmark_scripts import load_benchmark

from codecplatform.config import compose_config, instantiate, merge_config
from codecplatform.mucodec.bundle import save_bundle
from codecplatform.mucodec.codec import MuCodec


def tiny_bundle(path):
    root = load_benchmark("inference_rtf").REPO / "experiments"
    config = merge_config(
        compose_config(root / "mucodec" / "codec_1x16384.yaml"), compose_config(root / "tiny" / "mucodec_codec.yaml")
    )["model"]["init_args"]["codec"]
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # untrained
        codec = instantiate(config, MuCodec)
    return save_bundle(codec, config, path)


@pytest.mark.filterwarnings("ignore:.*untrained MuCodec")
def test_mucodec_rtf_split_and_steps(tmp_path):
    benchmark = load_benchmark("inference_rtf")
    bundle = tiny_bundle(tmp_path / "mucodec.ckpt")
    audio = tmp_path / "audio"
    audio.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        sf.write(audio / f"t{i}.flac", (0.1 * rng.standard_normal((48000, 2))).astype(np.float32), 48000)
    out = tmp_path / "rtf.json"
    result = benchmark.main(
        [
            "--families",
            "--mucodec_checkpoint", str(bundle),
            "--mucodec_audio", str(audio),
            "--mucodec_steps", "4", "1",
            "--mucodec_seconds", "0.64",
            "--mucodec_eval_seconds", "0.64",
            "--mucodec_windows_per_file", "2",
            "--repeats", "1",
            "--out", str(out),
        ]
    )  # fmt: skip
    rows = {(r["variant"], r["euler_steps"]): r for r in result["rows"]}
    assert set(rows) == {
        ("encode", None),
        ("encode:muencoder", None),
        *((v, s) for s in (4, 1) for v in ("decode", "decode:dit", "decode:melvae", "decode:vocoder")),
    }
    for steps in (4, 1):
        whole = rows[("decode", steps)]["seconds"]
        parts = sum(rows[(f"decode:{p}", steps)]["seconds"] for p in ("dit", "melvae", "vocoder"))
        assert 0.5 * whole < parts < 1.5 * whole  # the split covers the decode
    assert rows[("decode:dit", 4)]["seconds"] > rows[("decode:dit", 1)]["seconds"]  # 4 steps cost more than 1
    quality = result["mucodec"]["quality"]
    assert set(quality) == {4, 1} and result["mucodec"]["quality_windows"] == 4
    assert all(q["log_mel_l1"] > 0 and q["mel_distance"] > 0 for q in quality.values())
    assert out.exists()
