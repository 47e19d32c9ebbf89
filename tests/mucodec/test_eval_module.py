"""MuCodecEvalModule: `codecplatform test` of an end-to-end MuCodec with the platform's per-bitrate
evaluation (the GAN codecs' metric names), and `fit` (validation only) whose checkpoint is a bundle."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from codecplatform.cli import cli_main
from codecplatform.models.base import AudioCodec
from codecplatform.mucodec.codec import MuCodec

EXPERIMENTS = Path(__file__).resolve().parents[2] / "experiments"


def run(command: str, variant: str, manifests: dict[str, Path], *extra: str):
    with pytest.warns(UserWarning, match="untrained"):
        return cli_main(
            [
                command,
                "--config",
                str(EXPERIMENTS / "mucodec" / f"codec_{variant}.yaml"),
                "--config",
                str(EXPERIMENTS / "tiny" / "mucodec_codec.yaml"),
                *[f"--data.init_args.{split}_cuts={path}" for split, path in manifests.items()],
                *extra,
            ]
        )


@pytest.mark.parametrize("variant,label", [("1x16384", "0.35kbps"), ("4x10000", "1.329kbps")])
def test_per_bitrate_test_metrics(variant, label, make_manifests, in_tmp_dir):
    manifests = make_manifests(48000, 2, n_files=5)
    cli = run("test", variant, manifests, "--trainer.logger=false")
    metrics = {k: float(v) for k, v in cli.trainer.callback_metrics.items()}
    for name in ("mel_distance", "stft_distance", "si_sdr"):
        assert math.isfinite(metrics[f"test/{name}"]) and f"test/{label}/{name}" in metrics
    assert f"test/{label}/codebook_entropy" in metrics


def test_fit_validates_and_its_checkpoint_is_a_bundle(make_manifests, in_tmp_dir, mlflow_db):
    manifests = make_manifests(48000, 2, n_files=5)
    cli = run("fit", "1x16384", manifests)  # MLflow logger of the base config: metrics beside the GAN codecs
    assert int(cli.model.batch_counter) == 1
    assert "val/mel_distance" in cli.trainer.callback_metrics
    path = in_tmp_dir / "mucodec.ckpt"
    cli.trainer.save_checkpoint(path)  # fit makes no optimizer step, so ModelCheckpoint writes nothing
    codec = AudioCodec.from_checkpoint(path)  # weights_only load, no stage files needed
    assert isinstance(codec, MuCodec) and codec.bitrate(1) == pytest.approx(0.35)
