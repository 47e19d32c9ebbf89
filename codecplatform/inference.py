"""``codecplatform encode`` / ``decode``: audio files <-> compressed ``.cpc`` files, chunk by chunk.

    codecplatform encode in.wav out.cpc --checkpoint model.ckpt [--bandwidth 6 | --n_q 8] [--device cuda]
        [--entropy-coding --lm lm.ckpt [--verify]]
    codecplatform decode out.cpc out.wav [--checkpoint model.ckpt] [--lm lm.ckpt] [--device cuda]

The file format and how untrusted files are handled: docs/bitstream.md (:mod:`codecplatform.bitstream`).
``encode`` reads any sound file soundfile reads, maps its channels like the training data and
resamples it to the model's rate; it refuses NaN or infinite samples. ``decode`` writes the model's
rate and channels. Without ``--checkpoint`` (``--lm``), decode loads the checkpoint path recorded in
the file only when that file's bytes have the sha256 recorded at encode time; either way the
weights must have the checksum in the file. ``--entropy-coding --lm lm.ckpt`` entropy-codes the
codes with a code language model (EnCodec section 3.3): lossless, a smaller file, slower coding.

Memory is bounded by ``--chunk_seconds``, not the file length: audio is read, resampled, coded and
written chunk by chunk with the codec's own rules (:meth:`AudioCodec.encode_chunked`,
:meth:`AudioCodec.decode_chunked`); only the codes are held whole. A failing command writes
nothing: outputs go to a temporary file next to the destination, renamed at the end.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from torch import Tensor

from codecplatform.bitstream import (
    CompressedAudio,
    EntropyCoding,
    Header,
    atomic_output,
    check_lm,
    check_model,
    decode_entropy,
    file_sha256,
    lm_problems,
    model_checksum,
    read_compressed,
    segment_frames,
    write_compressed,
)
from codecplatform.dsp.channels import map_channels
from codecplatform.dsp.spectral import resample
from codecplatform.models.base import AudioCodec
from codecplatform.models.code_lm import CodeLM
from codecplatform.models.codec import Codec
from codecplatform.types import EncodedAudio

DEFAULT_CHUNK_SECONDS = 5.0
DEFAULT_CONTEXT_SECONDS = 0.5
USAGE_ERROR = 2
FAILURE = 1
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
        bad = ~np.isfinite(audio)
        if bad.any():  # NaN/inf would be coded silently (quantized to some codebook entry)
            frame, channel = (int(i[0]) for i in np.nonzero(bad))
            raise ValueError(
                f"{self.path} holds a non-finite sample ({audio[frame, channel]}) at sample {start + frame} "
                f"(channel {channel}, {(start + frame) / self.source_rate:.3f} s): refusing to encode it"
            )
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


# ------------------------------------------------------------------------------------------ files
def _chunk_samples(codec: AudioCodec, seconds: float) -> int:
    frame = codec.samples_per_frame
    return max(1, round(seconds * codec.sample_rate / frame)) * frame


def _context_frames(codec: AudioCodec, seconds: float) -> int:
    return math.ceil(seconds * codec.frame_rate)


def choose_n_q(codec: AudioCodec, bandwidth: float | None, n_q: int | None) -> int:
    """Codebook count for ``--bandwidth`` (kbps: exactly one of the model's operating points,
    :meth:`AudioCodec.operating_points`; another rate is refused, not rounded down) or ``--n_q``
    (1..n_q); default all codebooks. ValueError names the operating points."""
    points = codec.operating_points()
    listed = ", ".join(f"{bw:.3g}" for bw in points)
    if bandwidth is not None and bandwidth > 0:
        closest = min(points, key=lambda point: abs(point - bandwidth))
        if abs(closest - bandwidth) <= 0.005 * closest:  # as listed (3 digits: 86.13 Hz x 10 bits = 0.861)
            return points[closest]
        raise ValueError(f"--bandwidth {bandwidth:g} kbps is not one of this model's bandwidths: {listed} kbps")
    try:
        return codec.resolve_n_q(bandwidth=bandwidth, n_q=n_q)
    except ValueError as error:
        raise ValueError(f"{error} (this model's bandwidths: {listed} kbps)") from error


def conversion_note(source_rate: int, source_channels: int, sample_rate: int, channels: int) -> str:
    """What ``encode`` did to the input: ``"input 16000 Hz, 2 ch: resampled 16000 -> 24000 Hz,
    2 channels averaged to mono"`` (the rules of :class:`AudioReader`), or ``"...: no conversion"``."""
    steps = []
    if source_rate != sample_rate:
        steps.append(f"resampled {source_rate} -> {sample_rate} Hz")
    if source_channels != channels:
        if source_channels == 1:
            steps.append(f"mono repeated to {channels} channels")
        elif channels == 1:
            steps.append(f"{source_channels} channels averaged to mono")
        else:
            steps.append(f"first {channels} of {source_channels} channels kept")
    return f"input {source_rate} Hz, {source_channels} ch: " + (", ".join(steps) or "no conversion")


