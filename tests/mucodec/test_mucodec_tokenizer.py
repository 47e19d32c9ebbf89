"""MuCodecTokenizer: frozen MuEncoder features -> RVQ codes at 25 Hz."""

from __future__ import annotations

import pytest
import torch

from codecplatform.mucodec.muencoder import MuEncoder
from codecplatform.mucodec.tokenizer import MuCodecTokenizer
from codecplatform.quantizers.factorized import FactorizedResidualVectorQuantizer

ENCODER = dict(
    n_mels=16, conv_dim=4, hidden_size=16, num_layers=2, num_heads=2, ffn_dim=32, conv_kernel=3, feature_layer=2
)


def tiny(n_q: int = 2, codebook_size: int = 16) -> MuCodecTokenizer:
    torch.manual_seed(0)
    quantizer = FactorizedResidualVectorQuantizer(16, n_q, codebook_size, 4, stale_tolerance=200)
    return MuCodecTokenizer(MuEncoder(**ENCODER), quantizer)


def test_codes_at_25_hz_and_decode_to_features():
    tok = tiny().eval()
    x = torch.randn(2, 2, 24000)
    encoded = tok.encode(x)
    assert encoded.codes.shape == (2, 2, 25) and encoded.length == 24000 and tok.frame_rate == 25.0
    z = tok.features(x)
    assert z.shape == (2, 16, 25)
    z_q, out = tok(x)
    assert torch.equal(out.codes, encoded.codes)
    torch.testing.assert_close(tok.decode(encoded.codes), out.z_q)
    assert tok.encode(x, n_q=1).codes.shape == (2, 1, 25)


def test_encoder_is_frozen_and_stays_in_eval_mode():
    tok = tiny().train()
    assert not tok.encoder.training and tok.quantizer.training
    assert not any(p.requires_grad for p in tok.encoder.parameters())
    z, out = tok(torch.randn(2, 1, 9600))
    (out.z_q.square().mean() + out.losses["commit"]).backward()
    assert all(p.grad is None for p in tok.encoder.parameters())
    assert tok.quantizer.layers[0].in_proj.parametrizations.weight.original1.grad is not None


def test_interface_for_callbacks_and_bitrates():
    assert tiny(1, 16384).bitrate() == pytest.approx(0.35)  # 25 Hz x 14 bits
    assert tiny(4, 10000).bitrate() == pytest.approx(1.329, abs=1e-3)  # 4 x 25 x log2(10000)
    tok = tiny()
    assert tok.codebook_sizes == [16, 16] and tok.n_q == 2 and tok.sample_rate == 24000
    assert tok.describe()["feature_layer"] == "2"
    counts = tok.num_parameters()
    assert counts["total"] == counts["encoder"] + counts["quantizer"]


def test_dimension_mismatch_is_refused():
    with pytest.raises(ValueError, match="quantizer.dimension=8"):
        MuCodecTokenizer(MuEncoder(**ENCODER), FactorizedResidualVectorQuantizer(8, 1, 16, 4))
