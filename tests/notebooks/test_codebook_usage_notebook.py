"""notebooks/codebook_usage.ipynb runs headless on a tiny trained codec: its stats table lists every
codebook, and the numbers it reports (last cell: ``RESULT_JSON {...}``) are consistent."""

from __future__ import annotations

import json
import math
from pathlib import Path

import nbformat
import pytest
from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel
from nbclient import NotebookClient

from codecplatform.cli import cli_main
from codecplatform.models.codec import Codec

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOK = ROOT / "notebooks" / "codebook_usage.ipynb"
EXPERIMENTS = ROOT / "experiments"
RESULT_PREFIX = "RESULT_JSON "


def ensure_python3_kernel() -> None:
    """ipykernel puts its kernelspec in <venv>/share/jupyter/kernels; install it there if missing."""
    try:
        KernelSpecManager().get_kernel_spec("python3")
    except NoSuchKernel:
        import sys

        from ipykernel.kernelspec import install

        install(prefix=sys.prefix)


def entropy_bits(counts: list[int]) -> float:
    total = sum(counts)
    return -sum(c / total * math.log2(c / total) for c in counts if c)


def stream_text(nb) -> list[str]:
    return [
        out.get("text", "")
        for cell in nb.cells
        if cell.cell_type == "code"
        for out in cell.get("outputs", [])
        if out.output_type == "stream" and out.name == "stdout"
    ]


def test_stored_without_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert all(not cell.outputs and cell.execution_count is None for cell in code)
    assert "parameters" in code[0].metadata.get("tags", [])


def test_notebook_runs_on_a_tiny_trained_codec(make_manifests, in_tmp_dir, monkeypatch, latest_checkpoint):
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
            "--trainer.log_every_n_steps=1",
        ]
    )
    checkpoint = Path(latest_checkpoint(fit.trainer)).resolve()
    wav_dir = manifests["train"].parents[1] / "wav"
    assert checkpoint.is_file() and any(wav_dir.glob("*.wav"))

    monkeypatch.setenv("CODEC_CHECKPOINT", str(checkpoint))
    monkeypatch.setenv("CODEC_AUDIO", str(wav_dir))
    monkeypatch.setenv("MPLBACKEND", "Agg")  # headless; the inline backend still renders plt.show()
    ensure_python3_kernel()
    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(in_tmp_dir)}}).execute()

    errors = [
        out for cell in nb.cells if cell.cell_type == "code" for out in cell.outputs if out.output_type == "error"
    ]
    assert not errors, errors
    text = "".join(stream_text(nb))
    results = [line[len(RESULT_PREFIX) :] for line in text.splitlines() if line.startswith(RESULT_PREFIX)]
    assert len(results) == 1
    result = json.loads(results[0])

    codec = Codec.from_checkpoint(checkpoint)
    K, sizes = codec.quantizer.n_q, codec.quantizer.codebook_sizes
    assert result["checkpoint"] == str(checkpoint)
    n_files = len(list(wav_dir.glob("*.wav")))
    assert len(result["files"]) == min(8, n_files)

    # The printed table: a header, then one row per codebook, in order.
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.split()[:2] == ["codebook", "size"])
    rows = [line.split() for line in lines[start + 2 : start + 2 + K]]
    assert [int(row[0]) for row in rows] == list(range(K))
    assert [int(row[1]) for row in rows] == list(sizes)

    # Per-codebook numbers.
    stats = result["stats"]
    assert [s["codebook"] for s in stats] == list(range(K))
    # every file is 1 s at 24 kHz: ceil(T / hop) frames each
    assert result["n_frames"] == len(result["files"]) * math.ceil(24000 / codec.hop_length)
    for s, size in zip(stats, sizes):
        assert s["size"] == size and len(s["counts"]) == size
        assert sum(s["counts"]) == result["n_frames"]
        used = sum(c > 0 for c in s["counts"])
        assert s["used"] == used and s["dead"] == sum(c == 0 for c in s["counts"])
        assert s["dead"] + s["used"] == size
        assert 0 <= s["entropy_bits"] <= math.log2(size) + 1e-9
        assert s["entropy_bits"] == pytest.approx(entropy_bits(s["counts"]), abs=1e-9)
        assert s["perplexity"] == pytest.approx(2 ** s["entropy_bits"])
        assert s["utilization"] == pytest.approx(used / size)
    total_bits = sum(math.log2(size) for size in sizes)
    assert result["efficiency"] == pytest.approx(sum(s["entropy_bits"] for s in stats) / total_bits)

    # Quality against the number of codebooks: one finite row per count.
    counts = codec.n_q_choices or list(range(1, K + 1))
    assert [row["n_q"] for row in result["by_n_q"]] == counts
    for row in result["by_n_q"]:
        assert row["kbps"] == pytest.approx(codec.bitrate(row["n_q"]))
        assert all(math.isfinite(row[key]) for key in ("kbps", "mel_distance", "si_sdr"))

    # The fit logged to ./mlflow.db next to outputs/: the notebook finds the run and its history.
    assert result["mlflow_run"]["run_id"] == fit.trainer.logger.run_id
    assert result["history_points"]["val/mel_distance"] >= 1
    assert result["history_points"]["train/g/commit"] >= 1
