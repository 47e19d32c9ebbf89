"""Does a family's small config learn with many more batches? Variants of one config trained side by
side on one GPU for a fixed wall-clock budget, each evaluated at intervals at every codebook count.

    # on the development machine (lhotse): the short-run benchmark's split, decoded
    python benchmarks/long_run_gpu.py --prepare ../shared/data/music --audio AUDIO.pt [--config ...]
    # on the GPU machine (torch + Lightning; carry jsonargparse and its needs as wheels)
    python benchmarks/long_run_gpu.py --audio AUDIO.pt [--config experiments/spectrostream/small.yaml]
        [--extra_config X.yaml ...] [--variants base noD ...] [--train_seconds 400]
        [--eval_seconds 60 120 ...] [--window_seconds 5.12] [--threads 2] [--out DIR]

Made for the lent GPU machine, which has torch and Lightning but neither lhotse nor MLflow, so the
training reads audio decoded beforehand rather than the data module's manifests:

- ``--prepare DATA_DIR`` writes ``AUDIO.pt``: ``{"train"|"val"|"test": int16 tensor (C, T)}``, each
  split's recordings (``prepare_manifests`` with ``short_run_quality.py``'s split: validation 0.1,
  test 0.2, seed 0) resampled to the config's rate and concatenated.
- training batches are uniform random crops of ``train`` of the config's ``segment_seconds`` and
  ``batch_size`` (or the variant's), as the data module's training sampler.
- each variant (``VARIANTS``: config changes merged into the config's plain data after the
  ``--extra_config`` files, lists replaced whole; ``wide`` is SpectroStream's widths)
  runs in its own process (``--worker``) on the same device; ``max_batches`` is lifted and the run
  stops at the first batch after ``--train_seconds``.
- evaluation (with the generator EMA weights when the config keeps them): non-overlapping
  ``--window_seconds`` windows (at most 12) of ``test`` and of ``train`` (a gap between them is
  overfitting), encoded once with all codebooks and decoded with the first 1, 2, 4, ... and all of
  them, and with the quantizer bypassed (``n_q=0``: the autoencoder's own ceiling); metric:
  ``MelDistance`` (the evaluation's ``mel_distance``); codebook use: distinct codes per codebook on
  the test windows; training state: the means of the logged losses and of the discriminator's
  accuracy since the last evaluation.

Prints one table per variant (rows: evaluations; columns: codebook counts) and writes
``<out>/summary.json`` and each variant's codec weights ``<out>/<variant>.pt`` (``state_dict`` in
float16, only when under 15 MB: the device machine returns files of at most 16 MB).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# variant -> changes to the config's plain data (merge_config: mappings merged, lists replaced)
VARIANTS: dict[str, dict[str, Any]] = {
    "base": {},
    "noD": {"model": {"init_args": {"discriminator_schedule": {"init_args": {"start_step": 10**9}}}}},
    "b32": {"data": {"init_args": {"batch_size": 32}}},
    "wide": {
        "model": {
            "init_args": {
                "codec": {
                    "init_args": {
                        "encoder": {"init_args": {"base_depth": 32}},
                        "decoder": {"init_args": {"base_depth": 64}},
                    }
                }
            }
        }
    },
    "lr3e-4": {
        "model": {
            "init_args": {
                "generator_optimizer": {"init_args": {"lr": 3.0e-4}},
                "discriminator_optimizer": {"init_args": {"lr": 3.0e-4}},
            }
        }
    },
}
MAX_WINDOWS = 12
TRAIN_KEYS = (
    "train/d/accuracy",
    "train/d/loss",
    "train/d/real_score",
    "train/d/fake_score",
    "train/g/mel",
    "train/g/adv",
)


def windows(audio: torch.Tensor, sample_rate: int, seconds: float) -> torch.Tensor:
    """(C, T) int16 -> (W, C, window) float: non-overlapping windows, at most ``MAX_WINDOWS``."""
    size = int(seconds * sample_rate)
    count = min(MAX_WINDOWS, audio.shape[-1] // size)
    if count < 1:
        raise ValueError(f"audio of {audio.shape[-1]} samples is shorter than one {seconds} s window")
    x = audio[:, : count * size].float() / 32767.0
    return x.reshape(x.shape[0], count, size).transpose(0, 1).contiguous()


@torch.no_grad()
def evaluate(module: Any, sets: dict[str, torch.Tensor], counts: list[int]) -> dict[str, Any]:
    from codecplatform.metrics.reconstruction import MelDistance

    codec = module.codec
    was_training = module.training
    module.eval()
    module._use_ema_weights(True)
    out: dict[str, Any] = {}
    try:
        for name, x in sets.items():
            mel: dict[str, float] = {}
            encoded = codec.encode(x, n_q=codec.n_q)
            for k in counts:
                metric = MelDistance(codec.sample_rate).to(x.device)
                metric.update(codec.decode(dataclasses.replace(encoded, codes=encoded.codes[:, :k])).float(), x)
                mel[str(k)] = round(float(metric.compute()), 4)
            metric = MelDistance(codec.sample_rate).to(x.device)
            metric.update(codec(x, n_q=0).x_hat.float(), x)
            mel["latent"] = round(float(metric.compute()), 4)
            out[name] = mel
            if name == "test":
                codes = encoded.codes  # (W, n_q, T')
                out["distinct_codes"] = [int(torch.unique(codes[:, q]).numel()) for q in range(codes.shape[1])]
    finally:
        module._use_ema_weights(False)
        module.train(was_training)
    return out


def worker(args: argparse.Namespace) -> None:
    import lightning as L
    from lightning.pytorch import Callback, LightningModule

    from codecplatform.checkpoints.io import read_checkpoint
    from codecplatform.config import instantiate, merge_config

    torch.manual_seed(args.seed)
    config = merge_config(composed(args.config, args.extra_config), VARIANTS[args.worker])
    model_config = merge_config(config["model"], {"init_args": {"max_batches": None}})
    module = instantiate(model_config, LightningModule)
    data_args = config["data"]["init_args"]
    sample_rate, batch_size = int(data_args["sample_rate"]), int(data_args["batch_size"])
    segment = int(float(data_args["segment_seconds"]) * sample_rate)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    audio = read_checkpoint(args.audio, "pre-decoded audio", required={"train": torch.Tensor, "test": torch.Tensor})
    train = audio["train"].float() / 32767.0  # (C, T)
    sets = {split: windows(audio[split], sample_rate, args.window_seconds).to(device) for split in ("test", "train")}
    n_q = int(module.codec.n_q)
    counts = sorted({2**i for i in range(int(math.log2(n_q)) + 1)} | {n_q})  # 1, 2, 4, ... and all
    n_params = sum(p.numel() for p in module.codec.parameters())

    class Crops(torch.utils.data.IterableDataset):
        def __iter__(self):
            g = torch.Generator().manual_seed(args.seed)
            while True:
                starts = torch.randint(0, train.shape[-1] - segment, (batch_size,), generator=g)
                yield torch.stack([train[:, s : s + segment] for s in starts.tolist()])

    start = [0.0]  # set when training starts
    marks = sorted(args.eval_seconds)
    history: list[dict[str, Any]] = []

    class Budget(Callback):
        def __init__(self):
            self.sums: dict[str, float] = {}
            self.n: dict[str, int] = {}

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            for key in TRAIN_KEYS:
                if isinstance(outputs, dict) and key in outputs:
                    self.sums[key] = self.sums.get(key, 0.0) + float(outputs[key])
                    self.n[key] = self.n.get(key, 0) + 1
            elapsed = time.time() - start[0]
            done = elapsed >= args.train_seconds
            if done or (marks and elapsed >= marks[0]):
                while marks and elapsed >= marks[0]:
                    marks.pop(0)
                row = {"batch": int(pl_module.batch_counter), "seconds": round(elapsed, 1)}
                row["train_means"] = {k: round(self.sums[k] / self.n[k], 4) for k in self.sums}
                self.sums, self.n = {}, {}
                row.update(evaluate(pl_module, sets, counts))
                history.append(row)
                print(f"[{args.worker}] {json.dumps(row)}", flush=True)
            if done:
                trainer.should_stop = True

    trainer = L.Trainer(
        accelerator="gpu" if device.type == "cuda" else "cpu",
        devices=1,
        max_steps=-1,
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        callbacks=[Budget()],
    )
    untrained = evaluate(module.to(device), sets, counts)
    print(f"[{args.worker}] untrained {json.dumps(untrained)}", flush=True)
    loader = torch.utils.data.DataLoader(Crops(), batch_size=None, num_workers=0)
    start[0] = time.time()
    trainer.fit(module, train_dataloaders=loader)
    out = Path(args.out)
    # half precision, so that a small codec's weights fit the device machine's 16 MB per returned file
    state = {k: v.half() if v.is_floating_point() else v for k, v in module.codec.state_dict().items()}
    if 2 * n_params < 15e6:
        torch.save(state, out / f"{args.worker}.pt")
    result = {
        "variant": args.worker,
        "changes": VARIANTS[args.worker],
        "codec_parameters": n_params,
        "batch_size": batch_size,
        "segment_seconds": segment / sample_rate,
        "untrained": untrained,
        "history": history,
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
    }
    (out / f"{args.worker}.json").write_text(json.dumps(result, indent=1))


def table(result: dict[str, Any]) -> str:
    first = result["history"][0] if result["history"] else result["untrained"]
    columns = list(first["test"])
    lines = [
        f"{result['variant']} ({result['codec_parameters'] / 1e6:.2f} M codec parameters, "
        f"batch {result['batch_size']})",
        "| batch | s | "
        + " | ".join(f"test {c}" for c in columns)
        + " | train 1 / max / latent | D acc | distinct codes (min) |",
    ]
    rows = [{"batch": 0, "seconds": 0, **result["untrained"], "train_means": {}}] + result["history"]
    for row in rows:
        train = row["train"]
        last = columns[-2]
        acc = row["train_means"].get("train/d/accuracy")
        lines.append(
            f"| {row['batch']} | {row['seconds']} | "
            + " | ".join(f"{row['test'][c]:.3f}" for c in columns)
            + f" | {train['1']:.3f} / {train[last]:.3f} / {train['latent']:.3f}"
            + f" | {'-' if acc is None else f'{acc:.3f}'} | {min(row['distinct_codes'])} |"
        )
    return "\n".join(lines)


def prepare(data_dir: str, config: dict[str, Any], audio_path: str) -> None:
    """Decode the short-run benchmark's train/val/test split of ``data_dir`` into ``audio_path``."""
    import tempfile

    from datamodules.manifests import load_cuts, prepare_manifests

    data_args = config["data"]["init_args"]
    rate, channels = int(data_args["sample_rate"]), int(data_args["channels"])
    out: dict[str, torch.Tensor] = {}
    with tempfile.TemporaryDirectory() as tmp:
        manifests = prepare_manifests(
            data_dir, tmp, val_fraction=0.1, test_fraction=0.2, seed=0, min_sample_rate=rate, channels=channels
        )
        for split in ("train", "val", "test"):
            parts = []
            for cut in load_cuts(manifests[split]).resample(rate):
                audio = torch.from_numpy(cut.load_audio()).reshape(-1, cut.num_samples)  # (C, T)
                if audio.shape[0] != channels:  # more channels than the codec's: down-mix, as the data module
                    audio = audio.mean(0, keepdim=True).expand(channels, -1)
                parts.append(audio)
                print(f"{split}: {cut.id} {cut.duration:.1f} s")
            if parts:
                out[split] = (torch.cat(parts, -1).clamp(-1, 1) * 32767).round().to(torch.int16)
    for split in ("train", "test"):
        if split not in out:
            raise ValueError(f"{data_dir}: no {split} recordings at {rate} Hz, {channels} channel(s)")
    Path(audio_path).parent.mkdir(parents=True, exist_ok=True)
    torch.save(out, audio_path)
    print(f"wrote {audio_path}: " + ", ".join(f"{k} {v.shape[-1] / rate:.1f} s" for k, v in out.items()))


