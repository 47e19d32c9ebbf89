"""SEANet (EnCodec) encoder/decoder: shapes, gradients, layout, parameter counts, streaming."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from codecplatform.generators.seanet import SEANetDecoder, SEANetEncoder
from codecplatform.nn.streaming import run_in_chunks, streaming

TINY = dict(n_filters=4, dimension=8, ratios=[4, 2])


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# ----------------------------------------------------------------------------- shapes


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("norm", ["none", "weight_norm", "time_layer_norm"])
@pytest.mark.parametrize("length", [1, 15, 16, 100])
def test_shapes(causal: bool, norm: str, length: int) -> None:
    enc = SEANetEncoder(channels=2, causal=causal, norm=norm, **TINY)
    dec = SEANetDecoder(channels=2, causal=causal, norm=norm, **TINY)
    assert enc.hop_length == dec.hop_length == 8
    assert (enc.channels, enc.dimension, dec.channels, dec.dimension) == (2, 8, 2, 8)
    z = enc(torch.randn(3, 2, length))
    assert z.shape == (3, 8, math.ceil(length / 8))
    assert dec(z).shape == (3, 2, z.shape[-1] * 8)


def test_options_change_structure() -> None:
    options = dict(n_residual_layers=2, true_skip=True, lstm_layers=0, ratios=[3, 2], n_filters=4)
    enc = SEANetEncoder(dimension=6, **options)
    assert enc.hop_length == 6
    # conv, [res, res, elu, conv] x 2, elu, conv
    assert len(enc.model) == 1 + 4 * 2 + 2
    assert isinstance(enc.model[1].shortcut, nn.Identity)
    assert enc.model[2].block[1].conv.dilation == (2,)  # second residual layer: dilation_base**1
    assert enc(torch.randn(1, 1, 30)).shape == (1, 6, 5)
    dec = SEANetDecoder(dimension=6, **options)
    assert dec(torch.randn(1, 6, 5)).shape == (1, 1, 30)


def test_gradient_reaches_input() -> None:
    enc = SEANetEncoder(causal=True, **TINY)
    dec = SEANetDecoder(causal=True, **TINY)
    x = torch.randn(2, 1, 64, requires_grad=True)
    dec(enc(x)).square().mean().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is not None for p in [*enc.parameters(), *dec.parameters()])


def test_input_validation() -> None:
    enc = SEANetEncoder(**TINY)
    dec = SEANetDecoder(**TINY)
    with pytest.raises(ValueError, match="channels"):
        enc(torch.randn(1, 2, 64))
    with pytest.raises(ValueError, match="batch"):
        enc(torch.randn(1, 64))
    with pytest.raises(ValueError, match=r"\(batch, 8, frames\)"):
        dec(torch.randn(1, 7, 4))
    with pytest.raises(TypeError):
        dec(torch.zeros(1, 8, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="ratios"):
        SEANetEncoder(ratios=[])


# ----------------------------------------------------------------------------- layout and size


def conv_params(c_in: int, c_out: int, k: int, norm: str, transposed: bool = False) -> int:
    """Parameters of one EnCodec conv: weight + bias + weight-norm g (one per output channel,
    per input channel for transposed convs) or GroupNorm affine (2 per output channel)."""
    g = c_in if transposed else c_out
    extra = {"weight_norm": g, "time_layer_norm": 2 * c_out, "none": 0}[norm]
    return c_in * c_out * k + c_out + extra


def expected_seanet_params(channels: int, norm: str) -> tuple[int, int]:
    """Encoder and decoder sizes of EnCodec's default SEANet, counted from the official layout
    (encodec/modules/seanet.py: n_filters 32, ratios [8,5,4,2], D 128, compress 2, 1x1 shortcut,
    2-layer LSTM): an LSTM layer of size h has 4h(h + h) weights and 2 * 4h biases."""

    def res(dim: int) -> int:
        hidden = dim // 2
        return (
            conv_params(dim, hidden, 3, norm)
            + conv_params(hidden, dim, 1, norm)
            + conv_params(dim, dim, 1, norm)  # 1x1 shortcut (true_skip=False)
        )

    lstm = 2 * (4 * 512 * (512 + 512) + 8 * 512)
    enc = conv_params(channels, 32, 7, norm) + lstm + conv_params(512, 128, 7, norm)
    dec = conv_params(128, 512, 7, norm) + lstm + conv_params(32, channels, 7, norm)
    width = 32
    for stride in (2, 4, 5, 8):
        enc += res(width) + conv_params(width, 2 * width, 2 * stride, norm)
        width *= 2
    for stride in (8, 5, 4, 2):
        dec += conv_params(width, width // 2, 2 * stride, norm, transposed=True) + res(width // 2)
        width //= 2
    return enc, dec


def test_encodec_24khz_and_48khz_parameter_counts() -> None:
    enc24 = SEANetEncoder(causal=True, norm="weight_norm")
    dec24 = SEANetDecoder(causal=True, norm="weight_norm")
    enc48 = SEANetEncoder(channels=2, causal=False, norm="time_layer_norm")
    dec48 = SEANetDecoder(channels=2, causal=False, norm="time_layer_norm")
    counts = {
        "24k_mono_causal_weight_norm": (n_params(enc24), n_params(dec24)),
        "48k_stereo_noncausal_time_layer_norm": (n_params(enc48), n_params(dec48)),
    }
    for name, (n_enc, n_dec) in counts.items():
        print(f"SEANet {name}: encoder {n_enc:,} decoder {n_dec:,} total {n_enc + n_dec:,}")
    assert counts["24k_mono_causal_weight_norm"] == expected_seanet_params(1, "weight_norm")
    expected_48k = expected_seanet_params(2, "time_layer_norm")
    assert counts["48k_stereo_noncausal_time_layer_norm"] == expected_48k
    # the official 24 kHz EnCodec (EMA codebooks are buffers, not parameters): ~14.85M
    assert round(sum(counts["24k_mono_causal_weight_norm"]) / 1e6, 2) == 14.85
    assert enc24.hop_length == 320 and enc48.hop_length == 320
    assert enc24(torch.randn(1, 1, 24000)).shape == (1, 128, 75)  # 75 Hz at 24 kHz


def test_state_dict_layout() -> None:
    enc = SEANetEncoder(causal=True)
    keys = set(enc.state_dict())
    assert "model.0.conv.parametrizations.weight.original0" in keys
    assert "model.1.block.1.conv.parametrizations.weight.original1" in keys
    assert "model.1.block.3.conv.bias" in keys
    assert "model.1.shortcut.conv.bias" in keys
    assert "model.3.conv.parametrizations.weight.original1" in keys  # first downsampling conv
    assert "model.13.lstm.weight_hh_l1" in keys
    assert "model.15.conv.bias" in keys
    dec = SEANetDecoder(channels=2, norm="time_layer_norm")
    keys = set(dec.state_dict())
    assert "model.1.lstm.weight_ih_l0" in keys
    assert "model.3.convtr.weight" in keys and "model.3.norm.weight" in keys
    assert "model.4.shortcut.norm.bias" in keys
    assert "model.15.conv.weight" in keys
    assert len(dec.model) == 16


# ----------------------------------------------------------------------------- streaming


@pytest.mark.parametrize("sizes", [[8], [16, 24], [3], [1, 5, 2, 9], [37], [0, 11]])
def test_causal_encoder_streaming_equals_whole(sizes: list[int]) -> None:
    torch.manual_seed(0)
    enc = SEANetEncoder(causal=True, **TINY).eval()
    x = torch.randn(2, 1, 8 * 30)
    with torch.no_grad():
        whole = enc(x)
    streamed = run_in_chunks(enc, x, sizes)
    torch.testing.assert_close(streamed, whole, atol=1e-5, rtol=0)
    # state was cleared: a second stream gives the same frames
    torch.testing.assert_close(run_in_chunks(enc, x, sizes), streamed, atol=0, rtol=0)


@pytest.mark.parametrize("pad_mode", ["constant", "replicate"])
def test_causal_encoder_streaming_other_pad_modes(pad_mode: str) -> None:
    torch.manual_seed(0)
    enc = SEANetEncoder(causal=True, pad_mode=pad_mode, true_skip=True, n_residual_layers=2, **TINY).eval()
    x = torch.randn(1, 1, 8 * 20)
    with torch.no_grad():
        whole = enc(x)
    torch.testing.assert_close(run_in_chunks(enc, x, [5, 3]), whole, atol=1e-5, rtol=0)


@pytest.mark.parametrize("sizes", [[1], [2, 3], [7], [0, 4]])
@pytest.mark.parametrize("trim_right_ratio", [1.0, 0.5])
def test_causal_decoder_streaming_equals_whole(sizes: list[int], trim_right_ratio: float) -> None:
    torch.manual_seed(0)
    dec = SEANetDecoder(causal=True, trim_right_ratio=trim_right_ratio, **TINY).eval()
    z = torch.randn(2, 8, 20)
    with torch.no_grad():
        whole = dec(z)
    streamed = run_in_chunks(dec, z, sizes)
    if trim_right_ratio == 1.0:
        assert streamed.shape == whole.shape
    torch.testing.assert_close(streamed, whole[..., : streamed.shape[-1]], atol=1e-5, rtol=0)
    torch.testing.assert_close(run_in_chunks(dec, z, sizes), streamed, atol=0, rtol=0)


def test_non_causal_seanet_refuses_to_stream() -> None:
    with pytest.raises(RuntimeError, match="causal=True"), streaming(SEANetEncoder(**TINY)):
        pass
    with (
        pytest.raises(RuntimeError, match="time_layer_norm"),
        streaming(SEANetDecoder(causal=True, norm="time_layer_norm", **TINY)),
    ):
        pass
