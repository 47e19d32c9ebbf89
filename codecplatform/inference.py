"""``codecplatform encode`` / ``decode``: audio files <-> compressed ``.cpc`` files, chunk by chunk.

    codecplatform encode in.wav out.cpc --checkpoint model.ckpt [--bandwidth 6 | --n_q 8] [--device cuda]
    codecplatform decode out.cpc out.wav [--checkpoint model.ckpt] [--device cuda]

The file format is :mod:`codecplatform.bitstream`. ``encode`` reads any sound file soundfile
reads, maps its channels like the training data (mono is repeated; more channels than the model's
are averaged to mono or the first ones kept; anything else is an error) and resamples it to the
model's rate. ``decode`` writes the model's rate and channels. Without ``--checkpoint``, decode uses
the checkpoint path recorded in the file when it exists; either way the checkpoint's weights must
have the checksum in the file. A failing command writes nothing: outputs go to a temporary file
next to the destination, renamed at the end and deleted on error.

Memory is bounded by the chunk size, not the file length: audio is read, resampled, encoded,
decoded and written ``--chunk_seconds`` at a time (aligned to the hop length); only the codes,
about a thousand times smaller than the audio, are held whole. How chunks are joined depends on
what the codec can do, so that chunked coding equals whole-signal coding as far as possible:

* segmented codecs (``segment_seconds``, EnCodec 48 kHz): the codec's own segments are the chunks.
  Segments are coded independently anyway, and decoded segments are overlap-added incrementally
  with the codec's triangular weights: the result equals ``Codec.encode``/``decode`` on the whole.
* streamable codecs (causal convolutions, EnCodec 24 kHz): the encoder and decoder run in
  streaming mode (:mod:`codecplatform.nn.streaming`), carrying their state across chunks; equal
  to whole-signal coding except the last frame, whose missing samples are zeros here (the whole
  signal pads them by reflection inside each convolution).
* other codecs (DAC): each chunk is coded with ``--context_seconds`` of neighbouring audio (or
  frames) on both sides, whose frames (or samples) are dropped; equal to whole-signal coding once
  the context covers the networks' receptive field.

Files no longer than one chunk are coded whole with ``Codec.encode``/``Codec.decode``. Resampling
is chunked the same way (with enough input context for the sinc kernel), so it equals resampling
the whole file. Codecs that normalize without segments get their scale from a first pass over the
file.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from codecplatform.bitstream import (
    BitstreamError,
    CompressedAudio,
    Header,
    atomic_output,
    check_model,
    model_checksum,
    read_compressed,
    write_compressed,
)
from codecplatform.dsp.spectral import resample
from codecplatform.models.codec import Codec, overlap_weights
from codecplatform.nn.streaming import StreamingModule, streaming
from codecplatform.types import EncodedAudio

DEFAULT_CHUNK_SECONDS = 5.0
DEFAULT_CONTEXT_SECONDS = 0.5
USAGE_ERROR = 2
FAILURE = 1
_PROBE_FRAMES = 64  # streaming probes: longer than any layer's start-up need (reflect padding: kernel size)
_INTEGER_SUBTYPES = ("PCM_S8", "PCM_U8", "PCM_16", "PCM_24", "PCM_32")


# ------------------------------------------------------------------------------------ reading audio
class AudioReader:
    """Random access to a sound file as (channels, n) float32 at ``sample_rate``.

    ``read(start, stop)`` returns model-rate samples ``[start, stop)`` of the mapped and resampled
    file, reading only that span of the file plus the resampling kernel's context: equal to
    resampling the whole file and slicing it (torchaudio's sinc resampler, as
    :func:`codecplatform.dsp.spectral.resample`). ``length`` is ``ceil(frames * sample_rate / rate)``.
    """

    def __init__(self, path: str | Path, sample_rate: int, channels: int):
        from datamodules.dataset import map_channels

        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"audio file not found: {self.path}")
        try:
            self._file = sf.SoundFile(str(self.path))
        except (sf.LibsndfileError, RuntimeError) as error:
            raise ValueError(f"cannot read audio file {self.path}: {error}") from error
        self.source_rate = self._file.samplerate
        self.source_channels = self._file.channels
        self.source_frames = self._file.frames
        if self.source_frames < 1:
            self._file.close()
            raise ValueError(f"{self.path} has no audio samples")
        self.sample_rate = sample_rate
        self.channels = channels
        self._map = lambda audio: map_channels(audio, channels, str(self.path))
        try:
            self._map(np.zeros((self.source_channels, 1), np.float32))  # fails now for impossible mappings
        except ValueError:
            self._file.close()
            raise
        g = math.gcd(self.source_rate, sample_rate)
        self._orig, self._new = self.source_rate // g, sample_rate // g
        self.length = math.ceil(self.source_frames * self._new / self._orig)
        # sinc kernel half-width in input samples (torchaudio: lowpass_filter_width 6, rolloff 0.99),
        # plus one input period, rounded up to whole periods of the rate ratio
        width = math.ceil(6 * self._orig / (0.99 * min(self._orig, self._new))) + 2 * self._orig
        self._context = math.ceil(width / self._orig) * self._orig

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> AudioReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _read_source(self, start: int, stop: int) -> np.ndarray:
        self._file.seek(start)
        audio = self._file.read(stop - start, dtype="float32", always_2d=True)  # (n, C_in)
        return self._map(audio.T)  # (C, n)

    def read(self, start: int, stop: int) -> Tensor:
        """Model-rate samples [start, stop) -> (channels, stop - start) float32."""
        if not 0 <= start <= stop <= self.length:
            raise ValueError(f"cannot read samples {start}..{stop} of {self.path} ({self.length} at the model rate)")
        if self._orig == self._new:
            return torch.from_numpy(np.ascontiguousarray(self._read_source(start, stop)))
        period = start // self._new  # input and output samples align every `_orig` / `_new` samples
        first = max(0, period * self._orig - self._context)
        last = min(self.source_frames, math.ceil(stop * self._orig / self._new) + self._context)
        audio = torch.from_numpy(np.ascontiguousarray(self._read_source(first, last)))
        out = resample(audio, self.source_rate, self.sample_rate)  # starts at output sample first*new/orig
        offset = start - first // self._orig * self._new
        return out[:, offset : offset + stop - start].contiguous()


# -------------------------------------------------------------------------------------- helpers
def streams_exactly(module: nn.Module, probe: Tensor, expected: int) -> bool:
    """True when every StreamingModule inside ``module`` can stream (there is at least one) and
    streaming ``probe`` (B, C, T) in two halves yields ``expected`` outputs along time, i.e. the
    stream holds nothing back at its end (a causal decoder with ``trim_right_ratio < 1`` would; a
    reflect-padded convolution waits for ``kernel_size`` inputs before its first output, so the
    probe must be at least that long)."""
    parts = [m for m in module.modules() if isinstance(m, StreamingModule)]
    if not parts:
        return False
    try:
        for part in parts:
            part.check_streamable()
    except RuntimeError:
        return False
    half = probe.shape[-1] // 2
    with torch.no_grad(), streaming(module):
        out = torch.cat([module(probe[..., :half]), module(probe[..., half:])], dim=-1)
    return out.shape[-1] == expected


def _chunks(total: int, size: int) -> Iterator[tuple[int, int]]:
    """[start, stop) of consecutive chunks of ``size`` covering ``total``."""
    for start in range(0, total, size):
        yield start, min(total, start + size)


def _global_scale(codec: Codec, reader: AudioReader, chunk: int) -> Tensor:
    """The (1, 1, 1) input scale ``Codec`` computes on the whole signal, from a pass over chunks:
    RMS over time of the channel mean, + 1e-8."""
    total = 0.0
    for start, stop in _chunks(reader.length, chunk):
        mono = reader.read(start, stop).double().mean(dim=0)
        total += float(mono.pow(2).sum())
    return torch.tensor(math.sqrt(total / reader.length) + 1e-8, dtype=torch.float32).view(1, 1, 1)


# ---------------------------------------------------------------------------------------- encode
@torch.no_grad()
def encode_audio(
    codec: Codec,
    reader: AudioReader,
    n_q: int,
    chunk_samples: int,
    context_frames: int,
    device: torch.device | str = "cpu",
) -> EncodedAudio:
    """Encode the whole of ``reader`` chunk by chunk -> EncodedAudio(codes (1, n_q, T') on CPU,
    scale (1, S, 1) or None, length) as ``Codec.encode`` gives on the whole signal (see the module
    docstring for how chunks join). ``chunk_samples`` must be a multiple of ``codec.hop_length``."""
    hop, length = codec.hop_length, reader.length
    if chunk_samples < hop or chunk_samples % hop:
        raise ValueError(f"chunk_samples must be a positive multiple of the hop {hop}, got {chunk_samples}")
    read = lambda start, stop: reader.read(start, stop)[None].to(device)  # noqa: E731  (1, C, n)
    if codec.segment_length is not None:
        codes, scales = [], []
        for offset, size in codec.segments(length):
            x, scale = codec.normalize_input(read(offset, offset + size))
            codes.append(codec.quantizer.encode(codec.encoder(x), n_q).cpu())  # (1, K, ceil(size / hop))
            if scale is not None:
                scales.append(scale.cpu())
        return EncodedAudio(torch.cat(codes, dim=-1), torch.cat(scales, dim=1) if scales else None, length)
    if length <= chunk_samples:
        encoded = codec.encode(read(0, length), n_q=n_q)
        scale = None if encoded.scale is None else encoded.scale.cpu()
        return EncodedAudio(encoded.codes.cpu(), scale, length)

    scale = _global_scale(codec, reader, chunk_samples).to(device) if codec.normalize else None
    prepare = (lambda x: x) if scale is None else (lambda x: x / scale)  # noqa: E731
    n_frames = math.ceil(length / hop)
    probe = min(n_frames, _PROBE_FRAMES)
    codes = []
    if streams_exactly(codec.encoder, torch.zeros(1, codec.channels, probe * hop, device=device), probe):
        with streaming(codec.encoder):
            for start, stop in _chunks(length, chunk_samples):
                x = prepare(read(start, stop))
                if stop == length:
                    x = F.pad(x, (0, -length % hop))  # complete the last frame with zeros
                z = codec.encoder(x)
                if z.shape[-1]:
                    codes.append(codec.quantizer.encode(z, n_q).cpu())
    else:
        chunk_frames = chunk_samples // hop
        for f0, f1 in _chunks(n_frames, chunk_frames):
            a, b = max(0, f0 - context_frames), min(n_frames, f1 + context_frames)
            z = codec.encoder(prepare(read(a * hop, min(length, b * hop))))  # (1, D, b - a)
            codes.append(codec.quantizer.encode(z[..., f0 - a : f1 - a], n_q).cpu())
    codes = torch.cat(codes, dim=-1)
    if codes.shape[-1] != n_frames:
        raise RuntimeError(f"chunked encoding gave {codes.shape[-1]} frames, expected {n_frames}")
    return EncodedAudio(codes, None if scale is None else scale.cpu(), length)


# ---------------------------------------------------------------------------------------- decode
@torch.no_grad()
def decode_blocks(
    codec: Codec,
    encoded: EncodedAudio,
    chunk_frames: int,
    context_frames: int,
    device: torch.device | str = "cpu",
) -> Iterator[Tensor]:
    """Decode EncodedAudio (codes (1, K, T')) chunk by chunk: yields consecutive (C, n) CPU blocks
    that join into ``Codec.decode(encoded)[0]`` (see the module docstring)."""
    codes, length, hop = encoded.codes, encoded.length, codec.hop_length
    n_frames = codes.shape[-1]
    scales = None if encoded.scale is None else encoded.scale.to(device)
    synthesize = lambda c: codec.decoder(codec.quantizer.decode(c.to(device)))  # noqa: E731  (1, C, frames * hop)

    if codec.segment_length is not None:
        segments = codec.segments(length)
        frames = [math.ceil(size / hop) for _, size in segments]
        if sum(frames) != n_frames:
            raise ValueError(f"codes have {n_frames} frames, {len(segments)} segment(s) need {sum(frames)}")
        stride = codec.segment_stride
        weight, out, weights, position, f = None, None, None, 0, 0  # out/weights start at `position`
        for s, ((offset, _), count) in enumerate(zip(segments, frames)):
            y = synthesize(codes[..., f : f + count])[0]  # (C, count * hop)
            f += count
            if scales is not None:
                y = y * scales[0, s]
            if weight is None:
                weight = overlap_weights(y.shape[-1], y)
                out, weights = y.new_zeros(y.shape[0], 0), y.new_zeros(0)
            if y.shape[-1] > weight.shape[-1]:
                raise ValueError(f"segment {s} decodes to {y.shape[-1]} samples, more than the first one")
            end = offset + y.shape[-1]
            grow = end - position - out.shape[-1]
            if grow > 0:
                out, weights = F.pad(out, (0, grow)), F.pad(weights, (0, grow))
            lo = offset - position
            out[:, lo : lo + y.shape[-1]] += weight[: y.shape[-1]] * y
            weights[lo : lo + y.shape[-1]] += weight[: y.shape[-1]]
            final = min(length, offset + stride if s + 1 < len(segments) else end)
            if final > position:
                n = final - position
                yield (out[:, :n] / weights[:n]).cpu()
                out, weights, position = out[:, n:], weights[n:], final
        return

    if n_frames <= chunk_frames:
        yield codec.decode(EncodedAudio(codes.to(device), scales, length))[0].cpu()
        return
    emitted = 0
    probe = torch.zeros(1, codes.shape[1], min(n_frames, _PROBE_FRAMES), dtype=torch.long, device=device)
    if streams_exactly(codec.decoder, codec.quantizer.decode(probe), probe.shape[-1] * hop):
        with streaming(codec.decoder):
            for f0, f1 in _chunks(n_frames, chunk_frames):
                y = synthesize(codes[..., f0:f1])[0]
                y = y if scales is None else y * scales[0]
                n = min(y.shape[-1], length - emitted)
                emitted += n
                yield y[:, :n].cpu()
    else:
        for f0, f1 in _chunks(n_frames, chunk_frames):
            a, b = max(0, f0 - context_frames), min(n_frames, f1 + context_frames)
            y = synthesize(codes[..., a:b])[0, :, (f0 - a) * hop : (f1 - a) * hop]
            y = y if scales is None else y * scales[0]
            n = min(y.shape[-1], length - emitted)
            emitted += n
            yield y[:, :n].cpu()
    if emitted != length:
        raise RuntimeError(f"chunked decoding gave {emitted} samples, expected {length}")


# ------------------------------------------------------------------------------------------ files
def _chunk_samples(codec: Codec, seconds: float) -> int:
    return max(1, round(seconds * codec.sample_rate / codec.hop_length)) * codec.hop_length


def _context_frames(codec: Codec, seconds: float) -> int:
    return math.ceil(seconds * codec.frame_rate)


def available_bandwidths(codec: Codec) -> dict[float, int]:
    """kbps -> codebook count: the codec's ``bandwidths``, or the bitrate of every count 1..n_q."""
    if codec.bandwidths:
        return {bw: codec.n_q_for_bandwidth(bw) for bw in codec.bandwidths}
    return {codec.bitrate(n): n for n in range(1, codec.quantizer.n_q + 1)}


def choose_n_q(codec: Codec, bandwidth: float | None, n_q: int | None) -> int:
    """Codebook count for ``--bandwidth`` (one of :func:`available_bandwidths`, within 1 %) or
    ``--n_q`` (one of the counts behind them); default all codebooks. ValueError lists the choices."""
    choices = available_bandwidths(codec)
    listed = ", ".join(f"{bw:.3g}" for bw in choices)
    if bandwidth is not None:
        for bw, count in choices.items():
            if abs(bandwidth - bw) <= 0.01 * bw:
                return count
        raise ValueError(f"bandwidth {bandwidth:g} kbps is not one of this model's bandwidths: {listed} kbps")
    if n_q is not None:
        counts = sorted(set(choices.values()))
        if n_q not in counts:
            raise ValueError(f"n_q {n_q} is not one of this model's codebook counts: {counts}")
        return n_q
    return max(choices.values())


def encode_file(
    codec: Codec,
    source: str | Path,
    out: str | Path,
    n_q: int,
    model_id: str,
    checksum: bytes,
    chunk_seconds: float = DEFAULT_CHUNK_SECONDS,
    context_seconds: float = DEFAULT_CONTEXT_SECONDS,
    device: torch.device | str = "cpu",
) -> tuple[Header, int]:
    """Encode the audio file ``source`` into the compressed file ``out`` -> (header, file bytes)."""
    with AudioReader(source, codec.sample_rate, codec.channels) as reader:
        encoded = encode_audio(
            codec, reader, n_q, _chunk_samples(codec, chunk_seconds), _context_frames(codec, context_seconds), device
        )
    header = Header(
        sample_rate=codec.sample_rate,
        channels=codec.channels,
        hop_length=codec.hop_length,
        length=encoded.length,
        n_frames=encoded.codes.shape[-1],
        codebook_sizes=list(codec.quantizer.codebook_sizes[:n_q]),
        model_checksum=checksum,
        model_id=model_id,
        segment_length=codec.segment_length,
        segment_stride=codec.segment_stride,
        scales=None if encoded.scale is None else encoded.scale[0, :, 0].numpy().astype(np.float32),
    )
    size = write_compressed(out, header, encoded.codes[0])
    return header, size


def decode_file(
    codec: Codec,
    compressed: CompressedAudio,
    out: str | Path,
    chunk_seconds: float = DEFAULT_CHUNK_SECONDS,
    context_seconds: float = DEFAULT_CONTEXT_SECONDS,
    subtype: str | None = "PCM_16",
    device: torch.device | str = "cpu",
) -> int:
    """Decode ``compressed`` (already checked against ``codec``) into the audio file ``out``,
    written block by block to a temporary file renamed at the end. Integer subtypes are clipped to
    [-1, 1]; returns the number of clipped samples."""
    out = Path(out)
    header = compressed.header
    scale = None if header.scales is None else torch.from_numpy(header.scales).view(1, -1, 1)
    encoded = EncodedAudio(torch.from_numpy(compressed.codes)[None], scale, header.length)
    chunk_frames = _chunk_samples(codec, chunk_seconds) // codec.hop_length
    clip = subtype in _INTEGER_SUBTYPES
    clipped = 0
    audio_format = out.suffix[1:].upper()
    if audio_format not in sf.available_formats():
        raise ValueError(f"cannot write {out}: unknown audio format {out.suffix!r} (try .wav or .flac)")
    if subtype is not None and not sf.check_format(audio_format, subtype):
        raise ValueError(f"cannot write {out}: format {audio_format} has no subtype {subtype}")
    with atomic_output(out) as tmp:
        with sf.SoundFile(
            str(tmp), "w", header.sample_rate, header.channels, subtype=subtype, format=audio_format
        ) as sink:
            for block in decode_blocks(codec, encoded, chunk_frames, _context_frames(codec, context_seconds), device):
                block = block.numpy().T  # (n, C)
                if clip:
                    clipped += int(np.count_nonzero(np.abs(block) > 1.0))
                    block = np.clip(block, -1.0, 1.0)
                sink.write(block)
    return clipped


# -------------------------------------------------------------------------------------------- CLI
def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    parser.add_argument(
        "--chunk_seconds",
        type=float,
        default=DEFAULT_CHUNK_SECONDS,
        help=f"audio per chunk (rounded to whole frames; default {DEFAULT_CHUNK_SECONDS}): bounds memory",
    )
    parser.add_argument(
        "--context_seconds",
        type=float,
        default=DEFAULT_CONTEXT_SECONDS,
        help="context on each side of a chunk for codecs that neither stream nor segment "
        f"(default {DEFAULT_CONTEXT_SECONDS})",
    )


def _encode_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="codecplatform encode",
        description="Compress an audio file with a codec checkpoint into a .cpc file (codecplatform.bitstream).",
    )
    parser.add_argument("input", help="audio file (any rate and channel count soundfile reads)")
    parser.add_argument("output", help="compressed file to write (.cpc)")
    parser.add_argument("--checkpoint", required=True, help="codec checkpoint (codecplatform fit or import-checkpoint)")
    choice = parser.add_mutually_exclusive_group()
    choice.add_argument("--bandwidth", type=float, default=None, help="kbps, one of the model's (default: the highest)")
    choice.add_argument("--n_q", type=int, default=None, help="number of codebooks instead of --bandwidth")
    _add_common(parser)
    return parser


def _decode_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="codecplatform decode",
        description="Decode a .cpc file into audio at the model's sample rate and channels.",
    )
    parser.add_argument("input", help="compressed file (.cpc)")
    parser.add_argument("output", help="audio file to write (format from the suffix: .wav, .flac, ...)")
    parser.add_argument(
        "--checkpoint", default=None, help="codec checkpoint (default: the path recorded in the file, if it exists)"
    )
    parser.add_argument("--subtype", default="PCM_16", help="soundfile subtype (PCM_16 default, PCM_24, FLOAT, ...)")
    _add_common(parser)
    return parser


def _parse(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace | int:
    try:
        args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    except SystemExit as exit_:  # argparse printed the message (or the help)
        return int(exit_.code or 0)
    if args.chunk_seconds <= 0 or args.context_seconds < 0:
        print(f"{parser.prog}: error: --chunk_seconds must be > 0 and --context_seconds >= 0", file=sys.stderr)
        return USAGE_ERROR
    return args


def _device(name: str) -> torch.device:
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise ValueError(f"--device must be cpu or cuda[:N], got {name!r}") from error
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: CUDA is not available on this machine")
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"--device must be cpu or cuda[:N], got {name!r}")
    return device


def _load(checkpoint: str | Path, device: torch.device) -> tuple[Codec, bytes]:
    codec = Codec.from_checkpoint(checkpoint, map_location="cpu")
    checksum = model_checksum(codec)  # on CPU: the same bytes whatever the device
    return codec.to(device).eval(), checksum


def _fail(prog: str, message: object, status: int = FAILURE) -> int:
    print(f"{prog}: error: {message}", file=sys.stderr)
    return status


def encode_main(argv: list[str] | None = None) -> int:
    """``codecplatform encode``; returns the exit status (0, 1 failure, 2 usage error)."""
    prog = "codecplatform encode"
    args = _parse(_encode_parser(), argv)
    if isinstance(args, int):
        return args
    source, out, checkpoint = Path(args.input), Path(args.output), Path(args.checkpoint)
    for what, path in (("audio file", source), ("checkpoint", checkpoint)):
        if not path.is_file():
            return _fail(prog, f"{what} not found: {path}", USAGE_ERROR)
    try:
        device = _device(args.device)
        codec, checksum = _load(checkpoint, device)
        n_q = choose_n_q(codec, args.bandwidth, args.n_q)
    except ValueError as error:
        return _fail(prog, error, USAGE_ERROR)
    began = time.perf_counter()
    try:
        header, size = encode_file(
            codec,
            source,
            out,
            n_q,
            str(checkpoint.resolve()),
            checksum,
            args.chunk_seconds,
            args.context_seconds,
            device,
        )
    except (ValueError, RuntimeError) as error:
        return _fail(prog, error)
    seconds = time.perf_counter() - began
    nominal = header.nominal_bitrate * header.duration / 8
    print(
        f"encoded {source} ({header.duration:.2f} s at {header.sample_rate} Hz, {header.channels} ch) "
        f"with {n_q} codebooks ({header.nominal_bitrate / 1000:.3g} kbps nominal) in {seconds:.2f} s"
    )
    print(
        f"wrote {out}: {size:,} bytes = {size * 8 / header.duration / 1000:.3g} kbps "
        f"(nominal {nominal:,.0f} bytes; header {size - header.payload_length:,} bytes)"
    )
    return 0


def decode_main(argv: list[str] | None = None) -> int:
    """``codecplatform decode``; returns the exit status (0, 1 failure, 2 usage error)."""
    prog = "codecplatform decode"
    args = _parse(_decode_parser(), argv)
    if isinstance(args, int):
        return args
    source, out = Path(args.input), Path(args.output)
    try:
        device = _device(args.device)
        compressed = read_compressed(source)
    except FileNotFoundError as error:
        return _fail(prog, error, USAGE_ERROR)
    except ValueError as error:  # BitstreamError or a bad device
        return _fail(prog, error)
    header = compressed.header
    if args.checkpoint is not None:
        checkpoint = Path(args.checkpoint)
        if not checkpoint.is_file():
            return _fail(prog, f"checkpoint not found: {checkpoint}", USAGE_ERROR)
    else:
        checkpoint = Path(header.model_id)
        if not header.model_id or not checkpoint.is_file():
            return _fail(
                prog,
                f"{source} was encoded with the model {header.model_id!r}, which is not a file here: pass --checkpoint",
                USAGE_ERROR,
            )
    began = time.perf_counter()
    try:
        codec, checksum = _load(checkpoint, device)
        check_model(header, checksum, str(source), f"the checkpoint {checkpoint}", codec)
        clipped = decode_file(codec, compressed, out, args.chunk_seconds, args.context_seconds, args.subtype, device)
    except (ValueError, RuntimeError) as error:  # BitstreamError is a ValueError
        return _fail(prog, error)
    seconds = time.perf_counter() - began
    print(
        f"decoded {source} ({header.duration:.2f} s, {header.n_q} codebooks, "
        f"{header.nominal_bitrate / 1000:.3g} kbps nominal) in {seconds:.2f} s"
    )
    note = f"; {clipped:,} samples clipped to [-1, 1]" if clipped else ""
    print(f"wrote {out}: {header.sample_rate} Hz, {header.channels} ch, {args.subtype}{note}")
    return 0


__all__ = [
    "AudioReader",
    "BitstreamError",
    "available_bandwidths",
    "choose_n_q",
    "decode_blocks",
    "decode_file",
    "decode_main",
    "encode_audio",
    "encode_file",
    "encode_main",
    "streams_exactly",
]
