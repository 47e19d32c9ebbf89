"""Inference speed-ups keep the outputs: folded weight norm, the fast convolution paths, and
``Codec.stream()`` (chunk by chunk with carried state) against offline coding."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from codecplatform.config import compose_config, merge_config
from codecplatform.models.codec import Codec
from codecplatform.nn.conv import (
    StreamableConv1d,
    StreamableConvTranspose1d,
    _conv1d_small_input,
    _conv_transpose1d_matmul,
    fold_weight_norm,
    pad1d,
)

EXPERIMENTS = Path(__file__).resolve().parents[2] / "experiments"


def tiny_codec(family: str, base: str | None = None) -> Codec:
    """The tiny override of a family (on its real base config ``base``), codebooks k-means-initialised."""
    torch.manual_seed(0)
    config = compose_config(EXPERIMENTS / "tiny" / f"{family}.yaml")
    if base:
        config = merge_config(compose_config(EXPERIMENTS / family / base), config)
    config = config["model"]["init_args"]["codec"]
    codec = Codec.from_config(config)
    codec.train()
    with torch.no_grad():
        codec(0.1 * torch.randn(2, codec.channels, 40 * codec.hop_length))  # k-means init of the codebooks
    return codec.eval()


def test_reflect_pad_equals_f_pad():
    x = torch.randn(2, 3, 50)
    for left, right in [(0, 0), (6, 0), (3, 2), (0, 5), (49, 1)]:
        with torch.no_grad():
            assert torch.equal(pad1d(x, left, right, "reflect"), F.pad(x, (left, right), mode="reflect"))
    assert torch.equal(pad1d(x[..., :2], 4, 3, "reflect")[..., 4:6], x[..., :2])  # shorter than the padding


@pytest.mark.parametrize("k,s,d,c_in", [(7, 1, 1, 1), (7, 1, 1, 2), (3, 1, 4, 2), (4, 2, 1, 1)])
def test_small_input_conv_equals_conv(k, s, d, c_in):
    conv = nn.Conv1d(c_in, 8, k, s, dilation=d)
    x = torch.randn(2, c_in, 301)
    torch.testing.assert_close(_conv1d_small_input(x, conv), conv(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("k,s", [(4, 2), (10, 5), (16, 8), (3, 1), (6, 3)])
def test_matmul_transposed_conv_equals_conv_transpose(k, s):
    convtr = nn.ConvTranspose1d(16, 8, k, s)
    x = torch.randn(2, 16, 37)
    with torch.no_grad():
        torch.testing.assert_close(_conv_transpose1d_matmul(x, convtr), convtr(x), atol=1e-5, rtol=1e-5)


def test_fast_paths_are_inference_only_and_equal_the_training_path():
    conv = StreamableConv1d(1, 8, 7, causal=True, norm="weight_norm")
    convtr = StreamableConvTranspose1d(16, 8, 8, 4, causal=True, norm="weight_norm")
    x, z = torch.randn(1, 1, 400), torch.randn(1, 16, 30)
    train_y, train_u = conv(x), convtr(z)  # autograd on: the plain modules
    with torch.inference_mode():
        torch.testing.assert_close(conv(x), train_y.detach(), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(convtr(z), train_u.detach(), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    ("family", "base"), [("encodec", "24khz_mono.yaml"), ("dac", "44khz.yaml"), ("muffin", "75hz.yaml")]
)
def test_prepare_for_inference_folds_weight_norm_and_keeps_the_outputs(family, base):
    codec = tiny_codec(family, base)
    x = 0.1 * torch.randn(1, codec.channels, 23 * codec.hop_length + 7)
    encoded = codec.encode(x)
    audio = codec.decode(encoded)
    assert any("parametrizations" in k for k in codec.state_dict())
    prepared = codec.prepare_for_inference()
    assert prepared is codec
    assert not any("parametrizations" in k for k in codec.state_dict())
    assert fold_weight_norm(codec) == 0  # nothing left to fold
    again = codec.encode(x)
    assert torch.equal(again.codes, encoded.codes)
    assert (codec.decode(again) - audio).abs().max() < 1e-5
    assert again.codes.is_inference()  # a prepared codec runs under torch.inference_mode


@pytest.mark.parametrize("chunk", [1, 7, 320, 1000])
def test_encodec_stream_equals_offline(chunk):
    codec = tiny_codec("encodec", "24khz_mono.yaml").prepare_for_inference()
    x = 0.1 * torch.randn(1, 1, 50 * codec.hop_length)
    offline = codec.encode(x, n_q=3)
    codes, audio = [], []
    with codec.stream(n_q=3) as s:
        for piece in x.split(chunk, dim=-1):
            c = s.encode(piece)
            codes.append(c)
            audio.append(s.decode(c))
        codes.append(s.flush_encoder())
        audio.append(s.decode(codes[-1]))
        audio.append(s.flush_decoder())
    assert torch.equal(torch.cat(codes, dim=-1), offline.codes)
    assert (torch.cat(audio, dim=-1) - codec.decode(offline)).abs().max() < 1e-5
    assert codec.stream_latency_seconds == codec.hop_length / codec.sample_rate


def test_spectrostream_stream_equals_offline_after_the_flush():
    codec = tiny_codec("spectrostream", "48khz_stereo.yaml")
    assert codec.encoder_lookahead > 0 and codec.decoder_lookahead > 0
    x = 0.1 * torch.randn(1, codec.channels, 12 * codec.hop_length)
    offline = codec.encode(x)
    offline_audio = codec.decode(offline)
    codec.prepare_for_inference()  # folded weights, in-place activations: streams the same
    codes, audio = [], []
    with codec.stream() as s:
        for piece in x.split(codec.hop_length // 2, dim=-1):
            c = s.encode(piece)
            codes.append(c)
            audio.append(s.decode(c))
        codes.append(s.flush_encoder())
        audio.append(s.decode(codes[-1]))
        audio.append(s.flush_decoder())
    assert torch.equal(torch.cat(codes, dim=-1), offline.codes)
    y = torch.cat(audio, dim=-1)
    assert y.shape[-1] == x.shape[-1]
    assert (y - offline_audio).abs().max() < 1e-5


def test_non_causal_codecs_refuse_to_stream():
    codec = tiny_codec("dac", "44khz.yaml")
    assert not codec.can_stream
    with pytest.raises(RuntimeError, match="cannot stream"):
        with codec.stream():
            pass


@pytest.mark.parametrize("k,d,s", [(1, 1, 1), (7, 3, 1), (4, 1, 2), (3, 1, 1)])
def test_zero_padded_and_pointwise_convs_equal_the_training_path(k, d, s):
    """At inference, symmetric zero padding goes into the kernel (no padded copy), 1x1
    convolutions and short inputs (streaming chunks, batch folded into the columns) are one matrix
    product: equal to the padded module path."""
    conv = StreamableConv1d(16, 8, k, stride=s, dilation=d, pad_mode="constant")
    for x in (torch.randn(1, 16, 64), torch.randn(3, 16, 64), torch.randn(3, 16, 10)):
        train = conv(x)  # autograd on: F.pad + nn.Conv1d
        with torch.no_grad():
            torch.testing.assert_close(conv(x), train.detach(), atol=1e-5, rtol=1e-5)
