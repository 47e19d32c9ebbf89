"""Training throughput of a full GAN step (generator + discriminators, all losses), in audio seconds
per second, for each family: fp32 vs bf16-mixed, eager vs ``torch.compile``.

    python benchmarks/train_throughput.py [--configs encodec/24khz_mono.yaml dac/44khz.yaml ...]
        [--batch 1] [--seconds 0.5] [--steps 2] [--precisions 32-true bf16-mixed] [--compile]
        [--accelerator auto] [--out outputs/benchmarks/train_throughput.json]

Each row builds the experiment's LightningModule as ``codecplatform fit`` does (the real config, no
data: one fixed random batch of ``--batch`` x ``--seconds`` repeated, so only the step is timed),
runs ``--steps`` + 1 training steps through a Lightning Trainer and reports the median step time
without the first (k-means init, allocation, compilation). Throughput = batch x seconds / step time.
``--compile`` adds rows with the codec's encoder and decoder compiled in place
(``nn.Module.compile()``; the discriminators and losses stay eager); compilation time is the first
step's. Peak memory: ``torch.cuda.max_memory_allocated`` on a GPU, the process's peak RSS on the CPU
(monotonic over the run: read it as an upper bound for that row).

On a GPU the script also switches on TF32 matmuls/convolutions (``torch.backends.*.allow_tf32``).
The step itself (codecplatform.lightning.gan_step) is what ``fit`` runs; on CPU the numbers
compare precisions and compile within one machine only.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import platform
import resource
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
EXPERIMENTS = REPO / "experiments"
DEFAULT_CONFIGS = ["encodec/24khz_mono.yaml", "dac/44khz.yaml", "muffin/75hz.yaml", "spectrostream/48khz_stereo.yaml"]


def _data_throughput() -> Any:
    """benchmarks/data_throughput.py as a module (its ``build`` and ``measure_model`` are reused)."""
    spec = importlib.util.spec_from_file_location("data_throughput", REPO / "benchmarks" / "data_throughput.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def peak_memory_gb(device: str) -> float:
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 1e9
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # kB -> GB


def measure(config: str, opts: argparse.Namespace, precision: str, compiled: bool, dt: Any) -> dict[str, Any]:
    data = [f"--data.init_args.train_cuts={opts.train_cuts}", "--data.init_args.val_cuts=null"]
    cli = dt.build(
        [str(EXPERIMENTS / config)], [*data, "--data.init_args.test_cuts=null", "--data.init_args.num_workers=0"]
    )
    module = cli.model
    codec = module.codec
    if compiled:
        codec.encoder.compile()
        codec.decoder.compile()
    samples = int(opts.seconds * codec.sample_rate) // codec.hop_length * codec.hop_length
    torch.manual_seed(0)
    batch = 0.1 * torch.randn(opts.batch, codec.channels, samples)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    accelerator = opts.accelerator if opts.accelerator != "auto" else ("gpu" if torch.cuda.is_available() else "cpu")
    result = dt.measure_model(cli, batch, opts.steps, accelerator, precision)
    audio = opts.batch * samples / codec.sample_rate
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
        "peak_memory_gb": peak_memory_gb(result["device"]),
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
    if torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    dt = _data_throughput()
    tmp = tempfile.TemporaryDirectory()
    root = Path(tmp.name)  # a tiny corpus: the data module must build, its batches are not used
    dt.write_corpus(root / "audio", 2, 1.0, 24000, 1, "wav")
    from datamodules.manifests import prepare_manifests

    manifests = prepare_manifests(root / "audio", root / "manifests", val_fraction=0.0, test_fraction=0.0)
    opts.train_cuts = str(manifests["train"])
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
                    row = measure(config, opts, precision, compiled, dt)
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
