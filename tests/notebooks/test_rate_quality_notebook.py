"""notebooks/rate_quality.ipynb runs headless on an MLflow store (sqlite, in a tmp folder) with runs of
two families, given by environment variables like notebooks/codebook_usage.ipynb: one curve per run in
every metric panel, the run without per-bitrate metrics skipped, the filter applied, the table shown."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
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


async def execute(folder: Path, **env: str):
    """Run the notebook in ``folder`` in a kernel of its own, with exactly the given variables of ENV
    set; -> (nb, its stdout, result)."""
    kernel_env = {key: value for key, value in os.environ.items() if key not in ENV}
    kernel_env.update(env)
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(folder)}})
    await client.async_execute(env=kernel_env)
    errors = outputs(nb, "error")
    assert not errors, errors
    text = "".join(out.get("text", "") for out in outputs(nb, "stream") if out.name == "stdout")
    (result,) = [line[len(RESULT_PREFIX) :] for line in text.splitlines() if line.startswith(RESULT_PREFIX)]
    return nb, text, json.loads(result)


def execute_together(*runs: tuple[Path, dict[str, str]]) -> list:
    """:func:`execute` of each (folder, environment) at the same time, one kernel each -> [(nb, stdout,
    result), ...] in the order given."""

    async def gather():
        return await asyncio.gather(*(execute(folder, **env) for folder, env in runs))

    return asyncio.run(gather())


def test_stored_without_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert all(not cell.outputs and cell.execution_count is None for cell in code)
    assert "parameters" in code[0].metadata.get("tags", [])
    assert all(name in code[0].source for name in ("TRACKING_URI =", "EXPERIMENT =", "FILTERS =", "METRICS ="))


def test_notebook_draws_two_families(tmp_path, empty_mlflow_store):
    ensure_python3_kernel()
    shutil.copyfile(empty_mlflow_store, tmp_path / "mlflow.db")  # made once per session (tests/conftest.py)
    log_runs(f"sqlite:///{tmp_path / 'mlflow.db'}")
    filters_and_metrics = dict(CODEC_FILTERS="family=dac; sample_rate=24000", CODEC_METRICS="si_sdr mel_distance")
    (nb, text, result), (_, _, filtered) = execute_together(
        (tmp_path, dict(MLFLOW_TRACKING_URI="sqlite:///mlflow.db")),
        (tmp_path, dict(MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'mlflow.db'}", **filters_and_metrics)),
    )
    # A relative store, as in the notebook's default, found from the working directory.
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
    assert [run["run_name"] for run in filtered["comparison"]["runs"]] == [ENTROPY_CODED]
    assert filtered["metrics"] == ["si_sdr", "mel_distance"] and filtered["comparison"]["skipped"] == []
