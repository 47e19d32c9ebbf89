"""``make ui`` prints the address that opens the experiment's runs ("codec quality" view) in MLflow's
model-training mode (``workflowType=machine_learning``), the experiment's id looked up in the store."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

from mlflow.tracking import MlflowClient

from codecplatform.compare import UI_SERVER, ui_server, ui_url, view_url

ROOT = Path(__file__).resolve().parents[1]


def ui_recipe_python() -> str:
    """The Python code that the Makefile's ``ui`` recipe runs before ``mlflow ui``."""
    recipe = re.search(r"^ui:.*\n((?:\t.*\n)+)", (ROOT / "Makefile").read_text(), flags=re.M)
    assert recipe, "no ui target in the Makefile"
    lines = [line for line in recipe.group(1).splitlines() if "python -c" in line]
    assert lines, "the ui recipe prints no address"
    code = re.search(r"python -c '(.*)'", lines[0]).group(1)
    return code.replace("$(MLFLOW_URI)", "sqlite:///mlflow.db")


def test_make_ui_prints_the_runs_view_in_model_training_mode(tmp_path, empty_mlflow_store):
    code = ui_recipe_python()

    def printed() -> str:
        done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True)
        return done.stdout.strip()

    # no store yet (not created by asking), then a store without the experiment: the experiment list
    assert printed().endswith(f"{UI_SERVER}/#/experiments?workflowType=machine_learning")
    assert not (tmp_path / "mlflow.db").exists()
    shutil.copyfile(empty_mlflow_store, tmp_path / "mlflow.db")
    assert printed().endswith(f"{UI_SERVER}/#/experiments?workflowType=machine_learning")
    experiment_id = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}").create_experiment("codecplatform")
    url = f"{UI_SERVER}/#/experiments/{experiment_id}/runs?viewStateShareKey=codecplatform-quality"
    assert printed() == f"MLflow UI, experiment codecplatform: {url}&workflowType=machine_learning"
    assert ui_url(f"sqlite:///{tmp_path / 'mlflow.db'}") == view_url(UI_SERVER, experiment_id)


def test_ui_server_of_a_tracking_uri():
    assert ui_server("sqlite:///mlflow.db") == UI_SERVER and ui_server(None) == UI_SERVER
    assert ui_server("http://mlflow.lab:5000/") == "http://mlflow.lab:5000"
