"""Compressed file size vs nominal bitrate, CLI encode/decode time, and chunked vs whole coding.

    python benchmarks/bitstream_size.py [--configs experiments/encodec/24khz_mono.yaml experiments/dac/44khz.yaml]
                                        [--seconds 10] [--chunk_seconds 5] [--threads 2]
                                        [--out outputs/benchmarks/bitstream_size.json]

For each config: a codec with random weights (EMA codebooks initialized by one k-means training
pass on noise, so codes are spread) saved as a checkpoint; a ``--seconds`` test signal (harmonic
tone with vibrato plus noise, at the codec's rate and channels); ``codecplatform encode`` at every
bandwidth of the model (all codebook counts when it lists none): file bytes vs nominal bytes
(bitrate x duration / 8) and the overhead. At the highest bandwidth also ``codecplatform decode``;
times are wall-clock of ``cli_main`` (model loading and checksum included) and, as medians of
``--repeats`` interleaved runs, of the coding alone, chunked and on the whole signal.
Chunked coding (``--chunk_seconds``) is compared with ``Codec.encode``/``decode`` on the whole
signal: fraction of identical codes and the largest absolute difference of the decoded audio.
Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from codecplatform.bitstream import model_checksum, read_compressed
from codecplatform.cli import cli_main
from codecplatform.config import compose_config
from codecplatform.inference import decode_file, encode_file
from codecplatform.models.codec import Codec

REPO = Path(__file__).resolve().parents[1]


def test_signal(sample_rate: int, channels: int, seconds: float) -> np.ndarray:
    """(T, C) float32: a 5-harmonic tone with vibrato, different per channel, plus noise."""
    rng = np.random.default_rng(0)
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    phase = 2 * np.pi * (220 * t + 3 * np.sin(2 * np.pi * 0.5 * t))
    tone = sum(np.sin(k * phase) / k for k in range(1, 6))
    out = [0.25 * tone * (1 - 0.3 * c) + 0.02 * rng.standard_normal(t.size) for c in range(channels)]
    return np.stack(out, axis=1).astype(np.float32)


def make_checkpoint(config_path: Path, path: Path) -> Codec:
    codec_config = compose_config(config_path)["model"]["init_args"]["codec"]
    torch.manual_seed(0)
    codec = Codec.from_config(codec_config).train()
    with torch.no_grad():
        codec(0.1 * torch.randn(1, codec.channels, codec.sample_rate), n_q=codec.quantizer.n_q)
    codec.eval()
    state = {f"codec.{k}": v for k, v in codec.state_dict().items()}
    torch.save({"codec_config": codec_config, "state_dict": state}, path)
    return codec


def quiet_cli(args: list[str]) -> tuple[int, float]:
    """(exit status, wall seconds) of cli_main with its printing captured."""
    began = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        status = cli_main(args)
    return status, time.perf_counter() - began


def measure(config_path: Path, seconds: float, chunk_seconds: float, folder: Path, repeats: int) -> dict:
    checkpoint = folder / f"{config_path.stem}.ckpt"
    codec = make_checkpoint(config_path, checkpoint)
    audio = test_signal(codec.sample_rate, codec.channels, seconds)
    wav = folder / f"{config_path.stem}.wav"
    sf.write(wav, audio, codec.sample_rate, subtype="FLOAT")
    common = ["--chunk_seconds", str(chunk_seconds)]
    rows = []
    for bandwidth, n_q in codec.operating_points().items():
        out = folder / f"{config_path.stem}_{n_q}.cpc"
        args = ["encode", str(wav), str(out), "--checkpoint", str(checkpoint), "--n_q", str(n_q), *common]
        status, wall = quiet_cli(args)
        assert status == 0, f"encode failed for {config_path} n_q {n_q}"
        header = read_compressed(out).header
        size = out.stat().st_size
        nominal = header.nominal_bitrate * seconds / 8
        rows.append(
            {
                "bandwidth_kbps": round(bandwidth, 4),
                "n_q": n_q,
                "file_bytes": size,
                "nominal_bytes": nominal,
                "header_bytes": size - header.payload_length,
                "overhead_bytes": size - nominal,
                "overhead_percent": 100 * (size - nominal) / nominal,
                "actual_kbps": size * 8 / seconds / 1000,
                "encode_cli_seconds": wall,
            }
        )
    n_q = rows[-1]["n_q"]
    cpc = folder / f"{config_path.stem}_{n_q}.cpc"
    decoded = folder / f"{config_path.stem}_decoded.wav"
    status, decode_wall = quiet_cli(["decode", str(cpc), str(decoded), "--subtype", "FLOAT", *common])
    assert status == 0, f"decode failed for {config_path}"

    # coding alone (chunked, as the CLI; no model loading) and on the whole signal, interleaved
    x = torch.from_numpy(audio.T.copy())[None]
    compressed = read_compressed(cpc)
    times: dict[str, list[float]] = {"chunked_encode": [], "chunked_decode": [], "whole_encode": [], "whole_decode": []}
    for _ in range(repeats):
        began = time.perf_counter()
        encode_file(codec, wav, folder / "timing.cpc", n_q, "timing", compressed.header.model_checksum, chunk_seconds)
        times["chunked_encode"].append(time.perf_counter() - began)
        began = time.perf_counter()
        decode_file(codec, compressed, folder / "timing.wav", chunk_seconds, subtype="FLOAT")
        times["chunked_decode"].append(time.perf_counter() - began)
        began = time.perf_counter()
        encoded = codec.encode(x, n_q=n_q)
        times["whole_encode"].append(time.perf_counter() - began)
        began = time.perf_counter()
        x_hat = codec.decode(encoded)[0].numpy().T
        times["whole_decode"].append(time.perf_counter() - began)
    began = time.perf_counter()
    checksum = model_checksum(codec)
    checksum_seconds = time.perf_counter() - began
    assert checksum == read_compressed(cpc).header.model_checksum
    chunked_codes = read_compressed(cpc).codes
    out, _ = sf.read(decoded, dtype="float32", always_2d=True)
    same = chunked_codes == encoded.codes[0].numpy()
    differing_frames = np.flatnonzero(~same.all(axis=0))
    diff = np.abs(out - x_hat)
    return {
        "config": str(config_path.relative_to(REPO)),
        "sample_rate": codec.sample_rate,
        "channels": codec.channels,
        "frame_rate": codec.frame_rate,
        "seconds": seconds,
        "rows": rows,
        "decode_cli_seconds": decode_wall,
        **{f"{key}_seconds": statistics.median(values) for key, values in times.items()},
        "repeats": repeats,
        "checksum_seconds": checksum_seconds,
        "chunk_seconds": chunk_seconds,
        "chunked_identical_code_fraction": float(same.mean()),
        "chunked_differing_frames": differing_frames.tolist()[:20],
        "chunked_max_abs_diff": float(diff.max()),
        "chunked_diff_snr_db": float(10 * math.log10(np.sum(x_hat**2) / max(np.sum((out - x_hat) ** 2), 1e-30))),
        "reference_rms": float(np.sqrt(np.mean(x_hat**2))),
    }


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--configs",
        nargs="+",
        default=[str(REPO / "experiments" / name) for name in ("encodec/24khz_mono.yaml", "dac/44khz.yaml")],
    )
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--chunk_seconds", type=float, default=5.0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=2, help="timings are medians over this many runs")
    parser.add_argument("--out", default=str(REPO / "outputs" / "benchmarks" / "bitstream_size.json"))
    opts = parser.parse_args(argv)
    torch.set_num_threads(opts.threads)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for config in opts.configs:
            results.append(measure(Path(config).resolve(), opts.seconds, opts.chunk_seconds, Path(tmp), opts.repeats))
    for result in results:
        print(f"\n{result['config']}: {result['seconds']:g} s, {result['sample_rate']} Hz, {result['channels']} ch")
        print(f"{'kbps':>8} {'n_q':>4} {'file B':>9} {'nominal B':>10} {'header B':>9} {'over %':>7} {'encode s':>9}")
        for row in result["rows"]:
            print(
                f"{row['bandwidth_kbps']:8.3f} {row['n_q']:4d} {row['file_bytes']:9,d} {row['nominal_bytes']:10,.0f} "
                f"{row['header_bytes']:9d} {row['overhead_percent']:7.2f} {row['encode_cli_seconds']:9.2f}"
            )
        print(
            f"CLI decode {result['decode_cli_seconds']:.2f} s (model loading included); coding alone, median of "
            f"{result['repeats']}: chunked encode {result['chunked_encode_seconds']:.2f} s, decode "
            f"{result['chunked_decode_seconds']:.2f} s; whole-signal encode {result['whole_encode_seconds']:.2f} s, "
            f"decode {result['whole_decode_seconds']:.2f} s; model checksum {result['checksum_seconds']:.2f} s"
        )
        print(
            f"chunked ({result['chunk_seconds']:g} s) vs whole: "
            f"{100 * result['chunked_identical_code_fraction']:.3f} % "
            f"identical codes, differing frames {result['chunked_differing_frames']}, max |diff| "
            f"{result['chunked_max_abs_diff']:.2e} (reference RMS {result['reference_rms']:.3f}), "
            f"SNR {result['chunked_diff_snr_db']:.1f} dB"
        )
    out = Path(opts.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"\nwrote {out}")
    return results


if __name__ == "__main__":
    main()
