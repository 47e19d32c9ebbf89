"""The compressed file format (``.cpc``, version 3): a checked header, then the codes bit-packed
or entropy-coded.

One file holds the codes (K, T') of one signal and what a decoder needs to check that it has the
model (and code language model) that wrote them. The byte layout, the checksums and how untrusted
files are handled: docs/bitstream.md. Every reading error is a :class:`BitstreamError` naming the file.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import struct
import tempfile
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor, nn

from codecplatform.models.base import AudioCodec

if TYPE_CHECKING:
    from codecplatform.models.code_lm import CodeLM

MAGIC = b"CPCF"
VERSION = 3
SUFFIX = ".cpc"
#: The fixed part before the entropy block and codebook sizes (132 bytes).
_FIXED = struct.Struct("<4sHIIHIQQIIHHI32s32sQIHH")
#: Flag bit 0: segment frames, codes CRC, LM checksum, LM checkpoint hash (72 bytes).
_ENTROPY_BLOCK = struct.Struct("<II32s32s")
FLAG_ENTROPY_CODED = 1
_CRC = struct.Struct("<I")
_MAX_CODEBOOK_BITS = 32


class BitstreamError(ValueError):
    """A compressed file that cannot be read: bad magic, unknown version, truncated, corrupted,
    inconsistent, or made with another model. The message names the file."""


# ------------------------------------------------------------------------------------------ bits
def code_bits(codebook_size: int) -> int:
    """Bits of one code of a codebook with ``codebook_size`` entries: ceil(log2(size)) (0 for 1)."""
    if codebook_size < 1:
        raise ValueError(f"codebook size must be >= 1, got {codebook_size}")
    return (codebook_size - 1).bit_length()


def payload_bytes(n_frames: int, codebook_sizes: list[int]) -> int:
    """Bytes of ``n_frames`` bit-packed frames: ceil(n_frames * sum_k code_bits(size_k) / 8)."""
    return math.ceil(n_frames * sum(code_bits(s) for s in codebook_sizes) / 8)


def pack_codes(codes: np.ndarray | Tensor, codebook_sizes: list[int]) -> bytes:
    """codes (K, T') with ``0 <= codes[k] < codebook_sizes[k]`` -> bytes, frame-major, MSB first.

    Vectorized over frames (a loop over the K codebooks only): a bit matrix (T', bits per frame)
    is filled column block by column block and packed with ``np.packbits``.
    """
    codes = codes.detach().cpu().numpy() if isinstance(codes, Tensor) else np.asarray(codes)
    if codes.ndim != 2 or codes.shape[0] != len(codebook_sizes):
        raise ValueError(f"codes must be (K={len(codebook_sizes)}, T'), got shape {codes.shape}")
    if codes.size and not np.issubdtype(codes.dtype, np.integer):
        raise TypeError(f"codes must be integers, got {codes.dtype}")
    widths = [code_bits(size) for size in codebook_sizes]
    if max(widths, default=0) > _MAX_CODEBOOK_BITS:
        raise ValueError(f"codebook sizes above 2**{_MAX_CODEBOOK_BITS} are not supported: {codebook_sizes}")
    n_frames = codes.shape[1]
    bits = np.zeros((n_frames, sum(widths)), dtype=np.uint8)  # (T', bits per frame)
    column = 0
    for k, (size, width) in enumerate(zip(codebook_sizes, widths)):
        row = codes[k].astype(np.int64)
        if row.size and (int(row.min()) < 0 or int(row.max()) >= size):
            raise ValueError(f"codebook {k} has {size} entries but its codes span {int(row.min())}..{int(row.max())}")
        shifts = np.arange(width - 1, -1, -1, dtype=np.int64)  # MSB first
        bits[:, column : column + width] = (row[:, None] >> shifts) & 1
        column += width
    return np.packbits(bits.reshape(-1)).tobytes()


def unpack_codes(data: bytes, codebook_sizes: list[int], n_frames: int) -> np.ndarray:
    """Inverse of :func:`pack_codes`: bytes -> codes (K, T') int64.

    Raises ValueError when ``data`` is not exactly :func:`payload_bytes` long or a code is not
    below its codebook size (possible for non-power-of-two sizes in a corrupted payload).
    """
    widths = [code_bits(size) for size in codebook_sizes]
    expected = payload_bytes(n_frames, codebook_sizes)
    if len(data) != expected:
        raise ValueError(f"payload has {len(data)} bytes, {n_frames} frames of {codebook_sizes} need {expected}")
    frame_bits = sum(widths)
    bits = np.unpackbits(np.frombuffer(data, dtype=np.uint8), count=n_frames * frame_bits)
    bits = bits.reshape(n_frames, frame_bits)  # (T', bits per frame)
    codes = np.zeros((len(codebook_sizes), n_frames), dtype=np.int64)
    column = 0
    for k, width in enumerate(widths):
        weights = np.left_shift(1, np.arange(width - 1, -1, -1, dtype=np.int64))  # (width,)
        codes[k] = bits[:, column : column + width].astype(np.int64) @ weights
        column += width
        if n_frames and int(codes[k].max()) >= codebook_sizes[k]:
            raise ValueError(f"codebook {k} has {codebook_sizes[k]} entries, a code reads {int(codes[k].max())}")
    return codes


# ------------------------------------------------------------------------------------ checksums
def model_checksum(model: nn.Module | Mapping[str, Tensor]) -> bytes:
    """sha256 (32 bytes) of a model's state dict, the same on any machine and device.

    Entries are hashed in sorted key order, each as its key, dtype and shape followed by the raw
    bytes of its values (copied to CPU, contiguous, little-endian); parameters and buffers
    (codebooks) alike. Equal weights give equal checksums whatever the insertion order.
    """
    state = model.state_dict() if isinstance(model, nn.Module) else model
    digest = hashlib.sha256()
    for key in sorted(state):
        tensor = state[key].detach().to("cpu").contiguous().reshape(-1)
        digest.update(f"{key}\0{tensor.dtype}\0{tuple(state[key].shape)}\0".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes())
    return digest.digest()


def file_sha256(path: str | Path, block: int = 1 << 20) -> bytes:
    """sha256 (32 bytes) of a file's bytes, read ``block`` bytes at a time (the checkpoint hash
    that lets a decoder check a checkpoint file before unpickling anything of it)."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(block):
            digest.update(chunk)
    return digest.digest()


# --------------------------------------------------------------------------------------- header
@dataclass
class EntropyCoding:
    """The entropy-coded mode of a file (flag bit 0).

    lm_checksum: :func:`model_checksum` of the code LM (its state dict as loaded from its
    checkpoint). lm_id: the LM checkpoint path given at encode time. lm_checkpoint_sha256:
    :func:`file_sha256` of that file, or None (not recorded). segment_frames: frames per
    independently coded segment (None: one segment). payload_length, codes_crc: the entropy-coded
    payload's bytes and the CRC-32 of the codes bit-packed (:func:`pack_codes`); filled in by
    :func:`to_bytes` and by reading.
    """

    lm_checksum: bytes
    lm_id: str = ""
    lm_checkpoint_sha256: bytes | None = None
    segment_frames: int | None = None
    payload_length: int = 0
    codes_crc: int = 0


def segment_frames(layout: Mapping[str, object]) -> int | None:
    """Frames per segment of a codec's :meth:`~codecplatform.models.base.AudioCodec.bitstream_layout`:
    ``ceil(segment length / hop length)`` (every segment but the last has that many), None when
    the codec does not segment. The entropy coder restarts (coder and LM state) at each."""
    length = layout.get("segment length")
    return None if not length else math.ceil(int(length) / int(layout["hop length"]))


@dataclass
class Header:
    """What a compressed file says about its codes (docs/bitstream.md).

    scales: (S,) float32 input scale per segment (S = 1 for an unsegmented normalizing codec), or
    None when the codec does not normalize. segment_length/segment_stride: None unless the codec
    encodes fixed segments (EnCodec 48 kHz). checkpoint_sha256: :func:`file_sha256` of the
    checkpoint file ``model_id`` names, or None (not recorded). entropy: set for an entropy-coded
    payload (:class:`EntropyCoding`).
    """

    sample_rate: int
    channels: int
    hop_length: int
    length: int
    n_frames: int
    codebook_sizes: list[int]
    model_checksum: bytes
    model_id: str = ""
    segment_length: int | None = None
    segment_stride: int | None = None
    scales: np.ndarray | None = None
    checkpoint_sha256: bytes | None = None
    entropy: EntropyCoding | None = None

    @property
    def n_q(self) -> int:
        return len(self.codebook_sizes)

    @property
    def frame_rate(self) -> float:
        """Frames per second: sample_rate / hop_length."""
        return self.sample_rate / self.hop_length

    @property
    def duration(self) -> float:
        """Seconds of audio: length / sample_rate."""
        return self.length / self.sample_rate

    @property
    def nominal_bitrate(self) -> float:
        """frame_rate * sum_k log2(size_k) in bits per second (the codec's nominal bitrate)."""
        return self.frame_rate * sum(math.log2(size) for size in self.codebook_sizes)

    @property
    def packed_length(self) -> int:
        """Bytes of the codes bit-packed (a plain payload; the nominal bitrate)."""
        return payload_bytes(self.n_frames, self.codebook_sizes)

    @property
    def payload_length(self) -> int:
        """Bytes of the payload: the packed codes, or the entropy-coded ones (known once
        written or read)."""
        return self.packed_length if self.entropy is None else self.entropy.payload_length

    def segments(self) -> list[tuple[int, int]]:
        """(offset, samples) per segment, as ``Codec.segments`` lays them out."""
        if self.segment_length is None or self.segment_stride is None:
            return [(0, self.length)]
        offsets = range(0, max(self.length, 1), self.segment_stride)
        return [(offset, min(self.segment_length, self.length - offset)) for offset in offsets]

    def expected_frames(self) -> int:
        """T' that ``length``, ``hop_length`` and the segments imply."""
        return sum(math.ceil(size / self.hop_length) for _, size in self.segments())

    def validate(self, where: str = "header") -> None:
        """Raise BitstreamError (naming ``where``) unless the fields are consistent."""
        problems = []
        if self.sample_rate < 1 or self.channels < 1 or self.hop_length < 1:
            problems.append(
                f"sample rate {self.sample_rate}, channels {self.channels}, hop length {self.hop_length} must be >= 1"
            )
        if self.n_q < 1 or min(self.codebook_sizes, default=0) < 1:
            problems.append(f"needs >= 1 codebook of >= 1 entries, got sizes {self.codebook_sizes}")
        elif max(code_bits(s) for s in self.codebook_sizes) > _MAX_CODEBOOK_BITS:
            problems.append(f"codebook sizes above 2**{_MAX_CODEBOOK_BITS}: {self.codebook_sizes}")
        if (self.segment_length is None) != (self.segment_stride is None):
            problems.append("segment length and stride must both be set or both be 0")
        elif self.segment_length is not None and not 1 <= self.segment_stride <= self.segment_length:
            problems.append(f"segment stride {self.segment_stride} must be in 1..{self.segment_length}")
        if self.length < 1:
            problems.append(f"length must be >= 1 sample, got {self.length}")
        if problems:
            raise BitstreamError(f"{where}: " + "; ".join(problems))
        if self.n_frames != self.expected_frames():
            raise BitstreamError(
                f"{where}: {self.n_frames} frames, but {self.length} samples at hop {self.hop_length} "
                f"in {len(self.segments())} segment(s) give {self.expected_frames()}"
            )
        if self.scales is not None and len(self.scales) != len(self.segments()):
            raise BitstreamError(f"{where}: {len(self.scales)} scales for {len(self.segments())} segment(s)")
        if len(self.model_checksum) != 32:
            raise BitstreamError(f"{where}: model checksum must be 32 bytes, got {len(self.model_checksum)}")
        if self.checkpoint_sha256 is not None and len(self.checkpoint_sha256) != 32:
            raise BitstreamError(f"{where}: a checkpoint hash takes 32 bytes, got {len(self.checkpoint_sha256)}")
        entropy = self.entropy
        if entropy is not None:
            if len(entropy.lm_checksum) != 32:
                raise BitstreamError(f"{where}: LM checksum must be 32 bytes, got {len(entropy.lm_checksum)}")
            if entropy.lm_checkpoint_sha256 is not None and len(entropy.lm_checkpoint_sha256) != 32:
                raise BitstreamError(f"{where}: an LM checkpoint hash takes 32 bytes")
            if entropy.segment_frames is not None and entropy.segment_frames < 1:
                raise BitstreamError(f"{where}: segment frames must be >= 1 or 0 (one segment)")

    def to_bytes(self, payload_crc: int) -> bytes:
        """The header bytes (ending with the header CRC) for a payload with CRC ``payload_crc``
        (and :attr:`payload_length` bytes)."""
        self.validate()
        model_id = self.model_id.encode("utf-8")
        if len(model_id) > 0xFFFF:
            raise ValueError(f"model identifier is {len(model_id)} bytes, at most 65535 fit")
        entropy = self.entropy
        lm_id = b"" if entropy is None else entropy.lm_id.encode("utf-8")
        if len(lm_id) > 0xFFFF:
            raise ValueError(f"LM identifier is {len(lm_id)} bytes, at most 65535 fit")
        scales = np.zeros(0, np.float32) if self.scales is None else np.asarray(self.scales, dtype="<f4")
        n_q = self.n_q
        block = b""
        if entropy is not None:
            block = _ENTROPY_BLOCK.pack(
                entropy.segment_frames or 0,
                entropy.codes_crc,
                entropy.lm_checksum,
                entropy.lm_checkpoint_sha256 or bytes(32),
            )
        variable = 4 * n_q + 4 * len(scales) + len(model_id) + len(lm_id)
        length = _FIXED.size + len(block) + variable + _CRC.size
        fixed = _FIXED.pack(
            MAGIC,
            VERSION,
            length,
            self.sample_rate,
            self.channels,
            self.hop_length,
            self.length,
            self.n_frames,
            self.segment_length or 0,
            self.segment_stride or 0,
            n_q,
            len(model_id),
            len(scales),
            self.model_checksum,
            self.checkpoint_sha256 or bytes(32),
            self.payload_length,
            payload_crc,
            FLAG_ENTROPY_CODED if entropy is not None else 0,
            len(lm_id),
        )
        sizes = struct.pack(f"<{n_q}I", *self.codebook_sizes)
        body = fixed + block + sizes + scales.tobytes() + model_id + lm_id
        return body + _CRC.pack(zlib.crc32(body))


def _parse_header(data: bytes, name: str) -> tuple[Header, int, int, int]:
    """(header, header length, payload length, payload CRC) from the start of a file.

    ``data`` holds at least the header (or the whole file when shorter).
    """
    if len(data) < len(MAGIC) and MAGIC.startswith(data):
        raise BitstreamError(f"{name} is truncated: {len(data)} bytes, not even the magic {MAGIC!r}")
    if data[:4] != MAGIC:
        raise BitstreamError(f"{name} is not a codecplatform compressed file (magic {data[:4]!r}, expected {MAGIC!r})")
    if len(data) < 6:
        raise BitstreamError(f"{name} is truncated: {len(data)} bytes, the header alone needs more")
    (version,) = struct.unpack_from("<H", data, 4)
    if version != VERSION:
        raise BitstreamError(
            f"{name} has .cpc format version {version}; this codecplatform reads version {VERSION} only"
        )
    if len(data) < _FIXED.size:
        raise BitstreamError(f"{name} is truncated: {len(data)} bytes, the header alone needs {_FIXED.size} or more")
    (_, _, header_length, sample_rate, channels, hop, length, n_frames, seg_len, seg_stride, n_q, id_len, n_scales,
     checksum, checkpoint_hash, payload_length, payload_crc, flags, lm_id_len) = _FIXED.unpack_from(data)  # fmt: skip
    checkpoint_sha256 = checkpoint_hash if any(checkpoint_hash) else None
    if flags & ~FLAG_ENTROPY_CODED:
        raise BitstreamError(
            f"{name} uses features this codecplatform does not know (header flags {flags:#06x}): "
            "decode it with a newer codecplatform"
        )
    entropy_coded = bool(flags & FLAG_ENTROPY_CODED)
    block_size = _ENTROPY_BLOCK.size if entropy_coded else 0
    expected_length = _FIXED.size + block_size + 4 * n_q + 4 * n_scales + id_len + lm_id_len + _CRC.size
    if header_length != expected_length:
        raise BitstreamError(
            f"{name}: corrupted header (it says {header_length} bytes, its fields need {expected_length})"
        )
    if len(data) < header_length:
        raise BitstreamError(f"{name} is truncated: {len(data)} bytes, its header alone is {header_length}")
    body_end = header_length - _CRC.size
    (header_crc,) = _CRC.unpack_from(data, body_end)
    if zlib.crc32(data[:body_end]) != header_crc:
        raise BitstreamError(f"{name}: corrupted header (CRC-32 mismatch)")
    offset = _FIXED.size
    entropy = None
    if entropy_coded:
        seg_frames, codes_crc, lm_checksum, lm_hash = _ENTROPY_BLOCK.unpack_from(data, offset)
        offset += _ENTROPY_BLOCK.size
        entropy = EntropyCoding(
            lm_checksum=lm_checksum,
            lm_checkpoint_sha256=lm_hash if any(lm_hash) else None,
            segment_frames=seg_frames or None,
            payload_length=payload_length,
            codes_crc=codes_crc,
        )
    sizes = list(struct.unpack_from(f"<{n_q}I", data, offset))
    offset += 4 * n_q
    scales = np.frombuffer(data, dtype="<f4", count=n_scales, offset=offset).astype(np.float32)
    offset += 4 * n_scales
    try:
        model_id = data[offset : offset + id_len].decode("utf-8")
        lm_id = data[offset + id_len : offset + id_len + lm_id_len].decode("utf-8")
    except UnicodeDecodeError as error:
        raise BitstreamError(f"{name}: corrupted header (model or LM identifier is not UTF-8)") from error
    if entropy is not None:
        entropy.lm_id = lm_id
    header = Header(
        sample_rate=sample_rate,
        channels=channels,
        hop_length=hop,
        length=length,
        n_frames=n_frames,
        codebook_sizes=sizes,
        model_checksum=checksum,
        model_id=model_id,
        segment_length=seg_len or None,
        segment_stride=seg_stride or None,
        scales=scales if n_scales else None,
        checkpoint_sha256=checkpoint_sha256,
        entropy=entropy,
    )
    header.validate(f"{name}: inconsistent header")
    if entropy is None and payload_length != header.payload_length:
        raise BitstreamError(
            f"{name}: inconsistent header (payload of {payload_length} bytes, {n_frames} frames of "
            f"codebook sizes {sizes} take {header.payload_length})"
        )
    return header, header_length, payload_length, payload_crc


# ------------------------------------------------------------------------------------- files
@dataclass
class CompressedAudio:
    """A read file: its header and codes (K, T') int64.

    An entropy-coded file's codes need its LM: ``codes`` is None and ``payload`` holds the
    entropy-coded bytes until :func:`decode_entropy` fills ``codes`` in."""

    header: Header
    codes: np.ndarray | None
    payload: bytes | None = None

    @property
    def file_size(self) -> int:
        """Bytes the file takes: header + payload."""
        return len(self.header.to_bytes(0)) + self.header.payload_length


@contextlib.contextmanager
def atomic_output(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path`` (same suffix); on success it replaces ``path``,
    on any exception it is deleted, so ``path`` is either complete or untouched. The file gets the
    mode of any new file (0666 less the umask), not mkstemp's private 0600."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=f".tmp{path.suffix}")
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        umask = os.umask(0o022)  # reading the umask means setting it: set straight back
        os.umask(umask)
        os.chmod(tmp_path, 0o666 & ~umask)
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def to_bytes(
    header: Header,
    codes: np.ndarray | Tensor,
    lm: CodeLM | None = None,
    mode: str = "batch",
    verify: bool = False,
) -> bytes:
    """The whole file: header + codes (K, T'), after checking the codes' shape.

    A plain header: the codes bit-packed. A header with ``entropy`` set: the codes entropy-coded
    with ``lm`` (whose :func:`model_checksum` must be ``header.entropy.lm_checksum``; ``mode`` and
    ``verify`` as :func:`codecplatform.entropy.coding.entropy_encode`); the payload length and
    codes CRC are filled into ``header.entropy``.
    """
    codes = codes.detach().cpu().numpy() if isinstance(codes, Tensor) else np.asarray(codes)
    if codes.shape != (header.n_q, header.n_frames):
        raise ValueError(f"codes have shape {codes.shape}, the header says ({header.n_q}, {header.n_frames})")
    packed = pack_codes(codes, header.codebook_sizes)
    entropy = header.entropy
    if entropy is None:
        return header.to_bytes(zlib.crc32(packed)) + packed
    if lm is None:
        raise ValueError("an entropy-coded file needs its code language model (lm)")
    problems = lm_problems(lm, header.n_q, header.codebook_sizes, header.frame_rate)
    if problems:
        raise ValueError("the language model does not fit these codes: " + "; ".join(problems))
    from codecplatform.entropy.coding import entropy_encode

    payload = entropy_encode(
        torch.from_numpy(codes.astype(np.int64)),
        lm,
        frame_rate=header.frame_rate,
        segment_frames=entropy.segment_frames,
        mode=mode,
        verify=verify,
    )
    entropy.payload_length = len(payload)
    entropy.codes_crc = zlib.crc32(packed)
    return header.to_bytes(zlib.crc32(payload)) + payload


def write_compressed(
    path: str | Path,
    header: Header,
    codes: np.ndarray | Tensor,
    lm: CodeLM | None = None,
    mode: str = "batch",
    verify: bool = False,
) -> int:
    """Write header + codes (K, T') to ``path`` atomically (entropy-coded with ``lm`` when
    ``header.entropy`` is set: :func:`to_bytes`); returns the file size in bytes."""
    data = to_bytes(header, codes, lm, mode, verify)
    with atomic_output(path) as tmp:
        tmp.write_bytes(data)
    return len(data)


def from_bytes(data: bytes, name: str = "<bytes>") -> CompressedAudio:
    """Parse and check a whole file's bytes (``name`` is used in error messages)."""
    header, header_length, payload_length, payload_crc = _parse_header(data, name)
    total = header_length + payload_length
    if len(data) < total:
        raise BitstreamError(f"{name} is truncated: {len(data)} bytes, header and payload need {total}")
    if len(data) > total:
        raise BitstreamError(f"{name} has {len(data) - total} unexpected bytes after its payload ({total} bytes)")
    payload = data[header_length:]
    if zlib.crc32(payload) != payload_crc:
        raise BitstreamError(f"{name}: corrupted payload (CRC-32 mismatch)")
    if header.entropy is not None:
        return CompressedAudio(header=header, codes=None, payload=payload)
    try:
        codes = unpack_codes(payload, header.codebook_sizes, header.n_frames)
    except ValueError as error:
        raise BitstreamError(f"{name}: corrupted payload ({error})") from error
    return CompressedAudio(header=header, codes=codes)


def read_compressed(path: str | Path) -> CompressedAudio:
    """Read and check a compressed file; raises BitstreamError naming it (FileNotFoundError if absent)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"compressed file not found: {path}")
    return from_bytes(path.read_bytes(), str(path))


def check_model(header: Header, checksum: bytes, name: str, model: str, codec: AudioCodec) -> None:
    """Raise BitstreamError unless ``codec`` (with state-dict ``checksum``, described as ``model``)
    is the model that wrote the file ``name``: same checksum, then same sample rate, channels,
    hop, codebook sizes, segmenting and normalization."""
    if checksum != header.model_checksum:
        raise BitstreamError(
            f"{name} was encoded with model {header.model_id!r} (sha256 {header.model_checksum.hex()[:16]}...), "
            f"but {model} has sha256 {checksum.hex()[:16]}...: decode with the model that encoded it"
        )
    sizes = list(codec.codebook_sizes)
    own = {
        **codec.bitstream_layout(),
        "codebook sizes": sizes[: header.n_q] if header.n_q <= len(sizes) else None,
    }
    theirs = {
        "sample rate": header.sample_rate,
        "channels": header.channels,
        "hop length": header.hop_length,
        "codebook sizes": header.codebook_sizes,
        "segment length": header.segment_length,
        "segment stride": header.segment_stride,
        "normalize": header.scales is not None,
    }
    differ = [f"{key} {theirs[key]} (model: {own[key]})" for key in own if own[key] != theirs[key]]
    if differ:
        raise BitstreamError(f"{name} does not fit {model}: " + ", ".join(differ))


# ------------------------------------------------------------------------------ entropy coding
def lm_problems(lm: CodeLM, n_q: int, codebook_sizes: list[int], frame_rate: float) -> list[str]:
    """Why the code LM ``lm`` cannot code ``n_q`` codebooks of ``codebook_sizes`` at
    ``frame_rate`` frames/s (empty when it can)."""
    problems = []
    if n_q > lm.n_q:
        problems.append(f"{n_q} codebooks, the LM has {lm.n_q}")
    if max(codebook_sizes[:n_q], default=0) > lm.card:
        problems.append(f"codebook sizes {codebook_sizes[:n_q]}, the LM predicts {lm.card} entries")
    if lm.frame_rate is not None and abs(frame_rate - lm.frame_rate) > 1e-6 * frame_rate:
        problems.append(f"{frame_rate:g} frames/s, the LM was trained at {lm.frame_rate:g}")
    return problems


def check_lm(header: Header, checksum: bytes, name: str, model: str, lm: CodeLM) -> None:
    """Raise BitstreamError unless ``lm`` (with state-dict ``checksum``, described as ``model``)
    is the code LM that entropy-coded the file ``name``."""
    entropy = header.entropy
    if entropy is None:
        raise BitstreamError(f"{name} is not entropy-coded: it needs no language model")
    if checksum != entropy.lm_checksum:
        raise BitstreamError(
            f"{name} was entropy-coded with the language model {entropy.lm_id!r} (sha256 "
            f"{entropy.lm_checksum.hex()[:16]}...), but {model} has sha256 {checksum.hex()[:16]}...: "
            "decode with the language model that encoded it"
        )
    problems = lm_problems(lm, header.n_q, header.codebook_sizes, header.frame_rate)
    if problems:
        raise BitstreamError(f"{name} does not fit {model}: " + "; ".join(problems))


def decode_entropy(compressed: CompressedAudio, lm: CodeLM, name: str = "<bytes>") -> np.ndarray:
    """Entropy-decode the payload of an entropy-coded file with its LM (checked with
    :func:`check_lm` first) -> codes (K, T') int64, also stored in ``compressed.codes``.

    Raises BitstreamError naming ``name`` when the payload does not decode, or decodes to codes
    outside the codebooks or whose CRC-32 differs from the header's (a corrupted payload)."""
    header, entropy = compressed.header, compressed.header.entropy
    if entropy is None or compressed.payload is None:
        raise BitstreamError(f"{name} is not entropy-coded")
    if compressed.codes is not None:
        return compressed.codes
    from codecplatform.entropy.coding import entropy_decode

    try:
        codes = entropy_decode(
            compressed.payload,
            lm,
            header.n_q,
            header.n_frames,
            segment_frames=entropy.segment_frames,
            frame_rate=header.frame_rate,
        ).numpy()
        packed = pack_codes(codes, header.codebook_sizes)
    except ValueError as error:  # RangeCoderError, or a code outside its codebook
        raise BitstreamError(f"{name}: corrupted entropy-coded payload ({error})") from error
    if zlib.crc32(packed) != entropy.codes_crc:
        raise BitstreamError(f"{name}: corrupted entropy-coded payload (the decoded codes' CRC-32 differs)")
    compressed.codes = codes
    return codes
