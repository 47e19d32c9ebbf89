"""`codecplatform encode --entropy-coding --lm` / `decode` on tiny checkpoints of every family: the
codes survive the entropy-coded `.cpc` file exactly (synthetic audio always, the real music of
../shared/data when present), batch and step-by-step LM evaluation write the same bits, the codec's
segments are the LM's, and another LM, a moved or planted LM file or a corrupted payload is refused
with one line, writing nothing. The LMs are random (losslessness does not need a trained one)."""

from __future__ import annotations

import copy
import math
import re
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from code_lm_helpers import tiny_lm
from test_encode_decode_cli import CODECS, error_lines, leftovers, plant, run, save_tiny_checkpoint, write_audio

from codecplatform.bitstream import (
    BitstreamError,
    decode_entropy,
    file_sha256,
    model_checksum,
    read_compressed,
    segment_frames,
    to_bytes,
)
from codecplatform.entropy.coding import entropy_encode
from codecplatform.lightning.code_lm import save_lm
from codecplatform.models.code_lm import CodeLM
from codecplatform.models.codec import Codec

FAMILIES = ["encodec24", "encodec48", "dac", "muffin", "spectrostream"]
MUSIC = Path(__file__).resolve().parents[2] / "shared" / "data" / "music"
# seconds of audio per case: short (the LM decodes frame by frame in Python; tiny codecs run at
# 375..6000 frames/s); EnCodec 48 kHz gets two of its 0.1 s segments
SECONDS = {"encodec48": 0.15, "spectrostream": 0.3}


def test_every_family_is_covered() -> None:
    assert set(FAMILIES) == {name.removesuffix("_normalized") for name in CODECS}


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, tuple[Path, Path]]:
    """family -> (codec checkpoint, code LM checkpoint): a random LM of the codec's codebooks and frame rate."""
    folder = tmp_path_factory.mktemp("models")
    out = {}
    for seed, name in enumerate(FAMILIES):
        codec = save_tiny_checkpoint(name, folder / f"{name}.ckpt")
        lm = tiny_lm(codec.n_q, max(codec.codebook_sizes), seed=seed, frame_rate=float(codec.frame_rate))
        save_lm(lm, folder / f"{name}_lm.ckpt")
        out[name] = (folder / f"{name}.ckpt", folder / f"{name}_lm.ckpt")
    return out


def other_lm(name: str, models, path: Path) -> Path:
    """An LM of the same shape as ``name``'s with other weights."""
    lm = CodeLM.from_checkpoint(models[name][1])
    save_lm(tiny_lm(lm.n_q, lm.card, seed=99, frame_rate=lm.frame_rate), path)
    return path


def music_excerpt(path: Path, seconds: float) -> None:
    """``seconds`` of a real track, from 20 s in (past any intro), as a FLOAT wav at its own rate."""
    track = sorted(MUSIC.glob("*.ogg"))[0]
    rate = sf.info(str(track)).samplerate
    with sf.SoundFile(str(track)) as file:
        file.seek(20 * rate)
        audio = file.read(int(seconds * rate) + 5, dtype="float32", always_2d=True)
    sf.write(path, audio, rate, subtype="FLOAT")


def encode(source: Path, out: Path, models, name: str, *extra: str) -> int:
    checkpoint, lm = models[name]
    return run("encode", source, out, "--checkpoint", checkpoint, "--entropy-coding", "--lm", lm, *extra)


def wrote_line(out: str) -> tuple[int, float]:
    """(bytes, kbps) of encode's "wrote ...: N bytes = X kbps" line."""
    match = re.search(r"wrote .*?: ([\d,]+) bytes = ([\d.]+) kbps \(nominal ([\d.]+) kbps", out)
    assert match, out
    return int(match.group(1).replace(",", "")), float(match.group(2))


