"""MuCodecEvalModule: `codecplatform test` of an end-to-end MuCodec with the platform's per-bitrate
evaluation (the GAN codecs' metric names), and `fit` (validation only) whose checkpoint is a bundle."""

from __future__ import annotations

import json
import math
import warnings
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


def test_speech_metrics_without_models_are_counted_skips(make_manifests, in_tmp_dir):
    """Speaker similarity and WER without their model directories: no NaN anywhere, the test examples
    counted as test/skipped/<name>, one warning line per metric."""
    manifests = make_manifests(48000, 2, n_files=5)
    speech = {
        name: {"class_path": f"codecplatform.metrics.speech.{cls}", "init_args": {"sample_rate": 48000}}
        for name, cls in (("speaker_similarity", "SpeakerSimilarity"), ("wer", "WordErrorRate"))
    }
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        cli = run(
            "test",
            "1x16384",
            manifests,
            "--trainer.logger=false",
            f"--model.init_args.test_metrics={json.dumps(speech)}",
        )
    for name in speech:
        lines = [w for w in seen if str(w.message).startswith(f"{name} skipped")]
        assert len(lines) == 1, [str(w.message) for w in lines]
    metrics = {k: float(v) for k, v in cli.trainer.callback_metrics.items()}
    assert all(math.isfinite(v) for v in metrics.values()), metrics
    examples = sum(batch.shape[0] for batch in cli.datamodule.test_dataloader())
    assert examples > 0
    for name in speech:
        assert f"test/{name}" not in metrics and f"test/0.35kbps/{name}" not in metrics
        assert metrics[f"test/skipped/{name}"] == metrics[f"test/0.35kbps/skipped/{name}"] == examples
    assert math.isfinite(metrics["test/mel_distance"])  # the other metrics still score
