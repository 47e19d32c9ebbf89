"""The real (full-size) MuCodec stage configs build and report their parameter counts."""

from __future__ import annotations

from pathlib import Path

import pytest

from codecplatform.cli import CodecCLI
from codecplatform.config import expand_config

EXPERIMENTS = Path(__file__).resolve().parents[2] / "experiments"

MUENCODER = 316_343_296  # MuEncoder: Res2d x 2 9,455,616 + Linear 16,778,240 + Conformer 290,109,440
REAL = {
    # trained parameters of the module (the frozen BEST-RQ target holds buffers only)
    "muencoder_stage1.yaml": MUENCODER + 4_198_400,  # + Linear(1024, 4096) masked-prediction head
    # + mel head Linear(1024, 512) 524,800 + CQT head Linear(1024, 84) 86,100 + CTC head Linear(1024, 257) 263,425
    "muencoder_stage2.yaml": MUENCODER + 4_198_400 + 524_800 + 86_100 + 263_425,
    # quantizer only (the encoder is frozen), per codebook: in_proj 1024->32 (v, g, bias) 32,832,
    # out_proj 32->1024 (v, g, bias) 34,816, codebook K x 32
    "tokenizer_1x16384.yaml": 32_832 + 34_816 + 16384 * 32,
    "tokenizer_4x10000.yaml": 4 * (32_832 + 34_816 + 10000 * 32),
}


def expanded(path: Path) -> list[str]:
    items = expand_config(path)
    out = [items[0]]
    for item in items[1:]:
        out += ["--config", item]
    return out


@pytest.mark.parametrize("name", sorted(REAL))
def test_real_config_builds_and_reports_parameter_counts(name, in_tmp_dir, capsys):
    no_data = [f"--data.init_args.{split}_cuts=null" for split in ("train", "val", "test")]
    cli = CodecCLI(
        args=["--config", *expanded(EXPERIMENTS / "mucodec" / name), "--trainer.logger=false", *no_data], run=False
    )
    module = cli.model
    trained = sum(p.numel() for p in module.parameters() if p.requires_grad)
    total = sum(p.numel() for p in module.parameters())
    extra = ""
    if name.startswith("tokenizer"):
        tokenizer = module.tokenizer
        extra = f" codebooks {'x'.join(map(str, tokenizer.codebook_sizes))} at {tokenizer.bitrate():.2f} kbps"
        assert tokenizer.num_parameters()["encoder"] == MUENCODER
    else:
        assert sum(p.numel() for p in module.encoder.parameters()) == MUENCODER
    with capsys.disabled():
        print(f"\nmucodec/{name}: trained {trained:,} total {total:,}{extra}")
    assert trained == REAL[name]