# --------------------------------------------------------------------------------------- lossless
@pytest.mark.parametrize("audio", ["synthetic", "music"])
@pytest.mark.parametrize("name", FAMILIES)
def test_entropy_coded_files_hold_the_same_codes(name: str, audio: str, models, tmp_path: Path, capsys) -> None:
    if audio == "music" and not any(MUSIC.glob("*.ogg")):
        pytest.skip(f"no real music at {MUSIC}")
    codec = Codec.from_checkpoint(models[name][0])
    seconds = SECONDS.get(name, 0.1)
    source = tmp_path / "in.wav"
    if audio == "music":
        music_excerpt(source, seconds)
    else:
        write_audio(source, codec.sample_rate, codec.channels, seconds)
    assert run("encode", source, tmp_path / "plain.cpc", "--checkpoint", models[name][0]) == 0
    capsys.readouterr()
    assert encode(source, tmp_path / "ec.cpc", models, name) == 0
    printed = capsys.readouterr().out
    plain, coded = read_compressed(tmp_path / "plain.cpc"), read_compressed(tmp_path / "ec.cpc")
    header = coded.header
    assert plain.header.entropy is None and header.entropy is not None and coded.codes is None
    assert header.entropy.lm_checkpoint_sha256 == file_sha256(models[name][1])
    assert header.entropy.lm_id == str(models[name][1].resolve())
    assert header.entropy.segment_frames == segment_frames(codec.bitstream_layout())

    # lossless: the LM decodes exactly the codes of the plain file
    lm = CodeLM.from_checkpoint(models[name][1])
    np.testing.assert_array_equal(decode_entropy(coded, lm, "ec.cpc"), plain.codes)

    # encode prints the effective bitrate: the file's bytes over the duration, against the nominal one
    size = (tmp_path / "ec.cpc").stat().st_size
    assert wrote_line(printed)[0] == size
    assert wrote_line(printed)[1] == pytest.approx(size * 8 / header.duration / 1000, rel=1e-3)
    assert "bit-packed" in printed and f"{header.payload_length:,} bytes" in printed

    # `decode` finds codec and LM from the header: the same audio as the plain file
    assert run("decode", tmp_path / "plain.cpc", tmp_path / "plain.wav", "--subtype", "FLOAT") == 0
    assert run("decode", tmp_path / "ec.cpc", tmp_path / "ec.wav", "--subtype", "FLOAT") == 0
    np.testing.assert_array_equal(sf.read(tmp_path / "ec.wav")[0], sf.read(tmp_path / "plain.wav")[0])
    assert leftovers(tmp_path) == []

    if audio == "synthetic":  # batch (the encoder's default) and step-by-step evaluation: the same bits
        step_header = copy.deepcopy(header)
        data = to_bytes(step_header, plain.codes, lm=lm, mode="step")
        assert data == (tmp_path / "ec.cpc").read_bytes()


def test_the_codec_segments_are_the_lm_segments(models, tmp_path: Path) -> None:
    """EnCodec 48 kHz: 0.1 s segments of 4800 samples at hop 8 -> 600 frames; the coder and the LM
    restart at each: the payload is the concatenation of the segments coded alone."""
    codec = Codec.from_checkpoint(models["encodec48"][0])
    write_audio(tmp_path / "in.wav", 48000, 2, 0.15, seed=3)
    assert encode(tmp_path / "in.wav", tmp_path / "ec.cpc", models, "encodec48") == 0
    compressed = read_compressed(tmp_path / "ec.cpc")
    frames = math.ceil(codec.segment_length / codec.hop_length)
    assert compressed.header.entropy.segment_frames == frames == 600
    lm = CodeLM.from_checkpoint(models["encodec48"][1])
    codes = torch.from_numpy(decode_entropy(compressed, lm))
    assert codes.shape[1] > frames  # two segments
    pieces = [entropy_encode(codes[:, start : start + frames], lm) for start in range(0, codes.shape[1], frames)]
    assert b"".join(pieces) == compressed.payload
    assert entropy_encode(codes, lm) != compressed.payload  # one segment would differ


def test_entropy_coding_makes_a_smaller_file_with_a_skewed_lm(models, tmp_path: Path, capsys) -> None:
    """With an LM that predicts the codes well the file shrinks below the nominal size (a random LM
    spreads its probabilities: about the nominal size)."""
    codec_path, _ = models["encodec24"]
    codec = Codec.from_checkpoint(codec_path)
    write_audio(tmp_path / "in.wav", 24000, 1, 0.2, seed=4)
    assert run("encode", tmp_path / "in.wav", tmp_path / "plain.cpc", "--checkpoint", codec_path) == 0
    codes = read_compressed(tmp_path / "plain.cpc").codes
    lm = tiny_lm(codec.n_q, 16, frame_rate=float(codec.frame_rate))
    with torch.no_grad():  # bias every head toward the codes' own frequencies: a unigram model
        for k, linear in enumerate(lm.linears):
            linear.weight.zero_()
            linear.bias.copy_(torch.log(torch.bincount(torch.from_numpy(codes[k]), minlength=16).float() + 0.5))
    save_lm(lm, tmp_path / "unigram.ckpt")
    capsys.readouterr()
    args = ["--checkpoint", codec_path, "--entropy-coding", "--lm", tmp_path / "unigram.ckpt", "--verify"]
    assert run("encode", tmp_path / "in.wav", tmp_path / "ec.cpc", *args) == 0
    size, kbps = wrote_line(capsys.readouterr().out)
    header = read_compressed(tmp_path / "ec.cpc").header
    assert header.payload_length < header.packed_length
    assert size == (tmp_path / "ec.cpc").stat().st_size < (tmp_path / "plain.cpc").stat().st_size
    assert run("decode", tmp_path / "ec.cpc", tmp_path / "ec.wav") == 0
    assert run("decode", tmp_path / "plain.cpc", tmp_path / "plain.wav") == 0
    np.testing.assert_array_equal(sf.read(tmp_path / "ec.wav")[0], sf.read(tmp_path / "plain.wav")[0])


