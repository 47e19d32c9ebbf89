"""MUFFIN against the official code (dianwen-ng/MUFFIN, commit in the fixtures): the tiny encoder,
decoder and MBS-RVQ with the official weights, on the official inputs, give the official outputs;
one training step of the quantizer (per-stage straight-through, EMA update) matches too.
The official weights (``weights.pt``, the official ``g_<step>`` format) are read through the importer's
key map (:func:`codecplatform.checkpoints.muffin.convert_muffin_checkpoint`), so these tests also check
the MUFFIN import. Fixtures: ``tests/fixtures/muffin/make_muffin_golden.py``."""

from pathlib import Path

import pytest
import torch

from codecplatform.checkpoints.muffin import convert_muffin_checkpoint
from codecplatform.generators.muffin import MuffinDecoder, MuffinEncoder
from codecplatform.quantizers.band_limit import BandLimit
from codecplatform.quantizers.ema_residual import ResidualVectorQuantizer

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "muffin"
TOL = dict(rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def official():
    converted = convert_muffin_checkpoint(torch.load(FIXTURES / "weights.pt", weights_only=True))
    weights = {
        part: {k[len(part) + 1 :]: v for k, v in converted.items() if k.startswith(part + ".")}
        for part in ("encoder", "decoder", "quantizer")
    }
    golden = torch.load(FIXTURES / "golden.pt", weights_only=True)
    config = golden["config"]
    encoder = MuffinEncoder(**config["encoder"]).eval()
    decoder = MuffinDecoder(**config["decoder"]).eval()
    encoder.load_state_dict(weights["encoder"])
    decoder.load_state_dict(weights["decoder"])

    def quantizer(**options):
        rvq = ResidualVectorQuantizer(**{**config["quantizer"], **options}, stage_hook=BandLimit(config["scales"]))
        rvq.load_state_dict(weights["quantizer"])
        return rvq

    return encoder, decoder, quantizer, golden


def test_encoder_quantizer_decoder_match_the_official_outputs(official):
    encoder, decoder, quantizer, golden = official
    with torch.no_grad():
        z = encoder(golden["x"])
        torch.testing.assert_close(z, golden["z"], **TOL)
        rvq = quantizer().eval()
        out = rvq(golden["z"])
        assert torch.equal(out.codes, golden["eval"]["codes"])
        torch.testing.assert_close(out.z_q, golden["eval"]["z_q"], **TOL)
        assert torch.equal(rvq.encode(golden["z"]), golden["eval"]["codes"])  # ours encodes as it trains
        torch.testing.assert_close(decoder(golden["eval"]["z_q"]), golden["eval"]["y"], **TOL)


def test_quantizer_training_step_matches_the_official_step(official):
    *_, quantizer, golden = official
    train = golden["train"]
    rvq = quantizer().train()
    z = golden["z"].clone().requires_grad_(True)
    out = rvq(z)
    assert torch.equal(out.codes, train["codes"])
    torch.testing.assert_close(out.z_q, train["z_q"], **TOL)
    torch.testing.assert_close(out.losses["commit"], train["commit"].mean(), **TOL)
    (grad,) = torch.autograd.grad((out.z_q * train["upstream"]).sum(), z)
    torch.testing.assert_close(grad, train["grad"], **TOL)  # the sum of the stages' band filters
    state = rvq.state_dict()
    for key, value in train["after"].items():
        torch.testing.assert_close(state[key], value, **TOL)
    # the named option (one straight-through for the stack) is not the official gradient
    stack = quantizer(straight_through="stack").train()
    (grad,) = torch.autograd.grad((stack(z).z_q * train["upstream"]).sum(), z)
    assert not torch.allclose(grad, train["grad"], atol=1e-2)
