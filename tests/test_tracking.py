"""MLflow tracking: relative sqlite stores resolve per directory, even within one process."""

from __future__ import annotations

import shutil

from mlflow.tracking import MlflowClient

from codecplatform.tracking import MLflowLogger, absolute_sqlite_uri


def test_relative_sqlite_uri_is_made_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert absolute_sqlite_uri("sqlite:///mlflow.db") == f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert absolute_sqlite_uri("sqlite:////abs/mlflow.db") == "sqlite:////abs/mlflow.db"
    assert absolute_sqlite_uri("http://127.0.0.1:5000") == "http://127.0.0.1:5000"
    assert absolute_sqlite_uri(None) is None


def test_two_directories_in_one_process_keep_their_own_stores(tmp_path, monkeypatch, empty_mlflow_store):
    run_ids = {}
    for name in ("first", "second"):
        folder = tmp_path / name
        folder.mkdir()
        shutil.copyfile(empty_mlflow_store, folder / "mlflow.db")  # an empty store (made once per session)
        monkeypatch.chdir(folder)
        logger = MLflowLogger(experiment_name="codecplatform", tracking_uri="sqlite:///mlflow.db")
        logger.log_metrics({"value": 1.0}, step=0)
        logger.finalize("success")
        run_ids[name] = logger.run_id
    for name, run_id in run_ids.items():
        client = MlflowClient(f"sqlite:///{tmp_path / name / 'mlflow.db'}")
        assert client.get_run(run_id).data.metrics == {"value": 1.0}
