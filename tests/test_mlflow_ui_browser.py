"""The MLflow UI in a real browser: a local ``mlflow server --app-name codecplatform`` (the session's
fixture, tests/conftest.py) with runs of two families in an experiment of their own, rendered by
headless Chromium (``--dump-dom`` after the page's JavaScript ran, or driven over the DevTools
protocol: tests/cdp_browser.py). Checks that the run comparison page shows both runs and a
per-bitrate metric, that the experiment's "codec quality" view shows metric columns, and that a
user clicking from the home page lands on them. Skipped without a Chromium binary (Debian:
``apt-get install chromium``)."""

from __future__ import annotations

import json
import subprocess
import urllib.parse

import pytest
from cdp_browser import BROWSERS, INSTALL_HINT, Browser, find_browser
from mlflow.tracking import MlflowClient
from rate_quality_runs import log_runs

from codecplatform import compare

EXPERIMENT = "ui_browser"  # the session's server also holds tests/test_mlflow_server.py's runs


def browser() -> str:
    path = find_browser()
    if path is None:
        pytest.skip(f"no headless browser: none of {', '.join(BROWSERS)} on PATH ({INSTALL_HINT})")
    return path


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


@pytest.mark.slow
def test_a_user_clicking_from_the_home_page_sees_the_codec_runs_with_their_metrics(mlflow_server, tmp_path):
    """A new browser (no stored choices) opens the home page and clicks the experiment, as a user
    does: it lands on the runs table in model-training mode with the codec-quality columns, not on
    the GenAI traces overview. A later choice of the user (GenAI) is kept on the next visit."""
    binary = browser()
    experiment = "ui_clickthrough"
    log_runs(mlflow_server, experiment=experiment)
    with Browser(binary, tmp_path / "profile") as page:
        page.open(f"{mlflow_server}/")
        page.wait_for_text(experiment, "Model training", timeout=120)
        page.click_text(experiment)
        text = page.wait_for_text("encodec-small", "dac-44khz", "test/mel_distance", "test/si_sdr", timeout=120)
        assert "workflowType=machine_learning" in page.url() and "/runs" in page.url(), page.url()
        assert "family" in text and "Detect Issues" not in text and "Token Usage" not in text
        page.screenshot(tmp_path / "runs.png")
        assert (tmp_path / "runs.png").stat().st_size > 10_000

        page.evaluate('localStorage.setItem("mlflow.workflowType_v1", JSON.stringify("genai"))')  # the user's switch
        page.open(f"{mlflow_server}/")
        page.wait_for_text(experiment, timeout=120)
        page.click_text(experiment)
        page.wait_for_text("Token Usage", timeout=120)  # MLflow's GenAI overview
        assert "workflowType=genai" in page.url(), page.url()


@pytest.mark.slow
def test_leaderboard_view_lists_families_and_classical_codecs_with_per_bitrate_columns(mlflow_server, tmp_path):
    """benchmarks/leaderboard.py's saved view on family runs and an Opus run (logged as the benchmark
    logs them): one row per codec, a column per bitrate for mel distance and SI-SDR."""
    from codecplatform.metrics.classical import ClassicalTable, log_classical_run

    browser()
    experiment = "ui_leaderboard"
    ids = log_runs(mlflow_server, experiment=experiment)
    columns = [{"label": f"{k}kbps", "kbps": float(k), "true_kbps": k + 0.1} for k in (6, 12)]
    table = ClassicalTable("opus", 24000, 1, 4.0, columns, {"mel_distance": [2.6, 2.1], "si_sdr": [-2.3, 11.8]})
    opus = log_classical_run(table, mlflow_server, experiment=experiment, run_name="opus-reference")
    client = MlflowClient(mlflow_server)
    experiment_id = client.get_experiment_by_name(experiment).experiment_id
    keys = {key for run_id in [*ids.values(), opus] for key in client.get_run(run_id).data.metrics}
    state = compare.leaderboard_view(keys)
    first = ["metrics.`test/0.75kbps/mel_distance`", "metrics.`test/0.861kbps/mel_distance`"]
    assert state["selectedColumns"][3:5] == first  # after the family, sample_rate and max_kbps tags
    compare.save_view(client, experiment_id, compare.LEADERBOARD_VIEW_ID, "leaderboard", state)
    page = render(compare.view_url(mlflow_server, experiment_id, compare.LEADERBOARD_VIEW_ID), tmp_path)
    # (the UI orders metric columns by name and renders those in the window: the lowest bitrates')
    assert "You're viewing a shared view" in page and "Sort: family" in page
    for text in ("opus-reference", "encodec-small", "dac-44khz", "test/0.75kbps/mel_distance", "test/1.5kbps/si_sdr"):
        assert text in page, text