def encode_file(
    codec: AudioCodec,
    source: str | Path,
    out: str | Path,
    n_q: int,
    model_id: str,
    checksum: bytes,
    chunk_seconds: float = DEFAULT_CHUNK_SECONDS,
    context_seconds: float = DEFAULT_CONTEXT_SECONDS,
    device: torch.device | str = "cpu",
    checkpoint_sha256: bytes | None = None,
    entropy: EntropyCoding | None = None,
    lm: CodeLM | None = None,
    verify: bool = False,
) -> tuple[Header, int]:
    """Encode the audio file ``source`` into the compressed file ``out`` -> (header, file bytes).

    ``checkpoint_sha256``: :func:`~codecplatform.bitstream.file_sha256` of the checkpoint file
    ``model_id`` names; without it, decoding needs an explicit ``--checkpoint``.
    ``entropy`` + ``lm``: entropy-code the codes with the code LM ``lm`` (whose identity
    ``entropy`` records); its segments are the codec's (``segment_frames`` is set here).
    ``verify``: decode the entropy-coded payload once more before writing (twice as slow)."""
    if entropy is not None:
        if lm is None:
            raise ValueError("entropy coding needs the code language model")
        problems = lm_problems(lm, n_q, list(codec.codebook_sizes), codec.frame_rate)
        if problems:  # before any audio is coded
            raise ValueError("the language model does not fit this codec: " + "; ".join(problems))
    with AudioReader(source, codec.sample_rate, codec.channels) as reader:
        chunk, context = _chunk_samples(codec, chunk_seconds), _context_frames(codec, context_seconds)
        encoded = codec.encode_chunked(reader.read, reader.length, n_q, chunk, context, device)
    layout = codec.bitstream_layout()
    header = Header(
        sample_rate=layout["sample rate"],
        channels=layout["channels"],
        hop_length=layout["hop length"],
        length=encoded.length,
        n_frames=encoded.codes.shape[-1],
        codebook_sizes=list(codec.codebook_sizes[:n_q]),
        model_checksum=checksum,
        model_id=model_id,
        segment_length=layout["segment length"],
        segment_stride=layout["segment stride"],
        scales=None if encoded.scale is None else encoded.scale[0, :, 0].numpy().astype(np.float32),
        checkpoint_sha256=checkpoint_sha256,
        entropy=None if entropy is None else replace(entropy, segment_frames=segment_frames(layout)),
    )
    size = write_compressed(out, header, encoded.codes[0], lm=lm, verify=verify)
    return header, size


