"""MuEncoder: front end, 25 Hz shapes, hidden-state indexing, BEST-RQ targets, masking, checkpoints."""

from __future__ import annotations

import pytest
import torch
import torchaudio

from codecplatform.mucodec.muencoder import (
    MEL_MEAN,
    MEL_STD,
    MelFrontEnd,
    MuEncoder,
    RandomProjectionQuantizer,
    downmix,
    load_muencoder_state,
    mask_waveform,
    span_mask,
    stack_frames,
    token_mask,
)

TINY = dict(
    n_mels=16, conv_dim=4, hidden_size=16, num_layers=4, num_heads=2, ffn_dim=32, conv_kernel=3, feature_layer=3
)


def tiny_encoder(**kwargs) -> MuEncoder:
    torch.manual_seed(0)
    return MuEncoder(**{**TINY, **kwargs}).eval()


def test_mel_front_end_matches_torchaudio_official_recipe():
    """Official: MelSpectrogram(24000, 2048, hop 240, 128) defaults + AmplitudeToDB, last frame dropped."""
    x = torch.randn(2, 24000) * 0.1
    reference = torchaudio.transforms.AmplitudeToDB()(
        torchaudio.transforms.MelSpectrogram(24000, n_fft=2048, hop_length=240, n_mels=128)(x)
    )[..., :-1]
    out = MelFrontEnd()(x)
    assert out.shape == (2, 128, 100)
    torch.testing.assert_close(out, (reference - MEL_MEAN) / MEL_STD, atol=1e-4, rtol=1e-4)


def test_shapes_and_25_hz():
    enc = tiny_encoder()
    x = torch.randn(2, 2, 24000 + 500)  # 1 s and a bit: the tail shorter than a token is dropped
    out = enc(x)
    assert enc.frame_rate == 25.0 and enc.samples_per_token == 960
    assert len(out.hidden_states) == enc.num_hidden_states == 5
    assert all(h.shape == (2, 25, 16) for h in out.hidden_states)
    assert out.mel.shape == (2, 16, 100)
    assert enc.features(x).shape == (2, 16, 25)  # (B, H, T')


def test_hidden_states_follow_transformers_indexing():
    """State 1 = Conformer input, state i+1 = output of block i, last = final LayerNorm (as
    transformers' output_hidden_states / the official layer_results)."""
    enc = tiny_encoder()
    x = torch.randn(1, 1, 9600)
    with torch.no_grad():
        out = enc(x)
        h = enc.embed(enc.front_end(enc.mono(x)))
        torch.testing.assert_close(out.hidden_states[0], h)
        rotary = enc.conformer.embed_positions(h)
        after_two = enc.conformer.layers[1](
            enc.conformer.layers[0](h, relative_position_embeddings=rotary), relative_position_embeddings=rotary
        )
        torch.testing.assert_close(out.hidden_states[2], after_two)  # feature_layer 3 = output of block 2
        reference = enc.conformer(h.clone()).last_hidden_state  # transformers' own forward
        torch.testing.assert_close(out.hidden_states[-1], reference)


@pytest.mark.parametrize("layer", [1, 3, 5])
def test_feature_layer_selects_one_based_hidden_state(layer):
    enc = tiny_encoder(feature_layer=layer)
    x = torch.randn(1, 1, 9600)
    with torch.no_grad():
        states = enc(x).hidden_states
        features = enc.features(x)
        assert len(enc(x, up_to=layer).hidden_states) == layer  # later blocks are not run
    torch.testing.assert_close(features, states[layer - 1].transpose(1, 2))


def test_feature_layer_out_of_range_is_refused():
    with pytest.raises(ValueError, match="feature_layer"):
        MuEncoder(**{**TINY, "feature_layer": 6})


def test_downmix_peak_limits_each_channel_then_averages():
    left = torch.full((1, 10), 0.5)
    right = torch.linspace(-1.8, 1.8, 10)[None]  # peak 1.8 -> divided by 2
    x = torch.stack([left, right], dim=1)  # (1, 2, 10)
    torch.testing.assert_close(downmix(x), ((left + right / 2) / 2))
    torch.testing.assert_close(downmix(x, None), (left + right) / 2)


def test_stack_frames_concatenates_consecutive_frames():
    mel = torch.arange(2 * 3 * 9, dtype=torch.float32).reshape(2, 3, 9)  # (B, F, N)
    stacked = stack_frames(mel, 4)  # (B, 2, 12): the 9th frame dropped
    assert stacked.shape == (2, 2, 12)
    torch.testing.assert_close(stacked[1, 1], torch.cat([mel[1, :, 4 + s] for s in range(4)]))


