"""CodeLMModule trains one batch through the CLI with the tiny override, on a tiny codec checkpoint
it builds itself; its LM checkpoint loads without Lightning and entropy-codes that codec's codes."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from codecplatform.cli import cli_main
from codecplatform.entropy.coding import entropy_decode, entropy_encode
from codecplatform.lightning.code_lm import CodeLMModule, save_lm
from codecplatform.models.base import AudioCodec
from codecplatform.models.code_lm import CodeLM

EXPERIMENTS = Path(__file__).resolve().parents[2] / "experiments"


def test_fit_one_batch_with_tiny_override(tiny_codec_checkpoint, make_manifests, mlflow_db, latest_checkpoint):
    manifests = make_manifests(24000, 1, n_files=5)
    cli = cli_main(
        [
            "fit",
            "--config",
            str(EXPERIMENTS / "code_lm" / "encodec_24khz.yaml"),
            "--config",
            str(EXPERIMENTS / "tiny" / "code_lm.yaml"),
            f"--model.init_args.codec_checkpoint={tiny_codec_checkpoint}",
            *[f"--data.init_args.{split}_cuts={path}" for split, path in manifests.items()],
        ]
    )
    module = cli.model
    assert isinstance(module, CodeLMModule) and int(module.batch_counter) == 1
    metrics = cli.trainer.callback_metrics
    for key in ("train/lm/ce", "val/lm/ce", "val/lm/kbps", "val/lm/nominal_kbps", "val/lm/saving", "val/lm/nq2/kbps"):
        assert key in metrics and math.isfinite(float(metrics[key])), key
    codec = module.codec
    assert float(metrics["val/lm/nominal_kbps"]) == pytest.approx(codec.bitrate(codec.n_q))
    kbps = float(metrics["val/lm/kbps"])
    assert float(metrics["val/lm/saving"]) == pytest.approx(100 * (1 - kbps / codec.bitrate(codec.n_q)), rel=1e-4)
    assert kbps == pytest.approx(
        float(metrics["val/lm/ce"]) * codec.n_q / math.log(2) * codec.frame_rate / 1000, rel=1e-4
    )
    assert module.lm.past_context == int(3.5 * codec.frame_rate)
    assert module.lm.n_q == codec.n_q and module.lm.card == max(codec.codebook_sizes)

    # the checkpoint: the LM and its config, not the frozen codec
    path = latest_checkpoint(cli.trainer)
    checkpoint = torch.load(path, weights_only=True)
    assert not any(k.startswith("codec") for k in checkpoint["state_dict"])
    assert checkpoint["codec_checkpoint"] == str(tiny_codec_checkpoint)
    lm = CodeLM.from_checkpoint(path)
    for name, value in module.lm.state_dict().items():
        torch.testing.assert_close(lm.state_dict()[name], value.cpu(), rtol=0, atol=0)

    # codes of the codec on audio, entropy-coded with the trained LM
    x = 0.3 * torch.sin(torch.arange(2400) * 2 * math.pi * 220 / 24000).view(1, 1, -1)
    codes = AudioCodec.from_checkpoint(tiny_codec_checkpoint).encode(x, n_q=2).codes[0]
    payload = entropy_encode(codes, lm, frame_rate=codec.frame_rate)
    torch.testing.assert_close(entropy_decode(payload, lm, 2, codes.shape[-1]), codes, rtol=0, atol=0)


def test_module_in_python_save_lm_and_draws(tiny_codec_checkpoint, tmp_path):
    module = CodeLMModule(str(tiny_codec_checkpoint), dim=8, num_heads=2, num_layers=1, ffn_dim=16, n_q=[1, 3])
    assert module.n_q_choices == [1, 3]
    assert "codec_checkpoint" in module.hparams and not list(n for n, _ in module.named_parameters() if "codec" in n)
    x = 0.1 * torch.randn(2, 1, 480)
    loss = module.training_step(x, 0)
    loss.backward()
    assert all(p.grad is not None for p in module.lm.transformer.parameters())
    assert all(p.grad is None for p in module.codec.parameters())
    save_lm(module.lm, tmp_path / "lm.pt")
    assert CodeLM.from_checkpoint(tmp_path / "lm.pt").config() == module.lm.config()
    with pytest.raises(ValueError, match="every count must be in"):
        CodeLMModule(str(tiny_codec_checkpoint), n_q=[5])
