"""Does the data pipeline keep up with training? Audio delivered by the training DataLoader of
LhotseAudioDataModule with N workers, against the audio a training step of the model consumes,
both measured in the same run.

    python benchmarks/data_throughput.py [--config experiments/encodec/24khz_mono.yaml ...]
        [--workers 0 1 2 4] [--batches 50] [--model_batches 3]
        [--train_cuts PATH | --corpus_files 32 --corpus_seconds 10 --corpus_rate 44100
         --corpus_channels 2 --corpus_format flac] [--accelerator cpu] [--precision 32-true]
        [--out outputs/benchmarks/data_throughput.json] [-- --data.init_args.KEY=VALUE ...]

``--config`` (repeatable, later wins, ``_base_`` chains as in ``codecplatform fit``) and the
overrides after ``--`` build the model and the datamodule exactly as ``codecplatform fit`` would
(batch size, window length, resampling, channel mapping, augmentation, stream mode); only the
training manifest (and ``num_workers``) are replaced. Without ``--train_cuts`` a corpus of tones
and noise is written (by default 44.1 kHz stereo FLAC: decoding, resampling and down-mixing are
part of the cost) and prepared with ``codecplatform prepare``.

- delivered (audio s/s): seconds of audio in the batches the DataLoader yields per second of wall
  time, after its first batch (worker start-up is reported separately as ``first_batch_s``);
- consumed (audio s/s): seconds of audio in a batch divided by the median wall time of one full
  training step (discriminator and generator forward/backward and optimizer steps of the
  LightningModule, through a Lightning Trainer) on batches held in memory;
- ratio = delivered / consumed: above 1 the loader keeps up with training.

On a CPU-only machine the loader workers and the training step compete for the same cores, so the
two rates are measured one after the other and the ratio says what one would deliver while the
other is idle; use a small batch there (``-- --data.init_args.batch_size=8``: a CPU training step
of the 24 kHz EnCodec with its batch of 64 ran out of 23 GB of RAM). On a GPU machine run e.g.

    python benchmarks/data_throughput.py --accelerator gpu --precision bf16-mixed --workers 0 2 4 8 16

there the step runs on the GPU and the loader on the CPU cores, which is the setting that matters
for training (per rank: run it once per GPU's share of the CPU cores).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import torch
from lightning.pytorch import Callback, Trainer
from torch.utils.data import DataLoader, Dataset

from codecplatform.cli import CodecCLI, expand_args
from datamodules.manifests import prepare_manifests

REPO = Path(__file__).resolve().parents[1]


def write_corpus(folder: Path, files: int, seconds: float, rate: int, channels: int, fmt: str) -> None:
    """``files`` recordings of ``seconds`` each: harmonic tones with a slow tremolo plus noise."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    t = np.arange(int(seconds * rate)) / rate
    for i in range(files):
        f0 = 80 * 2 ** (i % 24 / 6)
        tone = sum(np.sin(2 * math.pi * f0 * k * t + rng.uniform(0, 6)) / k for k in range(1, 6))
        tremolo = 0.6 + 0.4 * np.sin(2 * math.pi * 0.5 * t)
        audio = np.stack(
            [0.15 * tremolo * tone + 0.02 * rng.standard_normal(t.size) for _ in range(channels)], axis=1
        )  # (N, C)
        sf.write(folder / f"clip{i:04d}.{fmt}", audio.astype(np.float32), rate)


def build(configs: list[str], overrides: list[str]) -> CodecCLI:
    """Model, datamodule and trainer as ``codecplatform fit`` builds them (no fit)."""
    args = [item for config in configs for item in ("--config", config)]
    argv, sys.argv = sys.argv, sys.argv[:1]  # LightningCLI warns when it sees both args and sys.argv
    try:
        return CodecCLI(args=expand_args([*args, *overrides, "--trainer.logger=false"]), run=False)
    finally:
        sys.argv = argv


def measure_loader(
    loader: DataLoader, batches: int, sample_rate: int, warmup: int = 2
) -> tuple[dict[str, float], torch.Tensor]:
    """Time to the first batch (worker start-up), then audio seconds and batches per second over
    ``batches`` more, after ``warmup`` untimed ones; and the first batch (B, C, T)."""
    start = time.perf_counter()
    iterator = iter(loader)
    first_batch = next(iterator)
    first = time.perf_counter() - start
    for _ in range(warmup):
        next(iterator)
    audio = 0.0
    restarts = 0
    start = time.perf_counter()
    for _ in range(batches):
        try:
            batch = next(iterator)
        except StopIteration:  # a finite epoch ended: go on with the next one
            restarts += 1
            iterator = iter(loader)
            batch = next(iterator)
        audio += batch.shape[0] * batch.shape[-1] / sample_rate  # (B, C, T): B windows of T samples
    elapsed = time.perf_counter() - start
    del iterator
    timing = {
        "first_batch_s": first,
        "seconds": elapsed,
        "batches_per_s": batches / elapsed,
        "audio_s_per_s": audio / elapsed,
        "epoch_restarts": restarts,
    }
    return timing, first_batch


class _SameBatch(Dataset):
    """``n`` times the same (B, C, T) batch: a loader that costs nothing."""

    def __init__(self, batch: torch.Tensor, n: int) -> None:
        self.batch, self.n = batch, n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.batch


