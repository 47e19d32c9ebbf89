"""``codecplatform export``: a codec checkpoint -> ONNX encoder and decoder, checked with onnxruntime.

    codecplatform export --format onnx --checkpoint c.ckpt --out_dir d [--n_q K | --bandwidth KBPS]

writes ``d/encoder.onnx`` (audio (B, C, T) float32 -> codes (B, K, ceil(T / hop)) int64: encoder and
the residual quantizer's nearest-codeword search in one graph) and ``d/decoder.onnx`` (codes
(B, K, T') int64 -> audio (B, C, T' * hop) float32), both with dynamic batch and length axes (audio
lengths: multiples of the hop, as the command-line coder pads them), and
``d/export.json`` (sample rate, hop, K, the graphs' input and output names, the segment layout, the
check's numbers). The command then runs both graphs with onnxruntime on audio of two lengths (not
the tracing length, so the dynamic axis is exercised) and prints the largest differences from
PyTorch: codes (fraction equal) and audio (max abs difference, decoding the same codes). Exit status
1 when they disagree beyond ``--tolerance``.

A codec that normalizes its input (``normalize: true``: the quickstart's, EnCodec 48 kHz) carries
the scale with the codes, as the ``.cpc`` format does: its encoder graph outputs ``codes`` and
``scale`` (B, 1, 1) (the RMS of the channel mean + 1e-8; the graph encodes audio / scale), its
decoder graph takes ``codes`` and ``scale`` and multiplies the audio back. A segmented codec (EnCodec
48 kHz: 1 s segments with 1 % overlap) is exported per segment: the graphs code one segment (at most
``segment_samples``, with its own scale) and the caller segments: cut segments of
``segment_samples`` every ``segment_stride`` samples (export.json) and overlap-add the decoded
segments with linear cross-fades (:func:`codecplatform.models.chunking.linear_overlap_add`), as
``Codec.encode``/``decode`` do. The graphs take multiples of the hop: pad the last, shorter segment
(PyTorch codes it unpadded, so that segment's scale and codes can differ a little).

Weight norm is folded before export (:meth:`Codec.prepare_for_inference`). Exported: EnCodec (24 and
48 kHz, the quickstart's) and DAC. Refused with a one-line error (exit status 2): codecs with an FFT
inside a graph, which the TorchScript ONNX exporter cannot write (no ``aten::fft_rfft``): MUFFIN
(band-limited residual stages) and SpectroStream (STFT front end). MuCodec is not an
encoder/quantizer/decoder codec. See docs/training.md, "Exporting to ONNX".
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

USAGE_ERROR, FAILURE = 2, 1


class EncoderGraph(nn.Module):
    """audio (B, C, T) -> codes (B, K, T'), and for a normalizing codec also its scale (B, 1, 1):
    what ``encoder.onnx`` computes (the scale travels with the codes, as in the ``.cpc`` format)."""

    def __init__(self, codec: Any, n_q: int) -> None:
        super().__init__()
        self.codec, self.n_q = codec, n_q

    def forward(self, x: Tensor) -> Tensor | tuple[Tensor, Tensor]:
        x, scale = self.codec.normalize_input(x)  # scale: RMS of the channel mean + 1e-8, or None
        codes = self.codec.quantizer.encode(self.codec.encoder(x), self.n_q)
        return codes if scale is None else (codes, scale)


class DecoderGraph(nn.Module):
    """codes (B, K, T') [, scale (B, 1, 1) of a normalizing codec] -> audio (B, C, T' * hop): what
    ``decoder.onnx`` computes."""

    def __init__(self, codec: Any) -> None:
        super().__init__()
        self.codec = codec

    def forward(self, codes: Tensor, scale: Tensor | None = None) -> Tensor:
        audio = self.codec.decoder(self.codec.quantizer.decode(codes))
        return audio if scale is None else audio * scale


def graph_names(codec: Any) -> dict[str, list[str]]:
    """Input and output names of the two graphs: a normalizing codec's carry ``scale`` as well."""
    extra = ["scale"] if codec.normalize else []
    return {
        "encoder_inputs": ["audio"],
        "encoder_outputs": ["codes", *extra],
        "decoder_inputs": ["codes", *extra],
        "decoder_outputs": ["audio"],
    }


def segment_frames(codec: Any) -> int | None:
    """Code frames of one full segment of a segmented codec (the longest input its graphs take);
    None for a codec that codes the whole signal."""
    return None if codec.segment_length is None else codec.segment_length // codec.hop_length


def unexportable(codec: Any) -> str | None:
    """Why ``codec`` cannot be exported, in one line; None when it can."""
    from codecplatform.generators.spectrostream import STFTAnalysis, STFTSynthesis
    from codecplatform.quantizers.band_limit import BandLimit

    if codec.segment_length is not None and codec.segment_length % codec.hop_length:
        return f"segments of {codec.segment_length} samples are not a multiple of the hop ({codec.hop_length})"
    modules = list(codec.modules())
    if any(isinstance(m, BandLimit) for m in modules):
        return (
            "MUFFIN is not exported: its band-limited quantizer stages take an FFT (torch.fft.rfft), "
            "which the ONNX exporter cannot write"
        )
    if any(isinstance(m, (STFTAnalysis, STFTSynthesis)) for m in modules):
        return (
            "SpectroStream is not exported: its STFT front and back ends take an FFT (torch.fft.rfft) "
            "of frames unfolded from a dynamic length, which the ONNX exporter cannot write"
        )
    return None


def export_onnx(codec: Any, out_dir: str | Path, n_q: int, frames: int = 50, opset: int = 18) -> dict[str, Path]:
    """Export ``codec`` (a prepared :class:`~codecplatform.models.codec.Codec`) as two ONNX graphs
    traced on ``frames`` code frames; returns their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    hop = codec.hop_length
    if segment_frames(codec) is not None:
        frames = min(frames, segment_frames(codec))  # the graphs code one segment
    x = 0.1 * torch.randn(1, codec.channels, frames * hop)
    encoded = codec.encode(x, n_q=n_q)  # codes (1, K, frames), scale (1, 1, 1) or None
    names = graph_names(codec)
    decoder_args = (encoded.codes,) if encoded.scale is None else (encoded.codes, encoded.scale)
    axes = {
        "audio": {0: "batch", 2: "samples"},
        "codes": {0: "batch", 2: "frames"},
        "scale": {0: "batch"},
    }
    paths = {"encoder": out_dir / "encoder.onnx", "decoder": out_dir / "decoder.onnx"}
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's notes on Python ints taken from shapes
        # The TorchScript-based exporter (dynamo=False): torch.export cannot yet trace the LSTM and
        # the padding arithmetic with a symbolic length. Lengths a multiple of the hop keep every
        # layer's padding rule independent of the length, so the traced graph holds for any length.
        for part, module, args in (
            ("encoder", EncoderGraph(codec, n_q), (x,)),
            ("decoder", DecoderGraph(codec), decoder_args),
        ):
            inputs, outputs = names[f"{part}_inputs"], names[f"{part}_outputs"]
            torch.onnx.export(
                module,
                args,
                str(paths[part]),
                input_names=inputs,
                output_names=outputs,
                dynamic_axes={name: axes[name] for name in inputs + outputs},
                opset_version=opset,
                dynamo=False,
            )
    return paths


def check_onnx(
    codec: Any, paths: dict[str, Path], n_q: int, frame_counts: tuple[int, ...] = (37, 81)
) -> dict[str, Any]:
    """Run the exported graphs with onnxruntime (CPU) on audio of ``frame_counts`` frames and
    compare with PyTorch: fraction of equal codes, max abs audio difference (same codes in)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    encoder = ort.InferenceSession(str(paths["encoder"]), options, providers=["CPUExecutionProvider"])
    decoder = ort.InferenceSession(str(paths["decoder"]), options, providers=["CPUExecutionProvider"])
    generator = torch.Generator().manual_seed(0)
    report: dict[str, Any] = {"lengths": [], "codes_equal": [], "audio_max_abs_diff": [], "audio_peak": []}
    # a segmented codec encodes up to one stride as a single segment (longer: a second one begins)
    longest = None if codec.segment_stride is None else codec.segment_stride // codec.hop_length
    for frames in frame_counts:
        frames = frames if longest is None else min(frames, longest)
        x = 0.1 * torch.randn(1, codec.channels, frames * codec.hop_length, generator=generator)
        with torch.inference_mode():
            encoded = codec.encode(x, n_q=n_q)  # one segment: scale (1, 1, 1) or None
            audio = codec.decode(encoded)
        onnx_out = encoder.run(None, {"audio": x.numpy()})
        feed = {"codes": encoded.codes.numpy()}
        if encoded.scale is not None:
            feed["scale"] = encoded.scale.numpy()
            report.setdefault("scale_max_rel_diff", []).append(
                float((torch.from_numpy(onnx_out[1]) / encoded.scale - 1).abs().max())
            )
        onnx_audio = decoder.run(None, feed)[0]
        report["lengths"].append(x.shape[-1])
        report["codes_equal"].append(float((torch.from_numpy(onnx_out[0]) == encoded.codes).float().mean()))
        report["audio_max_abs_diff"].append(float((torch.from_numpy(onnx_audio) - audio).abs().max()))
        report["audio_peak"].append(float(audio.abs().max()))
    return report


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="codecplatform export", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--format", default="onnx", choices=["onnx"], help="export format (default onnx)")
    parser.add_argument("--checkpoint", required=True, help="codec checkpoint (fit or import-checkpoint)")
    parser.add_argument("--out_dir", required=True, help="folder for encoder.onnx, decoder.onnx, export.json")
    rate = parser.add_mutually_exclusive_group()
    rate.add_argument("--bandwidth", type=float, help="kbps: the codebook count of the encoder graph")
    rate.add_argument("--n_q", type=int, help="codebooks of the encoder graph (default: all)")
    parser.add_argument("--opset", type=int, default=18)
    parser.add_argument("--tolerance", type=float, default=1e-3, help="max abs audio difference accepted")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``codecplatform export``; returns the exit status."""
    args = _parser().parse_args(argv)
    from codecplatform.models.base import AudioCodec
    from codecplatform.models.codec import Codec

    checkpoint = Path(args.checkpoint)
    if not checkpoint.is_file():
        print(f"codecplatform export: checkpoint not found: {checkpoint}", file=sys.stderr)
        return USAGE_ERROR
    try:
        codec = AudioCodec.from_checkpoint(checkpoint)
        if not isinstance(codec, Codec):
            raise ValueError(f"only encoder/quantizer/decoder codecs export, not {type(codec).__name__}")
        reason = unexportable(codec)
        if reason is not None:
            raise ValueError(reason)
        n_q = codec.resolve_n_q(args.bandwidth, args.n_q)
    except ValueError as error:
        print(f"codecplatform export: {error}", file=sys.stderr)
        return USAGE_ERROR
    codec.prepare_for_inference()
    began = time.perf_counter()
    try:
        paths = export_onnx(codec, args.out_dir, n_q, opset=args.opset)
    except torch.onnx.OnnxExporterError as error:  # a family not yet listed in unexportable()
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        print(f"codecplatform export: the ONNX exporter refused this codec: {first}", file=sys.stderr)
        return USAGE_ERROR
    exported = time.perf_counter() - began
    report = check_onnx(codec, paths, n_q)
    ok = (
        min(report["codes_equal"]) >= 0.999
        and max(report["audio_max_abs_diff"]) <= args.tolerance
        and max(report.get("scale_max_rel_diff", [0.0])) <= 1e-5
    )
    info = {
        "checkpoint": str(checkpoint.resolve()),
        "sample_rate": codec.sample_rate,
        "channels": codec.channels,
        "hop_length": codec.hop_length,
        "n_q": n_q,
        "codebook_sizes": codec.codebook_sizes[:n_q],
        "graphs": graph_names(codec),
        "normalize": bool(codec.normalize),
        "segment_samples": codec.segment_length,
        "segment_stride": codec.segment_stride,
        "opset": args.opset,
        "export_seconds": exported,
        "check": report,
        "passed": ok,
    }
    (Path(args.out_dir) / "export.json").write_text(json.dumps(info, indent=2))
    for path in paths.values():
        print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB)")
    for i, length in enumerate(report["lengths"]):
        print(
            f"onnxruntime vs PyTorch, {length} samples: codes equal {100 * report['codes_equal'][i]:.2f}%, "
            f"audio max abs difference {report['audio_max_abs_diff'][i]:.3g} (peak {report['audio_peak'][i]:.3g})"
        )
    if not ok:
        print(f"codecplatform export: ONNX and PyTorch disagree (tolerance {args.tolerance})", file=sys.stderr)
        return FAILURE
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
