"""The end of ``fit``: a summary naming the MLflow run, the best and last checkpoints and the UI address
that opens the run (model-training mode); every checkpoint, the best one too, among the run's artifacts."""

from __future__ import annotations

import re
from pathlib import Path

import yaml
from mlflow.tracking import MlflowClient

from codecplatform.cli import cli_main
from codecplatform.compare import run_url, view_url

EXPERIMENTS = Path(__file__).resolve().parents[2] / "experiments"


def artifact_paths(client: MlflowClient, run_id: str, path: str = "") -> list[str]:
    out = []
    for item in client.list_artifacts(run_id, path):
        out += artifact_paths(client, run_id, item.path) if item.is_dir else [item.path]
    return out


def test_fit_prints_its_run_and_checkpoints_and_logs_the_best(make_manifests, mlflow_db, capsys):
    manifests = make_manifests(24000, 1)
    fit = cli_main(
        [
            "fit",
            "--config",
            str(EXPERIMENTS / "encodec" / "24khz_mono.yaml"),
            "--config",
            str(EXPERIMENTS / "tiny" / "encodec.yaml"),
            *[f"--data.init_args.{split}_cuts={path}" for split, path in manifests.items()],
            "--model.init_args.max_batches=2",
            "--model.init_args.codec.init_args.bandwidths=[12.0, 24.0, 48.0]",  # 1, 2, 4 codebooks at 3 kHz frames
        ]
    )
    logger = fit.trainer.logger
    run_id, experiment_id = logger.run_id, logger.experiment_id
    best = next(c for c in fit.trainer.checkpoint_callbacks if c.monitor).best_model_path
    last = next(c for c in fit.trainer.checkpoint_callbacks if c.last_model_path).last_model_path
    assert Path(best).name.startswith("best-") and Path(last).name == "last.ckpt"

    out = capsys.readouterr().out
    summary = out[out.index("fit finished: ") :].splitlines()[:5]
    assert summary[0] == f"fit finished: MLflow run {run_id} (experiment codecplatform, id {experiment_id}; " + (
        f"sqlite:///{mlflow_db})"
    )
    assert re.fullmatch(rf"  best checkpoint: {re.escape(best)} \(val/mel_distance [0-9.e+-]+\)", summary[1])
    assert summary[2] == f"  last checkpoint: {last} (resume from this one)"
    url = run_url("http://127.0.0.1:5000", experiment_id, run_id)
    assert summary[3] == f"  open the run:    {url}"
    assert url.endswith(f"#/experiments/{experiment_id}/runs/{run_id}?workflowType=machine_learning")
    assert summary[4] == f"  all runs:        {view_url('http://127.0.0.1:5000', experiment_id)}"

    # the best checkpoint is an artifact of the run, beside the last one (Lightning logged only the
    # files of the last ModelCheckpoint that saved: last and epoch=...)
    artifacts = artifact_paths(MlflowClient(f"sqlite:///{mlflow_db}"), run_id)
    assert f"{Path(best).stem}/{Path(best).name}" in artifacts
    assert f"{Path(best).stem}/aliases.txt" in artifacts
    assert any(p.endswith("/last.ckpt") or p.endswith(Path(last).resolve().name) for p in artifacts)


def test_every_callbacks_list_ends_fit_with_the_summary():
    """A later config replaces a list whole: each experiment config with a callbacks list has it."""
    for path in sorted(EXPERIMENTS.rglob("*.yaml")):
        config = yaml.safe_load(path.read_text()) or {}
        callbacks = (config.get("trainer") or {}).get("callbacks")
        if callbacks:
            assert "callbacks.RunSummary" in [c.get("class_path") for c in callbacks], path
