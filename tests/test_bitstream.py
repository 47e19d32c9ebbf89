"""The compressed file format: bit packing, header, checksums, size vs bitrate, clear errors."""

from __future__ import annotations

import copy
import hashlib
import math
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from codecplatform.bitstream import (
    VERSION,
    BitstreamError,
    Header,
    atomic_output,
    check_model,
    code_bits,
    file_sha256,
    from_bytes,
    model_checksum,
    pack_codes,
    payload_bytes,
    read_compressed,
    to_bytes,
    unpack_codes,
    write_compressed,
)
from codecplatform.models.base import AudioCodec


def random_codes(rng: np.random.Generator, sizes: list[int], n_frames: int) -> np.ndarray:
    """(K, T') codes covering both ends of each codebook."""
    codes = np.stack([rng.integers(0, size, n_frames) for size in sizes]) if sizes else np.zeros((0, n_frames))
    if n_frames >= 2:
        codes[:, 0] = 0
        codes[:, 1] = np.asarray(sizes) - 1
    return codes.astype(np.int64)


# ------------------------------------------------------------------------------------- packing
def test_code_bits() -> None:
    expected = {1: 0, 2: 1, 3: 2, 4: 2, 5: 3, 64: 6, 1000: 10, 1024: 10, 1025: 11, 4096: 12}
    assert {size: code_bits(size) for size in expected} == expected
    with pytest.raises(ValueError, match=">= 1"):
        code_bits(0)


def test_pack_roundtrip_every_size_2_to_4096() -> None:
    sizes = list(range(2, 4097))  # one codebook of each size, all in one frame layout
    codes = random_codes(np.random.default_rng(0), sizes, 3)
    data = pack_codes(codes, sizes)
    assert len(data) == payload_bytes(3, sizes) == math.ceil(3 * sum(math.ceil(math.log2(s)) for s in sizes) / 8)
    np.testing.assert_array_equal(unpack_codes(data, sizes, 3), codes)


@pytest.mark.parametrize("seed", range(40))
def test_pack_roundtrip_random_layouts(seed: int) -> None:
    rng = np.random.default_rng(seed)
    k = int(rng.integers(1, 9))
    sizes = [int(2 ** rng.integers(1, 13)) if rng.random() < 0.5 else int(rng.integers(1, 4097)) for _ in range(k)]
    n_frames = int(rng.integers(0, 60))
    codes = random_codes(rng, sizes, n_frames)
    data = pack_codes(torch.from_numpy(codes) if seed % 2 else codes, sizes)
    assert len(data) == payload_bytes(n_frames, sizes)
    np.testing.assert_array_equal(unpack_codes(data, sizes, n_frames), codes)


def test_packing_is_frame_major_msb_first() -> None:
    # frame 0: codes (1, 2) of 2 and 3 bits -> 01 010; frame 1: (3, 5) -> 11 101; padded with zeros
    data = pack_codes(np.array([[1, 3], [2, 5]]), [4, 8])
    assert data == bytes([0b01010111, 0b01000000])


def test_pack_refuses_out_of_range_codes_and_bad_shapes() -> None:
    with pytest.raises(ValueError, match="codebook 1 has 5 entries"):
        pack_codes(np.array([[0, 1], [4, 5]]), [4, 5])
    with pytest.raises(ValueError, match="codebook 0"):
        pack_codes(np.array([[-1, 1]]), [4])
    with pytest.raises(ValueError, match="K=2"):
        pack_codes(np.zeros((3, 4), np.int64), [4, 4])
    with pytest.raises(ValueError, match="payload has 3 bytes"):
        unpack_codes(b"\0\0\0", [1024], 4)
    with pytest.raises(ValueError, match="a code reads 7"):  # non-power-of-two size: invalid bit pattern
        unpack_codes(bytes([0b11100000]), [5], 1)


def test_pack_is_fast_for_ten_minutes_of_codes() -> None:
    import time

    sizes = [1024] * 32  # EnCodec 24 kHz at 24 kbps: 75 frames/s x 600 s
    codes = random_codes(np.random.default_rng(0), sizes, 75 * 600)
    began = time.perf_counter()
    data = pack_codes(codes, sizes)
    np.testing.assert_array_equal(unpack_codes(data, sizes, codes.shape[1]), codes)
    assert time.perf_counter() - began < 5.0
    assert len(data) == 24_000 * 600 // 8


