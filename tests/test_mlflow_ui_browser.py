"""The MLflow UI in a real browser: a local ``mlflow server`` (the session's fixture, tests/conftest.py)
with runs of two families in an experiment of their own, rendered by headless Chromium (``chromium
--headless --dump-dom`` after the page's JavaScript ran). Checks that the run comparison page shows
both runs and a per-bitrate metric, and that the experiment's "codec quality" view shows metric
columns. Skipped without a Chromium binary (Debian: ``apt-get install chromium``)."""

from __future__ import annotations

import json
import shutil
import subprocess
import urllib.parse

import pytest
from mlflow.tracking import MlflowClient
from rate_quality_runs import log_runs

from codecplatform import compare

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
EXPERIMENT = "ui_browser"  # the session's server also holds tests/test_mlflow_server.py's runs


def browser() -> str:
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    pytest.skip(f"no headless browser: none of {', '.join(BROWSERS)} on PATH (Debian: apt-get install chromium)")


def render(url: str, tmp_path, screenshot: str | None = None, budget_ms: int = 20000) -> str:
    """The DOM of ``url`` after ``budget_ms`` of (virtual) time for its scripts; optionally a PNG too,
    taken by the same page load. The window is tall: the UI's tables render only the rows in view."""
    args = [
        browser(),
        "--headless",
        "--no-sandbox",  # root in containers
        "--disable-gpu",
        "--disable-dev-shm-usage",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
        "--window-size=1500,2400",
        f"--virtual-time-budget={budget_ms}",
    ]
    if screenshot:
        args.append(f"--screenshot={screenshot}")
    done = subprocess.run([*args, "--dump-dom", url], capture_output=True, text=True, timeout=180, check=True)
    return done.stdout


@pytest.mark.slow
def test_run_comparison_page_shows_both_families_and_per_bitrate_metrics(mlflow_server, tmp_path):
    browser()  # skip before logging anything
    ids = log_runs(mlflow_server, experiment=EXPERIMENT)
    runs = [ids["encodec-small"], ids["dac-24khz"]]
    experiment_id = MlflowClient(mlflow_server).get_experiment_by_name(EXPERIMENT).experiment_id
    query = urllib.parse.urlencode({"runs": json.dumps(runs), "experiments": json.dumps([experiment_id])})
    page = render(f"{mlflow_server}/#/compare-runs?{query}", tmp_path, screenshot=str(tmp_path / "compare.png"))
    assert "encodec-small" in page and "dac-24khz" in page
    # (metrics sorted by name: the first bitrates' rows; 0.75 kbps is DAC's only, 1.5 kbps both runs')
    for key in ("test/0.75kbps/mel_distance", "test/1.5kbps/mel_distance", "test/1.5kbps/si_sdr"):
        assert key in page, key
    assert (tmp_path / "compare.png").stat().st_size > 10_000

    # The experiment's saved view: the runs table with the family tag and full-bitrate test metrics.
    page = render(compare.view_url(mlflow_server, experiment_id), tmp_path)
    assert "codec quality" in page
    for text in ("test/mel_distance", "test/si_sdr", "family", "encodec-large", "dac-44khz"):
        assert text in page, text
