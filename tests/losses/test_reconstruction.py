import pytest
import torch
import torchaudio

from codecplatform.dsp import safe_log
from codecplatform.losses.reconstruction import MultiScaleMelLoss, MultiScaleSTFTLoss, TimeL1Loss

SR = 16000
T = 4000  # 0.25 s


def encodec_mel() -> MultiScaleMelLoss:
    # Paper: windows 2^5..2^11, 64 mels, L1 + L2, normalized STFT. The two smallest windows have
    # only 17 and 33 bins, so they get that many bands (64 there is refused, see below).
    return MultiScaleMelLoss(
        SR, window_lengths=[2**i for i in range(5, 12)], n_mels=[17, 33, 64, 64, 64, 64, 64], normalized=True
    )


def dac_mel() -> MultiScaleMelLoss:
    return MultiScaleMelLoss(
        SR,
        window_lengths=[32, 64, 128, 256, 512, 1024, 2048],
        n_mels=[5, 10, 20, 40, 80, 160, 320],
        l2_weight=0.0,
        log_base=10,
        clamp_eps=1e-5,
        power=1.0,
        scale_reduction="sum",
    )


LOSSES = {
    "time": TimeL1Loss,
    "encodec_mel": encodec_mel,
    "dac_mel": dac_mel,
    "stft": MultiScaleSTFTLoss,
}


@pytest.fixture(scope="module")
def audio() -> torch.Tensor:
    torch.manual_seed(0)
    return 0.3 * torch.randn(2, 1, T)


@pytest.mark.parametrize("name", LOSSES)
def test_zero_for_identical_and_decreasing_towards_x(name, audio):
    loss = LOSSES[name]()
    assert loss(audio, audio.clone()).item() == 0.0
    noise = torch.randn_like(audio)
    values = [loss(audio, audio + a * noise).item() for a in (1.0, 0.3, 0.1, 0.01)]
    assert values[-1] > 0
    assert values == sorted(values, reverse=True), values


@pytest.mark.parametrize("name", LOSSES)
def test_gradient_reaches_x_hat(name, audio):
    x_hat = (audio + 0.1 * torch.randn_like(audio)).requires_grad_()
    LOSSES[name]()(audio, x_hat).backward()
    assert x_hat.grad is not None and torch.isfinite(x_hat.grad).all() and x_hat.grad.abs().sum() > 0


@pytest.mark.parametrize("name", LOSSES)
def test_float32_under_bf16_autocast(name, audio):
    loss = LOSSES[name]()
    x_hat = audio + 0.1 * torch.randn_like(audio)
    reference = loss(audio, x_hat)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value = loss(audio.bfloat16(), x_hat.bfloat16())
    assert value.dtype == torch.float32
    torch.testing.assert_close(value, reference, rtol=0.05, atol=1e-3)


@pytest.mark.parametrize("name", LOSSES)
def test_stereo_is_mean_of_channels(name):
    torch.manual_seed(1)
    x, x_hat = torch.randn(2, 2, T), torch.randn(2, 2, T)
    loss = LOSSES[name]()
    per_channel = [loss(x[:, c : c + 1], x_hat[:, c : c + 1]) for c in range(2)]
    torch.testing.assert_close(loss(x, x_hat), torch.stack(per_channel).mean())


def test_dac_mel_matches_torchaudio_reference(audio):
    x_hat = audio + 0.1 * torch.randn_like(audio)
    loss = dac_mel()
    expected = 0.0
    for w, m in zip(loss.window_lengths, loss.n_mels):
        mel = torchaudio.transforms.MelSpectrogram(
            SR, n_fft=w, hop_length=w // 4, n_mels=m, power=1.0, norm="slaney", mel_scale="slaney"
        )
        expected += (safe_log(mel(audio), 1e-5, 10) - safe_log(mel(x_hat), 1e-5, 10)).abs().mean()
    torch.testing.assert_close(loss(audio, x_hat), expected, rtol=1e-4, atol=1e-5)


def test_stft_loss_matches_hand_computation(audio):
    x_hat = audio + 0.1 * torch.randn_like(audio)
    loss = MultiScaleSTFTLoss(window_lengths=[256], log_weight=1.0, mag_weight=0.5)
    window = torch.hann_window(256)
    mx, my = (torch.stft(s[:, 0], 256, 64, window=window, return_complex=True).abs() for s in (audio, x_hat))
    log_term = (mx.clamp(1e-5).pow(2).log10() - my.clamp(1e-5).pow(2).log10()).abs().mean()
    expected = log_term + 0.5 * (mx - my).abs().mean()
    torch.testing.assert_close(loss(audio, x_hat), expected, rtol=1e-4, atol=1e-6)


def test_time_l1_is_a_mean():
    x = torch.zeros(2, 1, 10)
    assert TimeL1Loss()(x, x + 0.5).item() == pytest.approx(0.5)


def test_bad_n_mels_raise_clear_errors():
    with pytest.raises(ValueError, match=r"n_mels\[0\]=64 .* 17 frequency bins of window_lengths\[0\]=32"):
        MultiScaleMelLoss(SR, window_lengths=[32, 64], n_mels=64)
    with pytest.raises(ValueError, match="n_mels has 2 entries but window_lengths has 3"):
        MultiScaleMelLoss(SR, window_lengths=[256, 512, 1024], n_mels=[40, 80])
    with pytest.raises(ValueError, match="hop_divisor"):
        MultiScaleMelLoss(SR, window_lengths=[256], n_mels=40, hop_divisor=0)
    with pytest.raises(ValueError, match="scale_reduction"):
        MultiScaleSTFTLoss(scale_reduction="max")


def test_input_errors(audio):
    loss = MultiScaleSTFTLoss()
    with pytest.raises(ValueError, match="same shape"):
        loss(audio, audio[..., :-1])
    with pytest.raises(ValueError, match="window of 2048"):
        loss(audio[..., :500], audio[..., :500])


def test_buffers_stay_out_of_state_dict():
    assert encodec_mel().state_dict() == {}
    assert MultiScaleSTFTLoss().state_dict() == {}
    assert len(list(dac_mel().buffers())) == 14  # 7 windows + 7 filterbanks
