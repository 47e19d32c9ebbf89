"""The vocoder in chunks as the official MuCodec inference runs it (``vocoder_chunk_infer``: 1024 mel
frames every 256, linear crossfade over the overlap): equal to one pass away from the chunk borders,
the input's length, a generator that never sees more than a chunk, and MuCodec.decode using it."""

from __future__ import annotations

import copy
import inspect
from pathlib import Path

import pytest
import torch

from codecplatform.config import compose_config, instantiate, merge_config
from codecplatform.mucodec.codec import MuCodec
from codecplatform.mucodec.vocoder import HifiGanVocoder

EXPERIMENTS = Path(__file__).resolve().parents[2] / "experiments"
CHUNK, HOP = 64, 16  # the official ratio (4 chunks over every frame), small for the CPU


@pytest.fixture(scope="module")
def vocoder() -> HifiGanVocoder:
    """The tiny vocoder with weights scaled up (a fresh HiFi-GAN's output is ~1e-9: every difference
    would pass any tolerance)."""
    torch.manual_seed(0)
    v = HifiGanVocoder(
        n_mels=64, upsample_initial_channel=64, resblock_kernel_sizes=[3], resblock_dilation_sizes=[[1, 3]]
    )
    v.remove_weight_norm()
    with torch.no_grad():
        for p in v.parameters():
            if p.dim() > 1:
                p.normal_(0.0, (p.shape[1] * p.shape[-1]) ** -0.5)
    return v.eval()


def frame_peaks(audio: torch.Tensor, hop: int) -> torch.Tensor:
    """(B, C, N * hop) -> (N,) the largest |value| per mel frame."""
    return audio.abs().reshape(*audio.shape[:2], -1, hop).amax(dim=(0, 1, 3))


def receptive_field(vocoder: HifiGanVocoder) -> int:
    """Mel frames either side of a frame whose output changes when that frame changes."""
    mel = torch.randn(1, 1, 41, vocoder.n_mels)
    moved = mel.clone()
    moved[:, :, 20] += 1.0
    with torch.no_grad():
        changed = frame_peaks(vocoder(moved) - vocoder(mel), vocoder.hop_length) > 1e-6
    return int((changed.nonzero()[:, 0] - 20).abs().max())


def test_chunked_equals_one_pass_away_from_chunk_borders(vocoder):
    reach = receptive_field(vocoder)
    assert 0 < reach < HOP // 2  # else no frame would be far from every border
    n = 300  # not a whole number of hops: the last chunk is shorter
    mel = torch.randn(1, 2, n, vocoder.n_mels, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        whole = vocoder(mel)
    chunked = vocoder.synthesize(mel, CHUNK, HOP)
    assert chunked.shape == whole.shape == (1, 2, n * vocoder.hop_length)
    frame = torch.arange(n)
    to_border = torch.minimum(frame % HOP, HOP - frame % HOP)  # chunks start and end at multiples of HOP
    far = (to_border > reach) | (frame < HOP - reach)  # the first chunk starts at the signal's own start
    error = frame_peaks(chunked - whole, vocoder.hop_length)
    scale = float(frame_peaks(whole, vocoder.hop_length).mean())
    assert float(error[far].max()) < 1e-5 * scale
    assert float(error[~far].max()) > 1e-3 * scale  # the borders do differ: the comparison is not vacuous


def test_crossfade_blends_neighbouring_chunks_linearly(vocoder, monkeypatch):
    """With a generator that outputs its chunk's index, the output is the official blend: each new
    chunk fades in linearly from 0 to 1 over the overlap while what came before fades out."""
    calls = []

    def constant(mel: torch.Tensor) -> torch.Tensor:
        calls.append(mel.shape[2])
        return torch.full((*mel.shape[:2], mel.shape[2] * vocoder.hop_length), float(len(calls)))

    monkeypatch.setattr(vocoder, "forward", constant)
    n, chunk, hop = 40, 16, 8
    out = vocoder.synthesize(torch.zeros(1, 1, n, vocoder.n_mels), chunk, hop)[0, 0]
    assert calls == [16, 16, 16, 16]  # chunks at 0, 8, 16, 24 (24 + 16 reaches the end)
    h = vocoder.hop_length
    overlap = (chunk - hop) * h
    ramp = torch.linspace(0, 1, overlap)
    expected = torch.ones(16 * h)
    for index, start in enumerate((8, 16, 24), start=2):
        s = start * h
        mixed = expected[s : s + overlap] * (1 - ramp) + index * ramp
        expected = torch.cat([expected[:s], mixed, torch.full((hop * h,), float(index))])
    assert out.shape == (n * h,) and torch.allclose(out, expected)


def test_long_input_is_vocoded_a_chunk_at_a_time(vocoder, monkeypatch):
    seen = []
    forward = vocoder.hifigan.forward
    monkeypatch.setattr(vocoder.hifigan, "forward", lambda mel: (seen.append(mel.shape[1]), forward(mel))[1])
    n = 200
    out = vocoder.synthesize(torch.randn(1, 1, n, vocoder.n_mels), CHUNK, HOP)
    assert out.shape == (1, 1, n * vocoder.hop_length) and bool(torch.isfinite(out).all())
    assert max(seen) == CHUNK and len(seen) == (n - CHUNK + HOP - 1) // HOP + 1
    seen.clear()
    vocoder.synthesize(torch.randn(1, 1, CHUNK, vocoder.n_mels), CHUNK, HOP)
    assert seen == [CHUNK]  # up to one chunk: one pass
    with pytest.raises(ValueError, match="hop_frames"):
        vocoder.synthesize(torch.randn(1, 1, n, vocoder.n_mels), CHUNK, CHUNK + 1)


def test_mucodec_decode_vocodes_in_the_official_chunks(monkeypatch):
    defaults = inspect.signature(MuCodec).parameters
    assert (defaults["vocoder_chunk_frames"].default, defaults["vocoder_hop_frames"].default) == (1024, 256)
    real = compose_config(EXPERIMENTS / "mucodec" / "codec_1x16384.yaml")["model"]["init_args"]["codec"]["init_args"]
    assert (real["vocoder_chunk_frames"], real["vocoder_hop_frames"]) == (1024, 256)
    tiny = merge_config(
        compose_config(EXPERIMENTS / "mucodec" / "codec_1x16384.yaml"),
        compose_config(EXPERIMENTS / "tiny" / "mucodec_codec.yaml"),
    )["model"]["init_args"]["codec"]
    tiny["init_args"].update(vocoder_chunk_frames=16, vocoder_hop_frames=4)
    with pytest.warns(UserWarning, match="untrained"):
        codec = instantiate(copy.deepcopy(tiny), MuCodec)
    chunks = []
    synthesize = codec.vocoder.synthesize
    monkeypatch.setattr(
        codec.vocoder, "synthesize", lambda mel, c, h: (chunks.append((mel.shape[2], c, h)), synthesize(mel, c, h))[1]
    )
    codes = torch.zeros(1, 1, 10, dtype=torch.long)  # 5 latent frames -> 40 mel frames
    audio = codec.decode(codes)
    assert chunks == [(40, 16, 4)] and audio.shape[-1] == 10 * codec.samples_per_frame
