"""Entropy coding with the code LM: nominal vs entropy-coded bitrate, and coding speed with and without it.

    python benchmarks/entropy_coding.py --codec_checkpoint encodec24.ckpt --lm_checkpoint lm.ckpt
        [--audio_dir ../shared/data/music] [--bandwidth 6 | --n_q 8] [--seconds 10] [--max_files 4]
        [--segment_seconds S] [--mode batch|step] [--threads 1] [--out outputs/benchmarks/entropy_coding.json]

For each audio file (first ``--seconds``, converted to the codec's rate and channels): codec encode,
entropy encode (``codecplatform.entropy.coding.entropy_encode``), entropy decode (checked lossless),
codec decode. Prints a table and writes JSON: per file and in total the nominal kbps (the codec's
``bitrate(K)``), the entropy-coded kbps (payload bytes x 8 / duration), the saving in percent, and
real-time factors (audio seconds per second of compute; > 1 is faster than real time) of encode and
decode without and with entropy coding (the LM in float64 on the CPU, the pure-Python range coder).
The EnCodec paper (24 kHz, 6 kbps, one MacBook thread) reports 6 -> 4.1 kbps (Table 1) and RTF
9.8 / 10.4 without, 1.6 / 1.6 with entropy coding (Table 5): printed for orientation only.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import soundfile as sf
import torch

from codecplatform.dsp.spectral import resample
from codecplatform.entropy.coding import coding_lm, entropy_decode, entropy_encode
from codecplatform.models.base import AudioCodec
from codecplatform.models.code_lm import CodeLM

REPO = Path(__file__).resolve().parents[1]
DEFAULT_AUDIO = REPO.parent / "shared" / "data" / "music"
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3", ".aiff", ".aif")


def load_audio(path: Path, codec: AudioCodec, seconds: float | None) -> torch.Tensor:
    """(C, T) float32 at the codec's sample rate and channel count (down-mix / repeat)."""
    info = sf.info(str(path))
    frames = -1 if seconds is None else int(seconds * info.samplerate)
    audio, rate = sf.read(str(path), frames=frames, dtype="float32", always_2d=True)
    x = torch.from_numpy(audio.T.copy())
    if x.shape[0] != codec.channels:
        x = x.mean(dim=0, keepdim=True).expand(codec.channels, -1).contiguous()
    if rate != codec.sample_rate:
        x = resample(x, rate, codec.sample_rate)
    return x