class _StepTimer(Callback):
    """Wall time of every training step (batch start to batch end, device synchronized)."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self._start = 0.0

    def _sync(self, trainer: Trainer) -> None:
        if trainer.strategy.root_device.type == "cuda":
            torch.cuda.synchronize(trainer.strategy.root_device)

    def on_train_batch_start(self, trainer: Trainer, *args: Any) -> None:
        self._sync(trainer)
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer: Trainer, *args: Any) -> None:
        self._sync(trainer)
        self.times.append(time.perf_counter() - self._start)


def measure_model(cli: CodecCLI, batch: torch.Tensor, steps: int, accelerator: str, precision: str) -> dict:
    """Median training-step time of the config's LightningModule on ``batch`` (B, C, T); the first
    step (k-means init, allocation, autotuning) is left out."""
    module = cli.model
    module.max_batches = steps + 1
    timer = _StepTimer()
    trainer = Trainer(
        accelerator=accelerator,
        devices=1,
        precision=precision,
        max_epochs=1,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[timer],
    )
    trainer.fit(module, DataLoader(_SameBatch(batch, steps + 1), batch_size=None))
    step = statistics.median(timer.times[1:])
    return {
        "step_s": step,
        "steps_timed": len(timer.times) - 1,
        "first_step_s": timer.times[0],
        "device": str(trainer.strategy.root_device),
        "precision": precision,
    }


def main(argv: list[str] | None = None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    overrides: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, overrides = argv[:cut], argv[cut + 1 :]
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", action="append", help="experiment YAML (repeatable)")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2, 4], help="DataLoader worker counts")
    parser.add_argument("--batches", type=int, default=50, help="batches timed per worker count")
    parser.add_argument("--model_batches", type=int, default=3, help="training steps timed (after one warm-up)")
    parser.add_argument("--train_cuts", default=None, help="cut manifest to read (default: a generated corpus)")
    parser.add_argument("--corpus_dir", default=None, help="where to write the generated corpus (default: temp)")
    parser.add_argument("--corpus_files", type=int, default=32)
    parser.add_argument("--corpus_seconds", type=float, default=10.0)
    parser.add_argument("--corpus_rate", type=int, default=44100)
    parser.add_argument("--corpus_channels", type=int, default=2)
    parser.add_argument("--corpus_format", default="flac", choices=["flac", "wav"])
    parser.add_argument("--accelerator", default="cpu", help="where the training step runs (cpu, gpu)")
    parser.add_argument("--precision", default="32-true", help="training precision (e.g. bf16-mixed on GPUs)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads of the main process")
    parser.add_argument("--out", default=str(REPO / "outputs" / "benchmarks" / "data_throughput.json"))
    opts = parser.parse_args(argv)
    configs = opts.config or [str(REPO / "experiments" / "encodec" / "24khz_mono.yaml")]
    if opts.threads is not None:
        torch.set_num_threads(opts.threads)

    with tempfile.TemporaryDirectory() as tmp:
        corpus: dict[str, Any]
        if opts.train_cuts is None:
            root = Path(opts.corpus_dir or tmp)
            write_corpus(
                root / "audio",
                opts.corpus_files,
                opts.corpus_seconds,
                opts.corpus_rate,
                opts.corpus_channels,
                opts.corpus_format,
            )
            manifests = prepare_manifests(
                root / "audio", root / "manifests", val_fraction=0.0, test_fraction=0.0, num_workers=2
            )
            train_cuts = str(manifests["train"])
            corpus = {
                "files": opts.corpus_files,
                "seconds_each": opts.corpus_seconds,
                "sample_rate": opts.corpus_rate,
                "channels": opts.corpus_channels,
                "format": opts.corpus_format,
            }
        else:
            train_cuts = opts.train_cuts
            corpus = {"train_cuts": train_cuts}
        data_overrides = [
            f"--data.init_args.train_cuts={train_cuts}",
            "--data.init_args.val_cuts=null",
            "--data.init_args.test_cuts=null",
        ]

        rows = []
        batch = None
        for workers in opts.workers:
            cli = build(configs, [*data_overrides, *overrides, f"--data.init_args.num_workers={workers}"])
            data = cli.datamodule
            data.setup("fit")
            loader = data.train_dataloader()
            timing, first_batch = measure_loader(loader, opts.batches, data.sample_rate)
            batch = first_batch if batch is None else batch  # (B, C, T): also the model's input below
            rows.append({"workers": workers, **timing})
            del loader

        cli = build(configs, [*data_overrides, *overrides])
        sample_rate = cli.datamodule.sample_rate
        model = measure_model(cli, batch, opts.model_batches, opts.accelerator, opts.precision)
    batch_audio = batch.shape[0] * batch.shape[-1] / sample_rate
    consumed = batch_audio / model["step_s"]
    for row in rows:
        row["ratio"] = row["audio_s_per_s"] / consumed

    results = {
        "configs": configs,
        "overrides": overrides,
        "corpus": corpus,
        "batch_shape": list(batch.shape),
        "batch_audio_s": batch_audio,
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "model": {**model, "consumed_audio_s_per_s": consumed},
        "rows": rows,
    }
    b, c, t = batch.shape
    print(
        f"{' + '.join(Path(c).name for c in configs)}: batches of {b} x {c} x {t} ({batch_audio:g} s of audio at "
        f"{sample_rate} Hz); {os.cpu_count()} CPU cores, {torch.get_num_threads()} torch threads"
    )
    print(
        f"model: one training step {model['step_s']:.3f} s (median of {model['steps_timed']}) on {model['device']} "
        f"({opts.precision}) -> consumes {consumed:.2f} audio s/s"
    )
    print(f"{'workers':>8}{'first_batch_s':>15}{'batches/s':>11}{'audio s/s':>11}{'delivered/consumed':>20}")
    for row in rows:
        print(
            f"{row['workers']:>8}{row['first_batch_s']:>15.2f}{row['batches_per_s']:>11.2f}"
            f"{row['audio_s_per_s']:>11.1f}{row['ratio']:>20.2f}"
        )
    out = Path(opts.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"wrote {out}")
    return results


if __name__ == "__main__":
    main()