# -------------------------------------------------------------------------------------- header
def make_header(**changes) -> Header:
    fields = dict(
        sample_rate=48000,
        channels=2,
        hop_length=320,
        length=48000 * 2 + 17,
        n_frames=0,
        codebook_sizes=[1024, 1024, 1000],
        model_checksum=bytes(range(32)),
        model_id="models/ünïcode.ckpt",
        segment_length=48000,
        segment_stride=47520,
        scales=None,
    )
    fields.update(changes)
    header = Header(**fields)
    if not changes.get("n_frames"):
        header.n_frames = header.expected_frames()
    if header.scales is None and "scales" not in changes:
        header.scales = np.linspace(0.1, 0.9, len(header.segments())).astype(np.float32)
    return header


def test_header_and_codes_roundtrip(tmp_path: Path) -> None:
    header = make_header()
    assert len(header.segments()) == 3 and header.n_frames == 150 + 150 + 4  # as Codec.segments
    codes = random_codes(np.random.default_rng(1), header.codebook_sizes, header.n_frames)
    size = write_compressed(tmp_path / "a.cpc", header, codes)
    read = read_compressed(tmp_path / "a.cpc")
    for key, value in vars(header).items():
        if key == "scales":
            np.testing.assert_array_equal(read.header.scales, value)
        else:
            assert getattr(read.header, key) == value, key
    np.testing.assert_array_equal(read.codes, codes)
    model_id = len(header.model_id.encode())
    assert size == (tmp_path / "a.cpc").stat().st_size == read.file_size
    assert size - header.payload_length == 136 + 4 * 3 + 4 * 3 + model_id  # documented header size


def test_checkpoint_hash_roundtrips(tmp_path: Path) -> None:
    checkpoint = tmp_path / "model.ckpt"
    checkpoint.write_bytes(b"weights" * 100_000)  # several read blocks
    digest = file_sha256(checkpoint, block=4096)
    assert digest == hashlib.sha256(checkpoint.read_bytes()).digest()
    header = make_header(checkpoint_sha256=digest)
    codes = random_codes(np.random.default_rng(5), header.codebook_sizes, header.n_frames)
    data = to_bytes(header, codes)
    assert struct.unpack_from("<H", data, 4) == (3,) and data[84:116] == digest  # documented offsets
    assert struct.unpack_from("<HH", data, 128) == (0, 0)  # flags: plain payload; no LM identifier
    read = from_bytes(data)
    assert read.header.checkpoint_sha256 == digest and read.header.entropy is None
    np.testing.assert_array_equal(read.codes, codes)
    assert from_bytes(to_bytes(make_header(), codes)).header.checkpoint_sha256 is None  # not recorded: zeros
    with pytest.raises(BitstreamError, match="checkpoint hash takes 32 bytes"):
        make_header(checkpoint_sha256=b"short").to_bytes(0)


@pytest.mark.parametrize("version", [1, 2, VERSION + 1, 0xFFFF])
def test_other_format_versions_are_refused_in_one_line(tmp_path: Path, version: int) -> None:
    """Only the current version is read: a file of an older or newer one is refused before any
    other field is trusted, with one line naming the file and its version."""
    header = make_header()
    data = to_bytes(header, random_codes(np.random.default_rng(7), header.codebook_sizes, header.n_frames))
    path = tmp_path / "old.cpc"
    path.write_bytes(data[:4] + struct.pack("<H", version) + data[6:])
    with pytest.raises(BitstreamError) as error:
        read_compressed(path)
    assert str(error.value) == (
        f"{path} has .cpc format version {version}; this codecplatform reads version {VERSION} only"
    )


def test_entropy_coded_header_layout_and_roundtrip() -> None:
    from code_lm_helpers import tiny_lm

    from codecplatform.bitstream import EntropyCoding, decode_entropy

    header = make_header(codebook_sizes=[16, 16, 13], checkpoint_sha256=bytes(range(32, 64)))
    codes = random_codes(np.random.default_rng(6), header.codebook_sizes, header.n_frames)
    lm = tiny_lm(n_q=4, card=16, frame_rate=150.0)
    lm_hash = bytes(range(64, 96))
    header.entropy = EntropyCoding(model_checksum(lm), "lms/lm ü.ckpt", lm_hash, segment_frames=150)
    data = to_bytes(header, codes, lm=lm)
    lm_id = "lms/lm ü.ckpt".encode()
    assert header.entropy.payload_length == len(data) - (
        208 + 4 * 3 + 4 * 3 + len(header.model_id.encode()) + len(lm_id)
    )
    assert struct.unpack_from("<HH", data, 128) == (1, len(lm_id))  # flags: entropy-coded; LM identifier length
    segment_frames_, codes_crc = struct.unpack_from("<II", data, 132)
    assert segment_frames_ == 150 and codes_crc == zlib.crc32(pack_codes(codes, header.codebook_sizes))
    assert data[140:172] == model_checksum(lm) and data[172:204] == lm_hash
    assert struct.unpack_from("<3I", data, 204) == (16, 16, 13)
    read = from_bytes(data)
    assert read.codes is None and read.payload == data[-header.entropy.payload_length :]
    assert read.header.entropy == header.entropy and read.header.model_id == header.model_id
    assert read.file_size == len(data)
    np.testing.assert_array_equal(decode_entropy(read, lm), codes)
    # entropy coding needs an LM that fits the codes
    with pytest.raises(ValueError, match="needs its code language model"):
        to_bytes(
            make_header(entropy=EntropyCoding(bytes(32))),
            random_codes(np.random.default_rng(0), [1024, 1024, 1000], 304),
        )
    with pytest.raises(ValueError, match="LM predicts 16 entries"):
        to_bytes(
            make_header(entropy=EntropyCoding(bytes(32))),
            random_codes(np.random.default_rng(0), [1024, 1024, 1000], 304),
            lm=lm,
        )


