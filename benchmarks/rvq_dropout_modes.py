"""Does a residual stage trained under quantizer dropout learn when it updates from every frame?
The EMA RVQ alone (no codec), SpectroStream small's quantizer settings, trained on the same stream of
latents with ``dropout_mode="mask_sum"`` (SpectroStream's official RVQ) and ``"mask_residual"`` (ours
before), compared at equal steps on held-out latents, per codebook count, in the same run.

    python benchmarks/rvq_dropout_modes.py [--steps 1500] [--eval_at 100 300 800 1500] [--seeds 0 1 2]
        [--out outputs/benchmarks/rvq_dropout_modes.json]

Latents: 64-d Gaussian frames with a decaying spectrum (standard deviation 1 / sqrt(1 + i / 4) along
a random orthogonal basis, like an encoder's few strong directions), 8 examples x 16 frames per step
(the small config's batch of 0.64 s at 25 Hz). Quantizer: 16 codebooks of 64 entries, decay 0.9,
k-means init (10 iterations), dead-code threshold 0.1, ``DiscreteLevelDropout`` levels 1, 2, 4, 8, 16
(experiments/spectrostream/small.yaml). Metric: mean squared error of the quantized latents on 4096
held-out frames, relative to the latents' variance, at 1, 2, 4, 8 and 16 codebooks. A quantizer
alone cannot show the encoder's side (the codec's quality); this isolates what the codebooks learn.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from codecplatform.quantizers.dropout import DiscreteLevelDropout
from codecplatform.quantizers.ema_residual import ResidualVectorQuantizer

DIM, N_Q, ENTRIES, COUNTS = 64, 16, 64, (1, 2, 4, 8, 16)


def latents(basis: torch.Tensor, batch: int, frames: int, generator: torch.Generator) -> torch.Tensor:
    """(batch, DIM, frames) Gaussian latents with a decaying spectrum along ``basis``."""
    scale = 1.0 / torch.sqrt(1.0 + torch.arange(DIM, dtype=torch.float32) / 4.0)
    white = torch.randn(batch, frames, DIM, generator=generator) * scale
    return (white @ basis.T).transpose(1, 2)


def run(seed: int, mode: str, steps: int, eval_at: list[int]) -> dict[int, dict[int, float]]:
    """{step: {count: relative MSE}} for one seed and mode."""
    torch.manual_seed(seed)
    data = torch.Generator().manual_seed(seed)
    basis = torch.linalg.qr(torch.randn(DIM, DIM, generator=data))[0]
    held_out = latents(basis, 256, 16, data)
    variance = held_out.var()
    rvq = ResidualVectorQuantizer(
        dimension=DIM,
        n_q=N_Q,
        codebook_size=ENTRIES,
        decay=0.9,
        kmeans_iters=10,
        threshold_ema_dead_code=0.1,
        dropout=DiscreteLevelDropout(levels=list(COUNTS)),
        dropout_mode=mode,
    )
    stream = torch.Generator().manual_seed(1000 + seed)  # the same batches and counts for both modes
    results = {}
    for step in range(1, steps + 1):
        rvq.train()
        rvq(latents(basis, 8, 16, stream), rvq.sample_n_q(8, generator=stream))
        if step in eval_at:
            rvq.eval()
            with torch.no_grad():
                results[step] = {
                    n: float((rvq.decode(rvq.encode(held_out, n)) - held_out).pow(2).mean() / variance) for n in COUNTS
                }
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--eval_at", type=int, nargs="+", default=[100, 300, 800, 1500])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", default="outputs/benchmarks/rvq_dropout_modes.json")
    args = parser.parse_args()
    if args.steps < 1 or any(not 1 <= s <= args.steps for s in args.eval_at):
        raise SystemExit(f"--steps must be >= 1 and every --eval_at in 1..{args.steps}")
    torch.set_num_threads(1)
    table = {}
    for mode in ("mask_sum", "mask_residual"):
        per_seed = [run(seed, mode, args.steps, args.eval_at) for seed in args.seeds]
        table[mode] = {
            step: {n: sum(r[step][n] for r in per_seed) / len(per_seed) for n in COUNTS} for step in args.eval_at
        }
    print(f"relative MSE on held-out latents, mean of seeds {args.seeds}")
    print("| step | dropout_mode | " + " | ".join(f"{n} cb" for n in COUNTS) + " |")
    print("|---|---|" + "---:|" * len(COUNTS))
    for step in args.eval_at:
        for mode in table:
            print(f"| {step} | {mode} | " + " | ".join(f"{table[mode][step][n]:.4f}" for n in COUNTS) + " |")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"args": vars(args), "relative_mse": table}, indent=1))


if __name__ == "__main__":
    main()
