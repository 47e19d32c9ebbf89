"""Every MuCodec stage learns: each stage's recipe (its YAML with the tiny override), trained 12-30
batches on windows of the first 2 s of a generated clip, must lower its training loss and do better
on the clip's held-out rest than the same module before training (fixed masks and noise).

Learning rates are raised to 1e-2 and warm-up schedulers dropped (the recipes' 1e-4 after 5-10k
warm-up batches barely moves in 30). Measured on the 2-core machine (2026-12-06): ratio last / first
quarter of the training loss, and held-out trained / before; in brackets the same with every
optimizer's learning rate 0 (a loss disconnected from the weights gives the same):

| stage (batches)   | training loss       | held-out                                    |
| ---               | ---                 | ---                                         |
| MuEncoder 1 (30)  | ce 0.08 (1.00)      | ce 0.33 (1.03)                              |
| MuEncoder 2 (30)  | total 0.09 (1.00)   | mel 0.20 (1.07), cqt 0.05 (0.96), ctc 0.08 (1.02) |
| tokenizer (30)    | recon 0.40 (1.00)   | recon 0.30 (1.00)                           |
| flow (30)         | flow 0.80 (0.99)    | flow 0.76 (1.00)                            |
| Mel-VAE (20)      | mel 0.44 (1.00)     | mel L1 0.32 (1.00)                          |
| vocoder (12)      | mel 0.15 (1.00)     | mel L1 0.10 (1.00)                          |
"""

from __future__ import annotations

import pytest
import torch
from learning_check import RandomWindows, assert_better, assert_falls, build_module, music_clip, train

LR = 1e-2


def song(sample_rate: int, channels: int, held_out_seconds: float = 0.64) -> tuple[torch.Tensor, torch.Tensor]:
    """(training clip (C, T) of 2 s, held-out excerpt (1, C, T')): the same generated notes, the
    held-out excerpt is the part after the training clip."""
    clip = music_clip(sample_rate, channels, 2.0 + held_out_seconds, seed=1)
    cut = 2 * sample_rate
    return clip[:, :cut], clip[None, :, cut:]


def muencoder(stage: str, batches: int):
    overrides = {
        "max_batches": batches,
        "optimizer": {"init_args": {"lr": LR}},
        "scheduler": None,
    }
    return build_module(f"mucodec/muencoder_{stage}.yaml", "tiny/mucodec_muencoder.yaml", overrides=overrides)


def masked_losses(module, x: torch.Tensor, texts=None) -> dict[str, float]:
    module.eval()
    with torch.no_grad():
        values = module.compute(x, texts, torch.Generator().manual_seed(123))
    module.train()
    return {k: float(v) for k, v in values.items()}


def test_muencoder_stage1_learns_masked_prediction():
    """Held-out masked-prediction cross-entropy (BEST-RQ targets of a held-out clip, fixed masks)."""
    torch.manual_seed(0)
    module = muencoder("stage1", 30)
    clip, held_out = song(24000, 1)
    held_out = held_out.repeat(2, 1, 1)
    before = masked_losses(module, held_out)["ce"]
    logs = train(module, RandomWindows(clip, 12000, 60), 2, ["train/muencoder/ce"])
    assert_falls(logs["train/muencoder/ce"], 0.5, "train/muencoder/ce")
    assert_better(before, masked_losses(module, held_out)["ce"], 0.6, "masked-prediction cross-entropy")


def test_muencoder_stage2_learns_reconstruction_and_lyrics():
    """Stage 2's heads: held-out masked mel and CQT regression and the CTC of the window's text."""
    torch.manual_seed(0)
    module = muencoder("stage2", 30)
    assert set(module.loss_weights) == {"ce", "mel", "cqt", "ctc"}
    clip, held_out = song(24000, 1)
    held_out = held_out.repeat(2, 1, 1)
    texts = ["la la", "la la"]
    before = masked_losses(module, held_out, texts)
    logs = train(module, RandomWindows(clip, 12000, 60, text="la la"), 2, ["train/muencoder/loss"])
    assert_falls(logs["train/muencoder/loss"], 0.5, "train/muencoder/loss")
    after = masked_losses(module, held_out, texts)
    for name in ("mel", "cqt", "ctc"):
        assert_better(before[name], after[name], 0.6, f"stage-2 {name}")