# ------------------------------------------------------------------------------------- refusals
@pytest.fixture
def coded(models, tmp_path: Path) -> tuple[Path, bytes]:
    """An entropy-coded EnCodec 24 kHz file whose LM is a copy in tmp_path (free to move or plant)."""
    lm = tmp_path / "lm.ckpt"
    lm.write_bytes(models["encodec24"][1].read_bytes())
    write_audio(tmp_path / "in.wav", 24000, 1, 0.1, seed=5)
    args = ["--checkpoint", models["encodec24"][0], "--entropy-coding", "--lm", lm]
    assert run("encode", tmp_path / "in.wav", tmp_path / "ec.cpc", *args) == 0
    return tmp_path / "ec.cpc", (tmp_path / "ec.cpc").read_bytes()


def refused(capsys, tmp_path: Path, *args, status: int = 1) -> str:
    """Run a decode that must fail: its one error line; nothing written."""
    capsys.readouterr()
    out = tmp_path / "out.wav"
    assert run("decode", *args[:1], out, *args[1:]) == status
    lines = error_lines(capsys.readouterr().err)
    assert len(lines) == 1 and lines[0].startswith("codecplatform decode: error: "), lines
    assert not out.exists() and leftovers(tmp_path) == []
    return lines[0]


def test_decoding_with_another_lm_is_refused(coded, models, tmp_path: Path, capsys) -> None:
    source, _ = coded
    other = other_lm("encodec24", models, tmp_path / "other_lm.ckpt")
    line = refused(capsys, tmp_path, source, "--lm", other)
    assert "was entropy-coded with the language model" in line and str(other) in line and str(source) in line
    # an LM of other codebooks / frame rate: its checksum differs first
    assert "was entropy-coded with" in refused(capsys, tmp_path, source, "--lm", models["dac"][1])
    # the recorded LM file now holds another LM: refused before loading it (its hash differs)
    (tmp_path / "lm.ckpt").write_bytes(other.read_bytes())
    line = refused(capsys, tmp_path, source)
    assert f"the LM checkpoint {tmp_path / 'lm.ckpt'} is not the file {source} was entropy-coded with" in line
    assert "pass --lm" in line
    # the right LM given explicitly decodes
    assert run("decode", source, tmp_path / "out.wav", "--lm", models["encodec24"][1]) == 0


def test_a_planted_lm_file_is_not_unpickled(coded, tmp_path: Path, capsys) -> None:
    source, _ = coded
    marker = tmp_path / "code_ran"
    plant(tmp_path / "lm.ckpt", marker)  # the path the header names now holds a pickle that runs code
    line = refused(capsys, tmp_path, source)
    assert "is not the file" in line and not marker.exists()
    line = refused(capsys, tmp_path, source, "--lm", tmp_path / "lm.ckpt")  # named explicitly: weights_only
    assert "is not a code LM checkpoint" in line and "weights_only=True" in line and not marker.exists()


def test_a_moved_lm_needs_an_explicit_lm(coded, tmp_path: Path, capsys) -> None:
    source, _ = coded
    (tmp_path / "lm.ckpt").rename(tmp_path / "moved.ckpt")
    line = refused(capsys, tmp_path, source, status=2)
    assert "which is not a file here: pass --lm" in line
    assert "LM checkpoint not found" in refused(capsys, tmp_path, source, "--lm", tmp_path / "gone.ckpt", status=2)
    assert run("decode", source, tmp_path / "out.wav", "--lm", tmp_path / "moved.ckpt") == 0


def reheader(data: bytes, offset: int, value: bytes) -> bytes:
    """Overwrite header bytes at ``offset`` and recompute the header CRC (a well-formed file)."""
    (header_length,) = struct.unpack_from("<I", data, 6)
    out = bytearray(data)
    out[offset : offset + len(value)] = value
    struct.pack_into("<I", out, header_length - 4, zlib.crc32(bytes(out[: header_length - 4])))
    return bytes(out)


