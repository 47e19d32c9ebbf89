"""MuCodec Mel-VAE: the log-mel, shapes (12.5 Hz x 32 bins), stereo stacking, latent statistics,
save_pretrained / from_pretrained."""

from __future__ import annotations

import json

import pytest
import torch

from codecplatform.dsp.spectral import log_mel_spectrogram, mel_filterbank
from codecplatform.mucodec.melvae import LatentNormalizer, MelVAE, gaussian_kl

TINY = dict(n_mels=64, block_out_channels=[4, 4, 8, 8], layers_per_block=1, latent_channels=4, norm_num_groups=4)


def tiny_vae(**overrides) -> MelVAE:
    torch.manual_seed(0)
    return MelVAE(**{**TINY, **overrides}).eval()


def test_log_mel_is_audioldm_tacotron_stft():
    """Reflect padding n_fft / 2, periodic Hann, |rfft|, slaney filterbank, log(max(., 1e-5))."""
    torch.manual_seed(0)
    sr, n_fft, hop, n_mels = 16000, 256, 64, 40
    x = torch.randn(2, 2, 4000) * 0.1
    fb = mel_filterbank(sr, n_fft, n_mels, 20.0, 8000.0)
    padded = torch.nn.functional.pad(x.reshape(4, 1, -1), (n_fft // 2, n_fft // 2), mode="reflect")[:, 0]
    frames = padded.unfold(-1, n_fft, hop) * torch.hann_window(n_fft)  # (4, N, n_fft)
    magnitude = torch.fft.rfft(frames, dim=-1).abs()  # (4, N, F)
    expected = torch.log((magnitude @ fb.T).clamp(min=1e-5)).reshape(2, 2, -1, n_mels)
    got = log_mel_spectrogram(x, fb, n_fft, hop)
    assert got.shape == (2, 2, 1 + 4000 // hop, n_mels)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def test_real_geometry_is_12_5_hz_by_32_bins(capsys):
    with torch.device("meta"):
        vae = MelVAE()  # AudioLDM 48k defaults
    n_params = sum(p.numel() for p in vae.parameters())
    with capsys.disabled():
        print(
            f"\nMel-VAE (AudioLDM 48k geometry): {n_params:,} parameters "
            f"(encoder {sum(p.numel() for p in vae.vae.encoder.parameters()):,}, "
            f"decoder {sum(p.numel() for p in vae.vae.decoder.parameters()):,})"
        )
    # Official: xuyaoxun/MuCodec@128f91be tools/get_melvaehifigan48k.py, AutoencoderKL built from
    # build_pretrained_models' config and counted: encoder 90,010,272, decoder 133,523,969; 413,817,458 in
    # all, with quant_conv/post_quant_conv (1,328) and the 190,281,889 of the vocoder it holds (ours: apart).
    assert sum(p.numel() for p in vae.vae.encoder.parameters()) == 90_010_272
    assert sum(p.numel() for p in vae.vae.decoder.parameters()) == 133_523_969
    assert n_params == 413_817_458 - 190_281_889 == 223_535_569
    assert (vae.latent_rate, vae.latent_bins, vae.stacked_channels) == (12.5, 32, 32)
    mel = vae.mel(torch.zeros(1, 2, 2 * 48000))  # real mel on CPU: 201 frames, cropped to 200
    assert mel.shape == (1, 2, 200, 256)
    z = vae.encode_mel(mel.to("meta"))
    assert z.shape == (1, 32, 25, 32)  # 2 s at 12.5 Hz, 32 bins, L and R stacked
    assert vae.decode(z).shape == (1, 2, 200, 256)
    assert vae.latent_frames(int(40.96 * 48000)) == 512


def test_stereo_channels_are_encoded_separately_then_stacked():
    vae = tiny_vae()
    x = torch.randn(2, 2, 48000 // 2) * 0.1
    mel = vae.mel(x)
    z = vae.encode_mel(mel)
    assert z.shape == (2, 8, mel.shape[2] // 8, 8)
    with torch.no_grad():
        left = vae.vae.encode(mel[:, :1]).latent_dist.mean
        right = vae.vae.encode(mel[:, 1:]).latent_dist.mean
    torch.testing.assert_close(z, torch.cat([left, right], dim=1))
    out = vae(mel, sample=False)
    assert out.mel_hat.shape == mel.shape
    assert gaussian_kl(out.mean, out.logvar) >= 0


def test_mel_rejects_wrong_channels_and_too_short_audio():
    vae = tiny_vae()
    with pytest.raises(ValueError, match="x must be"):
        vae.mel(torch.zeros(1, 1, 4800))
    with pytest.raises(ValueError, match="mel frames"):
        vae.mel(torch.zeros(1, 2, 480 * 3))


def test_statistics_are_collected_then_frozen():
    norm = LatentNormalizer(channels=3, bins=2, max_samples=4)
    with pytest.raises(RuntimeError, match="statistics are empty"):
        norm.normalize(torch.zeros(1, 3, 5, 2))
    torch.manual_seed(0)
    a, b, c = (torch.randn(3, 3, 5, 2) * 2 + 1 for _ in range(3))
    norm.update(a)
    assert int(norm.count) == 3 and not norm.frozen
    norm.update(b)
    assert int(norm.count) == 6 and norm.frozen
    seen = torch.cat([a, b])
    mean = seen.mean(dim=2).mean(dim=0)  # mean over windows of time means, per (channel, bin)
    std = (seen.pow(2).mean(dim=2).mean(dim=0) - mean.pow(2)).sqrt()
    torch.testing.assert_close(norm.mean, mean)
    torch.testing.assert_close(norm.std, std)
    norm.update(c)  # frozen: no change
    assert int(norm.count) == 6
    torch.testing.assert_close(norm.mean, mean)
    y = norm.normalize(c)
    torch.testing.assert_close(y, (c - mean[None, :, None]) / std[None, :, None])
    torch.testing.assert_close(norm.denormalize(y), c)
    assert {"count", "sum", "sum_sq"} <= set(norm.state_dict())  # buffers: in every checkpoint


def test_save_pretrained_from_pretrained_round_trip(tmp_path):
    vae = tiny_vae(statistics_samples=2)
    x = torch.randn(1, 2, 48000 // 2) * 0.1
    vae.normalize(vae.encode(x), update=True)
    vae.normalize(vae.encode(x * 0.5), update=True)
    assert vae.normalizer.frozen
    out = vae.save_pretrained(tmp_path / "melvae")
    for name in ("melvae.json", "statistics.safetensors", "vae/config.json", "vae/diffusion_pytorch_model.safetensors"):
        assert (out / name).is_file(), name
    loaded = MelVAE.from_pretrained(out).eval()
    assert loaded.config() == vae.config()
    for (k1, v1), (k2, v2) in zip(vae.state_dict().items(), loaded.state_dict().items()):
        assert k1 == k2
        torch.testing.assert_close(v1, v2)
    assert int(loaded.normalizer.count) == 2 and loaded.normalizer.frozen
    with torch.no_grad():
        torch.testing.assert_close(loaded.normalize(loaded.encode(x)), vae.normalize(vae.encode(x)))
        z = vae.normalize(vae.encode(x))
        torch.testing.assert_close(loaded.decode(loaded.denormalize(z)), vae.decode(vae.denormalize(z)))
    assert MelVAE.from_checkpoint(out).config() == vae.config()  # a directory is a checkpoint too


def test_from_pretrained_reports_inconsistent_files(tmp_path):
    vae = tiny_vae()
    out = vae.save_pretrained(tmp_path / "melvae")
    config = json.loads((out / "melvae.json").read_text())
    config["latent_channels"] = 2
    (out / "melvae.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="latent_channels"):
        MelVAE.from_pretrained(out)
    with pytest.raises(FileNotFoundError, match="no melvae.json"):
        MelVAE.from_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError, match="not found"):
        MelVAE.from_checkpoint(tmp_path / "missing.ckpt")
