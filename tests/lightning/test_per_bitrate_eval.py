"""Evaluation at every bitrate: the table's names and shape, metrics that improve with more codebooks,
DDP-style state reduction, the MLflow artifact, runs without a logger or with another logger, and the
``codecplatform test`` printout."""

from __future__ import annotations

import json
import math
import re
import sys
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Trainer
from lightning.pytorch.loggers import CSVLogger
from torch import Tensor
from torch.utils.data import DataLoader

from codecplatform.discriminators.msstft import MultiScaleSTFTDiscriminator
from codecplatform.generators.base import Decoder, Encoder
from codecplatform.lightning.gan_codec import GANCodecModule
from codecplatform.losses.reconstruction import MultiScaleMelLoss
from codecplatform.metrics.perceptual import STOI
from codecplatform.metrics.reconstruction import SISDR, MelDistance
from codecplatform.models.codec import Codec
from codecplatform.quantizers.ema_residual import ResidualVectorQuantizer

sys.path.insert(0, str(Path(__file__).parent))
from test_gan_codec import NoiseAudio  # noqa: E402

SR = 8000
HOP = 8
MLFLOW_KEY = re.compile(r"^[A-Za-z0-9_\-./ ]+$")
CODEBOOK_ROWS = (
    "codebook_entropy",
    "codebook_efficiency",
    "codebook_perplexity",
    "codebook_min_perplexity",
    "codebook_dead_codes",
)


