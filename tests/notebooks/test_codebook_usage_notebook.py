"""notebooks/codebook_usage.ipynb runs headless on a tiny codec trained in the test (MLflow sqlite store
in a tmp folder): found by its MLflow run id (checkpoint artifact + metric history) or given as a file
outside any run (history skipped, saying why). Its printed numbers equal the codebook statistics of the
checkpoint computed here, and it shows its figures and one audio player per codebook count."""

from __future__ import annotations

import asyncio
import filecmp
import json
import math
import os
from pathlib import Path

import nbformat
import pytest
import soundfile as sf
import torch
from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel
from nbclient import NotebookClient

from codecplatform.cli import cli_main
from codecplatform.metrics.codebook import codebook_statistics
from codecplatform.models.codec import Codec

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOK = ROOT / "notebooks" / "codebook_usage.ipynb"
EXPERIMENTS = ROOT / "experiments"
RESULT_PREFIX = "RESULT_JSON "
ENV = ("CODEC_CHECKPOINT", "CODEC_RUN_ID", "MLFLOW_TRACKING_URI", "CODEC_AUDIO", "CODEC_MAX_FILES")


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


def outputs(nb, output_type: str) -> list:
    return [
        out for cell in nb.cells if cell.cell_type == "code" for out in cell.outputs if out.output_type == output_type
    ]


def stdout(nb) -> str:
    return "".join(out.get("text", "") for out in outputs(nb, "stream") if out.name == "stdout")


async def execute(folder: Path, **env: str):
    """Run the notebook in ``folder`` in a kernel of its own with exactly the given CODEC_*/MLFLOW_*
    environment; -> (nb, result)."""
    kernel_env = {key: value for key, value in os.environ.items() if key not in ENV}
    kernel_env.pop("MPLBACKEND", None)  # the kernel's inline backend: figures become PNG outputs
    kernel_env.update(env)
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(folder)}})
    await client.async_execute(env=kernel_env)
    errors = outputs(nb, "error")
    assert not errors, errors
    results = [line[len(RESULT_PREFIX) :] for line in stdout(nb).splitlines() if line.startswith(RESULT_PREFIX)]
    assert len(results) == 1
    return nb, json.loads(results[0])


def execute_together(*runs: tuple[Path, dict[str, str]]) -> list:
    """:func:`execute` of each (folder, environment) at the same time (one kernel each: a kernel is one
    busy core for seconds, mostly importing) -> [(nb, result), ...] in the order given."""

    async def gather():
        return await asyncio.gather(*(execute(folder, **env) for folder, env in runs))

    return asyncio.run(gather())


def figures(nb) -> int:
    return sum("image/png" in out.get("data", {}) for out in outputs(nb, "display_data"))


def audio_players(nb) -> int:
    return sum("<audio" in out.get("data", {}).get("text/html", "") for out in outputs(nb, "display_data"))


def direct_statistics(checkpoint: Path, files: list[Path]) -> dict[str, torch.Tensor]:
    """codebook_statistics of the codes of ``files`` (each whole, 1 s at the codec's rate) under ``checkpoint``."""
    codec = Codec.from_checkpoint(checkpoint)
    codes = []
    for path in files:
        data, rate = sf.read(path, dtype="float32", always_2d=True)
        assert rate == codec.sample_rate
        codes.append(codec.encode(torch.from_numpy(data.T.copy())[None]).codes[0])  # (K, T')
    codes = torch.cat(codes, dim=-1)
    size = max(codec.quantizer.codebook_sizes)
    counts = torch.stack([torch.bincount(row, minlength=size) for row in codes])  # (K, N)
    return {**codebook_statistics(counts), "counts": counts}


