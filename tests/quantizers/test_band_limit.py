"""MUFFIN's MBS band filter (quantizers/band_limit.py) and its use through ResidualVectorQuantizer."""

import pytest
import torch

from codecplatform.quantizers.band_limit import BandLimit, band_limit
from codecplatform.quantizers.ema_codebook import EMACodebook
from codecplatform.quantizers.ema_residual import ResidualVectorQuantizer
from codecplatform.quantizers.residual import StageHook


def official_fft_bandfilter(x: torch.Tensor, scale_factor: int) -> torch.Tensor:
    """Transcription of the official ResidualVectorQuantization.fft_bandfilter."""
    n = x.size(-1)
    if scale_factor != 1:
        x = torch.fft.rfft(x, dim=-1)
        keep = int(x.size(-1) // scale_factor)
        x[..., keep + 1 :] = 0
        x = torch.fft.irfft(x, n=n, dim=-1)
    return x


@pytest.mark.parametrize("length", [75, 64, 13])
@pytest.mark.parametrize("scale", [2, 4])
def test_band_filter_removes_energy_above_cut_and_keeps_passband(length, scale):
    torch.manual_seed(0)
    x = torch.randn(2, 8, length, dtype=torch.float64)
    y = band_limit(x, scale)
    assert y.shape == x.shape and y.dtype == x.dtype
    spec_x, spec_y = torch.fft.rfft(x, dim=-1), torch.fft.rfft(y, dim=-1)
    bins = spec_x.shape[-1]
    cut = bins // scale  # bins 0..cut are kept
    energy = spec_y.abs().square()
    assert float(energy[..., cut + 1 :].sum() / energy.sum()) < 1e-10
    torch.testing.assert_close(spec_y[..., : cut + 1], spec_x[..., : cut + 1], rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(y, official_fft_bandfilter(x, scale))
    # float32 input: same measurement (float32 round-off only)
    y32 = band_limit(x.float(), scale)
    e32 = torch.fft.rfft(y32.double(), dim=-1).abs().square()
    assert float(e32[..., cut + 1 :].sum() / e32.sum()) < 1e-10


def test_scale_one_is_identity_and_checks():
    x = torch.randn(1, 4, 10)
    assert band_limit(x, 1) is x
    hook = BandLimit([4, 2, 1, 1])
    assert isinstance(hook, StageHook)
    assert hook(x, 3) is x
    with pytest.raises(ValueError, match="stage 4 has no band scale"):
        hook(x, 4)
    with pytest.raises(ValueError, match="scales"):
        BandLimit([4, 0])
    with pytest.raises(ValueError, match="scales"):
        BandLimit([])


class CountingBandLimit(BandLimit):
    def __init__(self, scales):
        super().__init__(scales)
        self.calls: list[int] = []

    def forward(self, residual, stage):
        self.calls.append(stage)
        return super().forward(residual, stage)


def muffin_rvq(scales=(4, 2, 1, 1), **kwargs) -> ResidualVectorQuantizer:
    return ResidualVectorQuantizer(
        dimension=8, n_q=len(scales), codebook_size=16, kmeans_iters=3, stage_hook=CountingBandLimit(scales), **kwargs
    )


def test_encode_equals_training_forward_and_hook_runs_in_both():
    torch.manual_seed(0)
    rvq = muffin_rvq(search_dropout=0.1)
    z = torch.randn(3, 8, 30)
    rvq.train()
    for _ in range(3):  # k-means init and EMA updates
        out_train = rvq(z)
    assert rvq.stage_hook.calls == [0, 1, 2, 3] * 3
    rvq.stage_hook.calls.clear()
    rvq.eval()
    out = rvq(z)
    codes = rvq.encode(z)
    assert rvq.stage_hook.calls == [0, 1, 2, 3] * 2  # forward and encode both filter every stage
    assert torch.equal(codes, out.codes)
    # forward returns z + (sum - z).detach() (straight-through): the same sum up to float round-off
    torch.testing.assert_close(rvq.decode(codes), out.z_q, rtol=0, atol=1e-6)
    assert out_train.codes.shape == codes.shape == (3, 4, 30)
    # each stage's codes are those of the band-limited residual, subtracted unfiltered (official loop)
    residual = z.clone()
    for k, layer in enumerate(rvq.layers):
        expected = layer.encode(official_fft_bandfilter(residual, rvq.stage_hook.scales[k]))
        assert torch.equal(codes[:, k], expected)
        residual = residual - layer.decode(expected)
    # the filter matters: without it the first codes differ
    assert not torch.equal(rvq.layers[0].encode(z), codes[:, 0])


def test_encode_subset_of_codebooks():
    torch.manual_seed(1)
    rvq = muffin_rvq((4, 4, 2, 2, 1, 1, 1, 1))
    z = torch.randn(2, 8, 25)
    rvq.train()
    rvq(z)
    rvq.eval()
    full = rvq.encode(z)
    for n in range(1, 9):
        assert torch.equal(rvq.encode(z, n), full[:, :n])
        assert torch.equal(rvq.encode(z, n), rvq(z, n).codes)


def test_search_dropout_only_in_training_and_off_by_default():
    torch.manual_seed(2)
    z = torch.randn(4, 8, 40)
    assert EMACodebook(8, 16).search_dropout == 0.0
    # default: the training search is the plain nearest neighbour (EnCodec unchanged)
    cb = EMACodebook(8, 16, kmeans_iters=2, threshold_ema_dead_code=0.0)
    cb.train()
    cb(z)  # k-means init
    before = cb.embed.clone()
    codes = cb(z).codes[:, 0]
    assert torch.equal(codes, torch.cdist(z.transpose(1, 2), before[None]).argmin(-1))
    # with dropout: the search sees dropped vectors, z_q is still the undropped entry
    noisy = EMACodebook(8, 16, kmeans_iters=2, threshold_ema_dead_code=0.0, search_dropout=0.5)
    noisy.load_state_dict(cb.state_dict())
    noisy.train()
    embed = noisy.embed.clone()
    out = noisy(z)
    assert torch.equal(out.z_q, torch.nn.functional.embedding(out.codes[:, 0], embed).transpose(1, 2))
    assert not torch.equal(out.codes[:, 0], torch.cdist(z.transpose(1, 2), embed[None]).argmin(-1))
    noisy.eval()
    assert torch.equal(noisy(z).codes[:, 0], noisy.encode(z))
    with pytest.raises(ValueError, match="search_dropout"):
        EMACodebook(8, 16, search_dropout=1.0)
    with pytest.raises(ValueError, match="search_dropout"):
        ResidualVectorQuantizer(dimension=8, n_q=2, codebook_size=16, search_dropout=-0.1)