def test_header_without_segments_or_scales_roundtrips() -> None:
    header = make_header(segment_length=None, segment_stride=None, scales=None, model_id="", channels=1)
    assert header.n_frames == math.ceil(header.length / 320) and header.scales is None
    codes = random_codes(np.random.default_rng(2), header.codebook_sizes, header.n_frames)
    read = from_bytes(to_bytes(header, codes))
    assert read.header.scales is None and read.header.segment_length is None and read.header.model_id == ""
    np.testing.assert_array_equal(read.codes, codes)


@pytest.mark.parametrize(
    ("n_q", "frame_rate_hop", "sample_rate"),
    [(8, 320, 24000), (32, 320, 24000), (9, 512, 44100), (2, 320, 24000)],
)
def test_file_size_matches_nominal_bitrate_within_header(n_q: int, frame_rate_hop: int, sample_rate: int) -> None:
    seconds = 10
    header = make_header(
        sample_rate=sample_rate,
        channels=1,
        hop_length=frame_rate_hop,
        length=seconds * sample_rate,
        codebook_sizes=[1024] * n_q,
        segment_length=None,
        segment_stride=None,
        scales=None,
        model_id="/checkpoints/model.ckpt",
    )
    codes = random_codes(np.random.default_rng(3), header.codebook_sizes, header.n_frames)
    size = len(to_bytes(header, codes))
    nominal = header.nominal_bitrate * seconds / 8  # bitrate x duration
    header_bytes = 136 + 4 * n_q + len(header.model_id)
    frame_bytes = 10 * n_q / 8
    assert header.nominal_bitrate == pytest.approx(sample_rate / frame_rate_hop * 10 * n_q)
    assert 0 <= size - nominal <= header_bytes + frame_bytes + 1  # at most a partial frame and a byte more
    assert size - nominal >= header_bytes


def test_header_refuses_inconsistent_fields() -> None:
    with pytest.raises(BitstreamError, match="frames"):
        make_header(n_frames=5).to_bytes(0)
    with pytest.raises(BitstreamError, match="scales"):
        make_header(scales=np.ones(2, np.float32)).to_bytes(0)
    with pytest.raises(BitstreamError, match="both"):
        make_header(segment_stride=None, scales=None).to_bytes(0)
    with pytest.raises(ValueError, match="shape"):
        to_bytes(make_header(), np.zeros((3, 2), np.int64))


# -------------------------------------------------------------------------------------- errors
@pytest.fixture
def good_file(tmp_path: Path) -> tuple[Path, bytes]:
    header = make_header()
    data = to_bytes(header, random_codes(np.random.default_rng(4), header.codebook_sizes, header.n_frames))
    path = tmp_path / "good.cpc"
    path.write_bytes(data)
    return path, data


def rewrite_header(data: bytes, offset: int, fmt: str, value: int) -> bytes:
    """Change one fixed field and recompute the header CRC (a well-formed but inconsistent file)."""
    (header_length,) = struct.unpack_from("<I", data, 6)
    out = bytearray(data)
    struct.pack_into(fmt, out, offset, value)
    struct.pack_into("<I", out, header_length - 4, zlib.crc32(bytes(out[: header_length - 4])))
    return bytes(out)


