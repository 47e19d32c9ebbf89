"""STFTDistance: DAC's definition (checked against the installed official package when present), zero on
identical audio, independent of batching."""

from __future__ import annotations

import pytest
import torch

from codecplatform.metrics.reconstruction import STFTDistance


def pair() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    x = 0.1 * torch.randn(3, 1, 4000, generator=gen)
    return x + 0.05 * torch.randn(x.shape, generator=gen), x


def test_matches_the_official_dac_stft_loss():
    from audiotools import AudioSignal  # the parity extra (make install): a broken install fails
    from dac.nn.loss import MultiScaleSTFTLoss

    x_hat, x = pair()
    metric = STFTDistance()
    metric.update(x_hat, x)
    official = torch.stack(
        [MultiScaleSTFTLoss()(AudioSignal(x_hat[i : i + 1], 16000), AudioSignal(x[i : i + 1], 16000)) for i in range(3)]
    ).mean()
    assert float(metric.compute()) == pytest.approx(float(official), rel=1e-4)


def test_zero_on_identical_audio_and_batching_does_not_matter():
    x_hat, x = pair()
    same = STFTDistance()
    same.update(x, x)
    assert float(same.compute()) == pytest.approx(0.0, abs=1e-6)
    whole, parts = STFTDistance(), STFTDistance()
    whole.update(x_hat, x)
    parts.update(x_hat[:1], x[:1])
    parts.update(x_hat[1:], x[1:])
    assert float(whole.compute()) == pytest.approx(float(parts.compute()), rel=1e-6)
    assert float(whole.compute()) > 0