@torch.no_grad()
def spread_codebooks(checkpoint: Path, out: Path, files: list[Path]) -> Path:
    """A copy of ``checkpoint`` whose codebooks are latent frames (residuals) of ``files`` picked at
    random, so the notebook's statistics have many used entries (two training batches leave a tiny
    codec with one entry per codebook)."""
    codec = Codec.from_checkpoint(checkpoint)
    x = torch.cat([torch.from_numpy(sf.read(p, dtype="float32", always_2d=True)[0].T.copy()) for p in files], -1)
    residual = codec.encoder(x[None])[0].t()  # (frames, D)
    data = torch.load(checkpoint, map_location="cpu", weights_only=False)
    generator = torch.Generator().manual_seed(0)
    for k, layer in enumerate(codec.quantizer.layers):
        embed = residual[torch.randperm(len(residual), generator=generator)[: layer.codebook_size]].clone()
        for name in ("embed", "embed_avg"):
            # the codec's weights and, with generator EMA, the averaged ones that from_checkpoint loads
            for prefix in ("codec.", "codec_ema."):
                key = f"{prefix}quantizer.layers.{k}.{name}"
                if prefix == "codec." or key in data["state_dict"]:
                    data["state_dict"][key] = embed.clone()
        residual = residual - embed[torch.cdist(residual, embed).argmin(dim=1)]
    torch.save(data, out)
    return out


def check_statistics(nb, result: dict, checkpoint: Path, files: list[Path]) -> None:
    """The printed table and the result's numbers equal the statistics of ``checkpoint`` computed here."""
    codec = Codec.from_checkpoint(checkpoint)
    K, sizes = codec.quantizer.n_q, codec.quantizer.codebook_sizes
    expected = direct_statistics(checkpoint, files)
    assert result["files"] == [p.name for p in files]
    assert result["n_frames"] == len(files) * math.ceil(24000 / codec.hop_length)  # 1 s files

    # The printed table: a header, then one row per codebook.
    text = stdout(nb)
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.split()[:2] == ["codebook", "size"])
    rows = [line.split() for line in lines[start + 2 : start + 2 + K]]
    assert [int(row[0]) for row in rows] == list(range(K))
    assert [int(row[1]) for row in rows] == list(sizes)
    assert [int(row[3]) for row in rows] == expected["dead_codes"].tolist()
    assert [float(row[5]) for row in rows] == pytest.approx(expected["entropy"].tolist(), abs=5e-4)  # 3 decimals
    assert f"bitrate efficiency (sum of entropies / sum of log2 sizes): {float(expected['efficiency']):.3f}" in text

    stats = result["stats"]
    assert [s["codebook"] for s in stats] == list(range(K))
    for k, (s, size) in enumerate(zip(stats, sizes)):
        assert s["size"] == size and s["counts"] == expected["counts"][k, :size].tolist()
        assert sum(s["counts"]) == result["n_frames"]
        used = sum(c > 0 for c in s["counts"])
        assert s["used"] == used and s["dead"] == int(expected["dead_codes"][k]) == size - used
        assert s["entropy_bits"] == pytest.approx(entropy_bits(s["counts"]), abs=1e-5)
        assert s["entropy_bits"] == pytest.approx(float(expected["entropy"][k]), abs=1e-5)
        assert s["perplexity"] == pytest.approx(float(expected["perplexity"][k]), rel=1e-5)
        assert s["utilization"] == pytest.approx(used / size)
    assert result["efficiency"] == pytest.approx(float(expected["efficiency"]), abs=1e-6)

    # Quality and audio for every codebook count 1..K, decoded from the first k of all K codes.
    assert [row["n_q"] for row in result["by_n_q"]] == list(range(1, K + 1))
    for row in result["by_n_q"]:
        assert row["kbps"] == pytest.approx(codec.bitrate(row["n_q"]))
        assert all(math.isfinite(row[key]) for key in ("kbps", "mel_distance", "si_sdr"))
    # Codebook ablation: each of the first codebooks alone, and 0..k together (= the first k + 1).
    ablation = result["ablation"]
    first = min(K, 4)
    assert [row["codebooks"] for row in ablation if len(row["codebooks"]) == 1] == [[k] for k in range(first)]
    by_count = {row["n_q"]: row["mel_distance"] for row in result["by_n_q"]}
    for row in ablation:
        assert math.isfinite(row["mel_distance"])
        if row["codebooks"] == list(range(len(row["codebooks"]))):  # a prefix decodes as the first k codebooks
            assert row["mel_distance"] == pytest.approx(by_count[len(row["codebooks"])], rel=1e-5)
    assert audio_players(nb) == 1 + K + len(ablation)  # the original, 1..K codebooks, then the ablation
    for k in range(1, K + 1):
        assert f"{k} codebook(s), {codec.bitrate(k):g} kbps" in text