def decode_file(
    codec: AudioCodec,
    compressed: CompressedAudio,
    out: str | Path,
    chunk_seconds: float = DEFAULT_CHUNK_SECONDS,
    context_seconds: float = DEFAULT_CONTEXT_SECONDS,
    subtype: str | None = "PCM_16",
    device: torch.device | str = "cpu",
    codebooks: Sequence[int] | None = None,
) -> int:
    """Decode ``compressed`` (already checked against ``codec``) into the audio file ``out``,
    written block by block to a temporary file renamed at the end. Integer subtypes are clipped to
    [-1, 1]; returns the number of clipped samples. ``codebooks``: decode from these codebook
    indices only (codebook ablation, :meth:`AudioCodec.decode`); default all in the file."""
    out = Path(out)
    if compressed.codes is None:
        raise ValueError("the file is entropy-coded: decode its codes first (codecplatform.bitstream.decode_entropy)")
    if codebooks is not None:
        Codec.codebook_mask(codebooks, compressed.header.n_q)  # ValueError before anything is written
    header = compressed.header
    scale = None if header.scales is None else torch.from_numpy(header.scales).view(1, -1, 1)
    encoded = EncodedAudio(torch.from_numpy(compressed.codes)[None], scale, header.length)
    chunk_frames = _chunk_samples(codec, chunk_seconds) // codec.samples_per_frame
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
            context = _context_frames(codec, context_seconds)
            for block in codec.decode_chunked(encoded, chunk_frames, context, device, codebooks):
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
    parser.add_argument(
        "--entropy-coding",
        "--entropy_coding",
        dest="entropy_coding",
        action="store_true",
        help="entropy-code the codes with the code language model --lm (lossless; smaller, slower)",
    )
    parser.add_argument(
        "--lm",
        default=None,
        help="code LM checkpoint for --entropy-coding (codecplatform fit --config experiments/code_lm/...)",
    )
    parser.add_argument(
        "--verify", action="store_true", help="with --entropy-coding: decode the payload once more before writing"
    )
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
    parser.add_argument(
        "--lm",
        default=None,
        help="code LM of an entropy-coded file (default: the path recorded in the file, if it exists)",
    )
    parser.add_argument("--subtype", default="PCM_16", help="soundfile subtype (PCM_16 default, PCM_24, FLOAT, ...)")
    parser.add_argument(
        "--codebooks",
        default=None,
        help="decode from these codebooks only, comma-separated 0-based indices (codebook ablation: "
        "'0' = what the first codebook carries, '0,1' = the first two); default all in the file",
    )
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


