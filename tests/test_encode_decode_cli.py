"""`codecplatform encode` / `decode` through cli_main on tiny checkpoints: equal to Codec.encode/decode,
chunked with bounded reads, bandwidth choice, resampling, and failures that write nothing."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from codecplatform.bitstream import file_sha256, read_compressed, write_compressed
from codecplatform.cli import cli_main
from codecplatform.config import compose_config
from codecplatform.dsp.spectral import resample
from codecplatform.inference import AudioReader
from codecplatform.models.codec import Codec
from codecplatform.nn.streaming import streams_exactly

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"

# name -> (variant, tiny override, codec init_args changes)
#   encodec24: causal, streams; bandwidths of 1, 2 and 4 codebooks (16 entries at 3 kHz frames)
#   encodec24_normalized: the same with one input scale for the whole file (a first pass when chunked)
#   encodec48: stereo, normalized 0.1 s segments with a scale each
#   dac: neither streams nor segments: chunks with context
CODECS = {
    "encodec24": ("encodec/24khz_mono.yaml", "encodec.yaml", {"bandwidths": [12.0, 24.0, 48.0]}),
    "encodec24_normalized": ("encodec/24khz_mono.yaml", "encodec.yaml", {"normalize": True, "bandwidths": None}),
    "encodec48": ("encodec/48khz_stereo.yaml", "encodec.yaml", {"segment_seconds": 0.1, "bandwidths": None}),
    "dac": ("dac/44khz.yaml", "dac.yaml", {}),
    #   spectrostream: stereo 48 kHz, streams with a look-ahead (flushed with zeros at the end)
    #   muffin: neither streams nor segments (non-causal convolutions): chunks with context
    "spectrostream": ("spectrostream/48khz_stereo.yaml", "spectrostream.yaml", {}),
    "muffin": ("muffin/75hz.yaml", "muffin.yaml", {}),
}
STREAMING = {"encodec24": "SEANet", "spectrostream": "SpectroStream"}


def merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for key, value in b.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def save_tiny_checkpoint(name: str, path: Path, seed: int = 0) -> Codec:
    """A tiny codec of ``CODECS[name]``, codebooks initialized by one training pass on noise,
    saved as ``Codec.from_checkpoint`` reads it."""
    variant, tiny, changes = CODECS[name]
    config = merge(compose_config(EXPERIMENTS / variant), compose_config(EXPERIMENTS / "tiny" / tiny))
    codec_config = config["model"]["init_args"]["codec"]
    codec_config["init_args"].update(changes)
    torch.manual_seed(seed)
    codec = Codec.from_config(codec_config).train()
    with torch.no_grad():  # k-means initialization of EMA codebooks (else all codes would be 0)
        codec(0.1 * torch.randn(2, codec.channels, codec.sample_rate // 10), n_q=codec.n_q)
    codec.eval()
    state = {f"codec.{k}": v for k, v in codec.state_dict().items()}
    torch.save({"codec_config": codec_config, "state_dict": state}, path)
    return codec


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("checkpoints")
    paths = {name: folder / f"{name}.ckpt" for name in CODECS}
    for name, path in paths.items():
        save_tiny_checkpoint(name, path)
    return paths


def write_audio(path: Path, sample_rate: int, channels: int, seconds: float, seed: int = 0) -> np.ndarray:
    """A tone with noise, (T, C) float32 written as FLOAT wav (read back exactly)."""
    rng = np.random.default_rng(seed)
    n = int(seconds * sample_rate) + 3  # not a multiple of any hop
    t = np.arange(n) / sample_rate
    tone = 0.3 * np.sin(2 * np.pi * 220 * t)[:, None] * (1 - 0.3 * np.arange(channels))
    audio = (tone + 0.05 * rng.standard_normal((n, channels))).astype(np.float32)
    sf.write(path, audio, sample_rate, subtype="FLOAT")
    return audio


def reference(codec: Codec, audio: np.ndarray, n_q: int) -> tuple[np.ndarray, np.ndarray]:
    """(codes (K, T'), decoded (T, C)) of Codec.encode/decode on the whole signal."""
    encoded = codec.encode(torch.from_numpy(audio.T.copy())[None], n_q=n_q)
    return encoded.codes[0].numpy(), codec.decode(encoded)[0].numpy().T


def run(*args: str | Path) -> int:
    return cli_main([str(a) for a in args])


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


# ------------------------------------------------------------------------------ equal to Codec
@pytest.mark.parametrize("name", list(CODECS))
def test_roundtrip_equals_codec_encode_decode(name: str, checkpoints, tmp_path: Path, capsys) -> None:
    codec = Codec.from_checkpoint(checkpoints[name])
    audio = write_audio(tmp_path / "in.wav", codec.sample_rate, codec.channels, 0.5)
    assert run("encode", tmp_path / "in.wav", tmp_path / "a.cpc", "--checkpoint", checkpoints[name]) == 0
    assert "wrote" in capsys.readouterr().out
    # no --checkpoint: the path recorded in the file
    assert run("decode", tmp_path / "a.cpc", tmp_path / "out.wav", "--subtype", "FLOAT") == 0
    compressed = read_compressed(tmp_path / "a.cpc")
    n_q = compressed.header.n_q
    codes, decoded = reference(codec, audio, n_q)
    np.testing.assert_array_equal(compressed.codes, codes)
    assert (compressed.header.scales is not None) == codec.normalize
    out, rate = sf.read(tmp_path / "out.wav", dtype="float32", always_2d=True)
    assert rate == codec.sample_rate and out.shape == audio.shape
    np.testing.assert_allclose(out, decoded, atol=1e-6, rtol=0)
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("name", list(CODECS))
def test_chunked_coding_equals_whole_signal_coding(name: str, checkpoints, tmp_path: Path, monkeypatch) -> None:
    import sys

    from codecplatform.nn import streaming as streaming_module

    streamed = []
    real_streaming = streaming_module.streaming

    def spy_streaming(module):
        streamed.append(type(module).__name__)
        return real_streaming(module)

    codec = Codec.from_checkpoint(checkpoints[name])
    # the codec's own chunking rules run wherever codecplatform.models imported `streaming`
    for loaded in [m for n, m in sys.modules.items() if n.startswith("codecplatform.models.")]:
        if getattr(loaded, "streaming", None) is real_streaming:
            monkeypatch.setattr(loaded, "streaming", spy_streaming)
    audio = write_audio(tmp_path / "in.wav", codec.sample_rate, codec.channels, 0.5, seed=1)
    chunks = ["--chunk_seconds", "0.05", "--context_seconds", "0.02"]  # 10 chunks, DAC context 0.02 s > its field
    assert run("encode", tmp_path / "in.wav", tmp_path / "a.cpc", "--checkpoint", checkpoints[name], *chunks) == 0
    assert run("decode", tmp_path / "a.cpc", tmp_path / "out.wav", "--subtype", "FLOAT", *chunks) == 0
    compressed = read_compressed(tmp_path / "a.cpc")
    codes, decoded = reference(codec, audio, compressed.header.n_q)
    out, _ = sf.read(tmp_path / "out.wav", dtype="float32", always_2d=True)
    # streaming of the file (the probes run in codecplatform.nn.streaming.streams_exactly)
    family = STREAMING.get(name.removesuffix("_normalized"))
    stream = family is not None
    assert streamed == ([f"{family}Encoder", f"{family}Decoder"] if stream else [])
    if codec.normalize and codec.segment_length is None:  # the first pass finds the whole file's scale
        scale = float(np.sqrt(np.mean(audio.mean(axis=1, dtype=np.float64) ** 2)) + 1e-8)
        np.testing.assert_allclose(compressed.header.scales, [scale], rtol=1e-6)
    if stream:  # the last frame may differ (zero- vs reflection-completed)
        np.testing.assert_array_equal(compressed.codes[:, :-1], codes[:, :-1])
        np.testing.assert_allclose(out[: -4 * codec.hop_length], decoded[: -4 * codec.hop_length], atol=1e-5, rtol=0)
    elif name == "muffin":  # GRN normalizes by a mean over the whole time axis: chunks see their own mean
        assert np.mean(compressed.codes != codes) < 0.01
        error = np.mean((out - decoded) ** 2) / np.mean(decoded**2)
        assert error < 1e-2
    else:  # segments are independent / the context covers the receptive field: identical codes
        np.testing.assert_array_equal(compressed.codes, codes)
        np.testing.assert_allclose(out, decoded, atol=1e-5, rtol=0)


def test_context_matters_for_codecs_that_neither_stream_nor_segment(checkpoints, tmp_path: Path) -> None:
    codec = Codec.from_checkpoint(checkpoints["dac"])
    audio = write_audio(tmp_path / "in.wav", codec.sample_rate, codec.channels, 0.5, seed=2)
    args = ["--checkpoint", str(checkpoints["dac"]), "--chunk_seconds", "0.05", "--context_seconds", "0"]
    assert run("encode", tmp_path / "in.wav", tmp_path / "a.cpc", *args) == 0
    codes, _ = reference(codec, audio, read_compressed(tmp_path / "a.cpc").header.n_q)
    assert (read_compressed(tmp_path / "a.cpc").codes != codes).any()  # chunk borders show without context


def test_streaming_is_used_only_where_it_is_exact(checkpoints) -> None:
    for name, expected in (("encodec24", True), ("encodec48", False), ("dac", False)):
        codec = Codec.from_checkpoint(checkpoints[name])
        hop = codec.hop_length
        assert streams_exactly(codec.encoder, torch.zeros(1, codec.channels, 16 * hop), 16) is expected, name
        latents = codec.quantizer.decode(torch.zeros(1, 1, 16, dtype=torch.long))
        assert streams_exactly(codec.decoder, latents, 16 * hop) is expected, name
    # a causal decoder that trims its transposed convolutions on both sides holds samples back
    from codecplatform.generators.seanet import SEANetDecoder

    held_back = SEANetDecoder(dimension=8, n_filters=4, ratios=[4, 2], causal=True, trim_right_ratio=0.5)
    assert not streams_exactly(held_back, torch.zeros(1, 8, 16), 16 * 8)


# ------------------------------------------------------------------------------- bounded memory
def test_audio_is_read_and_written_in_chunks(checkpoints, tmp_path: Path, monkeypatch) -> None:
    codec = Codec.from_checkpoint(checkpoints["dac"])
    write_audio(tmp_path / "in.wav", codec.sample_rate, codec.channels, 1.0)
    reads, writes = [], []
    real_read, real_write = sf.SoundFile.read, sf.SoundFile.write

    def spy_read(self, frames=-1, *args, **kwargs):
        reads.append(frames)
        return real_read(self, frames, *args, **kwargs)

    def spy_write(self, data):
        writes.append(len(data))
        return real_write(self, data)

    monkeypatch.setattr(sf.SoundFile, "read", spy_read)
    monkeypatch.setattr(sf.SoundFile, "write", spy_write)
    chunk, context = 0.1, 0.02
    args = ["--chunk_seconds", str(chunk), "--context_seconds", str(context)]
    assert run("encode", tmp_path / "in.wav", tmp_path / "a.cpc", "--checkpoint", checkpoints["dac"], *args) == 0
    assert run("decode", tmp_path / "a.cpc", tmp_path / "out.wav", *args) == 0
    chunk_samples = round(chunk * codec.sample_rate / codec.hop_length) * codec.hop_length
    context_samples = math.ceil(context * codec.frame_rate) * codec.hop_length
    assert len(reads) >= 10 and all(0 < n <= chunk_samples + 2 * context_samples for n in reads)
    assert len(writes) >= 10 and max(writes) <= chunk_samples
    assert sum(writes) == sf.info(tmp_path / "in.wav").frames


def test_resampled_reads_equal_resampling_the_whole_file(tmp_path: Path) -> None:
    audio = write_audio(tmp_path / "in.wav", 16000, 2, 0.5)
    whole = resample(torch.from_numpy(audio.mean(axis=1, keepdims=True).T.copy()), 16000, 24000)  # (1, T')
    with AudioReader(tmp_path / "in.wav", 24000, 1) as reader:
        assert reader.length == whole.shape[-1] == math.ceil(audio.shape[0] * 3 / 2)
        bounds = [0, 1, 997, 3000, 7001, reader.length]
        pieces = torch.cat([reader.read(a, b) for a, b in zip(bounds[:-1], bounds[1:])], dim=-1)
    torch.testing.assert_close(pieces, whole, atol=1e-6, rtol=0)


def test_reader_maps_channels_like_the_training_data(tmp_path: Path) -> None:
    mono = write_audio(tmp_path / "mono.wav", 8000, 1, 0.1)
    with AudioReader(tmp_path / "mono.wav", 8000, 2) as reader:  # mono is repeated
        np.testing.assert_array_equal(reader.read(0, reader.length).numpy(), np.repeat(mono.T, 2, axis=0))
    write_audio(tmp_path / "stereo.wav", 8000, 2, 0.1)
    with pytest.raises(ValueError, match=f"{tmp_path / 'stereo.wav'} has 2 channels, cannot make 3"):
        AudioReader(tmp_path / "stereo.wav", 8000, 3)


def test_encode_resamples_and_maps_channels(checkpoints, tmp_path: Path) -> None:
    write_audio(tmp_path / "in.wav", 16000, 2, 0.3)  # stereo 16 kHz into a mono 24 kHz model
    assert run("encode", tmp_path / "in.wav", tmp_path / "a.cpc", "--checkpoint", checkpoints["encodec24"]) == 0
    header = read_compressed(tmp_path / "a.cpc").header
    assert header.sample_rate == 24000 and header.channels == 1
    assert header.length == math.ceil(sf.info(tmp_path / "in.wav").frames * 3 / 2)
    assert run("decode", tmp_path / "a.cpc", tmp_path / "out.wav") == 0
    info = sf.info(tmp_path / "out.wav")
    assert (info.samplerate, info.channels, info.frames, info.subtype) == (24000, 1, header.length, "PCM_16")


def test_encode_reports_the_input_and_its_conversion(checkpoints, tmp_path: Path, capsys) -> None:
    checkpoint = checkpoints["encodec24"]  # mono 24 kHz
    write_audio(tmp_path / "in.wav", 16000, 2, 0.3)
    assert run("encode", tmp_path / "in.wav", tmp_path / "a.cpc", "--checkpoint", checkpoint) == 0
    out = capsys.readouterr().out
    assert "at 24000 Hz, 1 ch; input 16000 Hz, 2 ch: resampled 16000 -> 24000 Hz, 2 channels averaged to mono)" in out
    write_audio(tmp_path / "same.wav", 24000, 1, 0.3)
    assert run("encode", tmp_path / "same.wav", tmp_path / "b.cpc", "--checkpoint", checkpoint) == 0
    assert "input 24000 Hz, 1 ch: no conversion)" in capsys.readouterr().out
    write_audio(tmp_path / "mono.wav", 48000, 1, 0.2)
    assert run("encode", tmp_path / "mono.wav", tmp_path / "c.cpc", "--checkpoint", checkpoints["encodec48"]) == 0
    assert "input 48000 Hz, 1 ch: mono repeated to 2 channels)" in capsys.readouterr().out


def test_outputs_follow_the_umask(checkpoints, tmp_path: Path) -> None:
    """.cpc and decoded files are ordinary files: mode 0666 less the umask (not mkstemp's 0600)."""
    import os

    write_audio(tmp_path / "in.wav", 24000, 1, 0.2)
    previous = os.umask(0o022)
    try:
        for umask in (0o022, 0o002):
            os.umask(umask)
            cpc, wav = tmp_path / f"{umask:o}.cpc", tmp_path / f"{umask:o}.wav"
            assert run("encode", tmp_path / "in.wav", cpc, "--checkpoint", checkpoints["encodec24"]) == 0
            assert run("decode", cpc, wav) == 0
            assert cpc.stat().st_mode & 0o777 == 0o666 & ~umask
            assert wav.stat().st_mode & 0o777 == 0o666 & ~umask
    finally:
        os.umask(previous)


# ------------------------------------------------------------------------------------ bandwidth
def test_bandwidth_picks_codebooks_and_size(checkpoints, tmp_path: Path, capsys) -> None:
    checkpoint = str(checkpoints["encodec24"])
    write_audio(tmp_path / "in.wav", 24000, 1, 0.5)
    sizes = {}
    for bandwidth, n_q in ((12, 1), (24, 2), (48, 4)):
        out = tmp_path / f"{bandwidth}.cpc"
        assert run("encode", tmp_path / "in.wav", out, "--checkpoint", checkpoint, "--bandwidth", str(bandwidth)) == 0
        header = read_compressed(out).header
        assert header.n_q == n_q and header.codebook_sizes == [16] * n_q
        sizes[bandwidth] = out.stat().st_size
        nominal = bandwidth * 1000 * header.duration / 8
        header_bytes, frame_bytes = sizes[bandwidth] - header.payload_length, 4 * n_q / 8
        assert header_bytes <= sizes[bandwidth] - nominal <= header_bytes + frame_bytes + 1  # a partial last frame
    assert sizes[12] < sizes[24] < sizes[48]
    assert run("encode", tmp_path / "in.wav", tmp_path / "n.cpc", "--checkpoint", checkpoint, "--n_q", "2") == 0
    assert read_compressed(tmp_path / "n.cpc").header.n_q == 2
    capsys.readouterr()
    # a rate the model does not have is refused in one line naming the ones it has (not rounded down)
    for bandwidth in ("30", "60", "5"):
        out = tmp_path / "x.cpc"
        status = run("encode", tmp_path / "in.wav", out, "--checkpoint", checkpoint, "--bandwidth", bandwidth)
        assert status == 2
        assert error_lines(capsys.readouterr().err) == [
            f"codecplatform encode: error: --bandwidth {bandwidth} kbps is not one of this model's "
            "bandwidths: 12, 24, 48 kbps"
        ]
        assert not out.exists()


def test_bandwidth_as_listed_is_accepted(checkpoints, tmp_path: Path, capsys) -> None:
    """A model without ``bandwidths`` runs at every codebook count; a rate typed as the error lists
    it (3 significant digits) is that operating point."""
    from codecplatform.inference import choose_n_q

    codec = Codec.from_checkpoint(checkpoints["dac"])
    for kbps, count in codec.operating_points().items():
        assert choose_n_q(codec, float(f"{kbps:.3g}"), None) == count
    with pytest.raises(ValueError, match="is not one of this model's bandwidths"):
        choose_n_q(codec, 1.5 * min(codec.operating_points()), None)


@pytest.mark.parametrize("name", ["encodec24", "muffin", "spectrostream"])
def test_decode_a_subset_of_codebooks(name: str, checkpoints, tmp_path: Path, capsys) -> None:
    """Codebook ablation from the command line equals ``Codec.decode(codebooks=...)``."""
    codec = Codec.from_checkpoint(checkpoints[name])
    audio = write_audio(tmp_path / "in.wav", codec.sample_rate, codec.channels, 0.3)
    assert run("encode", tmp_path / "in.wav", tmp_path / "a.cpc", "--checkpoint", checkpoints[name]) == 0
    compressed = read_compressed(tmp_path / "a.cpc")
    encoded = codec.encode(torch.from_numpy(audio.T.copy())[None], n_q=compressed.header.n_q)
    n_q, bits = compressed.header.n_q, math.log2(compressed.header.codebook_sizes[0])
    capsys.readouterr()
    for subset in ([0], [1], [0, 2]):
        out = tmp_path / f"{subset}.wav"
        flag = ",".join(map(str, subset))
        assert run("decode", tmp_path / "a.cpc", out, "--subtype", "FLOAT", "--codebooks", flag) == 0
        # the report names what was decoded: these codebooks and their rate, not the file's
        kbps = len(subset) * bits * compressed.header.frame_rate / 1000
        which = ("codebook " if len(subset) == 1 else "codebooks ") + flag
        report = capsys.readouterr().out
        assert f"{which} of the file's {n_q} (" in report and f"): {kbps:.3g} kbps nominal" in report
        decoded, _ = sf.read(out, dtype="float32", always_2d=True)
        np.testing.assert_allclose(decoded, codec.decode(encoded, codebooks=subset)[0].numpy().T, atol=1e-5, rtol=0)
    capsys.readouterr()
    for bad in ("7", "x"):
        assert run("decode", tmp_path / "a.cpc", tmp_path / "bad.wav", "--codebooks", bad) == 1
        err = capsys.readouterr().err
        assert err.count("error:") == 1 and ("--codebooks" in err or "out of range" in err)
        assert not (tmp_path / "bad.wav").exists() and leftovers(tmp_path) == []


def test_help(capsys) -> None:
    assert run("encode", "--help") == 0
    assert "--bandwidth" in capsys.readouterr().out
    assert run("decode", "--help") == 0
    assert "--checkpoint" in capsys.readouterr().out


# ------------------------------------------------------------------------------------- failures
def test_decode_failures_are_clear_and_write_nothing(checkpoints, tmp_path: Path, capsys) -> None:
    write_audio(tmp_path / "in.wav", 24000, 1, 0.3)
    good = tmp_path / "good.cpc"
    assert run("encode", tmp_path / "in.wav", good, "--checkpoint", checkpoints["encodec24"]) == 0
    data = good.read_bytes()
    other = tmp_path / "other.ckpt"
    save_tiny_checkpoint("encodec24", other, seed=1)  # same architecture, other weights
    cases = {
        "truncated": (data[:-3], [], "is truncated"),
        "corrupted": (data[:-1] + bytes([data[-1] ^ 1]), [], "corrupted payload"),
        "magic": (b"XXXX" + data[4:], [], "not a codecplatform compressed file"),
        "version": (data[:4] + bytes([9, 0]) + data[6:], [], "format version 9"),
        "model": (data, ["--checkpoint", str(other)], "was encoded with model"),
        "dac": (data, ["--checkpoint", str(checkpoints["dac"])], "was encoded with model"),
    }
    capsys.readouterr()
    for case, (content, extra, message) in cases.items():
        source = tmp_path / f"{case}.cpc"
        source.write_bytes(content)
        out = tmp_path / f"{case}.wav"
        assert run("decode", source, out, *extra) == 1, case
        err = capsys.readouterr().err
        assert message in err and str(source) in err, (case, err)
        assert not out.exists() and leftovers(tmp_path) == [], case
    run("decode", good, tmp_path / "m.wav", "--checkpoint", other)
    err_model = capsys.readouterr().err
    assert str(checkpoints["encodec24"].resolve()) in err_model and str(other) in err_model


def test_decode_needs_a_checkpoint_when_the_recorded_one_is_gone(checkpoints, tmp_path: Path, capsys) -> None:
    checkpoint = tmp_path / "moved.ckpt"
    checkpoint.write_bytes(checkpoints["dac"].read_bytes())
    write_audio(tmp_path / "in.wav", 44100, 1, 0.2)
    assert run("encode", tmp_path / "in.wav", tmp_path / "a.cpc", "--checkpoint", checkpoint) == 0
    checkpoint.rename(tmp_path / "elsewhere.ckpt")
    capsys.readouterr()
    assert run("decode", tmp_path / "a.cpc", tmp_path / "out.wav") == 2
    assert "pass --checkpoint" in capsys.readouterr().err and not (tmp_path / "out.wav").exists()
    assert run("decode", tmp_path / "a.cpc", tmp_path / "out.wav", "--checkpoint", tmp_path / "elsewhere.ckpt") == 0


def test_encode_failures_write_nothing(checkpoints, tmp_path: Path, capsys) -> None:
    (tmp_path / "bad.wav").write_text("not audio")
    checkpoint = str(checkpoints["encodec24"])
    assert run("encode", tmp_path / "bad.wav", tmp_path / "a.cpc", "--checkpoint", checkpoint) == 1
    assert f"cannot read audio file {tmp_path / 'bad.wav'}" in capsys.readouterr().err
    assert run("encode", tmp_path / "missing.wav", tmp_path / "a.cpc", "--checkpoint", checkpoint) == 2
    assert "audio file not found" in capsys.readouterr().err
    write_audio(tmp_path / "in.wav", 24000, 1, 0.1)
    encode = ["encode", tmp_path / "in.wav", tmp_path / "a.cpc", "--checkpoint", checkpoint]
    assert run(*encode, "--device", "gpu0") == 2
    assert "--device must be cpu or cuda[:N], got 'gpu0'" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert run(*encode, "--device", "cuda") == 2
        assert "CUDA is not available" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.wav", "in.wav"]


# ------------------------------------------------------------------------ bad input at the borders
def error_lines(err: str) -> list[str]:
    """The stderr lines of a failed command; a traceback would show as more lines."""
    return [line for line in err.splitlines() if line.strip()]


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_encode_refuses_non_finite_audio_and_writes_nothing(bad, checkpoints, tmp_path: Path, capsys) -> None:
    audio = write_audio(tmp_path / "in.wav", 24000, 1, 0.3)
    audio[5000, 0] = bad
    sf.write(tmp_path / "in.wav", audio, 24000, subtype="FLOAT")
    capsys.readouterr()
    out = tmp_path / "a.cpc"
    args = ["--chunk_seconds", "0.05"]  # the bad sample lies in a later chunk
    assert run("encode", tmp_path / "in.wav", out, "--checkpoint", checkpoints["encodec24"], *args) == 1
    lines = error_lines(capsys.readouterr().err)
    assert len(lines) == 1 and lines[0].startswith("codecplatform encode: error: "), lines
    assert f"{tmp_path / 'in.wav'} holds a non-finite sample" in lines[0] and "at sample 5000" in lines[0]
    assert not out.exists() and leftovers(tmp_path) == []
    with AudioReader(tmp_path / "in.wav", 24000, 1) as reader:  # the reader refuses, whatever reads it
        reader.read(0, 4000)
        with pytest.raises(ValueError, match="non-finite sample .* at sample 5000"):
            reader.read(4000, 6000)


@pytest.mark.parametrize("content", [b"this is a text file, not a checkpoint\n", b"", b"PK\x03\x04 truncated zip"])
def test_encode_refuses_a_file_that_is_no_checkpoint(content, tmp_path: Path, capsys) -> None:
    write_audio(tmp_path / "in.wav", 24000, 1, 0.1)
    checkpoint = tmp_path / "notes.ckpt"
    checkpoint.write_bytes(content)
    out = tmp_path / "a.cpc"
    status = run("encode", tmp_path / "in.wav", out, "--checkpoint", checkpoint)
    assert status != 0
    lines = error_lines(capsys.readouterr().err)
    assert len(lines) == 1 and "Traceback" not in lines[0], lines
    assert lines[0].startswith("codecplatform encode: error: ") and lines[0].count("error:") == 1
    assert f"{checkpoint} is not a codec checkpoint" in lines[0]
    assert not out.exists() and leftovers(tmp_path) == []


# --------------------------------------------------------------------- untrusted files run no code
class RunsCode:
    """A pickle payload: unpickling it creates ``marker`` (a stand-in for arbitrary code)."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def plant(path: Path, marker: Path) -> None:
    """Replace ``path`` by a checkpoint-looking file whose unpickling would run code."""
    torch.save({"codec_config": {"class_path": "x"}, "state_dict": {}, "payload": RunsCode(marker)}, path)


def test_decode_refuses_a_planted_checkpoint_before_unpickling_it(checkpoints, tmp_path: Path, capsys) -> None:
    checkpoint = tmp_path / "model.ckpt"
    checkpoint.write_bytes(checkpoints["encodec24"].read_bytes())
    write_audio(tmp_path / "in.wav", 24000, 1, 0.2)
    assert run("encode", tmp_path / "in.wav", tmp_path / "a.cpc", "--checkpoint", checkpoint) == 0
    header = read_compressed(tmp_path / "a.cpc").header
    assert header.checkpoint_sha256 == file_sha256(checkpoint)
    marker = tmp_path / "code_ran"
    plant(checkpoint, marker)  # the path the .cpc names now holds a pickle that runs code
    capsys.readouterr()
    assert run("decode", tmp_path / "a.cpc", tmp_path / "out.wav") == 1
    lines = error_lines(capsys.readouterr().err)
    assert len(lines) == 1 and str(checkpoint) in lines[0] and str(tmp_path / "a.cpc") in lines[0], lines
    assert "is not the file" in lines[0]
    assert not marker.exists() and not (tmp_path / "out.wav").exists()

    # a forged .cpc that names the planted file with its true hash: torch.load(weights_only=True) refuses it
    forged = tmp_path / "forged.cpc"
    header.checkpoint_sha256 = file_sha256(checkpoint)
    write_compressed(forged, header, read_compressed(tmp_path / "a.cpc").codes)
    assert run("decode", forged, tmp_path / "out.wav") == 1
    lines = error_lines(capsys.readouterr().err)
    assert len(lines) == 1 and f"{checkpoint} is not a codec checkpoint" in lines[0], lines
    assert not marker.exists() and not (tmp_path / "out.wav").exists()
    # named explicitly: refused the same way
    assert run("decode", tmp_path / "a.cpc", tmp_path / "out.wav", "--checkpoint", checkpoint) == 1
    assert "weights_only=True" in capsys.readouterr().err
    assert not marker.exists() and not (tmp_path / "out.wav").exists() and leftovers(tmp_path) == []


def test_decode_of_a_file_without_checkpoint_hash_needs_an_explicit_checkpoint(
    checkpoints, tmp_path: Path, capsys
) -> None:
    """A file that records no checkpoint hash (``encode_file`` without ``checkpoint_sha256``) is read,
    but the checkpoint it names is not loaded unchecked."""
    write_audio(tmp_path / "in.wav", 24000, 1, 0.2)
    assert run("encode", tmp_path / "in.wav", tmp_path / "a.cpc", "--checkpoint", checkpoints["encodec24"]) == 0
    compressed = read_compressed(tmp_path / "a.cpc")
    compressed.header.checkpoint_sha256 = None
    write_compressed(tmp_path / "unhashed.cpc", compressed.header, compressed.codes)
    capsys.readouterr()
    assert run("decode", tmp_path / "unhashed.cpc", tmp_path / "out.wav") == 2
    err = capsys.readouterr().err
    assert "records no hash of its checkpoint" in err and "pass --checkpoint" in err
    assert not (tmp_path / "out.wav").exists()
    assert run("decode", tmp_path / "unhashed.cpc", tmp_path / "out.wav", "--checkpoint", checkpoints["encodec24"]) == 0
    assert run("decode", tmp_path / "a.cpc", tmp_path / "out2.wav") == 0
    np.testing.assert_array_equal(sf.read(tmp_path / "out.wav")[0], sf.read(tmp_path / "out2.wav")[0])