def test_best_rq_quantizer_is_deterministic_and_matches_the_official_seeding():
    a, b = RandomProjectionQuantizer(seed=142), RandomProjectionQuantizer(seed=142)
    assert torch.equal(a.projection, b.projection) and torch.equal(a.codebook, b.codebook)
    assert not torch.equal(a.projection, RandomProjectionQuantizer(seed=1).projection)
    torch.manual_seed(142)  # the official module: global seed, then xavier_normal_, then normal_
    projection = torch.nn.init.xavier_normal_(torch.empty(512, 16))
    codebook = torch.nn.init.normal_(torch.empty(4096, 16))
    assert torch.equal(a.projection, projection) and torch.equal(a.codebook, codebook)
    assert a.projection.shape == (512, 16) and a.codebook.shape == (4096, 16)
    x = torch.randn(2, 7, 512)
    codes = a(x)
    assert codes.shape == (2, 7) and torch.equal(codes, b(x))
    # cosine lookup: the scale of the input does not matter
    assert torch.equal(codes, a(3.0 * x))
    assert {n for n, _ in a.named_parameters()} == set()  # frozen: buffers only


def test_span_masking_statistics():
    generator = torch.Generator().manual_seed(0)
    spans = span_mask(400, 96000 + 5000, 9600, 0.6, generator)  # 10 whole spans per example
    assert spans.shape == (400, 10)
    assert abs(spans.float().mean().item() - 0.6) < 0.02
    mono = torch.ones(400, 101000)
    masked = mask_waveform(mono, spans, 9600, 0.1, generator)
    region = masked[:, :96000].reshape(400, 10, 9600)
    noise = region[spans]
    assert abs(noise.mean().item()) < 1e-3 and abs(noise.std().item() - 0.1) < 1e-3
    assert torch.equal(region[~spans], torch.ones_like(region[~spans]))
    assert torch.equal(masked[:, 96000:], mono[:, 96000:])  # the tail is never masked
    tokens = token_mask(spans, 10, 105)  # 0.4 s = 10 tokens at 25 Hz
    assert torch.equal(tokens[:, :100].reshape(400, 10, 10), spans[:, :, None].expand(400, 10, 10))
    assert not tokens[:, 100:].any()


def test_checkpoint_errors_name_the_field_and_file(tmp_path):
    enc = tiny_encoder()
    with pytest.raises(FileNotFoundError, match="muencoder_checkpoint: checkpoint .*missing.ckpt does not exist"):
        load_muencoder_state(tmp_path / "missing.ckpt", enc)
    other = tiny_encoder(hidden_size=8)
    path = tmp_path / "other.ckpt"
    torch.save({"state_dict": {f"encoder.{k}": v for k, v in other.state_dict().items()}}, path)
    with pytest.raises(ValueError, match=r"MuEncoder of muencoder_checkpoint=.*other.ckpt.*shape mismatches"):
        load_muencoder_state(path, enc)
    empty = tmp_path / "empty.ckpt"
    torch.save({"state_dict": {"foo": torch.zeros(1)}}, empty)
    with pytest.raises(ValueError, match="holds no MuEncoder weights"):
        load_muencoder_state(empty, enc)
    good = tmp_path / "good.ckpt"
    source = tiny_encoder()
    torch.nn.init.normal_(source.proj.weight)
    torch.save({"state_dict": {f"encoder.{k}": v for k, v in source.state_dict().items()}}, good)
    load_muencoder_state(good, enc)
    assert torch.equal(enc.proj.weight, source.proj.weight)


def test_real_size_parameter_count(capsys):
    """The real MuEncoder (built once): 316.3M parameters; the official model also holds transformers'
    unused convolutional position embedding (8.4M), deleted here."""
    enc = MuEncoder()
    total = sum(p.numel() for p in enc.parameters())
    parts = {
        "subsample": sum(p.numel() for p in enc.subsample.parameters()),
        "proj": sum(p.numel() for p in enc.proj.parameters()),
        "conformer": sum(p.numel() for p in enc.conformer.parameters()),
    }
    with capsys.disabled():
        official = total + 8_389_760
        print(f"\nMuEncoder (real): {total:,} parameters {parts}; official incl. unused pos_conv_embed: {official:,}")
    # Official: xuyaoxun/MuCodec@128f91be muq_dev/.../model/muq.py, MuQ() with its defaults and
    # w2v2_config.json, built and counted: conv (Conv2dSubsampling: our subsample + proj) 26,233,856;
    # conformer 298,499,200, of which pos_conv_embed 8,389,760; stage 1's head 4,198,400 and cls_token 1,024.
    assert parts["subsample"] + parts["proj"] == 26_233_856
    assert parts["conformer"] + 8_389_760 == 298_499_200
    assert parts == {"subsample": 9_455_616, "proj": 16_778_240, "conformer": 290_109_440}  # the split: snapshot
    assert total == 26_233_856 + 298_499_200 - 8_389_760 == 316_343_296