def test_reading_errors_name_the_file(good_file: tuple[Path, bytes]) -> None:
    path, data = good_file
    (header_length,) = struct.unpack_from("<I", data, 6)
    cases = {
        "not a codecplatform compressed file": b"RIFF" + data[4:],
        "format version 4; this codecplatform reads version 3 only": data[:4] + struct.pack("<H", 4) + data[6:],
        "header flags 0x0002": rewrite_header(data, 128, "<H", 2),
        "truncated: 3 bytes": data[:3],
        "truncated: 50 bytes": data[:50],
        f"truncated: {header_length - 1} bytes, its header alone": data[: header_length - 1],
        f"truncated: {len(data) - 1} bytes, header and payload need {len(data)}": data[:-1],
        "2 unexpected bytes after its payload": data + b"\0\0",
        "corrupted payload \\(CRC-32": data[:-1] + bytes([data[-1] ^ 0x10]),
        "corrupted header \\(CRC-32": data[:20] + bytes([data[20] ^ 0x01]) + data[21:],
        "corrupted header \\(it says": data[:6] + struct.pack("<I", header_length + 4) + data[10:],
        "inconsistent header: 7 frames": rewrite_header(data, 28, "<Q", 7),
    }
    for message, content in cases.items():
        path.write_bytes(content)
        with pytest.raises(BitstreamError, match=message) as error:
            read_compressed(path)
        assert str(path) in str(error.value), message
    with pytest.raises(FileNotFoundError, match="not found"):
        read_compressed(path.parent / "missing.cpc")


# ----------------------------------------------------------------------------------- checksums
def test_model_checksum_is_deterministic_and_sensitive() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv1d(2, 3, 5), nn.BatchNorm1d(3))
    checksum = model_checksum(model)
    assert len(checksum) == 32
    assert model_checksum(copy.deepcopy(model)) == checksum
    reordered = dict(reversed(list(model.state_dict().items())))
    assert model_checksum(reordered) == checksum
    assert model_checksum({k: v.clone() for k, v in model.state_dict().items()}) == checksum
    changed = copy.deepcopy(model)
    with torch.no_grad():
        changed[0].weight[0, 0, 0] += 1e-6
    assert model_checksum(changed) != checksum
    as_double = {k: v.double() if v.is_floating_point() else v for k, v in model.state_dict().items()}
    assert model_checksum(as_double) != checksum
    renamed = {f"x{k}": v for k, v in model.state_dict().items()}
    assert model_checksum(renamed) != checksum
    # the documented byte layout, written out by hand: the same on any machine
    tiny = {"b": torch.tensor([1.0, -2.0]), "a": torch.tensor(3, dtype=torch.int64)}
    expected = hashlib.sha256(
        b"a\0torch.int64\0()\0" + (3).to_bytes(8, "little") + b"b\0torch.float32\0(2,)\0" + struct.pack("<2f", 1, -2)
    )
    assert model_checksum(tiny) == expected.digest()


def test_check_model_reports_checksums_and_differences() -> None:
    class FakeCodec(AudioCodec):  # only the codec interface: check_model reads nothing else
        sample_rate, channels = 48000, 2
        normalize = True

        @property
        def frame_rate(self) -> float:
            return self.sample_rate / 320

        @property
        def codebook_sizes(self) -> list[int]:
            return [1024] * 4

        def bitstream_layout(self) -> dict[str, object]:
            layout = super().bitstream_layout()
            layout.update({"segment length": 48000, "segment stride": 47520, "normalize": self.normalize})
            return layout

    header = make_header()
    header.codebook_sizes = [1024, 1024, 1024]
    codec = FakeCodec()
    check_model(header, header.model_checksum, "a.cpc", "the checkpoint m.ckpt", codec)
    with pytest.raises(BitstreamError, match=r"a.cpc was encoded with model 'models/ünïcode.ckpt' \(sha256 00010203"):
        check_model(header, b"\xff" * 32, "a.cpc", "the checkpoint m.ckpt", codec)
    with pytest.raises(BitstreamError, match="m.ckpt has sha256 ffffffff"):
        check_model(header, b"\xff" * 32, "a.cpc", "the checkpoint m.ckpt", codec)
    codec.sample_rate, codec.normalize = 24000, False
    with pytest.raises(BitstreamError, match=r"sample rate 48000 \(model: 24000\), normalize True \(model: False\)"):
        check_model(header, header.model_checksum, "a.cpc", "the checkpoint m.ckpt", codec)


# ----------------------------------------------------------------------------------- atomicity
def test_atomic_output_leaves_nothing_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "out.wav"
    with pytest.raises(RuntimeError), atomic_output(target) as tmp:
        tmp.write_bytes(b"partial")
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_output(target) as tmp:
        tmp.write_bytes(b"partial")
        raise RuntimeError("boom")
    assert target.read_bytes() == b"old" and list(tmp_path.iterdir()) == [target]
    with atomic_output(target) as tmp:
        assert tmp.parent == tmp_path and tmp.suffix == ".wav"
        tmp.write_bytes(b"new")
    assert target.read_bytes() == b"new" and list(tmp_path.iterdir()) == [target]