def timed(fn, *args, **kwargs):
    """(fn(*args, **kwargs), wall seconds)."""
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - start


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--codec_checkpoint", required=True)
    parser.add_argument("--lm_checkpoint", required=True)
    parser.add_argument("--audio_dir", default=str(DEFAULT_AUDIO))
    parser.add_argument("--bandwidth", type=float, default=None, help="kbps (default: all codebooks the LM has)")
    parser.add_argument("--n_q", type=int, default=None)
    parser.add_argument("--seconds", type=float, default=10.0, help="first seconds of each file")
    parser.add_argument("--max_files", type=int, default=4)
    parser.add_argument("--segment_seconds", type=float, default=None, help="independently coded segments")
    parser.add_argument("--mode", choices=["batch", "step"], default="batch", help="entropy encoder's LM evaluation")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=str(REPO / "outputs" / "benchmarks" / "entropy_coding.json"))
    opts = parser.parse_args(argv)

    torch.set_num_threads(opts.threads)
    codec = AudioCodec.from_checkpoint(opts.codec_checkpoint).eval()
    lm = coding_lm(CodeLM.from_checkpoint(opts.lm_checkpoint))
    if opts.bandwidth is not None or opts.n_q is not None:
        n_q = codec.resolve_n_q(opts.bandwidth, opts.n_q)
    else:
        n_q = min(codec.n_q, lm.n_q)
    if n_q > lm.n_q:
        raise SystemExit(f"the LM has {lm.n_q} codebooks, {n_q} asked")
    files = sorted(p for p in Path(opts.audio_dir).rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES)[: opts.max_files]
    if not files:
        raise SystemExit(f"no audio files in {opts.audio_dir}")
    segment_frames = None if opts.segment_seconds is None else max(1, round(opts.segment_seconds * codec.frame_rate))
    nominal_kbps = codec.bitrate(n_q)

    rows = {}
    for path in files:
        x = load_audio(path, codec, opts.seconds)
        duration = x.shape[-1] / codec.sample_rate
        with torch.no_grad():
            encoded, t_encode = timed(codec.encode, x[None], n_q=n_q)
            codes = encoded.codes[0]
            payload, t_ec_encode = timed(entropy_encode, codes, lm, codec.frame_rate, segment_frames, opts.mode)
            decoded_codes, t_ec_decode = timed(
                entropy_decode, payload, lm, n_q, codes.shape[-1], segment_frames, codec.frame_rate
            )
            _, t_decode = timed(codec.decode, encoded)
        nominal_bytes = math.ceil(codes.shape[-1] * sum(math.log2(s) for s in codec.codebook_sizes[:n_q]) / 8)
        rows[path.name] = {
            "seconds": duration,
            "frames": codes.shape[-1],
            "nominal_bytes": nominal_bytes,
            "entropy_coded_bytes": len(payload),
            "nominal_kbps": nominal_kbps,
            "entropy_coded_kbps": 8 * len(payload) / duration / 1000,
            "saving_percent": 100 * (1 - len(payload) / nominal_bytes),
            "lossless": bool(torch.equal(decoded_codes, codes)),
            "time": {
                "encode": t_encode,
                "entropy_encode": t_ec_encode,
                "decode": t_decode,
                "entropy_decode": t_ec_decode,
            },
        }
    total_seconds = sum(r["seconds"] for r in rows.values())
    times = {
        k: sum(r["time"][k] for r in rows.values()) for k in ("encode", "entropy_encode", "decode", "entropy_decode")
    }
    nominal_bytes = sum(r["nominal_bytes"] for r in rows.values())
    coded_bytes = sum(r["entropy_coded_bytes"] for r in rows.values())
    total = {
        "seconds": total_seconds,
        "nominal_kbps": nominal_kbps,
        "entropy_coded_kbps": 8 * coded_bytes / total_seconds / 1000,
        "saving_percent": 100 * (1 - coded_bytes / nominal_bytes),
        "lossless": all(r["lossless"] for r in rows.values()),
        "rtf": {
            "encode": total_seconds / times["encode"],
            "encode_ec": total_seconds / (times["encode"] + times["entropy_encode"]),
            "decode": total_seconds / times["decode"],
            "decode_ec": total_seconds / (times["decode"] + times["entropy_decode"]),
        },
        "entropy_coder_us_per_symbol": {
            "encode": 1e6 * times["entropy_encode"] / max(1, n_q * sum(r["frames"] for r in rows.values())),
            "decode": 1e6 * times["entropy_decode"] / max(1, n_q * sum(r["frames"] for r in rows.values())),
        },
    }
    for row in rows.values():
        t = row["time"]
        row["rtf"] = {
            "encode": row["seconds"] / t["encode"],
            "encode_ec": row["seconds"] / (t["encode"] + t["entropy_encode"]),
            "decode": row["seconds"] / t["decode"],
            "decode_ec": row["seconds"] / (t["decode"] + t["entropy_decode"]),
        }
    results = {
        "codec_checkpoint": str(opts.codec_checkpoint),
        "lm_checkpoint": str(opts.lm_checkpoint),
        "audio_dir": str(opts.audio_dir),
        "n_q": n_q,
        "frame_rate": codec.frame_rate,
        "segment_frames": segment_frames,
        "mode": opts.mode,
        "threads": opts.threads,
        "files": rows,
        "total": total,
    }

    print(
        f"{Path(opts.codec_checkpoint).name} + {Path(opts.lm_checkpoint).name}: {n_q} codebooks, "
        f"{nominal_kbps:g} kbps nominal, {len(rows)} file(s), {total_seconds:.1f} s, {opts.threads} thread(s)"
    )
    print(f"{'':<43}{'':<18}{'real-time factor':^32}")
    print(
        f"{'file':<28}{'sec':>6}{'nominal':>9}{'EC kbps':>9}{'saving%':>9}"
        f"{'enc':>8}{'enc+EC':>8}{'dec':>8}{'dec+EC':>8}"
    )
    for name, r in [*rows.items(), ("TOTAL", {**total, "rtf": total["rtf"]})]:
        rtf = r["rtf"]
        print(
            f"{name[:27]:<28}{r['seconds']:>6.1f}{r['nominal_kbps']:>9.2f}{r['entropy_coded_kbps']:>9.2f}"
            f"{r['saving_percent']:>9.1f}{rtf['encode']:>8.2f}{rtf['encode_ec']:>8.2f}{rtf['decode']:>8.2f}{rtf['decode_ec']:>8.2f}"
        )
    print(
        f"entropy coder + LM: {total['entropy_coder_us_per_symbol']['encode']:.1f} us/symbol encode, "
        f"{total['entropy_coder_us_per_symbol']['decode']:.1f} us/symbol decode; lossless: {total['lossless']}"
    )
    print(
        "EnCodec paper (other machine, 24 kHz 6 kbps): 6 -> 4.1 kbps (Table 1); RTF 9.8/10.4, with EC 1.6/1.6 (Table 5)"
    )
    out = Path(opts.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"wrote {out}")
    return results


if __name__ == "__main__":
    main()
