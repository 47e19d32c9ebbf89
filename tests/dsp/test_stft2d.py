"""SpectroStream's STFT front end (codecplatform.dsp.stft2d): framing, channel layout, the dual
window, overlap-add, and analysis -> synthesis reconstruction (exact up to float error and the
dropped Nyquist bin)."""

import math

import pytest
import torch

from codecplatform.dsp.stft2d import dual_window, frame_signal, hann_window, istft_2d, overlap_add, stft_2d


def lowpass_noise(shape, cutoff: float, dtype=torch.float64, seed: int = 0) -> torch.Tensor:
    """White noise with every DFT bin above ``cutoff`` x Nyquist removed (no Nyquist content)."""
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    spec = torch.fft.rfft(x)
    spec[..., int(cutoff * spec.shape[-1]) :] = 0
    return torch.fft.irfft(spec, n=shape[-1]).to(dtype)


def test_shapes_and_interleaved_channels():
    x = torch.randn(3, 2, 4321)
    spec = stft_2d(x)  # 960 / 480 / 960
    assert spec.shape == (3, 4, math.ceil(4321 / 480), 480)
    # [L.re, L.im, R.re, R.im]: the right channel's planes are those of R alone
    right = stft_2d(x[:, 1:])
    assert torch.allclose(spec[:, 2:], right, atol=1e-5)
    left = stft_2d(x[:, :1])
    assert torch.allclose(spec[:, :2], left, atol=1e-5)


def test_matches_torch_stft_with_reverse_causal_framing():
    """Frame t = x[t * hop : t * hop + frame] (zeros past the end), periodic Hann, no
    normalization, DC kept, Nyquist dropped."""
    x = torch.randn(1, 1, 3000, dtype=torch.float64)
    spec = stft_2d(x, frame_length=64, hop_length=32, fft_length=64)  # (1, 2, N, 32)
    padded = torch.nn.functional.pad(x[0], (0, 63))
    ref = torch.stft(
        padded, 64, 32, window=torch.hann_window(64, dtype=torch.float64), center=False, return_complex=True
    )[0, :, : math.ceil(3000 / 32)]  # (33, N)
    assert spec.shape == (1, 2, math.ceil(3000 / 32), 32)
    assert torch.allclose(spec[0, 0], ref.real[:32].T, atol=1e-10)
    assert torch.allclose(spec[0, 1], ref.imag[:32].T, atol=1e-10)
    frames = frame_signal(x, 64, 32)
    assert torch.equal(frames[0, 0, 5], x[0, 0, 160:224])


def test_causal_framing_looks_only_backwards():
    x = torch.arange(1.0, 101.0)[None, None]
    frames = frame_signal(x, 8, 4, padding="causal")
    assert frames.shape == (1, 1, 25, 8)
    assert torch.equal(frames[0, 0, 0], torch.tensor([0.0] * 7 + [1.0]))
    assert torch.equal(frames[0, 0, 3], x[0, 0, 5:13])  # ends at sample 3 * 4 (inclusive)


def test_dual_window_gives_unit_overlap_add():
    """sum over overlapping frames of analysis x synthesis window == 1 (perfect reconstruction)."""
    w = hann_window(960, dtype=torch.float64)
    d = dual_window(w, 480)
    assert torch.allclose(w[:480] * d[:480] + w[480:] * d[480:], torch.ones(480, dtype=torch.float64))
    assert d[0] == 0  # periodic Hann starts at 0


def test_overlap_add_matches_a_loop():
    frames = torch.randn(2, 3, 5, 12)
    out = overlap_add(frames, 4)
    ref = torch.zeros(2, 3, 4 * 4 + 12)
    for t in range(5):
        ref[..., 4 * t : 4 * t + 12] += frames[:, :, t]
    assert out.shape == (2, 3, 20)
    assert torch.allclose(out, ref[..., :20], atol=1e-6)


@pytest.mark.parametrize("dtype, bound", [(torch.float64, 1e-8), (torch.float32, 2e-6)])
def test_reconstruction_of_bandlimited_audio(dtype, bound):
    """Audio without content near Nyquist comes back exactly (up to float error) on the valid
    region: from frame - hop (the first hop is covered by one frame only) to the last full hop
    (the last frame ends in the zero padding, whose edge has Nyquist content)."""
    x = lowpass_noise((2, 2, 48000), cutoff=0.5, dtype=dtype)
    y = istft_2d(stft_2d(x))
    assert y.shape == (2, 2, 48000)
    error = (y - x)[..., 480 : 48000 - 480].abs().max() / x.abs().max()
    print(f"\nrelative reconstruction error ({dtype}, band-limited to 12 kHz): {error.item():.2e}")
    assert error < bound


def test_the_dropped_nyquist_bin_is_the_only_loss():
    """Full-band noise loses its frames' Nyquist component; a Nyquist tone is badly damaged (the
    Hann-windowed tone lies in the Nyquist bin and bin 479: at most half of it comes back)."""
    x = torch.randn(1, 2, 9600, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    y = istft_2d(stft_2d(x))
    error = (y - x)[..., 480:-480].abs().max().item()
    nyquist = torch.cos(math.pi * torch.arange(9600, dtype=torch.float64))[None, None]
    lost = istft_2d(stft_2d(nyquist))[..., 480:-480]
    print(f"\nfull-band noise: max error {error:.3f}; Nyquist tone: max output {lost.abs().max().item():.3f}")
    assert 1e-3 < error < 1.0
    assert lost.abs().max() < 0.5 + 1e-6
    assert (lost - nyquist[..., 480:-480]).abs().max() > 0.5


def test_rejects_bad_sizes():
    with pytest.raises(ValueError, match="hop_length"):
        stft_2d(torch.randn(1, 1, 100), frame_length=16, hop_length=32, fft_length=16)
    with pytest.raises(ValueError, match="fft_length"):
        stft_2d(torch.randn(1, 1, 100), frame_length=32, hop_length=16, fft_length=16)
    with pytest.raises(ValueError, match="padding"):
        frame_signal(torch.randn(1, 1, 100), 8, 4, padding="same")  # type: ignore[arg-type]
