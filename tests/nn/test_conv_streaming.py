"""Padding, normalization and streaming of the EnCodec-style convolutions and LSTM."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from codecplatform.nn.conv import StreamableConv1d, StreamableConvTranspose1d, pad1d
from codecplatform.nn.lstm import StreamableLSTM
from codecplatform.nn.streaming import run_in_chunks, streaming

CHUNKINGS = [[1], [3], [7, 2, 11], [64], [5, 0, 13]]


# ----------------------------------------------------------------------------- padding / shapes


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("k,s,d", [(7, 1, 1), (3, 1, 4), (4, 2, 1), (16, 8, 1), (10, 5, 1), (1, 1, 1), (3, 2, 2)])
@pytest.mark.parametrize("length", [1, 5, 37, 40, 101])
def test_conv1d_output_length(causal: bool, k: int, s: int, d: int, length: int) -> None:
    conv = StreamableConv1d(2, 3, k, stride=s, dilation=d, causal=causal)
    y = conv(torch.randn(2, 2, length))
    assert y.shape == (2, 3, math.ceil(length / s))


@pytest.mark.parametrize(
    "causal,k,left",
    [(True, 5, 4), (False, 5, 2), (False, 4, 2), (True, 4, 3), (False, 2, 1)],
)
def test_conv1d_padding_placement(causal: bool, k: int, left: int) -> None:
    """A delta at the kernel's first tap copies the padded input: output[t] = padded[t]."""
    conv = StreamableConv1d(1, 1, k, causal=causal, bias=False, pad_mode="constant")
    with torch.no_grad():
        conv.conv.weight.zero_()
        conv.conv.weight[0, 0, 0] = 1.0
    x = torch.arange(1.0, 21.0).view(1, 1, -1)
    y = conv(x)
    assert torch.equal(y[..., :left], torch.zeros(1, 1, left))
    assert torch.equal(y[..., left:], x[..., : x.shape[-1] - left])


def test_causal_conv_ignores_the_future() -> None:
    conv = StreamableConv1d(1, 2, 6, stride=3, causal=True, pad_mode="constant")
    x = torch.randn(1, 1, 30)
    x2 = x.clone()
    x2[..., 15:] = torch.randn(15)
    # frame j sees samples < (j + 1) * stride
    torch.testing.assert_close(conv(x)[..., :5], conv(x2)[..., :5])


def test_pad1d_reflect_on_short_input() -> None:
    x = torch.tensor([[[1.0, 2.0]]])
    y = pad1d(x, 4, 3, "reflect")
    assert y.shape[-1] == 2 + 4 + 3
    assert torch.equal(y[..., 4:6], x)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("k,s", [(4, 2), (16, 8), (10, 5), (3, 1), (5, 3)])
@pytest.mark.parametrize("ratio", [1.0, 0.5, 0.0])
def test_conv_transpose_output_length(causal: bool, k: int, s: int, ratio: float) -> None:
    if not causal and ratio != 1.0:
        with pytest.raises(ValueError, match="trim_right_ratio"):
            StreamableConvTranspose1d(3, 2, k, s, causal=causal, trim_right_ratio=ratio)
        return
    convtr = StreamableConvTranspose1d(3, 2, k, s, causal=causal, trim_right_ratio=ratio)
    assert convtr(torch.randn(2, 3, 9)).shape == (2, 2, 9 * s)
    assert convtr.padding_left + convtr.padding_right == k - s
    if causal:
        assert convtr.padding_right == math.ceil((k - s) * ratio)
    else:
        assert convtr.padding_right == (k - s) // 2


def test_conv_then_transpose_restores_length() -> None:
    conv = StreamableConv1d(1, 4, 8, stride=4)
    convtr = StreamableConvTranspose1d(4, 1, 8, stride=4)
    y = convtr(conv(torch.randn(1, 1, 37)))
    assert y.shape[-1] == math.ceil(37 / 4) * 4


