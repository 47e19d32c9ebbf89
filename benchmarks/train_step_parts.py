"""Where a training step's time goes: the full GAN step of each config and its parts timed alone.

    python benchmarks/train_step_parts.py [--configs muffin/small.yaml quickstart.yaml] [--batch 8]
        [--seconds 0.5] [--repeats 3] [--threads 1] [--profile]

Per config (built as ``fit`` builds it: ``train_throughput.build_module``, one fixed Gaussian batch),
median over ``--repeats`` of:

- ``step``: the whole training step through a Lightning Trainer (``train_throughput.measure_step``);
- the generator: encoder, quantizer (with its stage hook, e.g. MUFFIN's band limit) and decoder
  forward, and the codec's forward + backward;
- each discriminator as the step uses it: its update (D(x), D(x_hat), backward into its weights) plus
  the generator's adversarial pass (D(x) without grad, D(x_hat), backward into x_hat only);
- each reconstruction loss, forward + backward into x_hat.

The parts are timed outside the step, so their sum only approximates ``step`` (optimizers, logging and
Lightning are the rest). ``--profile``: torch.profiler's top operators of one full step.
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_throughput import EXPERIMENTS, build_module, measure_step, synthetic_batch  # noqa: E402


def median_time(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def discriminator_pass(d: torch.nn.Module, gan_loss: torch.nn.Module, x: torch.Tensor, x_hat: torch.Tensor) -> None:
    """What GANStep.step runs of one discriminator: its update, then the generator's adversarial pass."""
    real, fake = d(x), d(x_hat.detach())
    gan_loss.discriminator_loss(real.logits, fake.logits)[0].backward()
    d.requires_grad_(False)
    try:
        with torch.no_grad():
            d(x)
        gan_loss.generator_loss(d(x_hat).logits).backward()
    finally:
        d.requires_grad_(True)


def parts(config: str, opts: argparse.Namespace) -> dict[str, float]:
    module, composed = build_module([EXPERIMENTS / config])
    codec, gan = module.codec, module.gan
    torch.manual_seed(0)
    x = synthetic_batch(composed, opts.batch, opts.seconds, codec.hop_length)
    measure_step(module, x, 0, "cpu", "32-true", warmup=1)  # k-means init, allocation
    times = {"step": measure_step(module, x, opts.repeats, "cpu", "32-true", warmup=0)["step_s"]}
    codec.train()
    with torch.no_grad():
        z = codec.encoder(x)
    times["encoder fwd"] = median_time(lambda: codec.encoder(x), opts.repeats)
    times["quantizer fwd"] = median_time(lambda: codec.quantizer(z), opts.repeats)
    times["decoder fwd"] = median_time(lambda: codec.decoder(z), opts.repeats)

    def codec_backward() -> None:
        out = codec(x)
        (out.x_hat.abs().mean() + sum(out.quantized.losses.values())).backward()

    times["codec fwd+bwd"] = median_time(codec_backward, opts.repeats)
    x_hat = (x + 0.01 * torch.randn_like(x)).requires_grad_()
    for d in gan.select_discriminator().discriminators:
        run = functools.partial(discriminator_pass, d, gan.gan_loss, x, x_hat)
        times[f"D {type(d).__name__}"] = median_time(run, opts.repeats)
    for name, loss in gan.reconstruction_losses.items():
        times[f"loss {name} fwd+bwd"] = median_time(lambda loss=loss: loss(x, x_hat).backward(), opts.repeats)
    if opts.profile:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU]) as prof:
            measure_step(module, x, 1, "cpu", "32-true", warmup=0)
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))
    return times


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", default=["muffin/small.yaml", "quickstart.yaml"])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=0.5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--profile", action="store_true")
    opts = parser.parse_args(argv)
    torch.set_num_threads(opts.threads)
    results = {}
    for config in opts.configs:
        load = os.getloadavg()[0]
        times = parts(config, opts)
        results[config] = times
        print(f"{config} (batch {opts.batch} x {opts.seconds} s, {opts.threads} thread(s), load {load:.1f})")
        for name, seconds in times.items():
            print(f"  {name:<40}{seconds:8.2f} s{100 * seconds / times['step']:6.0f} %")
    return results


if __name__ == "__main__":
    main()
