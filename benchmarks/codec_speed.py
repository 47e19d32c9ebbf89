"""Encode/decode speed of a codec config on CPU, whole-file and streaming.

    python benchmarks/codec_speed.py [--config experiments/encodec/24khz_mono.yaml] [--bandwidth 6]
                                      [--seconds 10] [--threads 1] [--out outputs/benchmarks/codec_speed.json]

Prints a table and writes JSON. Real-time factors (audio seconds per second of compute, > 1 is
faster than real time) are noisy on shared machines, so each row also gives its time relative to
a reference measured in the same run: a fixed float32 matrix-multiply workload (``vs_reference``),
and for the streaming rows, the whole-file time of the same operation (``vs_whole``). The EnCodec
paper's Table 5 (one MacBook Pro 2019 thread, 24 kHz, 6 kbps) reports RTF 9.8 encode / 10.4 decode,
printed for orientation only (another machine). Weights are random: speed does not depend on them.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from codecplatform.config import compose_config
from codecplatform.models.codec import Codec
from codecplatform.nn.streaming import streaming

REPO = Path(__file__).resolve().parents[1]


def timed(fn, repeats: int) -> float:
    """Median wall time of ``fn()`` over ``repeats`` runs after one warm-up."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def reference_workload() -> None:
    a = torch.randn(512, 512)
    for _ in range(20):
        a = torch.tanh(a @ a / 512)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(REPO / "experiments" / "encodec" / "24khz_mono.yaml"))
    parser.add_argument("--bandwidth", type=float, default=6.0, help="kbps")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--chunk_frames", type=int, default=1, help="latent frames per streaming chunk")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=str(REPO / "outputs" / "benchmarks" / "codec_speed.json"))
    opts = parser.parse_args(argv)

    torch.set_num_threads(opts.threads)
    torch.manual_seed(0)
    codec_config = compose_config(opts.config)["model"]["init_args"]["codec"]
    codec = Codec.from_config(codec_config).eval()
    x = 0.1 * torch.randn(1, codec.channels, int(opts.seconds * codec.sample_rate))
    with torch.no_grad():
        codec.train()
        codec(x[..., : codec.sample_rate])  # k-means init, so codebooks are not all zero
        codec.eval()
        encoded = codec.encode(x, bandwidth=opts.bandwidth)
    n_q = encoded.codes.shape[1]
    chunk = opts.chunk_frames * codec.hop_length

    def stream_encode() -> None:
        with torch.no_grad(), streaming(codec.encoder):
            for piece in x.split(chunk, dim=-1):
                codec.quantizer.encode(codec.encoder(piece), n_q)

    def stream_decode() -> None:
        with torch.no_grad(), streaming(codec.decoder):
            for piece in encoded.codes.split(opts.chunk_frames, dim=-1):
                codec.decoder(codec.quantizer.decode(piece))

    reference = timed(reference_workload, opts.repeats)
    rows = {
        "encode": timed(lambda: codec.encode(x, bandwidth=opts.bandwidth), opts.repeats),
        "decode": timed(lambda: codec.decode(encoded), opts.repeats),
    }
    causal = all(getattr(m, "causal", True) for m in codec.modules() if hasattr(m, "causal"))
    if causal:
        rows["stream_encode"] = timed(stream_encode, opts.repeats)
        rows["stream_decode"] = timed(stream_decode, opts.repeats)

    results = {
        "config": str(opts.config),
        "bandwidth_kbps": opts.bandwidth,
        "n_q": n_q,
        "seconds": opts.seconds,
        "threads": opts.threads,
        "chunk_samples": chunk,
        "reference_seconds": reference,
        "rows": {},
    }
    print(
        f"{Path(opts.config).name}: {opts.seconds:g} s audio, {opts.bandwidth:g} kbps ({n_q} codebooks), "
        f"{opts.threads} thread(s); reference workload {reference * 1000:.1f} ms"
    )
    print(f"{'operation':<16}{'seconds':>10}{'RTF':>10}{'vs_reference':>14}{'vs_whole':>10}")
    for name, seconds in rows.items():
        whole = rows.get(name.replace("stream_", "")) if name.startswith("stream_") else None
        row = {
            "seconds": seconds,
            "rtf": opts.seconds / seconds,
            "vs_reference": seconds / reference,
            "vs_whole": seconds / whole if whole else None,
        }
        results["rows"][name] = row
        vs_whole = f"{row['vs_whole']:.2f}" if whole else "-"
        print(f"{name:<16}{seconds:>10.3f}{row['rtf']:>10.2f}{row['vs_reference']:>14.2f}{vs_whole:>10}")
    print("EnCodec paper, Table 5 (other machine): RTF encode 9.8, decode 10.4")
    out = Path(opts.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"wrote {out}")
    return results


if __name__ == "__main__":
    main()
