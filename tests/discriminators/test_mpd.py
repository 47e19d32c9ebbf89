import math

import pytest
import torch
import torch.nn.functional as F

from codecplatform.discriminators.mpd import (
    MultiPeriodDiscriminator,
    PeriodDiscriminator,
)
from codecplatform.dsp.level import remove_dc_and_normalize_peak

T = 22050  # 0.5 s at 44.1 kHz


def small(**kwargs) -> MultiPeriodDiscriminator:
    return MultiPeriodDiscriminator(periods=kwargs.pop("periods", (2, 3)), channels=(4, 8, 16, 16), **kwargs)


def expected_rows(length: int, period: int, n_strided: int, stride: int = 3) -> list[int]:
    rows = [math.ceil(length / period)]
    for _ in range(n_strided):
        rows.append(math.ceil(rows[-1] / stride))  # kernel 5, padding 2, stride 3
    return rows


def test_dac_config_structure_and_parameter_count():
    torch.manual_seed(0)
    disc = MultiPeriodDiscriminator()
    with torch.no_grad():
        out = disc(torch.randn(1, 1, T))
    assert out.names == ["mpd_2", "mpd_3", "mpd_5", "mpd_7", "mpd_11"]
    assert len(out.logits) == len(out.features) == 5
    for period, logits, fmaps in zip(disc.periods, out.logits, out.features):
        rows = expected_rows(T, period, n_strided=4)
        assert [tuple(f.shape) for f in fmaps] == [
            (1, 32, rows[1], period),
            (1, 128, rows[2], period),
            (1, 512, rows[3], period),
            (1, 1024, rows[4], period),
            (1, 1024, rows[4], period),  # last (5, 1) conv has stride 1
        ]
        assert logits.shape == (1, 1, rows[4], period)
    assert out.logits[0].shape == (1, 1, 137, 2) and out.logits[-1].shape == (1, 1, 25, 11)
    n_params = sum(p.numel() for p in disc.parameters())
    print(f"DAC MPD (5 periods) parameters: {n_params}")
    # Per period with weight norm (weight v + gain g (one per output channel) + bias):
    #   conv 1->32 (5, 1):         1*32*5 + 32 + 32       =       224
    #   conv 32->128 (5, 1):      32*128*5 + 128 + 128    =    20,736
    #   conv 128->512 (5, 1):    128*512*5 + 512 + 512    =   328,704
    #   conv 512->1024 (5, 1):   512*1024*5 + 1024 + 1024 = 2,623,488
    #   conv 1024->1024 (5, 1): 1024*1024*5 + 1024 + 1024 = 5,244,928
    #   conv_post 1024->1 (3, 1):   1024*3 + 1 + 1        =     3,074
    # = 8,221,154 per period, x 5 periods:
    assert n_params == 41_105_770


def test_tiny_structure_and_odd_lengths():
    disc = small(periods=(2, 3, 5))
    for length in (101, 90, 7):  # 101: multiple of none; 90: of all (no padding); 7: barely longer than 5
        out = disc(torch.randn(2, 1, length))
        for period, logits, fmaps in zip(disc.periods, out.logits, out.features):
            rows = expected_rows(length, period, n_strided=3)
            assert [tuple(f.shape) for f in fmaps] == [
                (2, 4, rows[1], period),
                (2, 8, rows[2], period),
                (2, 16, rows[3], period),
                (2, 16, rows[3], period),
            ]
            assert logits.shape == (2, 1, rows[3], period)


def test_pads_to_a_multiple_of_the_period_by_reflection():
    torch.manual_seed(0)
    disc = PeriodDiscriminator(3, channels=(4, 8, 8))
    x = torch.randn(2, 1, 100)  # 100 = 33 * 3 + 1 -> two reflected samples x[98], x[97]
    padded = torch.cat([x, x[..., 98:99], x[..., 97:98]], dim=-1)
    logits, fmaps = disc(x)
    ref_logits, ref_fmaps = disc(padded)
    torch.testing.assert_close(logits, ref_logits)
    torch.testing.assert_close(fmaps[0], ref_fmaps[0])
    torch.testing.assert_close(F.pad(x, (0, 2), mode="reflect"), padded)
    # A length that already is a multiple is not padded (official DAC would add a whole period).
    assert disc(x[..., :99])[1][0].shape[2] == math.ceil(33 / 3)


def test_stereo_folds_channels_into_batch_with_shared_weights():
    torch.manual_seed(0)
    disc = small()
    x = torch.randn(3, 2, 301)
    out = disc(x)
    assert all(logits.shape[0] == 6 for logits in out.logits)
    assert all(f.shape[0] == 6 for fmaps in out.features for f in fmaps)
    left, right = disc(x[:, :1]), disc(x[:, 1:])  # folded index is b * C + c
    for stereo, mono_l, mono_r in zip(out.logits, left.logits, right.logits):
        torch.testing.assert_close(stereo[0::2], mono_l)
        torch.testing.assert_close(stereo[1::2], mono_r)
    for stereo, mono_r in zip(out.features, right.features):
        for f_stereo, f_mono in zip(stereo, mono_r):
            torch.testing.assert_close(f_stereo[1::2], f_mono)


def test_gradient_reaches_input():
    x = torch.randn(2, 1, 301, requires_grad=True)
    out = small()(x)
    sum(logits.mean() for logits in out.logits).backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_runs_under_bf16_autocast():
    torch.manual_seed(0)
    disc = small()
    x = torch.randn(1, 2, 301)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = disc(x)
    assert all(torch.isfinite(logits.float()).all() for logits in out.logits)
    reference = disc(x)
    for low, full in zip(out.logits, reference.logits):
        assert low.shape == full.shape
        assert (low.float() - full).abs().max() < 0.05 * full.abs().max()


def test_input_normalization_is_dacs_preprocess():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 500)
    y = remove_dc_and_normalize_peak(x)
    torch.testing.assert_close(y.mean(-1), torch.zeros(2, 3), atol=1e-6, rtol=0)
    torch.testing.assert_close(y.abs().amax(-1), torch.full((2, 3), 0.8))
    assert torch.equal(remove_dc_and_normalize_peak(torch.zeros(1, 1, 10)), torch.zeros(1, 1, 10))
    disc = small()
    a, b = disc(x[:, :1]), disc(4.0 * x[:, :1] + 0.3)  # gain and DC offset are removed
    for la, lb in zip(a.logits, b.logits):
        torch.testing.assert_close(la, lb, atol=1e-5, rtol=1e-4)
    raw = small(normalize_input=False)
    raw.load_state_dict(disc.state_dict())
    assert not torch.allclose(raw(x[:, :1]).logits[0], raw(4.0 * x[:, :1] + 0.3).logits[0])


def test_options_and_errors():
    disc = small(norm="none", negative_slope=0.2, name="p")
    out = disc(torch.randn(1, 1, 64))
    assert out.names == ["p_2", "p_3"]
    assert small(norm="spectral_norm")(torch.randn(1, 1, 64)).logits[0].shape[0] == 1
    with pytest.raises(ValueError, match=r"\(batch, channels, samples\)"):
        small()(torch.randn(2, 100))
    with pytest.raises(ValueError, match="largest period"):
        small()(torch.randn(1, 1, 2))
    with pytest.raises(ValueError, match="periods must be distinct"):
        MultiPeriodDiscriminator(periods=[2, 2])
    with pytest.raises(ValueError, match="norm must be"):
        small(norm="batch_norm")
    with pytest.raises(ValueError, match="mono"):
        PeriodDiscriminator(2, channels=(4,))(torch.randn(1, 2, 10))
