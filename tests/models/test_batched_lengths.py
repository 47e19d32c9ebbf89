"""Batch coding with per-item lengths: every item of a padded batch gets exactly the codes and audio
it gets alone, for every GAN family (causal and not, normalizing and segmented), and the padding
never leaks (it is filled with loud noise here)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from codecplatform.config import compose_config, merge_config
from codecplatform.models.codec import Codec

EXPERIMENTS = Path(__file__).resolve().parents[2] / "experiments"


def _codec_args(**init_args) -> dict:
    return {"model": {"init_args": {"codec": {"init_args": init_args}}}}


NON_CAUSAL = {"init_args": {"causal": False}}
VARIANTS = {  # name -> (family, base config, extra override)
    "encodec_causal": ("encodec", "24khz_mono.yaml", {}),
    "encodec_non_causal": ("encodec", "24khz_mono.yaml", _codec_args(encoder=NON_CAUSAL, decoder=NON_CAUSAL)),
    "encodec_normalizing_segmented": ("encodec", "48khz_stereo.yaml", _codec_args(segment_seconds=0.01)),
    "dac": ("dac", "44khz.yaml", {}),
    "spectrostream": ("spectrostream", "48khz_stereo.yaml", {}),
    "muffin": ("muffin", "75hz.yaml", {}),
}


def tiny_codec(name: str, init: bool = True) -> Codec:
    family, base, extra = VARIANTS[name]
    torch.manual_seed(0)
    config = merge_config(
        compose_config(EXPERIMENTS / family / base), compose_config(EXPERIMENTS / "tiny" / f"{family}.yaml")
    )
    codec = Codec.from_config(merge_config(config, extra)["model"]["init_args"]["codec"])
    if not init:
        return codec.eval()
    codec.train()
    with torch.no_grad():
        codec(0.1 * torch.randn(2, codec.channels, 40 * codec.hop_length))  # k-means init of the codebooks
    return codec.eval()


def encoder_calls(codec: Codec) -> list[int]:
    calls: list[int] = []
    codec.encoder.register_forward_hook(lambda module, args, out: calls.append(args[0].shape[0]))
    return calls


@pytest.mark.parametrize("name", list(VARIANTS))
def test_batched_coding_equals_coding_each_item_alone(name):
    codec = tiny_codec(name)
    hop = codec.hop_length
    base = 130 * hop if codec.segment_length else 24 * hop
    lengths = [base + 5, base // 2, base, base // 2]  # a partial last frame, repeated and whole lengths
    torch.manual_seed(1)
    x = 0.1 * torch.randn(len(lengths), codec.channels, max(lengths))
    for b, n in enumerate(lengths):
        x[b, :, n:] = 10 * torch.randn(codec.channels, max(lengths) - n)  # loud padding: must not leak
    codec.encode(x[:1, :, : 2 * hop], lengths=[hop])  # the causality probe runs once, before counting
    calls = encoder_calls(codec)
    encoded = codec.encode(x, n_q=2, lengths=torch.tensor(lengths))
    batched_calls = list(calls)
    audio = codec.decode(encoded, lengths=lengths)
    assert audio.shape == (len(lengths), codec.channels, max(lengths))
    for b, n in enumerate(lengths):
        alone = codec.encode(x[b : b + 1, :, :n], n_q=2)
        frames = alone.codes.shape[-1]
        assert torch.equal(encoded.codes[b : b + 1, :, :frames], alone.codes), f"item {b}"
        assert bool((encoded.codes[b, :, frames:] == -1).all())
        if alone.scale is not None:
            torch.testing.assert_close(encoded.scale[b : b + 1, : alone.scale.shape[1]], alone.scale)
        torch.testing.assert_close(audio[b : b + 1, :, :n], codec.decode(alone), atol=1e-5, rtol=1e-4)
        assert not audio[b, :, n:].any()
    # encoder calls: zero-padded families (masked) one, causal EnCodec one for the whole-frame items,
    # the others one per distinct length
    expected = {"dac": [4], "muffin": [4], "encodec_causal": [1, 3], "encodec_non_causal": [1, 1, 2]}
    assert sorted(batched_calls) == expected.get(name, sorted(batched_calls))
    assert name != "spectrostream" or sorted(batched_calls) == [1, 1, 2]
    with pytest.raises(ValueError, match="pass the same lengths"):
        codec.decode(encoded)


def test_lengths_are_checked():
    codec = tiny_codec("encodec_causal", init=False)
    x = torch.zeros(2, 1, 80)
    with pytest.raises(ValueError, match="one length per batch item"):
        codec.encode(x, lengths=[80])
    with pytest.raises(ValueError, match=r"whole numbers in 1\.\.80"):
        codec.encode(x, lengths=[80, 81])


def test_bare_codes_decode_and_padding_codes_are_refused():
    codec = tiny_codec("encodec_causal", init=False)
    codes = torch.zeros(1, 2, 5, dtype=torch.long)
    assert codec.decode(codes).shape == (1, 1, 5 * codec.hop_length)
    with pytest.raises(ValueError, match="pass the same lengths"):
        codec.decode(codes - 1)