class FrameEncoder(Encoder):
    """(B, 1, T) -> (B, HOP, T / HOP): consecutive samples as latent vectors (lossless, no parameters)."""

    channels, dimension, hop_length = 1, HOP, HOP

    def forward(self, x: Tensor) -> Tensor:
        b, _, t = x.shape
        return x.reshape(b, t // HOP, HOP).transpose(1, 2)


class FrameDecoder(Decoder):
    """The inverse of FrameEncoder: the audio error is exactly the latent quantization error."""

    channels, dimension, hop_length = 1, HOP, HOP

    def forward(self, z: Tensor) -> Tensor:
        b, _, frames = z.shape
        return z.transpose(1, 2).reshape(b, 1, frames * HOP)


def fitted_codec(data: Tensor) -> Codec:
    """A 4-codebook RVQ fitted (k-means, then EMA) to the residuals of ``data``: each codebook removes
    part of what the previous ones left, so more codebooks reconstruct better. 4 bits x 1000 frames/s:
    4 kbps per codebook; bandwidths 4, 8, 16 kbps -> n_q 1, 2, 4."""
    torch.manual_seed(0)
    quantizer = ResidualVectorQuantizer(dimension=HOP, n_q=4, codebook_size=16, kmeans_iters=10)
    codec = Codec(FrameEncoder(), quantizer, FrameDecoder(), sample_rate=SR, bandwidths=[4.0, 8.0, 16.0])
    codec.train()
    for _ in range(3):
        codec(data, n_q=4)
    return codec.eval()


def module_for(codec: Codec, **kwargs) -> GANCodecModule:
    return GANCodecModule(
        codec=codec,
        discriminators=[MultiScaleSTFTDiscriminator(filters=4, n_ffts=[128, 64])],
        reconstruction_losses={"mel": MultiScaleMelLoss(SR, window_lengths=[64, 128], n_mels=[16, 16])},
        loss_weights={"mel": 1.0, "adv": 1.0, "feat": 1.0, "commit": 1.0},
        **kwargs,
    )


@pytest.fixture(scope="module")
def data() -> NoiseAudio:
    return NoiseAudio(n=6, length=2048)


@pytest.fixture(scope="module")
def codec(data) -> Codec:
    return fitted_codec(data.x)


def run_test(module: GANCodecModule, data: NoiseAudio, logger=False) -> dict[str, float]:
    trainer = Trainer(accelerator="cpu", logger=logger, enable_progress_bar=False, enable_model_summary=False)
    return trainer.test(module, DataLoader(data, batch_size=3))[0]


def test_every_bitrate_is_evaluated_and_more_codebooks_reconstruct_better(codec, data, capsys):
    results = run_test(module_for(codec), data)
    labels = ["4kbps", "8kbps", "16kbps"]
    names = ["mel_distance", "stft_distance", "si_sdr", *CODEBOOK_ROWS]
    for label in labels:
        for name in names:
            assert f"test/{label}/{name}" in results, f"test/{label}/{name}"
    assert all(MLFLOW_KEY.match(key) for key in results), sorted(results)
    for name in names:  # the plain names mean the full bitrate (what checkpoints and the quickstart use)
        assert results[f"test/{name}"] == results[f"test/16kbps/{name}"], name
    mel = [results[f"test/{label}/mel_distance"] for label in labels]
    stft = [results[f"test/{label}/stft_distance"] for label in labels]
    sisdr = [results[f"test/{label}/si_sdr"] for label in labels]
    assert mel[0] > mel[1] > mel[2], mel
    assert stft[0] > stft[1] > stft[2], stft
    assert sisdr[0] < sisdr[1] < sisdr[2], sisdr
    entropy = [results[f"test/{label}/codebook_entropy"] for label in labels]
    assert 0 < entropy[0] < entropy[1] < entropy[2] <= 4 * 4  # bits per frame grow with the codebooks used
    for label, n_q in zip(labels, (1, 2, 4)):
        efficiency = results[f"test/{label}/codebook_efficiency"]
        assert efficiency == pytest.approx(results[f"test/{label}/codebook_entropy"] / (4 * n_q), rel=1e-5)
        assert 0 < efficiency <= 1

    printed = capsys.readouterr().out
    assert "| metric | 4kbps (n_q=1) | 8kbps (n_q=2) | 16kbps (n_q=4) |" in printed
    for name in names:
        assert re.search(rf"^\| {name} \|( [^|]+ \|){{3}}$", printed, re.M), name


def test_eval_bandwidths_restrict_and_validation_can_skip_bitrates(codec, data):
    module = module_for(codec, eval_bandwidths=[8.0], per_bitrate_validation=False)
    assert module.evaluation.eval_n_q == {"test": [2, 4], "val": [4]}  # the full count is always evaluated
    results = run_test(module, data)
    assert "test/8kbps/mel_distance" in results and "test/16kbps/mel_distance" in results
    assert not any(key.startswith("test/4kbps/") for key in results)
    trainer = Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    val = trainer.validate(module, DataLoader(data, batch_size=3))[0]
    assert {k.split("/")[1] for k in val if k.count("/") == 2 and not k.startswith("val/g/")} == {"16kbps"}
    assert "val/mel_distance" in val


def test_test_metrics_only_at_test_and_bad_metric_config_is_refused(codec, data):
    module = module_for(codec, test_metrics={"stoi": STOI(SR)}, eval_bandwidths=[16.0])
    assert "stoi" in module.evaluation.metrics["test"]["nq4"] and "stoi" not in module.evaluation.metrics["val"]["nq4"]
    results = run_test(module, NoiseAudio(n=2, length=SR))  # STOI needs ~0.4 s of non-silent frames
    assert math.isfinite(results["test/stoi"]) and results["test/stoi"] == results["test/16kbps/stoi"]
    with pytest.raises(ValueError, match="repeats names"):
        module_for(codec, test_metrics={"si_sdr": SISDR()})
    with pytest.raises(ValueError, match="metric name"):
        module_for(codec, metrics={"mel@1": MelDistance(SR)})
    with pytest.raises(TypeError, match="torchmetrics Metric"):
        module_for(codec, metrics={"l1": torch.nn.L1Loss()})
    with pytest.raises(ValueError, match="exceeds"):
        module_for(codec, eval_bandwidths=[32.0])


def test_metric_states_reduce_across_ranks_like_one_process(codec, data):
    """Two 'ranks' each evaluate half the batches; summing their states (what DDP's sync does) gives the
    result of one process that saw everything, for every metric and the codebook counts."""
    x = data.x
    whole, rank0, rank1 = (module_for(codec) for _ in range(3))
    with torch.no_grad():
        whole._evaluate(x, "test")
        rank0._evaluate(x[:2], "test")
        rank1._evaluate(x[2:], "test")
    for key, per_metric in whole.evaluation.metrics["test"].items():
        for name, metric in per_metric.items():
            merged = rank0.evaluation.metrics["test"][key][name]
            merged.merge_state(rank1.evaluation.metrics["test"][key][name])
            assert float(merged.compute()) == pytest.approx(float(metric.compute()), rel=1e-5), (key, name)
    rank0.evaluation.codebook_usage["test"].merge_state(rank1.evaluation.codebook_usage["test"])
    merged_counts = rank0.evaluation.codebook_usage["test"].compute()["counts"]
    assert torch.equal(merged_counts, whole.evaluation.codebook_usage["test"].compute()["counts"])


def test_table_artifact_is_logged_to_mlflow_and_other_loggers_work(codec, data, tmp_path, empty_mlflow_store):
    import shutil

    from mlflow.tracking import MlflowClient

    from codecplatform.tracking import MLflowLogger

    shutil.copyfile(empty_mlflow_store, tmp_path / "mlflow.db")  # an empty store, made once per session
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    logger = MLflowLogger(experiment_name="per-bitrate", tracking_uri=uri, save_dir=str(tmp_path / "mlruns"))
    run_test(module_for(codec), data, logger=logger)
    client = MlflowClient(uri)
    files = {item.path for item in client.list_artifacts(logger.run_id, "tables")}
    assert files == {"tables/test_per_bitrate.json", "tables/test_per_bitrate.md"}
    table_file = client.download_artifacts(logger.run_id, "tables/test_per_bitrate.json", str(tmp_path))
    table = json.loads(Path(table_file).read_text())
    assert [c["label"] for c in table["columns"]] == ["4kbps", "8kbps", "16kbps"]
    assert [c["n_q"] for c in table["columns"]] == [1, 2, 4]
    assert set(table["rows"]) == {"mel_distance", "stft_distance", "si_sdr", *CODEBOOK_ROWS}
    assert all(len(values) == 3 for values in table["rows"].values())
    metrics = client.get_run(logger.run_id).data.metrics
    assert metrics["test/8kbps/mel_distance"] == pytest.approx(table["rows"]["mel_distance"][1])
    markdown = Path(client.download_artifacts(logger.run_id, "tables/test_per_bitrate.md", str(tmp_path)))
    assert markdown.read_text().startswith("| metric | 4kbps (n_q=1)")

    csv = CSVLogger(str(tmp_path / "csv"))  # not MLflow: metrics logged, no table artifact, no error
    results = run_test(module_for(codec), data, logger=csv)
    assert "test/4kbps/mel_distance" in results
    assert "test/4kbps/mel_distance" in Path(csv.log_dir, "metrics.csv").read_text()


def test_codecplatform_test_prints_the_table(make_manifests, in_tmp_dir, capsys):
    from codecplatform.cli import cli_main

    experiments = Path(__file__).resolve().parents[2] / "experiments"
    manifests = make_manifests(24000, 1)
    cli = cli_main(
        [
            "test",
            "--config",
            str(experiments / "encodec" / "24khz_mono.yaml"),
            "--config",
            str(experiments / "tiny" / "encodec.yaml"),
            *[f"--data.init_args.{split}_cuts={path}" for split, path in manifests.items()],
            "--trainer.logger=false",
            '--model.init_args.test_metrics={"stoi": {"class_path": "codecplatform.metrics.perceptual.STOI", '
            '"init_args": {"sample_rate": 24000}}}',
        ]
    )
    printed = capsys.readouterr().out
    codec = cli.model.codec
    labels = [f"{round(codec.bitrate(k), 3):g}kbps" for k in cli.model.evaluation.eval_n_q["test"]]
    assert len(labels) >= 2
    header = "| metric | " + " | ".join(
        f"{label} (n_q={k})" for label, k in zip(labels, cli.model.evaluation.eval_n_q["test"])
    )
    assert header in printed
    for name in ("mel_distance", "stft_distance", "si_sdr", "stoi", *CODEBOOK_ROWS):
        assert f"| {name} |" in printed, name
    assert "test/mel_distance" in cli.trainer.callback_metrics