def keep_freed_memory() -> bool:
    """Make glibc's malloc keep freed memory for the next allocation instead of returning it to the
    system (True when set; False off glibc). By default every block over 32 MB is a fresh mapping
    whose pages the kernel faults in and zeroes again on every network call, which made DAC's
    encoder a third slower (benchmarks/RESULTS.md, "How fast is a corpus tokenized?").
    The process's memory then stays at its peak until it ends: for processes that only code (the
    ``encode``, ``decode`` and ``tokenize`` commands and tokenize's workers), not for a library call."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        m_trim_threshold, m_mmap_max = -1, -4  # glibc's malloc.h
        return bool(libc.mallopt(m_mmap_max, 0)) and bool(libc.mallopt(m_trim_threshold, 2**31 - 1))
    except (OSError, AttributeError):
        return False


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


def _load(checkpoint: str | Path, device: torch.device) -> tuple[AudioCodec, bytes]:
    codec = AudioCodec.from_checkpoint(checkpoint, map_location="cpu")
    checksum = model_checksum(codec)  # on CPU: the same bytes whatever the device
    return codec.to(device).prepare_for_inference(), checksum  # folds weight norm: after the checksum


def _load_lm(checkpoint: str | Path) -> tuple[CodeLM, bytes]:
    """(the code LM as coding uses it: float64 on the CPU, checksum of its weights as saved)."""
    from codecplatform.entropy.coding import coding_lm

    lm = CodeLM.from_checkpoint(checkpoint, map_location="cpu")  # torch.load(weights_only=True)
    return coding_lm(lm), model_checksum(lm)


def _recorded_file(
    prog: str,
    source: Path,
    explicit: str | None,
    recorded: str,
    recorded_sha256: bytes | None,
    kind: str,
    option: str,
    made_with: str,
    model: str,
) -> Path | int:
    """The checkpoint to load: ``explicit`` (``option``) when given, else the ``recorded`` path,
    and that one only when its bytes hash to ``recorded_sha256`` (checked before anything of it is
    unpickled). Returns the path, or the exit status after printing why not. Wording: the file was
    ``made_with`` (``"encoded with"``) the ``model`` (``"model"``), a ``kind`` (``"checkpoint"``) file."""
    if explicit is not None:
        path = Path(explicit)
        if not path.is_file():
            return _fail(prog, f"{kind} not found: {path}", USAGE_ERROR)
        return path
    path = Path(recorded)
    if not recorded or not path.is_file():
        return _fail(
            prog,
            f"{source} was {made_with} the {model} {recorded!r}, which is not a file here: pass {option}",
            USAGE_ERROR,
        )
    # The file a header names is untrusted until its bytes hash to what the header records.
    if recorded_sha256 is None:
        return _fail(
            prog,
            f"{source} records no hash of its {kind} {recorded!r}, so that file is not loaded unchecked: pass {option}",
            USAGE_ERROR,
        )
    actual = file_sha256(path)
    if actual != recorded_sha256:
        return _fail(
            prog,
            f"the {kind} {path} is not the file {source} was {made_with} (sha256 "
            f"{actual.hex()[:16]}..., recorded {recorded_sha256.hex()[:16]}...): not loading it; "
            f"pass {option} with the {model} that encoded it",
        )
    return path


def _codebook_list(text: str | None) -> list[int] | None:
    """``--codebooks`` '0,2' -> [0, 2] (None: all); ValueError naming the option otherwise."""
    if text is None:
        return None
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ValueError(f"--codebooks must be comma-separated codebook indices such as 0,1, got {text!r}") from None


def decoded_note(header: Header, codebooks: Sequence[int] | None) -> str:
    """What ``decode`` used: ``"8 codebooks, 6 kbps nominal"``, or with ``--codebooks 0``
    ``"codebook 0 of the file's 8: 0.75 kbps nominal"`` (the rate of the codebooks decoded)."""
    total = f"{header.nominal_bitrate / 1000:.3g} kbps"
    if codebooks is None:
        return f"{header.n_q} codebooks, {total} nominal"
    chosen = sorted(set(int(c) for c in codebooks))
    bits = header.frame_rate * sum(math.log2(header.codebook_sizes[c]) for c in chosen)
    which = ("codebook " if len(chosen) == 1 else "codebooks ") + ",".join(map(str, chosen))
    return f"{which} of the file's {header.n_q} ({total}): {bits / 1000:.3g} kbps nominal"


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
    if args.entropy_coding and args.lm is None:
        return _fail(prog, "--entropy-coding needs --lm (a code LM checkpoint)", USAGE_ERROR)
    if args.lm is not None and not args.entropy_coding:
        return _fail(prog, "--lm is the language model of --entropy-coding: add --entropy-coding", USAGE_ERROR)
    if args.verify and not args.entropy_coding:
        return _fail(prog, "--verify checks --entropy-coding: add --entropy-coding", USAGE_ERROR)
    lm_path = None if args.lm is None else Path(args.lm)
    files = [("audio file", source), ("checkpoint", checkpoint)] + ([("LM checkpoint", lm_path)] if lm_path else [])
    for what, path in files:
        if not path.is_file():
            return _fail(prog, f"{what} not found: {path}", USAGE_ERROR)
    lm, entropy = None, None
    try:
        device = _device(args.device)
        checkpoint_sha256 = file_sha256(checkpoint)  # recorded: decode checks the file before loading it
        codec, checksum = _load(checkpoint, device)
        n_q = choose_n_q(codec, args.bandwidth, args.n_q)
        if lm_path is not None:
            lm_sha256 = file_sha256(lm_path)  # recorded, like the codec checkpoint's
            lm, lm_checksum = _load_lm(lm_path)
            problems = lm_problems(lm, n_q, list(codec.codebook_sizes), codec.frame_rate)
            if problems:
                raise ValueError(f"the language model {lm_path} does not fit {checkpoint}: " + "; ".join(problems))
            entropy = EntropyCoding(lm_checksum, str(lm_path.resolve()), lm_sha256)
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
            checkpoint_sha256,
            entropy,
            lm,
            args.verify,
        )
    except (ValueError, RuntimeError) as error:
        return _fail(prog, error)
    seconds = time.perf_counter() - began
    nominal = header.nominal_bitrate * header.duration / 8
    coding = "" if entropy is None else f", entropy-coded with {lm_path}"
    info = sf.info(str(source))
    print(
        f"encoded {source} ({header.duration:.2f} s at {header.sample_rate} Hz, {header.channels} ch; "
        f"{conversion_note(info.samplerate, info.channels, header.sample_rate, header.channels)}) "
        f"with {n_q} codebooks ({header.nominal_bitrate / 1000:.3g} kbps nominal{coding}) in {seconds:.2f} s"
    )
    payload = header.payload_length
    note = ""
    if header.entropy is not None:
        packed = header.packed_length
        note = (
            f"; entropy-coded payload {payload:,} bytes vs {packed:,} bit-packed: "
            f"{100 * (1 - payload / max(packed, 1)):.1f}% smaller"
        )
    print(
        f"wrote {out}: {size:,} bytes = {size * 8 / header.duration / 1000:.4g} kbps "
        f"(nominal {header.nominal_bitrate / 1000:.4g} kbps = {nominal:,.0f} bytes; "
        f"header {size - payload:,} bytes{note})"
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
    checkpoint = _recorded_file(
        prog,
        source,
        args.checkpoint,
        header.model_id,
        header.checkpoint_sha256,
        "checkpoint",
        "--checkpoint",
        "encoded with",
        "model",
    )
    if isinstance(checkpoint, int):
        return checkpoint
    lm_path = None
    if header.entropy is not None:
        lm_path = _recorded_file(
            prog,
            source,
            args.lm,
            header.entropy.lm_id,
            header.entropy.lm_checkpoint_sha256,
            "LM checkpoint",
            "--lm",
            "entropy-coded with",
            "language model",
        )
        if isinstance(lm_path, int):
            return lm_path
    elif args.lm is not None:
        print(f"note: {source} is not entropy-coded: --lm {args.lm} is not used")
    began = time.perf_counter()
    try:
        codec, checksum = _load(checkpoint, device)
        check_model(header, checksum, str(source), f"the checkpoint {checkpoint}", codec)
        codebooks = _codebook_list(args.codebooks)
        if lm_path is not None:
            lm, lm_checksum = _load_lm(lm_path)
            check_lm(header, lm_checksum, str(source), f"the language model {lm_path}", lm)
            decode_entropy(compressed, lm, str(source))
        clipped = decode_file(
            codec, compressed, out, args.chunk_seconds, args.context_seconds, args.subtype, device, codebooks
        )
    except (ValueError, RuntimeError) as error:  # BitstreamError is a ValueError
        return _fail(prog, error)
    seconds = time.perf_counter() - began
    coding = "" if lm_path is None else f", entropy-coded: {header.payload_length:,} bytes decoded with {lm_path}"
    print(f"decoded {source} ({header.duration:.2f} s, {decoded_note(header, codebooks)}{coding}) in {seconds:.2f} s")
    note = f"; {clipped:,} samples clipped to [-1, 1]" if clipped else ""
    print(f"wrote {out}: {header.sample_rate} Hz, {header.channels} ch, {args.subtype}{note}")
    return 0
