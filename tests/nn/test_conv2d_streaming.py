"""2D time-frequency layers (codecplatform.nn.conv2d): sizes, causal padding, and streaming along
time equal to the whole-signal output."""

import pytest
import torch

from codecplatform.nn.conv2d import (
    AlignedSum,
    CausalAvgPool2d,
    DropFirstFrames,
    StreamableConv2d,
    StreamableConvTranspose2d,
    Upsample2d,
)
from codecplatform.nn.streaming import streaming


def stream(module, x, sizes):
    """Feed x (B, C, T, F) in time chunks of the given sizes (cycled) and concatenate the outputs."""
    outs, start, i = [], 0, 0
    with torch.no_grad(), streaming(module):
        while start < x.shape[2]:
            size = sizes[i % len(sizes)]
            outs.append(module(x[:, :, start : start + size]))
            start, i = start + size, i + 1
    return torch.cat(outs, dim=2)


@pytest.mark.parametrize("kernel, stride", [((3, 3), (1, 1)), ((4, 4), (2, 2)), ((3, 6), (1, 3)), ((7, 7), (1, 1))])
def test_conv_sizes_and_streaming(kernel, stride):
    torch.manual_seed(0)
    conv = StreamableConv2d(3, 5, kernel, stride, norm="weight_norm")
    x = torch.randn(2, 3, 12, 30)
    with torch.no_grad():
        y = conv(x)
    assert y.shape == (2, 5, 12 // stride[0], 30 // stride[1])
    assert torch.allclose(stream(conv, x, [1, 3, 0, 2]), y, atol=1e-5)


def test_conv_is_causal_in_time():
    conv = StreamableConv2d(1, 1, (4, 3), (2, 1), norm="none")
    x = torch.randn(1, 1, 10, 8)
    later = x.clone()
    later[:, :, 6:] += 1.0
    with torch.no_grad():
        a, b = conv(x), conv(later)
    assert torch.equal(a[:, :, :3], b[:, :, :3])  # output t sees input frames <= 2t + 1
    assert not torch.equal(a[:, :, 3], b[:, :, 3])


@pytest.mark.parametrize("kernel, stride", [((4, 3), (2, 1)), ((4, 4), (2, 2)), ((3, 6), (1, 3))])
def test_transposed_conv_sizes_and_streaming(kernel, stride):
    torch.manual_seed(0)
    conv = StreamableConvTranspose2d(4, 3, kernel, stride)
    x = torch.randn(2, 4, 7, 5)
    with torch.no_grad():
        y = conv(x)
    assert y.shape == (2, 3, 7 * stride[0], 5 * stride[1])
    assert torch.allclose(stream(conv, x, [2, 1, 0, 3]), y, atol=1e-5)


def test_pool_upsample_drop_and_aligned_sum_stream():
    x = torch.randn(1, 2, 12, 8)
    pool = CausalAvgPool2d((2, 2))
    assert torch.allclose(stream(pool, x, [3, 1]), pool(x))
    assert Upsample2d((2, 3))(x).shape == (1, 2, 24, 24)
    drop = DropFirstFrames(5)
    assert torch.equal(stream(drop, x, [2, 2, 4]), x[:, :, 5:])
    unit = AlignedSum(StreamableConv2d(2, 2, (4, 4), (2, 2)), CausalAvgPool2d((2, 2)))
    with torch.no_grad():
        assert torch.allclose(stream(unit, x, [1, 2, 3]), unit(x), atol=1e-5)


def test_non_causal_layers_refuse_to_stream():
    with pytest.raises(RuntimeError, match="causal"):
        with streaming(StreamableConv2d(1, 1, 3, 1, causal=False)):
            pass
    with pytest.raises(ValueError, match="norm"):
        StreamableConv2d(1, 1, 3, norm="spectral")  # type: ignore[arg-type]
