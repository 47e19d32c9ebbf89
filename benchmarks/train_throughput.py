"""Training throughput of a full GAN step (generator + discriminators, all losses), in audio seconds
per second, for each family: fp32 vs bf16-mixed, eager vs ``torch.compile``.

    python benchmarks/train_throughput.py [--configs encodec/24khz_mono.yaml dac/44khz.yaml ...]
        [--batch 1] [--seconds 0.5] [--steps 2] [--precisions 32-true bf16-mixed] [--compile]
        [--accelerator auto] [--out outputs/benchmarks/train_throughput.json]

Each row builds the experiment's LightningModule from its config (:func:`build_module`: the model
section as ``codecplatform fit`` instantiates it; no data module, so no lhotse), feeds one fixed
random batch of ``--batch`` x ``--seconds`` repeated, so only the step is timed, runs ``--steps`` + 1
training steps through a Lightning Trainer (:func:`measure_step`) and reports the median step time
without the first (k-means init, allocation, compilation). Throughput = batch x seconds / step time.
``--compile`` adds rows with the codec's encoder and decoder compiled in place
(``nn.Module.compile()``; the discriminators and losses stay eager); compilation time is the first
step's. Peak memory: ``torch.cuda.max_memory_allocated`` on a GPU (reset before the run), the
process's peak RSS on the CPU (monotonic over the run: read it as an upper bound for that row).

On a GPU the script also switches on TF32 matmuls/convolutions (``torch.backends.*.allow_tf32``).
The step itself (codecplatform.lightning.gan_step) is what ``fit`` runs; on CPU the numbers
compare precisions and compile within one machine only. benchmarks/gpu_suite.py reuses these parts.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from torch.utils.data import DataLoader, Dataset

REPO = Path(__file__).resolve().parents[1]
EXPERIMENTS = REPO / "experiments"
DEFAULT_CONFIGS = ["encodec/24khz_mono.yaml", "dac/44khz.yaml", "muffin/75hz.yaml", "spectrostream/48khz_stereo.yaml"]
if str(REPO) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(REPO))


def compose(configs: Sequence[str | Path | dict[str, Any]]) -> dict[str, Any]:
    """``configs`` merged in order into plain data, later wins: config files (each with its
    ``_base_`` chain) and mappings of changes (e.g. a stage checkpoint set to null)."""
    from codecplatform.config import compose_config, merge_config

    config: dict[str, Any] = {}
    for item in configs:
        config = merge_config(config, item if isinstance(item, dict) else compose_config(item))
    return config


def build_module(configs: Sequence[str | Path | dict[str, Any]]) -> tuple[LightningModule, dict[str, Any]]:
    """The LightningModule of ``configs`` (:func:`compose`), built from the model section as ``fit``
    builds it, without the data module (no lhotse, no manifests). -> (module, the composed config)."""
    from codecplatform.config import instantiate

    config = compose(configs)
    return instantiate(config["model"], LightningModule), config


def synthetic_batch(config: dict[str, Any], batch: int, seconds: float, hop: int = 1, seed: int = 0) -> torch.Tensor:
    """(batch, C, T) Gaussian noise of std 0.1 at the config's data rate and channels; T =
    ``seconds`` of samples rounded down to whole ``hop``s (a codec's frame)."""
    data = config["data"]["init_args"]
    samples = int(seconds * int(data["sample_rate"])) // hop * hop
    generator = torch.Generator().manual_seed(seed)
    return 0.1 * torch.randn(batch, int(data["channels"]), samples, generator=generator)


def compile_parts(module: torch.nn.Module, parts: Sequence[str], backend: str = "inductor") -> None:
    """``nn.Module.compile`` in place on each dotted attribute of ``module`` (``codec.encoder``; a
    ModuleList: each of its modules), so that calling the part runs the compiled forward."""
    for part in parts:
        target = module
        for name in part.split("."):
            if not hasattr(target, name):
                raise AttributeError(f"{type(module).__name__} has no part {part!r} to compile")
            target = getattr(target, name)
        for each in target if isinstance(target, torch.nn.ModuleList) else [target]:
            each.compile(backend=backend)


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


def setup_cuda() -> None:
    """TF32 matmuls and convolutions, cuDNN autotuning (when a GPU is there): how training runs."""
    if torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True


def peak_memory_gb(device: str) -> float:
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 1e9
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # kB -> GB


def measure_step(
    module: LightningModule,
    batch: torch.Tensor,
    steps: int,
    accelerator: str,
    precision: str,
    warmup: int = 1,
    strategy: Any = "auto",
) -> dict[str, Any]:
    """Median training-step time of ``module`` on ``batch`` (B, C, T) over ``steps`` steps after
    ``warmup`` untimed ones (k-means init, allocation, autotuning, compilation), through a Lightning
    Trainer; ``steps`` 0: only the warm-up (``step_s`` None). The module may be measured again (its
    batch counter goes on). Peak memory over the whole run (CUDA: reset at its start)."""
    module.max_batches = int(module.batch_counter) + warmup + steps
    timer = _StepTimer()
    trainer = Trainer(
        accelerator=accelerator,
        devices=1,
        strategy=strategy,
        precision=precision,
        max_epochs=1,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        use_distributed_sampler=False,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[timer],
    )
    if accelerator in ("gpu", "cuda"):
        torch.cuda.reset_peak_memory_stats()
    trainer.fit(module, DataLoader(_SameBatch(batch, warmup + steps), batch_size=None))
    device = str(trainer.strategy.root_device)
    if len(timer.times) != warmup + steps:
        raise RuntimeError(f"{len(timer.times)} training steps ran, {warmup + steps} were asked for")
    return {
        "step_s": statistics.median(timer.times[warmup:]) if steps else None,
        "steps_timed": steps,
        "first_step_s": timer.times[0],
        "warmup_s": sum(timer.times[:warmup]),
        "device": device,
        "precision": precision,
        "peak_memory_gb": peak_memory_gb(device),
    }


def measure(config: str, opts: argparse.Namespace, precision: str, compiled: bool) -> dict[str, Any]:
    module, composed = build_module([EXPERIMENTS / config])
    codec = module.codec
    if compiled:
        compile_parts(module, ["codec.encoder", "codec.decoder"])
    torch.manual_seed(0)
    batch = synthetic_batch(composed, opts.batch, opts.seconds, codec.hop_length)
    accelerator = opts.accelerator if opts.accelerator != "auto" else ("gpu" if torch.cuda.is_available() else "cpu")
    result = measure_step(module, batch, opts.steps, accelerator, precision)
    audio = opts.batch * batch.shape[-1] / codec.sample_rate
    return {
        "config": config,
        "precision": precision,
        "compile": compiled,
        "batch": opts.batch,
        "audio_seconds_per_step": audio,
        "step_s": result["step_s"],
        "first_step_s": result["first_step_s"],
        "audio_seconds_per_second": audio / result["step_s"],
        "device": result["device"],
        "peak_memory_gb": result["peak_memory_gb"],
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", default=DEFAULT_CONFIGS)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=0.5)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--precisions", nargs="+", default=["32-true", "bf16-mixed"])
    parser.add_argument("--compile", action="store_true", help="add rows with encoder/decoder torch.compile'd")
    parser.add_argument("--accelerator", default="auto")
    parser.add_argument("--threads", type=int, default=None, help="torch threads on CPU (default: torch's)")
    parser.add_argument("--out", default=str(REPO / "outputs" / "benchmarks" / "train_throughput.json"))
    opts = parser.parse_args(argv)
    if opts.threads:
        torch.set_num_threads(opts.threads)
    setup_cuda()
    load = os.getloadavg()
    print(
        f"{platform.machine()}, {os.cpu_count()} cores, load {load[0]:.2f}, torch threads {torch.get_num_threads()}, "
        f"GPU: {torch.cuda.get_device_name() if torch.cuda.is_available() else 'none'}"
    )
    print(f"{'config':<34}{'precision':>12}{'compile':>9}{'step s':>9}{'first s':>9}{'audio s/s':>11}{'peak GB':>9}")
    rows = []
    for config in opts.configs:
        for compiled in [False, True] if opts.compile else [False]:
            for precision in opts.precisions:
                try:
                    row = measure(config, opts, precision, compiled)
                except Exception as error:  # noqa: BLE001  (a row that cannot run is reported, the rest go on)
                    row = {"config": config, "precision": precision, "compile": compiled, "error": repr(error)[:300]}
                    print(f"{config:<34}{precision:>12}{str(compiled):>9}  failed: {row['error']}", file=sys.stderr)
                    rows.append(row)
                    continue
                rows.append(row)
                print(
                    f"{config:<34}{precision:>12}{str(compiled):>9}{row['step_s']:>9.2f}{row['first_step_s']:>9.2f}"
                    f"{row['audio_seconds_per_second']:>11.3f}{row['peak_memory_gb']:>9.2f}",
                    flush=True,
                )
    results = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": {
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        },
        "load_average_start": load,
        "load_average_end": os.getloadavg(),
        "batch": opts.batch,
        "seconds": opts.seconds,
        "steps": opts.steps,
        "rows": rows,
    }
    out = Path(opts.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"wrote {out}")
    return results


if __name__ == "__main__":
    main()