def composed(config_path: str, extra: list[str]) -> dict[str, Any]:
    from codecplatform.config import compose_config, merge_config

    config = compose_config(config_path)
    for item in extra:
        config = merge_config(config, compose_config(item))
    return config


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--audio", required=True)
    parser.add_argument("--config", default=str(REPO / "experiments" / "spectrostream" / "small.yaml"))
    parser.add_argument("--extra_config", nargs="*", default=[], help="configs merged after --config")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--train_seconds", type=float, default=400.0)
    parser.add_argument("--eval_seconds", type=float, nargs="*", default=[30, 60, 120, 200, 300])
    parser.add_argument("--window_seconds", type=float, default=5.12, help="evaluation window")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads per variant")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(REPO / "outputs" / "benchmarks" / "long_run_gpu"))
    parser.add_argument("--prepare", default=None, metavar="DATA_DIR", help="write --audio from this folder")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.prepare:
        prepare(args.prepare, composed(args.config, args.extra_config), args.audio)
        return
    Path(args.out).mkdir(parents=True, exist_ok=True)
    if args.worker:
        torch.set_num_threads(args.threads)
        worker(args)
        return
    base = [
        sys.executable,
        __file__,
        "--audio",
        args.audio,
        "--config",
        args.config,
        "--out",
        args.out,
        "--train_seconds",
        str(args.train_seconds),
        "--window_seconds",
        str(args.window_seconds),
        "--extra_config",
        *args.extra_config,
        "--threads",
        str(args.threads),
        "--seed",
        str(args.seed),
        "--eval_seconds",
        *map(str, args.eval_seconds),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    procs = {name: subprocess.Popen([*base, "--worker", name], env=env) for name in args.variants}
    codes = {name: proc.wait() for name, proc in procs.items()}
    results = []
    for name in args.variants:
        path = Path(args.out) / f"{name}.json"
        if codes[name] != 0 or not path.is_file():
            print(f"{name}: failed (exit {codes[name]})")
            continue
        results.append(json.loads(path.read_text()))
        path.unlink()  # folded into summary.json
        print("\n" + table(results[-1]))
    (Path(args.out) / "summary.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
