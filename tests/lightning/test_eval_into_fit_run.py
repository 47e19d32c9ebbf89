"""``validate`` and ``test`` of a fit's checkpoint, logged into the fit's MLflow run: their metrics sit
at the fit's last training step (not step 0, which would put a false point at the start of every
"over training" plot), and a repeated ``test`` says in one line that it replaces the earlier figures."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import torch
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from mlflow.tracking import MlflowClient
from torch.utils.data import DataLoader

from codecplatform.tracking import MLflowLogger

sys.path.insert(0, str(Path(__file__).parent))
from test_gan_codec import NoiseAudio, tiny_module  # noqa: E402

QUIET = dict(accelerator="cpu", enable_progress_bar=False, enable_model_summary=False)


def steps(client: MlflowClient, run_id: str, key: str) -> list[int]:
    return [m.step for m in sorted(client.get_metric_history(run_id, key), key=lambda m: m.timestamp)]


def test_validate_and_test_log_at_the_fits_last_step_and_a_second_test_says_it_replaces(
    tmp_path, in_tmp_dir, empty_mlflow_store, capsys
):
    shutil.copyfile(empty_mlflow_store, tmp_path / "mlflow.db")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    train = DataLoader(NoiseAudio(n=16), batch_size=4)
    val = DataLoader(NoiseAudio(n=4), batch_size=2)

    torch.manual_seed(0)
    logger = MLflowLogger(experiment_name="later-stages", tracking_uri=uri, save_dir=str(tmp_path / "mlruns"))
    checkpoints = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    fit = Trainer(
        **QUIET,
        max_epochs=1,
        limit_train_batches=4,
        val_check_interval=2,
        limit_val_batches=1,
        logger=logger,
        callbacks=[checkpoints],
    )
    fit.fit(tiny_module(), train, val)
    run_id = logger.run_id
    client = MlflowClient(uri)
    assert steps(client, run_id, "val/mel_distance") == [1, 3]  # after batches 2 and 4
    last = tmp_path / "ckpt" / "last.ckpt"
    assert int(torch.load(last, weights_only=False)["state_dict"]["batch_counter"]) == 4

    def later(stage: str) -> None:
        into_run = MLflowLogger(experiment_name="later-stages", tracking_uri=uri, run_id=run_id)
        trainer = Trainer(
            **QUIET, logger=into_run, limit_val_batches=1, limit_test_batches=1, enable_checkpointing=False
        )
        getattr(trainer, stage)(tiny_module(), val, ckpt_path=str(last))

    capsys.readouterr()
    later("validate")
    later("test")
    first_test = capsys.readouterr().out
    later("test")
    second_test = capsys.readouterr().out

    # the history: the fit's two validations, then validate's point at the same last step, never 0
    assert steps(client, run_id, "val/mel_distance") == [1, 3, 3]
    assert steps(client, run_id, "test/mel_distance") == [3, 3]
    test_keys = [key for key in client.get_run(run_id).data.metrics if key.startswith("test/")]
    assert len(test_keys) > 10 and all(steps(client, run_id, key) == [3, 3] for key in test_keys)
    assert "step" not in client.get_run(run_id).data.metrics  # used as the step, not logged as a metric

    # a first test into the run: no notice; the second: one line saying it replaces the first's figures
    assert "already has test figures" not in first_test
    notices = [line for line in second_test.splitlines() if "already has test figures" in line]
    assert len(notices) == 1 and run_id in notices[0] and "replace" in notices[0] and "step 3" in notices[0]
