"""`codecplatform fit` then `test` through cli_main on a tiny config and generated audio: the MLflow
run holds the metrics, parameters, config and checkpoints; the checkpoint loads without Lightning."""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from mlflow.tracking import MlflowClient

from codecplatform.cli import cli_main
from codecplatform.models.codec import Codec

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"


def tiny_encodec(manifests: dict[str, Path]) -> list[str]:
    """CLI arguments: the 24 kHz EnCodec with its tiny override on the given manifests."""
    return [
        "--config",
        str(EXPERIMENTS / "encodec" / "24khz_mono.yaml"),
        "--config",
        str(EXPERIMENTS / "tiny" / "encodec.yaml"),
        *[f"--data.init_args.{split}_cuts={path}" for split, path in manifests.items()],
    ]


def artifact_paths(client: MlflowClient, run_id: str, path: str = "") -> list[str]:
    out = []
    for item in client.list_artifacts(run_id, path):
        out += artifact_paths(client, run_id, item.path) if item.is_dir else [item.path]
    return out


def test_fit_then_test_logs_everything_to_mlflow(make_manifests, in_tmp_dir, latest_checkpoint):
    manifests = make_manifests(24000, 1)
    common = tiny_encodec(manifests)
    fit = cli_main(["fit", *common, "--model.init_args.max_batches=3", "--trainer.log_every_n_steps=1"])
    run_id = fit.trainer.logger.run_id
    checkpoint = latest_checkpoint(fit.trainer)
    assert Path(checkpoint).is_file() and Path(fit.trainer.checkpoint_callback.best_model_path).is_file()
    assert int(torch.load(checkpoint, weights_only=False)["state_dict"]["batch_counter"]) == 3  # last = latest
    test = cli_main(["test", *common, "--ckpt_path", checkpoint, f"--trainer.logger.init_args.run_id={run_id}"])
    assert test.trainer.logger.run_id == run_id

    client = MlflowClient(f"sqlite:///{in_tmp_dir / 'mlflow.db'}")
    run = client.get_run(run_id)
    metrics = run.data.metrics
    for key in (
        "train/g/mel",
        "train/g/time",
        "train/g/adv",
        "train/g/feat",
        "train/g/commit",
        "train/d/loss",
        "train/balancer/mel",
        "train/lr/generator",
        "train/lr/discriminator",
        "val/mel_distance",
        "val/si_sdr",
        "test/mel_distance",
        "test/si_sdr",
    ):
        assert key in metrics and math.isfinite(metrics[key]), key
    assert len(client.get_metric_history(run_id, "train/g/mel")) == 3  # per-step losses
    params = run.data.params
    assert params["codec/class_path"] == "codecplatform.models.codec.Codec"
    assert params["codec/init_args/sample_rate"] == "24000"
    assert run.data.tags["family"] == "encodec" and run.data.tags["sample_rate"] == "24000"
    artifacts = artifact_paths(client, run_id)
    assert "config/fit.yaml" in artifacts and "config/test.yaml" in artifacts
    assert any(p.endswith(".ckpt") for p in artifacts)
    config_text = client.download_artifacts(run_id, "config/fit.yaml", str(in_tmp_dir))
    assert "SEANetEncoder" in Path(config_text).read_text()

    codec = Codec.from_checkpoint(checkpoint)
    x = torch.randn(1, 1, 4000) * 0.1
    encoded = codec.encode(x, bandwidth=1.5)
    assert encoded.codes.shape[1] == codec.n_q_for_bandwidth(1.5)
    assert codec.decode(encoded).shape == x.shape
    state = torch.load(checkpoint, weights_only=False)["state_dict"]

    def weights(prefix: str) -> dict[str, torch.Tensor]:
        return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}

    # The EnCodec configs keep a generator EMA: from_checkpoint loads the averaged weights, and the
    # trained ones with weights="raw".
    assert weights("codec_ema."), "the EnCodec config trains with generator_ema"
    for loaded, expected in (
        (codec, weights("codec_ema.")),
        (Codec.from_checkpoint(checkpoint, weights="raw"), weights("codec.")),
    ):
        for k, v in loaded.state_dict().items():
            assert torch.equal(v, expected[k]), k


def test_predict_writes_reconstructions(make_manifests, in_tmp_dir, mlflow_db, latest_checkpoint):
    import soundfile as sf

    manifests = make_manifests(24000, 1)
    common = tiny_encodec(manifests)
    fit = cli_main(["fit", *common, "--model.init_args.max_batches=1"])
    out_dir = in_tmp_dir / "predictions"
    writer = json.dumps({"class_path": "callbacks.ReconstructionWriter", "init_args": {"out_dir": str(out_dir)}})
    missing = ["--data.init_args.train_cuts=missing/train.jsonl.gz", "--data.init_args.val_cuts=missing/val.jsonl.gz"]
    predict = ["predict", *common, *missing, "--ckpt_path", latest_checkpoint(fit.trainer)]
    cli_main([*predict, f"--trainer.callbacks+={writer}"])  # reads the test manifest only
    written = sorted(out_dir.glob("*.wav"))
    reconstructions = [p for p in written if not p.name.endswith("_input.wav")]
    assert reconstructions and len(written) == 2 * len(reconstructions)
    audio, rate = sf.read(reconstructions[0])
    assert rate == 24000 and audio.shape[0] == 12000  # tiny config: 0.5 s windows


def test_resume_continues_the_batch_counter_and_balancer(make_manifests, in_tmp_dir, latest_checkpoint):
    manifests = make_manifests(24000, 1)
    common = [
        *tiny_encodec(manifests),
        "--trainer.logger=false",
        "--trainer.callbacks=[]",
        "--trainer.callbacks+=lightning.pytorch.callbacks.ModelCheckpoint",
        "--trainer.callbacks.save_last=true",
    ]
    first = cli_main(["fit", *common, "--model.init_args.max_batches=2"])
    checkpoint = latest_checkpoint(first.trainer)
    saved = torch.load(checkpoint, weights_only=False)
    assert int(saved["state_dict"]["batch_counter"]) == 2
    assert "train_sampler" in saved["LhotseAudioDataModule"]
    resumed = cli_main(["fit", *common, "--model.init_args.max_batches=4", "--ckpt_path", checkpoint])
    module = resumed.model
    assert int(module.batch_counter) == 4
    assert (
        module.gan.balancer.get_extra_state()["mel"][1] > 2.9
    )  # EMA count went on from the checkpoint (2 + 2 steps, decayed)
