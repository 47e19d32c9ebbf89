"""LossProgressBar: the current generator/discriminator losses in the tqdm bar, short names."""

from __future__ import annotations

import torch
from conftest import fit_tiny

from callbacks.progress import LossProgressBar


def test_selection_short_names_and_order():
    bar = LossProgressBar()
    metrics = {
        "batches": torch.tensor(12.0),
        "train/g/mel": torch.tensor(1.25),
        "train/g/adv": torch.tensor(2.0),
        "train/g/grad_norm": torch.tensor(3.0),  # excluded by default
        "train/d/loss": torch.tensor(1.5),
        "train/d/msstft_64": torch.tensor(0.5),  # not selected
        "train/lr/generator": torch.tensor(3e-4),  # not selected
        "val/mel_distance": 0.75,
    }
    shown = bar.selected(metrics)
    assert list(shown) == ["batches", "g/adv", "g/mel", "d/loss", "val/mel_distance"]
    assert shown["batches"] == 12 and isinstance(shown["batches"], int)
    assert shown["g/mel"] == 1.25 and shown["val/mel_distance"] == 0.75
    custom = LossProgressBar(keys=["train/*"], exclude=[])
    assert "lr/generator" in custom.selected(metrics) and "g/grad_norm" in custom.selected(metrics)


def test_the_bar_of_a_fit_shows_the_losses(tmp_path):
    bar = LossProgressBar()
    trainer = fit_tiny([bar], False, tmp_path, batches=2, val_every=2, enable_progress_bar=True)
    assert trainer.progress_bar_callback is bar
    postfix = bar.train_progress_bar.postfix
    for name in ("batches=2", "g/mel=", "g/time=", "g/adv=", "g/feat=", "g/commit=", "d/loss=", "val/mel_distance="):
        assert name in postfix, postfix
    assert "grad_norm" not in postfix and "v_num" not in postfix and "train/" not in postfix


def build_trainer(*extra: str):
    """The trainer of the tiny EnCodec experiment as the CLI builds it (no fit)."""
    from pathlib import Path

    from codecplatform.cli import CodecCLI, expand_args

    experiments = Path(__file__).resolve().parents[2] / "experiments"
    no_data = [f"--data.init_args.{split}_cuts=null" for split in ("train", "val", "test")]
    args = [
        "--config",
        str(experiments / "encodec" / "24khz_mono.yaml"),
        "--config",
        str(experiments / "tiny" / "encodec.yaml"),
    ]
    cli = CodecCLI(args=[*expand_args(args), "--trainer.logger=false", *no_data, *extra], run=False)
    return cli.trainer


def test_the_experiments_configure_it_and_enable_progress_bar_false_drops_it(in_tmp_dir):
    from callbacks import AudioReconstructionLogger, AudioThroughputMonitor, CodebookUsageLogger

    trainer = build_trainer()
    assert isinstance(trainer.progress_bar_callback, LossProgressBar)
    kinds = {type(c) for c in trainer.callbacks}
    assert {AudioReconstructionLogger, AudioThroughputMonitor, CodebookUsageLogger} <= kinds
    quiet = build_trainer("--trainer.enable_progress_bar=false")  # Lightning alone would refuse the bar
    assert quiet.progress_bar_callback is None
    assert not any(isinstance(c, LossProgressBar) for c in quiet.callbacks)
    assert {AudioReconstructionLogger, AudioThroughputMonitor, CodebookUsageLogger} <= {
        type(c) for c in quiet.callbacks
    }
