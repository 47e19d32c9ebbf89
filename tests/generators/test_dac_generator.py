"""DAC encoder/decoder: shapes, gradients, official padding equivalence, layout, sizes, config."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from codecplatform.config import instantiate
from codecplatform.generators.base import Decoder, Encoder
from codecplatform.generators.dac import DACDecoder, DACEncoder, DACResidualUnit
from codecplatform.nn.conv import StreamableConv1d, StreamableConvTranspose1d
from codecplatform.nn.snake import Snake1d
from codecplatform.nn.streaming import streaming

TINY_ENC = {"d_model": 4, "strides": [2, 3], "dimension": 6}  # hop 6, widths 4 -> 8 -> 16
TINY_DEC = {"dimension": 6, "decoder_dim": 16, "rates": [3, 2]}  # widths 16 -> 8 -> 4


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# ----------------------------------------------------------------------------- shapes


@pytest.mark.parametrize("length", [1, 5, 6, 7, 12, 13, 60, 61])
@pytest.mark.parametrize("channels", [1, 2])
def test_shapes(length: int, channels: int) -> None:
    enc = DACEncoder(channels=channels, **TINY_ENC)
    dec = DACDecoder(channels=channels, **TINY_DEC)
    assert enc.hop_length == dec.hop_length == 6
    assert (enc.channels, enc.dimension, dec.channels, dec.dimension) == (channels, 6, channels, 6)
    z = enc(torch.randn(3, channels, length))
    assert z.shape == (3, 6, math.ceil(length / 6))
    x_hat = dec(z)
    assert x_hat.shape == (3, channels, z.shape[-1] * 6)
    assert x_hat.abs().max() <= 1.0  # tanh


@pytest.mark.parametrize("strides", [[2, 4], [5], [2, 4, 5], [3, 1, 2], [8, 8]])
def test_shapes_odd_even_and_unit_strides(strides: list[int]) -> None:
    enc = DACEncoder(d_model=2, strides=strides)
    dec = DACDecoder(dimension=enc.dimension, decoder_dim=8, rates=strides[::-1])
    hop = math.prod(strides)
    assert enc.dimension == 2 * 2 ** len(strides)  # official default latent size
    for length in (1, hop - 1, hop, 3 * hop + 1):
        z = enc(torch.randn(1, 1, max(length, 1)))
        assert z.shape[-1] == math.ceil(max(length, 1) / hop)
        assert dec(z).shape[-1] == z.shape[-1] * hop


def test_encoder_pads_like_official_preprocess() -> None:
    """Encoding T samples equals encoding them right-padded with zeros to a multiple of hop."""
    torch.manual_seed(0)
    enc = DACEncoder(**TINY_ENC)
    x = torch.randn(2, 1, 13)
    torch.testing.assert_close(enc(x), enc(F.pad(x, (0, 5))))


def test_gradient_reaches_input_and_all_parameters() -> None:
    torch.manual_seed(0)
    enc = DACEncoder(**TINY_ENC)
    dec = DACDecoder(**TINY_DEC)
    x = torch.randn(2, 1, 25, requires_grad=True)
    dec(enc(x)).square().mean().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    for name, p in [*enc.named_parameters(), *dec.named_parameters()]:
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


def test_bf16_autocast_runs() -> None:
    enc = DACEncoder(**TINY_ENC)
    dec = DACDecoder(**TINY_DEC)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        x_hat = dec(enc(torch.randn(1, 1, 24)))
    assert x_hat.shape == (1, 1, 24) and torch.isfinite(x_hat.float()).all()


def test_input_validation() -> None:
    enc = DACEncoder(**TINY_ENC)
    dec = DACDecoder(**TINY_DEC)
    with pytest.raises(ValueError, match="channels"):
        enc(torch.randn(1, 2, 12))
    with pytest.raises(ValueError, match="batch"):
        enc(torch.randn(1, 12))
    with pytest.raises(ValueError, match="no samples"):
        enc(torch.randn(1, 1, 0))
    with pytest.raises(ValueError, match=r"\(batch, 6, frames\)"):
        dec(torch.randn(1, 7, 4))
    with pytest.raises(TypeError):
        dec(torch.zeros(1, 6, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="strides"):
        DACEncoder(strides=[])
    with pytest.raises(ValueError, match="rates"):
        DACDecoder(rates=[2, 0])
    with pytest.raises(ValueError, match="decoder_dim"):
        DACDecoder(decoder_dim=2, rates=[2, 2])


def test_residual_unit_center_crops_a_shorter_branch() -> None:
    unit = DACResidualUnit(3)
    unit.block.append(nn.Conv1d(3, 3, 5))  # an unpadded conv shortens the branch by 4
    x = torch.randn(1, 3, 20)
    y = unit(x)
    assert y.shape == (1, 3, 16)
    torch.testing.assert_close(y - unit.block(x), x[..., 2:18])


def test_non_causal_refuses_streaming() -> None:
    with pytest.raises(RuntimeError, match="causal"), streaming(DACEncoder(**TINY_ENC)):
        pass


# ----------------------------------------------------------------------------- official padding


def official_conv(module: StreamableConv1d, x: Tensor) -> Tensor:
    """The official WNConv1d: symmetric zero padding ceil(s/2) (strided, kernel 2 s) or
    dilation * (k - 1) / 2 (stride 1)."""
    conv = module.conv
    (k,), (s,), (d,) = conv.kernel_size, conv.stride, conv.dilation
    pad = math.ceil(s / 2) if s > 1 else d * (k - 1) // 2
    return F.conv1d(x, conv.weight, conv.bias, stride=s, padding=pad, dilation=d)


def official_conv_transpose(module: StreamableConvTranspose1d, x: Tensor) -> Tensor:
    """The official WNConvTranspose1d: padding ceil(s/2), kernel 2 s."""
    convtr = module.convtr
    s = convtr.stride[0]
    return F.conv_transpose1d(x, convtr.weight, convtr.bias, stride=s, padding=math.ceil(s / 2))


@pytest.mark.parametrize("rates", [[2, 4], [5, 2], [3]])
def test_every_conv_matches_official_padding(rates: list[int]) -> None:
    """Layer by layer on a whole forward: encoder convs equal the official ones (input a multiple
    of the hop); decoder transposed convs equal them, plus one last sample at odd strides."""
    torch.manual_seed(0)
    enc = DACEncoder(d_model=2, strides=rates[::-1])
    dec = DACDecoder(dimension=enc.dimension, decoder_dim=8, rates=rates)
    checked: list[str] = []

    def hook(module: nn.Module, inputs: tuple[Tensor], output: Tensor) -> None:
        (x,) = inputs
        if isinstance(module, StreamableConv1d):
            torch.testing.assert_close(output, official_conv(module, x), rtol=1e-5, atol=1e-6)
        else:
            reference = official_conv_transpose(module, x)
            s = module.stride
            assert reference.shape[-1] == x.shape[-1] * s - (s % 2)
            torch.testing.assert_close(output[..., : reference.shape[-1]], reference)
        checked.append(type(module).__name__)

    convs = [m for m in [*enc.modules(), *dec.modules()] if isinstance(m, StreamableConv1d | StreamableConvTranspose1d)]
    handles = [m.register_forward_hook(hook) for m in convs]
    with torch.no_grad():
        dec(enc(torch.randn(2, 1, 3 * enc.hop_length)))
    for h in handles:
        h.remove()
    assert len(checked) == len(convs)
    assert checked.count("StreamableConvTranspose1d") == len(rates)


@pytest.mark.parametrize("rates", [[8, 8, 4, 2], [8, 5, 4, 2]])
def test_whole_model_against_official_padding(rates: list[int], monkeypatch: pytest.MonkeyPatch) -> None:
    """Same weights run with the official convolution paddings: the encoder is identical on a
    multiple of the hop; the decoder is identical at even rates and, at rates [8, 5, 4, 2], 8
    samples longer and equal away from the end (documented in the module docstring)."""
    torch.manual_seed(0)
    enc = DACEncoder(d_model=2, strides=rates[::-1])
    dec = DACDecoder(dimension=enc.dimension, decoder_dim=32, rates=rates)
    x, z = torch.randn(1, 1, 3 * enc.hop_length), torch.randn(1, enc.dimension, 20)
    with torch.no_grad():
        ours_z, ours_x = enc(x), dec(z)
        monkeypatch.setattr(StreamableConv1d, "forward", official_conv)
        monkeypatch.setattr(StreamableConvTranspose1d, "forward", official_conv_transpose)
        official_z, official_x = enc(x), dec(z)
    torch.testing.assert_close(ours_z, official_z)
    n = official_x.shape[-1]
    if all(r % 2 == 0 for r in rates):
        torch.testing.assert_close(ours_x, official_x)
    else:
        assert n == ours_x.shape[-1] - 8
        torch.testing.assert_close(ours_x[..., : n - 400], official_x[..., : n - 400])
        assert not torch.allclose(ours_x[..., :n], official_x)


def test_initial_conv_biases_are_zero() -> None:
    enc = DACEncoder(**TINY_ENC)
    for m in enc.modules():
        if isinstance(m, StreamableConv1d):
            assert torch.equal(m.conv.bias, torch.zeros_like(m.conv.bias))


# ----------------------------------------------------------------------------- layout and size


def test_state_dict_layout_follows_official_paths() -> None:
    enc = DACEncoder(**TINY_ENC)  # 2 strides: block = conv, 2 blocks, snake, conv
    keys = set(enc.state_dict())
    assert len(enc.block) == 5
    assert "block.0.conv.parametrizations.weight.original0" in keys
    assert "block.0.conv.parametrizations.weight.original1" in keys
    assert "block.0.conv.bias" in keys
    assert "block.1.block.0.block.0.alpha" in keys  # residual unit snake
    assert "block.1.block.2.block.1.conv.parametrizations.weight.original1" in keys  # dilation 9
    assert enc.block[1].block[2].block[1].conv.dilation == (9,)
    assert "block.1.block.3.alpha" in keys
    assert "block.2.block.4.conv.bias" in keys  # strided conv
    assert enc.block[2].block[4].conv.stride == (3,)
    assert "block.3.alpha" in keys and "block.4.conv.bias" in keys
    assert enc.block[4].conv.kernel_size == (3,)
    assert not any(k.endswith(("weight_g", "weight_v")) for k in keys)

    dec = DACDecoder(**TINY_DEC)  # model = conv, 2 blocks, snake, conv, tanh
    keys = set(dec.state_dict())
    assert len(dec.model) == 6 and isinstance(dec.model[5], nn.Tanh)
    assert "model.0.conv.parametrizations.weight.original0" in keys
    assert "model.1.block.0.alpha" in keys
    g = dec.state_dict()["model.1.block.1.convtr.parametrizations.weight.original0"]
    assert g.shape == (16, 1, 1)  # transposed conv: g per input channel, as the official
    assert "model.1.block.4.block.3.conv.bias" in keys
    assert "model.3.alpha" in keys and "model.4.conv.bias" in keys
    assert isinstance(dec.model[3], Snake1d)


def wn_conv(c_in: int, c_out: int, k: int, transposed: bool = False) -> int:
    """Weight + bias + weight-norm g (per output channel; per input channel if transposed)."""
    return c_in * c_out * k + c_out + (c_in if transposed else c_out)


def residual_unit(dim: int) -> int:
    return 2 * dim + wn_conv(dim, dim, 7) + wn_conv(dim, dim, 1)  # two snakes, two convs


def expected_dac_params(
    d_model: int, strides: list[int], latent: int, decoder_dim: int, rates: list[int]
) -> tuple[int, int]:
    """Encoder and decoder sizes counted from the official layout (dac/model/dac.py)."""
    enc = wn_conv(1, d_model, 7)
    width = d_model
    for s in strides:
        enc += 3 * residual_unit(width) + width + wn_conv(width, 2 * width, 2 * s)
        width *= 2
    enc += width + wn_conv(width, latent, 3)
    dec = wn_conv(latent, decoder_dim, 7)
    width = decoder_dim
    for s in rates:
        dec += width + wn_conv(width, width // 2, 2 * s, transposed=True)
        width //= 2
        dec += 3 * residual_unit(width)
    dec += width + wn_conv(width, 1, 7)
    return enc, dec


def dac_quantizer_params(n_codebooks: int, latent: int = 1024, dim: int = 8, size: int = 1024):
    """Factorized VQ per codebook: in_proj latent -> dim and out_proj dim -> latent (weight-normed
    1x1 convs with bias), codebook size x dim."""
    return n_codebooks * (wn_conv(latent, dim, 1) + wn_conv(dim, latent, 1) + size * dim)


OFFICIAL = {
    # name: (encoder strides, decoder rates, n_codebooks, sample rate); d_model 64, latent 1024,
    # decoder_dim 1536 in all (descript-audio-codec conf/final/{44khz,24khz,16khz}.yml)
    "44khz": ([2, 4, 8, 8], [8, 8, 4, 2], 9, 44100),
    "24khz": ([2, 4, 5, 8], [8, 5, 4, 2], 32, 24000),
    "16khz": ([2, 4, 5, 8], [8, 5, 4, 2], 12, 16000),
}
MEASURED = {
    "44khz": (22_307_968, 54_104_162),
    "24khz": (21_521_536, 52_334_690),
    "16khz": (21_521_536, 52_334_690),
}


@pytest.mark.parametrize("name", list(OFFICIAL))
def test_official_configurations_sizes_and_shapes(name: str) -> None:
    strides, rates, n_codebooks, sample_rate = OFFICIAL[name]
    enc = DACEncoder(strides=strides)  # defaults: channels 1, d_model 64, latent 1024
    dec = DACDecoder(rates=rates)  # defaults: dimension 1024, decoder_dim 1536
    n_enc, n_dec, n_q = n_params(enc), n_params(dec), dac_quantizer_params(n_codebooks)
    print(
        f"DAC {name}: encoder {n_enc:,} decoder {n_dec:,} quantizer ({n_codebooks} codebooks)"
        f" {n_q:,} total {n_enc + n_dec + n_q:,}"
    )
    assert enc.dimension == 1024 and dec.dimension == 1024
    assert enc.hop_length == dec.hop_length == math.prod(strides)
    assert (n_enc, n_dec) == MEASURED[name]
    assert (n_enc, n_dec) == expected_dac_params(64, strides, 1024, 1536, rates)
    frame_rate = sample_rate / enc.hop_length
    assert round(frame_rate) == {"44khz": 86, "24khz": 75, "16khz": 50}[name]
    with torch.no_grad():
        z = enc(torch.randn(1, 1, 2 * enc.hop_length - 7))
        assert z.shape == (1, 1024, 2)
        assert dec(z[..., :1]).shape == (1, 1, enc.hop_length)


def test_44khz_matches_paper_size() -> None:
    """Paper section 4.3: 76M parameters, 22M encoder, 54M decoder."""
    n_enc, n_dec = MEASURED["44khz"]
    n_q = dac_quantizer_params(9)
    assert n_q == 9 * (1024 * 8 + 8 + 8 + 8 * 1024 + 1024 + 1024 + 1024 * 8) == 239_760
    assert round(n_enc / 1e6) == 22 and round(n_dec / 1e6) == 54
    assert abs(n_enc + n_dec + n_q - 76e6) / 76e6 < 0.01
    print(f"DAC 44khz total {n_enc + n_dec + n_q:,} vs paper 76M")


# ----------------------------------------------------------------------------- config


def test_builds_from_config() -> None:
    enc = instantiate(
        {
            "class_path": "codecplatform.generators.dac.DACEncoder",
            "init_args": {"d_model": 4, "strides": [2, 3], "dimension": 6},
        },
        Encoder,
    )
    assert isinstance(enc, DACEncoder) and enc.hop_length == 6 and enc.dimension == 6
    default_latent = instantiate(
        {"class_path": "codecplatform.generators.dac.DACEncoder", "init_args": {"d_model": 2}},
        Encoder,
    )
    assert default_latent.dimension == 2 * 2**4 and default_latent.hop_length == 512
    dec = instantiate(
        {
            "class_path": "codecplatform.generators.dac.DACDecoder",
            "init_args": {"dimension": 6, "decoder_dim": 16, "rates": [3, 2]},
        },
        Decoder,
    )
    assert isinstance(dec, DACDecoder) and dec.hop_length == 6
    assert dec(enc(torch.randn(1, 1, 12))).shape == (1, 1, 12)
