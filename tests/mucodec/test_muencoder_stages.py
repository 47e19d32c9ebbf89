"""MuEncoder stages 1 and 2: one batch from each YAML with the tiny override through the CLI, the
checkpoint chain, lyrics text in the batches, and CTC learning on a tiny overfit."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from synthetic_audio import write_tones

from codecplatform.cli import cli_main
from codecplatform.mucodec.muencoder import MuEncoder
from codecplatform.mucodec.stages.muencoder import MuEncoderModule, ids_to_text, text_to_ids

EXPERIMENTS = Path(__file__).resolve().parents[2] / "experiments"
TINY = EXPERIMENTS / "tiny" / "mucodec_muencoder.yaml"
LYRICS = ["la la love", "hello world", "sing it", "do re mi", "oh oh", "yeah"]


@pytest.fixture
def lyric_manifests(tmp_path):
    """Stereo 24 kHz tones with .lrc / .txt sidecars -> {"train"|"val"|"test": manifest}."""
    from datamodules.manifests import prepare_manifests

    wav = tmp_path / "wav"
    write_tones(wav, 24000, 2, n_files=6, seconds=1.0)
    for i, words in enumerate(LYRICS):
        if i % 2:
            (wav / f"clip{i}.txt").write_text(words)
        else:
            (wav / f"clip{i}.lrc").write_text(f"[00:00.00]{words}\n[00:00.50]{words.upper()}\n")
    return prepare_manifests(wav, tmp_path / "manifests", val_fraction=0.2, test_fraction=0.2, seed=0)


def fit(config: str, manifests: dict[str, Path], *extra: str):
    return cli_main(
        [
            "fit",
            "--config",
            str(EXPERIMENTS / "mucodec" / config),
            "--config",
            str(TINY),
            *[f"--data.init_args.{split}_cuts={path}" for split, path in manifests.items()],
            "--trainer.logger=false",
            *extra,
        ]
    )


def test_stage1_then_stage2_train_one_batch_chained_by_checkpoint(lyric_manifests, in_tmp_dir, latest_checkpoint):
    stage1 = fit("muencoder_stage1.yaml", lyric_manifests)
    module = stage1.model
    assert isinstance(module, MuEncoderModule) and int(module.batch_counter) == 1
    assert module.mel_head is None and module.ctc_head is None and module.cqt_head is None
    metrics = stage1.trainer.callback_metrics
    for key in ("train/muencoder/ce", "train/muencoder/accuracy", "val/muencoder/ce", "val/muencoder/loss"):
        assert key in metrics and math.isfinite(float(metrics[key])), key
    # the real BEST-RQ target of the tiny encoder: 4 stacked frames x 16 mels -> 16 -> 4096 codes
    assert module.target.projection.shape == (64, 16) and module.target.codebook.shape == (4096, 16)
    ckpt = latest_checkpoint(stage1.trainer)

    stage2 = fit(
        "muencoder_stage2.yaml",
        lyric_manifests,
        f"--model.init_args.muencoder_checkpoint={ckpt}",
        "--trainer.default_root_dir=stage2",
    )
    module2 = stage2.model
    assert int(module2.batch_counter) == 1
    assert module2.loss_weights == {"ce": 1.0, "mel": 1.0, "cqt": 1.0, "ctc": 0.2}
    metrics = stage2.trainer.callback_metrics
    for name in ("ce", "mel", "cqt", "ctc"):
        assert math.isfinite(float(metrics[f"train/muencoder/{name}"])), name
        assert f"val/muencoder/{name}" in metrics
    assert float(metrics["train/muencoder/ctc"]) > 0  # the sidecar lyrics reached the loss
    # stage 2 started from stage 1's encoder: its BatchNorms have seen stage 1's training batch too
    assert int(module2.encoder.subsample[0].bn1.num_batches_tracked) == 2
    assert torch.equal(module2.target.projection, module.target.projection)


def test_stage2_with_a_missing_stage1_checkpoint_names_the_field(lyric_manifests, in_tmp_dir):
    with pytest.raises(FileNotFoundError, match="muencoder_checkpoint: checkpoint .*nowhere.ckpt does not exist"):
        fit("muencoder_stage2.yaml", lyric_manifests, "--model.init_args.muencoder_checkpoint=nowhere.ckpt")


def test_batches_carry_window_text_only_when_asked(lyric_manifests):
    from datamodules.lhotse_audio import LhotseAudioDataModule

    plain = LhotseAudioDataModule(
        train_cuts=str(lyric_manifests["train"]), sample_rate=24000, channels=2, segment_seconds=0.5, batch_size=2
    )
    plain.setup("fit")
    assert isinstance(next(iter(plain.train_dataloader())), torch.Tensor)  # default unchanged
    data = LhotseAudioDataModule(
        train_cuts=str(lyric_manifests["train"]),
        val_cuts=str(lyric_manifests["val"]),
        sample_rate=24000,
        channels=2,
        segment_seconds=0.5,
        batch_size=2,
        return_text=True,
    )
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    assert batch["audio"].shape == (2, 2, 12000) and len(batch["text"]) == 2
    known = set(LYRICS) | {w.upper() for w in LYRICS} | {f"{w} {w.upper()}" for w in LYRICS}
    assert all(text in known for text in batch["text"]), batch["text"]
    val = next(iter(data.val_dataloader()))
    assert all(text in known for text in val["text"])


def test_ctc_loss_decreases_on_a_tiny_overfit():
    torch.manual_seed(0)
    encoder = MuEncoder(
        n_mels=16,
        conv_dim=4,
        hidden_size=32,
        num_layers=2,
        num_heads=2,
        ffn_dim=64,
        conv_kernel=3,
        feature_layer=2,
        dropout=0.0,
    )
    module = MuEncoderModule(encoder, loss_weights={"ce": 1.0, "ctc": 1.0}, mask_seconds=0.08, mask_prob=0.0)
    optimizer = torch.optim.Adam(module.parameters(), lr=3e-3)
    x = torch.randn(2, 1, 24000) * 0.1  # 25 tokens per example
    texts = ["abc", "hello"]
    assert ids_to_text(text_to_ids("hé!").tolist()) == "hé!"
    losses = []
    for step in range(40):
        values = module.compute(x, texts, torch.Generator().manual_seed(step))
        optimizer.zero_grad()
        values["ctc"].backward()
        optimizer.step()
        losses.append(values["ctc"].item())
    assert losses[-1] < 0.5 * losses[0], losses
