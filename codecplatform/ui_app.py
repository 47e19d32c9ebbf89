"""The MLflow UI as ``make ui`` serves it: MLflow's own server app (``mlflow ui --app-name
codecplatform``, registered under the ``mlflow.app`` entry points) whose start page first sets two
browser defaults, so that a user who opens the home page and clicks an experiment lands on its runs
with the codec-quality columns rather than on MLflow 3's empty GenAI traces overview.

MLflow 3 keeps both choices in the browser's localStorage and ignores the experiment's
``mlflow.experimentKind`` tag there (mlflow/mlflow#24498):

- ``mlflow.workflowType_v1``: ``"genai"`` (MLflow's default) or ``"machine_learning"``;
- ``MLflowLocalStorage-1.1-ExperimentPage-["<id>"]-ReactComponentState``: an experiment's runs-table
  state (its columns), which MLflow fills with its own defaults (no metric columns) when absent.

The page sets each only where the browser has no value yet, so a user's later choice (switching to
GenAI, changing the columns) stays. The runs-table state is the experiment's saved "codec quality"
view (:func:`codecplatform.compare.prepare_experiment` writes it as an experiment tag). The key
names are MLflow 3.17's (the locked version); tests/test_mlflow_ui_browser.py checks them in Chromium.
"""

from __future__ import annotations

import json
from typing import Any

WORKFLOW_KEY = "mlflow.workflowType_v1"
WORKFLOW = "machine_learning"


def runs_state_key(experiment_id: str) -> str:
    """The localStorage key of one experiment's runs-table state in MLflow's UI."""
    return f'MLflowLocalStorage-1.1-ExperimentPage-["{experiment_id}"]-ReactComponentState'


def startup_script(views: dict[str, dict[str, Any]]) -> str:
    """A ``<script>`` that sets the model-training workflow and each experiment's runs-table state
    (``views``: experiment id -> state) where the browser has none. Plain JSON, no user strings
    evaluated; ``</`` escaped so a tag value cannot end the script."""
    defaults = {WORKFLOW_KEY: json.dumps(WORKFLOW)}
    defaults.update({runs_state_key(eid): json.dumps(state) for eid, state in views.items()})
    payload = json.dumps(defaults).replace("</", "<\\/")
    return (
        "<script>(function(){try{var d=" + payload + ";for(var k in d){"
        "if(window.localStorage.getItem(k)===null){window.localStorage.setItem(k,d[k]);}}}catch(e){}})();</script>"
    )


def codec_views(store: Any) -> dict[str, dict[str, Any]]:
    """Experiment id -> the "codec quality" runs-table state, for every active experiment of
    ``store`` (an MLflow tracking store) that carries the saved view."""
    from mlflow.entities import ViewType

    from codecplatform.compare import SAVED_VIEW_PREFIX, VIEW_ID

    views: dict[str, dict[str, Any]] = {}
    token = None
    while True:
        page = store.search_experiments(view_type=ViewType.ACTIVE_ONLY, max_results=1000, page_token=token)
        for experiment in page:
            saved = experiment.tags.get(SAVED_VIEW_PREFIX + VIEW_ID)
            if saved:
                try:
                    views[experiment.experiment_id] = json.loads(json.loads(saved)["state"])
                except (ValueError, KeyError, TypeError):
                    continue  # a view edited by hand into something else: MLflow's defaults
        token = page.token
        if not token:
            return views


def create_app() -> Any:
    """MLflow's server app with the start page's defaults added (Flask; wrapped in MLflow's FastAPI
    app when the server runs under uvicorn, as ``mlflow ui`` does by default)."""
    from flask import request
    from mlflow.server import app
    from mlflow.server.handlers import _get_tracking_store

    @app.after_request
    def add_defaults(response):  # noqa: ANN001, ANN202 (Flask's hook signature)
        if request.endpoint != "serve" or response.mimetype != "text/html":
            return response
        response.direct_passthrough = False
        html = response.get_data(as_text=True)
        head = html.find("<head>")
        if head >= 0:
            script = startup_script(codec_views(_get_tracking_store()))
            response.set_data(html[: head + 6] + script + html[head + 6 :])
            response.headers["Cache-Control"] = "no-store"  # experiments change; the page is small
        return response

    from mlflow.environment_variables import _MLFLOW_SGI_NAME

    if _MLFLOW_SGI_NAME.get() == "uvicorn":
        from mlflow.server.fastapi_app import create_fastapi_app

        return create_fastapi_app(app)
    return app
