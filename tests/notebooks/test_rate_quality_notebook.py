"""notebooks/rate_quality.ipynb runs headless on an MLflow store (sqlite, in a tmp folder) with runs of
two families, given by environment variables like notebooks/codebook_usage.ipynb: one curve per run in
every metric panel, the run without per-bitrate metrics skipped, the filter applied, the table shown."""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from rate_quality_runs import ENTROPY_CODED, NO_PER_BITRATE, RUNS, log_runs
from test_codebook_usage_notebook import ensure_python3_kernel

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOK = ROOT / "notebooks" / "rate_quality.ipynb"
RESULT_PREFIX = "RESULT_JSON "
ENV = ("MLFLOW_TRACKING_URI", "CODEC_EXPERIMENT", "CODEC_FILTERS", "CODEC_METRICS", "CODEC_STAGE")


def outputs(nb, output_type: str) -> list:
    return [
        out for cell in nb.cells if cell.cell_type == "code" for out in cell.outputs if out.output_type == output_type
    ]


def execute(monkeypatch, folder: Path, **env: str):
    for key in ENV:
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(folder)}}).execute()
    errors = outputs(nb, "error")
    assert not errors, errors
    text = "".join(out.get("text", "") for out in outputs(nb, "stream") if out.name == "stdout")
    (result,) = [line[len(RESULT_PREFIX) :] for line in text.splitlines() if line.startswith(RESULT_PREFIX)]
    return nb, text, json.loads(result)


def test_stored_without_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert all(not cell.outputs and cell.execution_count is None for cell in code)
    assert "parameters" in code[0].metadata.get("tags", [])
    assert all(name in code[0].source for name in ("TRACKING_URI =", "EXPERIMENT =", "FILTERS =", "METRICS ="))


def test_notebook_draws_two_families(tmp_path, monkeypatch):
    ensure_python3_kernel()
    log_runs(f"sqlite:///{tmp_path / 'mlflow.db'}")
    # A relative store, as in the notebook's default, found from the working directory.
    nb, text, result = execute(monkeypatch, tmp_path, MLFLOW_TRACKING_URI="sqlite:///mlflow.db")
    runs = result["comparison"]["runs"]
    assert {run["run_name"] for run in runs} == set(RUNS)
    assert result["comparison"]["families"] == ["dac", "encodec"]
    assert f"({NO_PER_BITRATE}, encodec): no test/<kbps>kbps/<metric> metrics" in text
    assert result["metrics"] == ["mel_distance", "stft_distance", "si_sdr", "visqol_audio", "codebook_efficiency"]
    ids = {run["run_name"]: run["run_id"] for run in runs}
    for lines in result["lines"].values():  # one line per run per panel (+ the entropy-coded run's effective one)
        expected = {ids[name]: len(mel) for name, (_, mel) in RUNS.items()}
        expected[f"{ids[ENTROPY_CODED]}/effective"] = len(RUNS[ENTROPY_CODED][1])
        assert lines == expected
    assert sum("image/png" in out.get("data", {}) for out in outputs(nb, "display_data")) == 1
    tables = [
        out["data"]["text/markdown"] for out in outputs(nb, "display_data") if "text/markdown" in out.get("data", {})
    ]
    assert len(tables) == 1 and "## mel_distance (lower is better)" in tables[0]

    # Filters and metrics from the environment.
    nb, _, result = execute(
        monkeypatch,
        tmp_path,
        MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'mlflow.db'}",
        CODEC_FILTERS="family=dac; sample_rate=24000",
        CODEC_METRICS="si_sdr mel_distance",
    )
    assert [run["run_name"] for run in result["comparison"]["runs"]] == [ENTROPY_CODED]
    assert result["metrics"] == ["si_sdr", "mel_distance"] and result["comparison"]["skipped"] == []
