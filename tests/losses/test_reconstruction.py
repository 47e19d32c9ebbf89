import math
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import torchaudio

from codecplatform.dsp import safe_log
from codecplatform.losses.reconstruction import EncodecMelLoss, MultiScaleMelLoss, MultiScaleSTFTLoss, TimeL1Loss

SR = 16000
T = 4000  # 0.25 s


def encodec_mel() -> MultiScaleMelLoss:
    # Paper (the EnCodec configs' paper-literal option): windows 2^5..2^11, 64 mels, L1 + L2, normalized
    # STFT. The two smallest windows have only 17 and 33 bins, so they get that many bands (64 there is
    # refused, see below).
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
    "encodec_official_mel": lambda: EncodecMelLoss(SR),
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


# audiocraft's definition, transcribed from facebookresearch/audiocraft audiocraft/losses/specloss.py
# (MelSpectrogramWrapper, MultiScaleMelSpectrogramLoss) and audiocraft/modules/conv.py (pad_for_conv1d,
# padding_total 0), checked line by line against commit 896ec7c47f5e5d1e5aa1e4b260c4405328bf009d (and run
# against that source: equal to the last bit). Defaults here are config/solver/compression/default.yaml's
# msspec (f_min 64, normalized, no alphas), not the class's; (B, C, T) input only (the official also
# accepts (B, T)).
def audiocraft_mel_wrapper(sample_rate, n_fft, hop_length, n_mels, f_min, f_max, log, normalized, floor_level):
    hop_length = int(hop_length)
    mel_transform = torchaudio.transforms.MelSpectrogram(
        n_mels=n_mels,
        sample_rate=sample_rate,
        n_fft=n_fft,
        hop_length=hop_length,
        win_length=n_fft,
        f_min=f_min,
        f_max=f_max,
        normalized=normalized,
        window_fn=torch.hann_window,
        center=False,
    )

    def forward(x):
        p = int((n_fft - hop_length) // 2)
        x = F.pad(x, (p, p), "reflect")
        length = x.shape[-1]
        n_frames = (length - n_fft) / hop_length + 1
        ideal_length = (math.ceil(n_frames) - 1) * hop_length + n_fft
        x = F.pad(x, (0, ideal_length - length))
        mel_spec = mel_transform(x)
        b, c, freqs, frame = mel_spec.shape
        if log:
            mel_spec = torch.log10(floor_level + mel_spec)
        return mel_spec.reshape(b, c * freqs, frame)

    return forward


def audiocraft_msspec(x, y, sample_rate, range_start=6, range_end=11, n_mels=64, f_min=64.0, f_max=None,
                      normalized=True, alphas=False, floor_level=1e-5):  # fmt: skip
    loss, total = 0.0, 0.0
    for i in range(range_start, range_end):
        args = (sample_rate, 2**i, (2**i) / 4, n_mels, f_min, f_max)
        l1 = audiocraft_mel_wrapper(*args, log=False, normalized=normalized, floor_level=floor_level)
        l2 = audiocraft_mel_wrapper(*args, log=True, normalized=normalized, floor_level=floor_level)
        alpha = math.sqrt(2**i - 1) if alphas else 1
        total += alpha + 1
        loss += F.l1_loss(l1(x), l1(y)) + alpha * F.mse_loss(l2(x), l2(y))
    return loss / total if normalized else loss


@pytest.mark.parametrize(
    ("options", "sample_rate", "channels", "length"),
    [
        ({}, 24000, 1, 24000),  # EnCodec solver defaults (msspec), 24 kHz mono
        ({}, 48000, 2, 12345),  # stereo, a length that leaves a partial last frame
        ({"alphas": True, "normalized": False, "f_min": 0.0, "n_mels": 40}, 16000, 1, T),
    ],
)
def test_encodec_mel_equals_audiocraft(options, sample_rate, channels, length):
    gen = torch.Generator().manual_seed(3)
    x = 0.3 * torch.randn(2, channels, length, generator=gen)
    x_hat = x + 0.05 * torch.randn(x.shape, generator=gen)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchaudio: empty mel filters at the short windows
        expected = audiocraft_msspec(x, x_hat, sample_rate, **options)
    loss = EncodecMelLoss(sample_rate, window_lengths=[2**i for i in range(6, 11)], **options)
    torch.testing.assert_close(loss(x, x_hat), expected.float(), rtol=1e-5, atol=0)


def test_encodec_mel_defaults_are_the_solver_config():
    loss = EncodecMelLoss(24000)
    assert loss.window_lengths == [64, 128, 256, 512, 1024] and loss.hop_lengths == [16, 32, 64, 128, 256]
    assert loss.n_mels == 64 and loss.power == 2.0 and loss.normalized and loss.total == 10
    assert loss.state_dict() == {}
    with pytest.raises(ValueError, match="needs at least 385"):
        loss(torch.zeros(1, 1, 384), torch.zeros(1, 1, 384))


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


@pytest.mark.parametrize(
    ("experiment", "sample_rate", "channels"), [("24khz_mono", 24000, 1), ("48khz_stereo", 48000, 2)]
)
def test_encodec_configs_use_the_official_mel_loss(experiment, sample_rate, channels):
    """The EnCodec configs' mel loss is audiocraft's msspec with its compression solver's settings."""
    from codecplatform.config import compose_config, instantiate

    experiments = Path(__file__).resolve().parents[2] / "experiments"
    model = compose_config(experiments / "encodec" / f"{experiment}.yaml")["model"]["init_args"]
    loss = instantiate(model["reconstruction_losses"]["mel"], torch.nn.Module)
    gen = torch.Generator().manual_seed(4)
    x = 0.3 * torch.randn(2, channels, sample_rate // 2, generator=gen)
    x_hat = x + 0.05 * torch.randn(x.shape, generator=gen)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = audiocraft_msspec(x, x_hat, sample_rate)  # the solver's msspec defaults
    torch.testing.assert_close(loss(x, x_hat), expected.float(), rtol=1e-5, atol=0)
    assert model["loss_weights"]["mel"] == 2.0 and model["loss_weights"]["adv"] == 4.0  # msspec 2, adv 4