def test_stored_without_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert all(not cell.outputs and cell.execution_count is None for cell in code)
    assert "parameters" in code[0].metadata.get("tags", [])
    assert all(name in code[0].source for name in ("CHECKPOINT =", "RUN_ID =", "TRACKING_URI ="))


def test_notebook_by_run_id_and_by_checkpoint_file(make_manifests, in_tmp_dir, mlflow_db, latest_checkpoint):
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
    run_id = fit.trainer.logger.run_id
    wav_dir = manifests["train"].parents[1] / "wav"
    wavs = sorted(wav_dir.glob("*.wav"))
    assert checkpoint.is_file() and 0 < len(wavs) <= 8
    ensure_python3_kernel()
    # 1. by MLflow run id; 2. a checkpoint file outside any run (codebooks spread over many entries),
    # the two executions at the same time
    store = f"sqlite:///{in_tmp_dir / 'mlflow.db'}"
    elsewhere = in_tmp_dir / "elsewhere"
    elsewhere.mkdir()
    spread = spread_codebooks(checkpoint, elsewhere / "model.ckpt", wavs)
    (nb, result), (nb_file, result_file) = execute_together(
        (in_tmp_dir, dict(CODEC_RUN_ID=run_id, MLFLOW_TRACKING_URI=store, CODEC_AUDIO=str(wav_dir))),
        (elsewhere, dict(CODEC_CHECKPOINT=str(spread), CODEC_AUDIO=str(wav_dir))),
    )

    # 1. By MLflow run id: the checkpoint comes from the run's artifacts (its best one by default: the
    # lowest val/mel_distance of the monitored ModelCheckpoint, else last.ckpt when the run's artifacts
    # hold only the latest callback's files), the history from its metrics.
    chosen = Path(result["checkpoint"])
    best = next(c for c in fit.trainer.checkpoint_callbacks if getattr(c, "monitor", None)).best_model_path
    assert result["checkpoint_source"] == "mlflow" and chosen.name in (Path(best).name, "last.ckpt")
    if chosen.name == "last.ckpt":
        assert filecmp.cmp(chosen, checkpoint, shallow=False)  # the run's artifact is the fit's last.ckpt
    else:
        assert filecmp.cmp(chosen, best, shallow=False)  # the run's artifact is the fit's best checkpoint
    assert result["files"] == [p.name for p in wavs]

    check_statistics(nb, result, chosen, wavs)
    K = Codec.from_checkpoint(checkpoint).quantizer.n_q
    assert figures(nb) == 3  # statistics, quality against bitrate, history

    # History: the fit validated after each of its 2 batches, logging val/codebook/* each time.
    assert result["mlflow_run"]["run_id"] == run_id and result["no_run_reason"] is None
    points = result["history_points"]
    assert points["val/codebook/efficiency"] == 2 and points["val/mel_distance"] == 2
    assert all(points[f"val/codebook/{name}/{k}"] == 2 for name in ("perplexity", "dead_codes") for k in range(K))
    assert points["train/g/commit"] >= 1

    # 2. A checkpoint file outside any run (codebooks spread over many entries): everything but the
    # history, which says why it is missing.
    nb, result = nb_file, result_file
    assert result["checkpoint_source"] == "file" and result["checkpoint"] == str(spread)
    assert min(s["used"] for s in result["stats"]) > 3 and result["efficiency"] > 0.3
    check_statistics(nb, result, spread, wavs)
    assert result["mlflow_run"] is None and result["history_points"] == {}
    assert "no MLflow run, so no training history: RUN_ID is empty" in stdout(nb)
    assert figures(nb) == 2
