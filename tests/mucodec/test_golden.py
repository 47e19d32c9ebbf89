"""MuCodec parts against the official code's outputs (tests/fixtures/mucodec/golden.pt, made by
make_golden.py beside it from xuyaoxun/MuCodec at the commit it records): the quantizer's codes and
``from_codes``, one DiT step, the whole decode (condition path + Euler sampler with CFG and an
in-context prompt) and the MuEncoder's hidden states, same weights, float tolerance. The weights are in
the official layout (``PromptCondAudioDiffusion`` / ``MuQ`` state dicts, as in the released mucodec.pt)
and are read through the importer's key map (:func:`codecplatform.checkpoints.mucodec.convert_mucodec_state`)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from codecplatform.checkpoints.mucodec import convert_mucodec_state
from codecplatform.mucodec.flow import FlowMatchingDiT
from codecplatform.mucodec.muencoder import MuEncoder
from codecplatform.quantizers.factorized import FactorizedResidualVectorQuantizer

GOLDEN = torch.load(Path(__file__).resolve().parents[1] / "fixtures" / "mucodec" / "golden.pt", weights_only=True)
TOL = dict(atol=2e-5, rtol=1e-4)


def ours(official: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """Official state -> our ``prefix`` part, float32 (the fixture stores float16-exact weights)."""
    converted = convert_mucodec_state(official)
    return {
        k[len(prefix) :]: v.float() if v.is_floating_point() else v
        for k, v in converted.items()
        if k.startswith(prefix)
    }


@pytest.fixture(scope="module")
def flow() -> FlowMatchingDiT:
    golden = GOLDEN["flow"]
    config = golden["config"]
    quantizer = FactorizedResidualVectorQuantizer(**config["quantizer"], stale_tolerance=200)
    model = FlowMatchingDiT(dict(config["transformer"]), quantizer, latent_channels=32, latent_bins=32)
    model.load_state_dict(ours(golden["official_state"], "flow."), strict=True)
    return model.eval()


def test_quantizer_codes_and_from_codes_match_the_official(flow):
    golden = GOLDEN["flow"]
    assert GOLDEN["official_commit"].startswith("128f91be")
    torch.testing.assert_close(flow.quantizer.encode(golden["features"]), golden["rvq_codes"])
    torch.testing.assert_close(flow.quantizer.decode(golden["codes"]), golden["from_codes"], **TOL)


def test_one_dit_step_matches_the_official(flow):
    golden = GOLDEN["flow"]
    x, prompt, condition = golden["dit_in"].float().chunk(3, dim=1)
    with torch.no_grad():
        velocity = flow.velocity(x, golden["dit_t"], prompt, condition)
    torch.testing.assert_close(velocity, golden["dit_out"], **TOL)


def test_decode_of_codes_matches_the_official_sampler(flow):
    """Condition (from_codes -> Linear -> frames stacked, empty embedding past the valid codes), the
    Euler sampler with CFG 1.5 and an in-context frame, as ``inference_codes`` runs them."""
    golden = GOLDEN["flow"]
    args = golden["sample_args"]
    generator = torch.Generator().manual_seed(2)
    sample = flow.sample(
        golden["codes"],
        args["frames"],
        golden["true_latents"].float(),
        torch.tensor([args["prompt_frames"]]),
        torch.tensor([args["valid_codes"]]),
        num_steps=args["num_steps"],
        guidance_scale=args["guidance_scale"],
        generator=generator,
    )
    torch.testing.assert_close(sample, golden["sample"], **TOL)


def test_muencoder_hidden_states_match_the_official():
    assert "muencoder" in GOLDEN, f"the fixture lacks the official MuEncoder's output: {GOLDEN.get('muencoder_error')}"
    golden = GOLDEN["muencoder"]
    encoder = MuEncoder(**golden["config"], feature_layer=2).eval()
    official = {f"muencoder.model.{k}": v for k, v in golden["official_state"].items()}
    encoder.load_state_dict(ours(official, "tokenizer.encoder."))
    with torch.no_grad():
        states = encoder(golden["audio"].float()).hidden_states
    torch.testing.assert_close(torch.stack(states), golden["layer_results"], **TOL)
