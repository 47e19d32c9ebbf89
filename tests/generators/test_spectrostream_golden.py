"""SpectroStream against the official JAX code (magenta/magenta-realtime ``magenta_rt/jax/spectrostream.py``
on google/sequence-layers; commits in the script): the STFT front end, the inverse STFT, the residual
vector quantizer and the encoder and decoder (official layout at widths 2 .. 32, the official weights
converted to ours) give the official outputs on the official inputs. The official weights are the
released layout (flax paths in safetensors) read through the importer's key map
(:mod:`codecplatform.checkpoints.spectrostream`), so these tests also check the SpectroStream import.
Fixtures: ``tests/fixtures/spectrostream/make_spectrostream_golden.py``."""

from pathlib import Path

import numpy as np
import pytest
import torch

from codecplatform.checkpoints.spectrostream import convert_spectrostream_params, read_parameter_file
from codecplatform.dsp.stft2d import istft_2d, stft_2d
from codecplatform.generators.spectrostream import (
    SpectroStreamDecoder,
    SpectroStreamEncoder,
    STFTAnalysis,
    STFTSynthesis,
)
from codecplatform.quantizers.ema_residual import ResidualVectorQuantizer

SIZES = dict(frame_length=480, hop_length=240, fft_length=480)
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "spectrostream"


def load(name: str) -> dict[str, torch.Tensor]:
    with np.load(FIXTURES / name) as data:
        return {k: torch.from_numpy(data[k]) for k in data.files}


def official_weights(part: str) -> dict[str, torch.Tensor]:
    """Our ``part`` (encoder, decoder, quantizer) state dict from the released-layout fixture files."""
    params = {**read_parameter_file(FIXTURES / "encoder.safetensors")}
    params.update(read_parameter_file(FIXTURES / "soundstream.safetensors"))
    converted = convert_spectrostream_params(params)
    return {k[len(part) + 1 :]: v for k, v in converted.items() if k.startswith(part + ".")}


@pytest.fixture(scope="module")
def golden() -> dict[str, torch.Tensor]:
    return load("golden.npz")


def channels_last(spec: torch.Tensor) -> torch.Tensor:
    """Ours (B, 2C, N, F) -> the official [b, n, f, 2C]."""
    return spec.permute(0, 2, 3, 1)


def test_stft_front_end_and_inverse_match_the_official(golden):
    audio = golden["stft_audio"].transpose(1, 2)  # [b, t, c] -> (B, C, T)
    ours = channels_last(stft_2d(audio, **SIZES))
    torch.testing.assert_close(ours, golden["stft_spectrum"], rtol=1e-5, atol=2e-5)
    torch.testing.assert_close(
        channels_last(STFTAnalysis(480, 240, 480)(audio)), golden["stft_spectrum"], rtol=1e-5, atol=2e-5
    )
    spectrum = golden["istft_spectrum"].permute(0, 3, 1, 2)  # [b, n, f, 2C] -> (B, 2C, N, F)
    for synthesis in (istft_2d(spectrum, **SIZES), STFTSynthesis(480, 240, 480)(spectrum)):
        torch.testing.assert_close(synthesis.transpose(1, 2), golden["istft_audio"], rtol=1e-5, atol=1e-6)
    # analysis then synthesis, through the official pair
    roundtrip = istft_2d(stft_2d(audio, **SIZES), **SIZES)
    torch.testing.assert_close(roundtrip.transpose(1, 2), golden["roundtrip_audio"], rtol=1e-5, atol=1e-6)


def test_residual_quantizer_matches_the_official(golden):
    codebooks = golden["rvq_codebooks"]  # (K, entries, D)
    rvq = ResidualVectorQuantizer(dimension=8, n_q=4, codebook_size=16).eval()
    rvq.load_state_dict(official_weights("quantizer"))  # the released embedding (K, N, D), imported
    assert all(torch.equal(layer.embed, entries) for layer, entries in zip(rvq.layers, codebooks))
    z = golden["rvq_embeddings"].transpose(1, 2)  # [b, t, d] -> (B, D, T')
    valid = golden["rvq_mask"]  # [b, t]: the official masks padded frames to 0
    codes = rvq.encode(z)  # (B, K, T')
    assert torch.equal(codes.transpose(1, 2)[valid], golden["rvq_codes"][valid].long())
    assert torch.equal(rvq.encode(z, n_q=2).transpose(1, 2)[valid], golden["rvq_codes_2"][valid].long())
    torch.testing.assert_close(
        rvq.decode(codes).transpose(1, 2)[valid], golden["rvq_decoded"][valid], rtol=1e-5, atol=1e-6
    )
    out = rvq(z)  # the training-path loop at inference: every stage, the sum
    torch.testing.assert_close(out.z_q.transpose(1, 2)[valid], golden["rvq_quantized"][valid], rtol=1e-5, atol=1e-6)
    assert torch.equal(out.codes.transpose(1, 2)[valid], golden["rvq_encodings"].argmax(-1)[valid])


def test_encoder_and_decoder_match_the_official():
    golden = load("codec_golden.npz")
    tiny = dict(channels=2, dimension=8, base_depth=2, norm="none")  # official ratios, mults, fusion, look-ahead 1
    encoder, decoder = SpectroStreamEncoder(**tiny).eval(), SpectroStreamDecoder(**tiny).eval()
    encoder.load_state_dict(official_weights("encoder"))
    decoder.load_state_dict(official_weights("decoder"))
    with torch.no_grad():
        z = encoder(golden["audio"].transpose(1, 2))  # (1, 8, 4)
        torch.testing.assert_close(z.transpose(1, 2), golden["z"], rtol=1e-5, atol=2e-5)
        y = decoder(golden["z"].transpose(1, 2))  # (1, 2, 4 * 1920): ours pads the look-ahead with zeros
        # the official decoder drops its look-ahead without padding: one embedding's samples fewer
        official = golden["y"].transpose(1, 2)
        assert y.shape[-1] == official.shape[-1] + decoder.hop_length
        torch.testing.assert_close(y[..., : official.shape[-1]], official, rtol=1e-5, atol=2e-6)
