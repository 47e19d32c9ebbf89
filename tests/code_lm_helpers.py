"""Helpers of the entropy-coding tests (tests/entropy, tests/benchmarks): a tiny codec checkpoint
(EnCodec tiny override, 4 codebooks of 16 entries at 3 kHz frames, codebooks initialized by one pass
on noise) and a tiny code LM."""

from __future__ import annotations

from pathlib import Path

import torch

from codecplatform.config import compose_config, merge_config
from codecplatform.models.code_lm import CodeLM
from codecplatform.models.codec import Codec

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"


def save_tiny_codec(path: Path, seed: int = 0) -> Codec:
    """A tiny EnCodec 24 kHz mono codec saved as ``AudioCodec.from_checkpoint`` reads it."""
    config = merge_config(
        compose_config(EXPERIMENTS / "encodec" / "24khz_mono.yaml"),
        compose_config(EXPERIMENTS / "tiny" / "encodec.yaml"),
    )
    codec_config = config["model"]["init_args"]["codec"]
    codec_config["init_args"]["bandwidths"] = None  # every codebook count is an operating point
    torch.manual_seed(seed)
    codec = Codec.from_config(codec_config).train()
    with torch.no_grad():  # k-means initialization of the EMA codebooks (else every code would be 0)
        codec(0.1 * torch.randn(2, codec.channels, codec.sample_rate // 10), n_q=codec.quantizer.n_q)
    codec.eval()
    torch.save(
        {"codec_config": codec_config, "state_dict": {f"codec.{k}": v for k, v in codec.state_dict().items()}}, path
    )
    return codec


def tiny_lm(n_q: int = 4, card: int = 16, past_context: int | None = 24, seed: int = 0, **kwargs) -> CodeLM:
    torch.manual_seed(seed)
    args = dict(dim=16, num_heads=2, num_layers=2, ffn_dim=32, past_context=past_context)
    args.update(kwargs)
    return CodeLM(n_q=n_q, card=card, **args).eval()
