"""Train a small code LM for a few minutes on the codes of real music, for the entropy-coding benchmark.

    python benchmarks/code_lm_quick.py --codec_checkpoint outputs/<exp>/<run>/checkpoints/best-460.ckpt \\
        --out outputs/benchmarks/code_lm_quick.ckpt --held_out hr3-crossroads [--audio_dir ../shared/data/music]
        [--minutes 3] [--dim 128 --num_layers 2 --num_heads 4 --ffn_dim 256 --context_seconds 1]

The full recipe is ``codecplatform fit --config experiments/code_lm/encodec_24khz.yaml
--model.init_args.codec_checkpoint=...`` (CodeLMModule, lhotse data, validation, checkpoints); this
script is its cheap stand-in for a benchmark figure on a laptop-class CPU: every track of
``--audio_dir`` except ``--held_out`` (a file stem, required: no track is held out by default) is
encoded once with the frozen codec (mono mean, resampled to the codec's rate), then the LM trains
on random windows of those codes for ``--minutes`` of wall time with CodeLMModule's recipe (a
codebook count drawn per batch among the codec's operating points, a random position offset per
example, Adam). Prints the cross-entropy on the held-out
track's codes (bits per symbol and the predicted kbps) and saves the LM as
``CodeLM.from_checkpoint`` reads it (:func:`codecplatform.lightning.code_lm.save_lm`).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from entropy_coding import AUDIO_SUFFIXES, DEFAULT_AUDIO, load_audio  # noqa: E402

from codecplatform.lightning.code_lm import save_lm  # noqa: E402
from codecplatform.models.base import AudioCodec  # noqa: E402
from codecplatform.models.code_lm import CodeLM, context_frames  # noqa: E402


@torch.no_grad()
def track_codes(codec: AudioCodec, path: Path, chunk_seconds: float = 20.0) -> torch.Tensor:
    """(n_q, T') codes of a whole track, encoded in ``chunk_seconds`` pieces (bounded memory)."""
    x = load_audio(path, codec, None)
    step = int(chunk_seconds * codec.sample_rate) // codec.samples_per_frame * codec.samples_per_frame
    return torch.cat(
        [codec.encode(x[None, :, s : s + step], n_q=codec.n_q).codes[0] for s in range(0, x.shape[-1], step)], -1
    )


def cross_entropy(lm: CodeLM, codes: torch.Tensor, offset: int | torch.Tensor = 0) -> torch.Tensor:
    """Mean nats per symbol of ``lm`` on codes (B, K, T)."""
    return F.cross_entropy(lm(codes, offset=offset).flatten(0, 2), codes.flatten())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--codec_checkpoint", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--audio_dir", default=str(DEFAULT_AUDIO))
    parser.add_argument(
        "--held_out", required=True, help="track (file stem in --audio_dir) kept out of training and measured on"
    )
    parser.add_argument("--minutes", type=float, default=3.0, help="wall-clock training time")
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--num_heads", type=int, default=4)
    parser.add_argument("--num_layers", type=int, default=2)
    parser.add_argument("--ffn_dim", type=int, default=256)
    parser.add_argument("--context_seconds", type=float, default=1.0)
    parser.add_argument("--window_seconds", type=float, default=1.0, help="training sequence length")
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--max_position_offset", type=int, default=10000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    opts = parser.parse_args(argv)

    torch.set_num_threads(opts.threads)
    torch.manual_seed(opts.seed)
    codec = AudioCodec.from_checkpoint(opts.codec_checkpoint).eval()
    files = sorted(p for p in Path(opts.audio_dir).rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES)
    train = [track_codes(codec, p) for p in files if p.stem != opts.held_out]
    held = [track_codes(codec, p) for p in files if p.stem == opts.held_out]
    if not train or not held:
        raise SystemExit(f"need training tracks and the held-out track {opts.held_out!r} in {opts.audio_dir}")
    counts = sorted(set(codec.operating_points().values()))
    lm = CodeLM(
        n_q=codec.n_q,
        card=max(codec.codebook_sizes),
        dim=opts.dim,
        num_heads=opts.num_heads,
        num_layers=opts.num_layers,
        ffn_dim=opts.ffn_dim,
        past_context=context_frames(opts.context_seconds, codec.frame_rate),
        frame_rate=float(codec.frame_rate),
    )
    optimizer = torch.optim.Adam(lm.parameters(), lr=opts.lr)
    window = max(2, round(opts.window_seconds * codec.frame_rate))
    print(
        f"{sum(c.shape[-1] for c in train)} training frames from {len(train)} track(s), {held[0].shape[-1]} held out; "
        f"LM {sum(p.numel() for p in lm.parameters()):,} parameters; codebook counts {counts}"
    )

    def held_out_bits(k: int) -> float:
        lm.eval()
        with torch.no_grad():
            codes = held[0][None, :k, : 20 * window]
            ce = cross_entropy(lm, codes).item()
        lm.train()
        return ce / math.log(2)

    began, step = time.perf_counter(), 0
    lm.train()
    while time.perf_counter() - began < 60 * opts.minutes:
        k = counts[step % len(counts)]
        batch = []
        for _ in range(opts.batch_size):
            track = train[int(torch.randint(len(train), (1,)))]
            start = int(torch.randint(track.shape[-1] - window, (1,)))
            batch.append(track[:k, start : start + window])
        codes = torch.stack(batch)  # (B,k,window)
        offsets = torch.randint(opts.max_position_offset + 1, (opts.batch_size,))
        loss = cross_entropy(lm, codes, offsets)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(lm.parameters(), 1.0)
        optimizer.step()
        step += 1
        if step % 50 == 0:
            print(
                f"step {step} ({time.perf_counter() - began:.0f} s): train {loss.item() / math.log(2):.3f} bits/symbol"
            )
    lm.eval()
    for k in counts:
        bits = held_out_bits(k)
        nominal = codec.bitrate(k)
        predicted = bits * k * codec.frame_rate / 1000
        print(
            f"held out, {k} codebooks: {bits:.3f} bits/symbol of {math.log2(max(codec.codebook_sizes)):.0f}: "
            f"{predicted:.2f} kbps predicted vs {nominal:g} nominal ({100 * (1 - predicted / nominal):.1f}% saving)"
        )
    out = Path(opts.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_lm(lm, out)
    print(f"{step} steps in {time.perf_counter() - began:.0f} s; wrote {out}")


if __name__ == "__main__":
    main()