def test_tokenizer_learns_to_quantize_the_features():
    """Held-out feature reconstruction |z - z_q| of the frozen (random) MuEncoder's features."""
    torch.manual_seed(0)
    overrides = {"max_batches": 30, "optimizer": {"init_args": {"lr": LR}}}
    module = build_module("mucodec/tokenizer_1x16384.yaml", "tiny/mucodec_tokenizer.yaml", overrides=overrides)
    clip, held_out = song(24000, 2)

    def recon() -> float:
        with torch.no_grad():
            return float(module.compute(held_out)[0]["recon"])

    before = recon()
    logs = train(module, RandomWindows(clip, 12000, 60), 2, ["train/tokenizer/recon"])
    assert_falls(logs["train/tokenizer/recon"], 0.7, "train/tokenizer/recon")
    assert_better(before, recon(), 0.6, "tokenizer recon")


def test_flow_learns_the_velocity():
    """Held-out flow-matching loss (fixed noise and times) on the frozen tiny Mel-VAE's latents."""
    torch.manual_seed(0)
    # the posterior mean: a random Mel-VAE's posterior samples are mostly its noise
    overrides = {"max_batches": 30, "optimizer": {"init_args": {"lr": LR}}, "sample_posterior": False}
    with pytest.warns(UserWarning, match="RANDOM weights"):
        module = build_module("mucodec/flow.yaml", "tiny/mucodec_flow.yaml", overrides=overrides)
    clip, held_out = song(48000, 2)
    windows = torch.stack([clip[:, start : start + 30720] for start in range(0, 8 * 8000, 8000)])
    module.latents(windows, update=True)  # the latent statistics (8 windows, then frozen)
    assert bool(module.melvae.normalizer.frozen)

    def flow_loss() -> float:
        with torch.no_grad():
            _, x1 = module.latents(held_out)
            codes, valid = module.codes(held_out, x1.shape[2])
            condition = module.flow.condition(codes, x1.shape[2], valid)
            return float(module.flow.loss(x1, condition, None, torch.Generator().manual_seed(5))[0])

    before = flow_loss()
    logs = train(module, RandomWindows(clip, 30720, 60), 2, ["train/flow"])
    assert_falls(logs["train/flow"], 0.9, "train/flow")
    assert_better(before, flow_loss(), 0.9, "flow-matching loss")


def test_melvae_learns_to_reconstruct_log_mels():
    """Held-out log-mel L1 of the posterior mean's reconstruction."""
    torch.manual_seed(0)
    overrides = {"max_batches": 20, "generator_optimizer": {"init_args": {"lr": LR}}, "export_dir": None}
    module = build_module("mucodec/melvae.yaml", "tiny/mucodec_melvae.yaml", overrides=overrides)
    clip, held_out = song(48000, 2)

    def mel_distance() -> float:
        with torch.no_grad():
            mel = module.vae.mel(held_out)
            return float(module.mel_loss(mel, module.vae(mel, sample=False).mel_hat))

    before = mel_distance()
    logs = train(module, RandomWindows(clip, 30720, 40), 2, ["train/g/mel"])
    assert_falls(logs["train/g/mel"], 0.7, "train/g/mel")
    assert_better(before, mel_distance(), 0.6, "Mel-VAE mel distance")


def test_vocoder_learns_to_synthesize_the_mel():
    """Held-out log-mel L1 between the audio and its re-synthesis from its mel."""
    torch.manual_seed(0)
    overrides = {
        "max_batches": 12,
        "generator_optimizer": {"init_args": {"lr": LR}},
        "discriminator_optimizer": {"init_args": {"lr": LR}},
    }
    module = build_module("mucodec/vocoder.yaml", "tiny/mucodec_vocoder.yaml", overrides=overrides)
    clip, held_out = song(48000, 2, 0.16)

    def mel_distance() -> float:
        with torch.no_grad():
            x = module.crop(held_out)
            return float(module.mel_loss(x, module.generate(x)))

    before = mel_distance()
    logs = train(module, RandomWindows(clip, 7680, 24), 2, ["train/g/mel", "train/d/loss"])
    assert len(logs["train/d/loss"]) == 12  # the discriminators train every batch
    assert_falls(logs["train/g/mel"], 0.5, "train/g/mel")
    assert_better(before, mel_distance(), 0.5, "vocoder mel distance")
