"""Comparing runs on a real tracking server: a local ``mlflow server`` on 127.0.0.1, two tiny codecs
of different families trained and tested against it, then read back through ``MlflowClient`` the
way the UI's comparison view reads them."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from codecplatform.cli import cli_main

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"


def fit_and_test(family: str, variant: str, manifests: dict[str, Path], uri: str) -> str:
    """Fit a tiny ``family`` codec for 2 batches against the server, test its last checkpoint into
    the same run; returns the run id."""
    common = [
        "--config",
        str(EXPERIMENTS / family / variant),
        "--config",
        str(EXPERIMENTS / "tiny" / f"{family}.yaml"),
        f"--trainer.logger.init_args.tracking_uri={uri}",
        *[f"--data.init_args.{split}_cuts={path}" for split, path in manifests.items()],
    ]
    fit = cli_main(["fit", *common, "--model.init_args.max_batches=2", "--trainer.val_check_interval=2"])
    run_id = fit.trainer.logger.run_id
    checkpoint = fit.trainer.checkpoint_callbacks[-1].last_model_path
    cli_main(["test", *common, "--ckpt_path", checkpoint, f"--trainer.logger.init_args.run_id={run_id}"])
    return run_id


@pytest.mark.slow
def test_two_families_on_a_tracking_server_hold_comparable_runs(mlflow_server, make_manifests, in_tmp_dir):
    manifests = make_manifests(24000, 1)
    run_ids = {
        "encodec": fit_and_test("encodec", "24khz_mono.yaml", manifests, mlflow_server),
        "dac": fit_and_test("dac", "24khz.yaml", manifests, mlflow_server),
    }
    assert not (in_tmp_dir / "mlflow.db").exists()  # everything went to the server

    client = MlflowClient(mlflow_server)
    experiment = client.get_experiment_by_name("codecplatform")
    assert experiment is not None
    # What the UI's search box does: both runs are found by their sample-rate tag, and by family.
    found = client.search_runs([experiment.experiment_id], filter_string="tags.sample_rate = '24000'")
    assert {run.info.run_id for run in found} == set(run_ids.values())
    for family, run_id in run_ids.items():
        (run,) = client.search_runs([experiment.experiment_id], filter_string=f"tags.family = '{family}'")
        assert run.info.run_id == run_id
        assert run.info.status == "FINISHED"
        assert run.data.tags["channels"] == "1"
        assert float(run.data.tags["max_kbps"]) > 0

    # Comparable: the same evaluation metrics, all finite, on the same held-out windows.
    runs = {family: client.get_run(run_id) for family, run_id in run_ids.items()}
    keys = {family: {k for k in run.data.metrics if k.startswith(("val/", "test/"))} for family, run in runs.items()}
    shared = keys["encodec"] & keys["dac"]
    for key in ("val/mel_distance", "val/si_sdr", "test/mel_distance", "test/si_sdr"):
        assert key in shared, key
        for run in runs.values():
            assert math.isfinite(run.data.metrics[key]), key
    # The runs differ where the models differ, and their parameters say which codec each one was.
    assert runs["encodec"].data.metrics["test/mel_distance"] != runs["dac"].data.metrics["test/mel_distance"]
    assert "SEANet" in runs["encodec"].data.params["codec/init_args/encoder/class_path"]
    assert "DAC" in runs["dac"].data.params["codec/init_args/encoder/class_path"]

    # Artifacts went through the server's proxy: the configs and checkpoints can be fetched back.
    for run_id in run_ids.values():
        names = [item.path for item in client.list_artifacts(run_id, "config")]
        assert names == ["config/fit.yaml", "config/test.yaml"]
        local = client.download_artifacts(run_id, "config/fit.yaml", str(in_tmp_dir))
        assert "class_path" in Path(local).read_text()


def test_the_start_page_sets_model_training_and_each_codec_experiments_view(mlflow_server):
    """The session's server runs `--app-name codecplatform` (as `make ui`): its start page carries a
    script with the model-training switch and, per experiment with the saved view, that view's columns
    under the key MLflow's runs table reads (checked in Chromium by tests/test_mlflow_ui_browser.py)."""
    import json
    import re
    import urllib.request

    from rate_quality_runs import log_runs

    from codecplatform.compare import runs_view
    from codecplatform.ui_app import WORKFLOW_KEY, runs_state_key

    log_runs(mlflow_server, experiment="start_page")
    client = MlflowClient(mlflow_server)
    with_view = client.get_experiment_by_name("start_page").experiment_id
    without_view = client.create_experiment("start_page_plain")  # not a codec experiment: MLflow's defaults
    with urllib.request.urlopen(f"{mlflow_server}/", timeout=60) as response:
        page = response.read().decode()
        assert response.headers["Cache-Control"] == "no-store"
    script = re.search(r"<head><script>\(function\(\)\{try\{var d=(\{.*?\});for", page)
    assert script, page[:500]
    defaults = json.loads(script.group(1))
    assert json.loads(defaults[WORKFLOW_KEY]) == "machine_learning"
    assert json.loads(defaults[runs_state_key(with_view)]) == runs_view()
    assert runs_state_key(without_view) not in defaults
    assert '<div id="root">' in page or 'id="root"' in page  # still MLflow's page