def test_weight_norm_parameters() -> None:
    conv = StreamableConv1d(3, 5, 7, norm="weight_norm")
    names = {n: p.shape for n, p in conv.named_parameters()}
    assert names == {
        "conv.bias": (5,),
        "conv.parametrizations.weight.original0": (5, 1, 1),
        "conv.parametrizations.weight.original1": (5, 3, 7),
    }
    convtr = StreamableConvTranspose1d(6, 4, 8, 4, norm="weight_norm")
    names = {n: p.shape for n, p in convtr.named_parameters()}
    assert names == {
        "convtr.bias": (4,),
        "convtr.parametrizations.weight.original0": (6, 1, 1),
        "convtr.parametrizations.weight.original1": (6, 4, 8),
    }
    # weight = g * v / ||v||: scaling v leaves the conv unchanged
    x = torch.randn(1, 3, 20)
    y = conv(x)
    with torch.no_grad():
        conv.conv.parametrizations.weight.original1.mul_(3.0)
    torch.testing.assert_close(conv(x), y)


def test_time_layer_norm_parameters_and_statistics() -> None:
    conv = StreamableConv1d(3, 5, 7, stride=2, norm="time_layer_norm")
    assert isinstance(conv.norm, nn.GroupNorm) and conv.norm.num_groups == 1
    names = {n for n, _ in conv.named_parameters()}
    assert names == {"conv.weight", "conv.bias", "norm.weight", "norm.bias"}
    y = conv(5.0 * torch.randn(2, 3, 64) + 3.0)
    flat = y.flatten(1)  # statistics over channels and time, per example
    torch.testing.assert_close(flat.mean(1), torch.zeros(2), atol=1e-5, rtol=0)
    torch.testing.assert_close(flat.var(1, unbiased=False), torch.ones(2), atol=1e-3, rtol=0)
    convtr = StreamableConvTranspose1d(5, 3, 4, 2, norm="time_layer_norm")
    assert isinstance(convtr.norm, nn.GroupNorm)
    assert convtr(torch.randn(2, 5, 10)).shape == (2, 3, 20)


def test_plain_conv_has_no_norm_parameters() -> None:
    conv = StreamableConv1d(3, 5, 7)
    assert {n for n, _ in conv.named_parameters()} == {"conv.weight", "conv.bias"}


def test_invalid_options() -> None:
    with pytest.raises(ValueError, match="norm"):
        StreamableConv1d(1, 1, 3, norm="batch_norm")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="pad_mode"):
        StreamableConv1d(1, 1, 3, pad_mode="circular")
    with pytest.raises(ValueError, match="stride"):
        StreamableConv1d(1, 1, 1, stride=2)


# ----------------------------------------------------------------------------- streaming


@pytest.mark.parametrize("k,s,d", [(7, 1, 1), (3, 1, 4), (8, 4, 1), (10, 5, 1), (4, 2, 3), (1, 1, 1)])
@pytest.mark.parametrize("pad_mode", ["reflect", "constant", "replicate"])
@pytest.mark.parametrize("sizes", CHUNKINGS)
def test_conv1d_streaming_equals_whole(k: int, s: int, d: int, pad_mode: str, sizes: list[int]) -> None:
    torch.manual_seed(0)
    conv = StreamableConv1d(2, 3, k, stride=s, dilation=d, causal=True, pad_mode=pad_mode, norm="weight_norm")
    x = torch.randn(2, 2, 20 * s)
    with torch.no_grad():
        whole = conv(x)
    torch.testing.assert_close(run_in_chunks(conv, x, sizes), whole, atol=1e-5, rtol=0)


