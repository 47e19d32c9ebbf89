"""The MuCodec tokenizer stage: each tokenizer YAML trains one batch with the tiny override through
the CLI (codebook usage logged), from a MuEncoder checkpoint; a wrong checkpoint names the field."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from codecplatform.cli import cli_main
from codecplatform.mucodec.muencoder import MuEncoder
from codecplatform.mucodec.stages.tokenizer import MuCodecTokenizerModule

EXPERIMENTS = Path(__file__).resolve().parents[2] / "experiments"
TINY = EXPERIMENTS / "tiny" / "mucodec_tokenizer.yaml"
TINY_ENCODER = dict(
    n_mels=16, conv_dim=4, hidden_size=16, num_layers=2, num_heads=2, ffn_dim=32, conv_kernel=3, feature_layer=2
)  # experiments/tiny/mucodec_tokenizer.yaml


def fit(config: str, manifests: dict[str, Path], *extra: str):
    return cli_main(
        [
            "fit",
            "--config",
            str(EXPERIMENTS / "mucodec" / config),
            "--config",
            str(TINY),
            *[f"--data.init_args.{split}_cuts={path}" for split, path in manifests.items()],
            *extra,
        ]
    )


def save_encoder(path: Path, **sizes) -> MuEncoder:
    torch.manual_seed(1)
    encoder = MuEncoder(**{**TINY_ENCODER, **sizes})
    torch.save({"state_dict": {f"encoder.{k}": v for k, v in encoder.state_dict().items()}}, path)
    return encoder


@pytest.mark.parametrize("config,n_q", [("tokenizer_1x16384.yaml", 1), ("tokenizer_4x10000.yaml", 4)])
def test_tokenizer_trains_one_batch_from_a_muencoder_checkpoint(config, n_q, make_manifests, in_tmp_dir, mlflow_db):
    source = save_encoder(in_tmp_dir / "muencoder.ckpt")
    manifests = make_manifests(24000, 2, n_files=5)
    cli = fit(config, manifests, f"--model.init_args.muencoder_checkpoint={in_tmp_dir / 'muencoder.ckpt'}")
    module = cli.model
    assert isinstance(module, MuCodecTokenizerModule) and int(module.batch_counter) == 1
    assert module.codec.n_q == n_q and module.codec.codebook_sizes == [16] * n_q
    metrics = cli.trainer.callback_metrics
    for key in (
        "train/tokenizer/commit",
        "train/tokenizer/codebook",
        "train/tokenizer/recon",
        "val/tokenizer/recon",
        "train/codebook/perplexity/0",
        "val/codebook/perplexity/0",
        "val/codebook/efficiency",
    ):
        assert key in metrics and math.isfinite(float(metrics[key])), key
    assert f"val/codebook/utilization/{n_q - 1}" in metrics
    # the frozen encoder is the checkpoint's, untouched by training
    for name, value in source.state_dict().items():
        assert torch.equal(module.tokenizer.encoder.state_dict()[name], value), name
    assert all(layer.stale_tolerance == 200 for layer in module.tokenizer.quantizer.layers)


def test_muencoder_checkpoint_of_another_geometry_names_the_field(make_manifests, in_tmp_dir):
    save_encoder(in_tmp_dir / "wide.ckpt", hidden_size=32)
    manifests = make_manifests(24000, 2, n_files=5)
    with pytest.raises(ValueError, match=r"MuEncoder of muencoder_checkpoint=.*wide.ckpt.*shape mismatches"):
        fit(
            "tokenizer_1x16384.yaml",
            manifests,
            f"--model.init_args.muencoder_checkpoint={in_tmp_dir / 'wide.ckpt'}",
            "--trainer.logger=false",
        )