def test_a_corrupted_entropy_coded_payload_is_refused(coded, models, tmp_path: Path, capsys) -> None:
    source, data = coded
    (header_length,) = struct.unpack_from("<I", data, 6)
    payload = data[header_length:]
    # caught by the payload CRC
    source.write_bytes(data[:-1] + bytes([data[-1] ^ 0x04]))
    assert "corrupted payload (CRC-32" in refused(capsys, tmp_path, source)
    # a payload changed with its CRC recomputed: the LM decodes something else, or cannot decode it
    lm = CodeLM.from_checkpoint(models["encodec24"][1])
    source.write_bytes(data)
    original_codes = decode_entropy(read_compressed(source), lm)
    for position in (0, len(payload) // 2, len(payload) - 1):
        changed = bytearray(payload)
        changed[position] ^= 0x20
        forged = reheader(data[:header_length], 124, struct.pack("<I", zlib.crc32(bytes(changed))))
        source.write_bytes(forged + bytes(changed))
        if position == len(payload) - 1:
            # The range coder's last byte may hold bits the decoder never needs (measured: this bit of
            # this file's last byte is one of them): a change there must either be refused or decode
            # to exactly the original codes, never to other codes.
            try:
                codes = decode_entropy(read_compressed(source), lm)
            except BitstreamError as error:
                assert "corrupted entropy-coded payload" in str(error), error
            else:
                np.testing.assert_array_equal(codes, original_codes)
            continue
        line = refused(capsys, tmp_path, source)
        assert f"{source}: corrupted entropy-coded payload" in line, line
    # a codes CRC that does not match the decoded codes
    (codes_crc,) = struct.unpack_from("<I", data, 136)
    source.write_bytes(reheader(data[:header_length], 136, struct.pack("<I", codes_crc ^ 1)) + payload)
    assert "decoded codes' CRC-32 differs" in refused(capsys, tmp_path, source)
    # the API raises the same
    with pytest.raises(BitstreamError, match="CRC-32 differs"):
        decode_entropy(read_compressed(source), CodeLM.from_checkpoint(models["encodec24"][1]))


# ----------------------------------------------------------------------------------- encode usage
def test_encode_refuses_a_missing_or_unfit_lm_and_writes_nothing(models, tmp_path: Path, capsys) -> None:
    write_audio(tmp_path / "in.wav", 24000, 1, 0.1)
    codec_path, lm_path = models["encodec24"]
    out = tmp_path / "a.cpc"
    base = ["encode", tmp_path / "in.wav", out, "--checkpoint", codec_path]
    (tmp_path / "notes.ckpt").write_text("not a checkpoint")
    small = tmp_path / "small_lm.ckpt"
    save_lm(tiny_lm(2, 16), small)  # 2 codebooks for a 4-codebook encode
    slow = tmp_path / "slow_lm.ckpt"
    save_lm(tiny_lm(4, 16, frame_rate=75.0), slow)
    cases = [
        (["--entropy-coding"], 2, "--entropy-coding needs --lm"),
        (["--lm", lm_path], 2, "add --entropy-coding"),
        (["--verify"], 2, "add --entropy-coding"),
        (["--entropy-coding", "--lm", tmp_path / "missing.ckpt"], 2, "LM checkpoint not found"),
        (["--entropy-coding", "--lm", tmp_path / "notes.ckpt"], 2, "is not a code LM checkpoint"),
        (["--entropy-coding", "--lm", small], 2, "4 codebooks, the LM has 2"),
        (["--entropy-coding", "--lm", slow], 2, "3000 frames/s, the LM was trained at 75"),
        (["--entropy-coding", "--lm", models["dac"][1]], 2, "does not fit"),
    ]
    capsys.readouterr()
    for extra, status, message in cases:
        assert run(*base, *extra) == status, extra
        lines = error_lines(capsys.readouterr().err)
        assert len(lines) == 1 and message in lines[0], (extra, lines)
        assert not out.exists() and leftovers(tmp_path) == []
    # fewer codebooks than the LM has: fine (the reference's one LM serves every bandwidth)
    assert run(*base, "--n_q", "2", "--entropy-coding", "--lm", lm_path) == 0
    compressed = read_compressed(out)
    assert compressed.header.n_q == 2
    assert decode_entropy(compressed, CodeLM.from_checkpoint(lm_path)).shape[0] == 2
    assert model_checksum(CodeLM.from_checkpoint(lm_path)) == compressed.header.entropy.lm_checksum


def test_decode_of_a_plain_file_ignores_lm(models, tmp_path: Path, capsys) -> None:
    write_audio(tmp_path / "in.wav", 24000, 1, 0.1)
    assert run("encode", tmp_path / "in.wav", tmp_path / "a.cpc", "--checkpoint", models["encodec24"][0]) == 0
    capsys.readouterr()
    assert run("decode", tmp_path / "a.cpc", tmp_path / "out.wav", "--lm", models["encodec24"][1]) == 0
    assert "is not entropy-coded" in capsys.readouterr().out


def test_help_names_the_options(capsys) -> None:
    assert run("encode", "--help") == 0
    assert "--entropy-coding" in (text := capsys.readouterr().out) and "--lm" in text
    assert run("decode", "--help") == 0
    assert "--lm" in capsys.readouterr().out