@pytest.mark.parametrize("k,s", [(4, 2), (16, 8), (10, 5), (3, 1), (7, 3)])
@pytest.mark.parametrize("ratio", [1.0, 0.5])
@pytest.mark.parametrize("sizes", [[1], [2, 5], [0, 3]])
def test_conv_transpose_streaming_equals_whole(k: int, s: int, ratio: float, sizes: list[int]) -> None:
    torch.manual_seed(0)
    convtr = StreamableConvTranspose1d(3, 2, k, s, causal=True, norm="weight_norm", trim_right_ratio=ratio)
    x = torch.randn(2, 3, 12)
    with torch.no_grad():
        whole = convtr(x)
    streamed = run_in_chunks(convtr, x, sizes)
    # the stream never emits the trimmed tail of the last frame; with ratio 1 that is nothing
    assert streamed.shape[-1] == whole.shape[-1] - convtr.padding_left
    torch.testing.assert_close(streamed, whole[..., : streamed.shape[-1]], atol=1e-5, rtol=0)


@pytest.mark.parametrize("sizes", [[1], [4, 9], [0, 5, 2]])
def test_lstm_streaming_equals_whole(sizes: list[int]) -> None:
    torch.manual_seed(0)
    lstm = StreamableLSTM(6, num_layers=2)
    x = torch.randn(2, 6, 25)
    with torch.no_grad():
        whole = lstm(x)
    torch.testing.assert_close(run_in_chunks(lstm, x, sizes), whole, atol=1e-5, rtol=0)


def test_lstm_shape_skip_and_keys() -> None:
    lstm = StreamableLSTM(8, num_layers=2)
    no_skip = StreamableLSTM(8, num_layers=2, skip=False)
    no_skip.load_state_dict(lstm.state_dict())
    x = torch.randn(3, 8, 11)
    y = lstm(x)
    assert y.shape == (3, 8, 11)
    torch.testing.assert_close(y, no_skip(x) + x)
    assert set(lstm.state_dict()) == {
        f"lstm.{kind}_{part}_l{layer}" for kind in ("weight", "bias") for part in ("ih", "hh") for layer in (0, 1)
    }


def test_state_is_cleared_and_a_second_stream_starts_fresh() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        StreamableConv1d(1, 4, 4, stride=2, causal=True),
        nn.ELU(),
        StreamableLSTM(4, num_layers=1),
        StreamableConvTranspose1d(4, 1, 4, 2, causal=True),
    )
    x = torch.randn(1, 1, 40)
    first = run_in_chunks(model, x, [3, 7])
    assert all(getattr(m, "_stream_state", None) is None for m in model.modules())
    assert not any(getattr(m, "is_streaming", False) for m in model.modules())
    second = run_in_chunks(model, x, [3, 7])
    torch.testing.assert_close(first, second, atol=0, rtol=0)
    with torch.no_grad():
        torch.testing.assert_close(first, model(x), atol=1e-5, rtol=0)


def test_state_is_cleared_on_exception() -> None:
    conv = StreamableConv1d(1, 1, 3, causal=True)
    with pytest.raises(KeyError), streaming(conv):
        conv(torch.randn(1, 1, 5))
        raise KeyError("boom")
    assert not conv.is_streaming and conv._stream_state is None


def test_non_streamable_configurations_raise() -> None:
    with pytest.raises(RuntimeError, match="causal=True"), streaming(StreamableConv1d(1, 1, 3)):
        pass
    convtr = StreamableConvTranspose1d(1, 1, 4, 2)
    with pytest.raises(RuntimeError, match="causal=True"), streaming(convtr):
        pass
    for module in (
        StreamableConv1d(1, 1, 3, causal=True, norm="time_layer_norm"),
        StreamableConvTranspose1d(1, 1, 4, 2, causal=True, norm="time_layer_norm"),
    ):
        with pytest.raises(RuntimeError, match="time_layer_norm"), streaming(module):
            pass
    # a failing module inside a container leaves none of the others streaming
    model = nn.Sequential(StreamableConv1d(1, 1, 3, causal=True), StreamableConv1d(1, 1, 3))
    with pytest.raises(RuntimeError), streaming(model):
        pass
    assert not model[0].is_streaming


def test_nested_streaming_raises() -> None:
    conv = StreamableConv1d(1, 1, 3, causal=True)
    with streaming(conv):
        with pytest.raises(RuntimeError, match="already streaming"), streaming(conv):
            pass
        assert conv.is_streaming
    assert not conv.is_streaming
