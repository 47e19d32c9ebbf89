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

Per loading process, by source (``--per_worker``): the audio seconds one loading process delivers
per second and its peak memory, for per-window decode of an Ogg Vorbis folder and of an Opus
folder (manifests from ``codecplatform prepare``), the decode cache, and prepared segment shards
(``--shar_dir``, read by the sequential shard reader), each in a fresh process (``num_workers: 0``:
the process is the worker), with ratios against per-window Ogg Vorbis decode in the same run::

    python benchmarks/data_throughput.py --per_worker --ogg_dir DIR --opus_dir DIR --shar_dir DIR/train
        [--opus_cuts MANIFEST] [--sample_rate 24000 --channels 1 --window 0.5 --batch 8 --seconds 20 --cache_mb 2000]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import torch
from torch.utils.data import DataLoader

from codecplatform.cli import CodecCLI, expand_args
from datamodules.manifests import prepare_manifests

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
from train_throughput import measure_step  # noqa: E402  (the one timed training step)


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


def _rss_mb() -> float:
    """Resident memory of this process now, MB (Linux /proc)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _source_row(spec: dict[str, Any], queue: Any) -> None:
    """One row of --per_worker, in its own process: build the loader, time it, report peak RSS."""
    import resource

    from datamodules.lhotse_audio import LhotseAudioDataModule

    torch.set_num_threads(1)
    base = _rss_mb()
    data = {"train_cuts": spec.get("train_cuts"), "train_shar": spec.get("train_shar")}
    dm = LhotseAudioDataModule(
        **{k: v for k, v in data.items() if v is not None},
        sample_rate=spec["sample_rate"],
        channels=spec["channels"],
        segment_seconds=spec["window"],
        batch_size=spec["batch"],
        num_workers=0,
        infinite=spec.get("train_cuts") is not None,
        decode_cache_mb=spec.get("cache_mb", 0.0),
        shard_buffer_mb=spec.get("buffer_mb", 256.0),
    )
    iterator = iter(dm.train_dataloader())
    start = time.perf_counter()
    next(iterator)
    first = time.perf_counter() - start
    audio, batches = 0.0, 0
    start = time.perf_counter()
    while time.perf_counter() - start < spec["seconds"] or batches < 2:
        batch = next(iterator)
        audio += batch.shape[0] * batch.shape[-1] / spec["sample_rate"]
        batches += 1
    elapsed = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KB -> MB (Linux)
    queue.put(
        {
            "row": spec["row"],
            "first_batch_s": first,
            "batches": batches,
            "audio_s_per_s": audio / elapsed,
            "peak_rss_mb": peak,
            "rss_before_mb": base,
        }
    )


def main_per_worker(argv: list[str]) -> dict:
    """``--per_worker``: audio seconds per second and peak memory of one loading process, by source."""
    import multiprocessing

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--per_worker", action="store_true")
    parser.add_argument("--ogg_dir", required=True, help="folder of Ogg Vorbis files (per-window decode)")
    parser.add_argument("--opus_dir", default=None, help="folder of Opus files (per-window decode)")
    parser.add_argument("--opus_cuts", default=None, help="instead of --opus_dir: its prepared cut manifest")
    parser.add_argument("--shar_dir", default=None, help="segment shards (prepare --shar_dir ... DIR/train)")
    parser.add_argument("--sample_rate", type=int, default=24000)
    parser.add_argument("--channels", type=int, default=1)
    parser.add_argument("--window", type=float, default=0.5, help="window seconds")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=20.0, help="timed seconds per row")
    parser.add_argument("--cache_mb", type=float, default=2000.0, help="decode_cache_mb of the cache row")
    parser.add_argument("--buffer_mb", type=float, default=256.0, help="shard_buffer_mb of the shard row")
    parser.add_argument("--out", default=str(REPO / "outputs" / "benchmarks" / "data_throughput_per_worker.json"))
    opts = parser.parse_args(argv)
    common = {"sample_rate": opts.sample_rate, "channels": opts.channels, "window": opts.window}
    common.update(batch=opts.batch, seconds=opts.seconds)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        sources = {"ogg": opts.ogg_dir, "opus": opts.opus_dir}
        cuts = {}
        for name, folder in sources.items():
            if folder is not None:
                paths = prepare_manifests(folder, Path(tmp) / name, 0.0, 0.0, num_workers=2)
                cuts[name] = str(paths["train"])
        if opts.opus_cuts is not None:
            cuts["opus"] = opts.opus_cuts
        specs = [{"row": "per-window decode, Ogg Vorbis", "train_cuts": cuts["ogg"]}]
        if "opus" in cuts:
            specs.append({"row": "per-window decode, Opus", "train_cuts": cuts["opus"]})
        specs.append({"row": f"decode cache ({opts.cache_mb:g} MB), Ogg Vorbis", "train_cuts": cuts["ogg"]})
        specs[-1]["cache_mb"] = opts.cache_mb
        if opts.shar_dir is not None:
            specs.append({"row": f"segment shards (buffer {opts.buffer_mb:g} MB)", "train_shar": opts.shar_dir})
            specs[-1]["buffer_mb"] = opts.buffer_mb
        context = multiprocessing.get_context("spawn")
        for spec in specs:
            queue = context.Queue()
            process = context.Process(target=_source_row, args=({**common, **spec}, queue))
            process.start()
            rows.append(queue.get())
            process.join()
            print(rows[-1], flush=True)
    reference = rows[0]["audio_s_per_s"]
    for row in rows:
        row["vs_ogg_per_window"] = row["audio_s_per_s"] / reference
    print(f"{'source':<40}{'audio s/s':>11}{'x Ogg':>8}{'peak RSS MB':>13}{'RSS before MB':>15}")
    for row in rows:
        print(
            f"{row['row']:<40}{row['audio_s_per_s']:>11.1f}{row['vs_ogg_per_window']:>8.1f}"
            f"{row['peak_rss_mb']:>13.0f}{row['rss_before_mb']:>15.0f}"
        )
    results = {"settings": {**common, "cpu_cores": os.cpu_count()}, "rows": rows}
    out = Path(opts.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"wrote {out}")
    return results


def main(argv: list[str] | None = None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--per_worker" in argv:
        return main_per_worker(argv)
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
        model = measure_step(cli.model, batch, opts.model_batches, opts.accelerator, opts.precision)
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
