"""Codec: bandwidth -> codebooks, encode/decode agree with forward, normalization, errors."""

from __future__ import annotations

import pytest
import torch

from codecplatform.generators.seanet import SEANetDecoder, SEANetEncoder
from codecplatform.models.codec import Codec
from codecplatform.nn.streaming import streaming
from codecplatform.quantizers.ema_residual import ResidualVectorQuantizer


def make_codec(
    sample_rate=24000, ratios=(8, 5, 4, 2), n_q=32, channels=1, normalize=False, bandwidths=None, causal=True
):
    kw = dict(channels=channels, dimension=8, n_filters=2, ratios=list(ratios), lstm_layers=1, causal=causal)
    quantizer = ResidualVectorQuantizer(dimension=8, n_q=n_q, codebook_size=1024, kmeans_iters=2)
    return Codec(SEANetEncoder(**kw), quantizer, SEANetDecoder(**kw), sample_rate, bandwidths, normalize)


def test_encodec_bandwidths_map_to_codebooks():
    codec24 = make_codec(bandwidths=[1.5, 3, 6, 12, 24])
    assert codec24.frame_rate == 75
    assert [codec24.n_q_for_bandwidth(b) for b in (1.5, 3, 6, 12, 24)] == [2, 4, 8, 16, 32]
    assert codec24.n_q_choices == [2, 4, 8, 16, 32]
    assert codec24.bitrate(32) == pytest.approx(24.0)
    codec48 = make_codec(sample_rate=48000, n_q=16, bandwidths=[3, 6, 12, 24])
    assert codec48.frame_rate == 150
    assert codec48.n_q_choices == [2, 4, 8, 16]
    with pytest.raises(ValueError, match="exceeds"):
        codec48.n_q_for_bandwidth(48)


def test_training_draws_counts_from_the_bandwidths_and_eval_honours_bandwidth():
    torch.manual_seed(0)
    codec = make_codec(
        ratios=(4, 2), sample_rate=24000 // 40, n_q=8, bandwidths=[1.5, 3.0]
    )  # 75 Hz, 0.75 kbps a codebook
    from codecplatform.quantizers.dropout import PerBatchChoice

    codec.quantizer.dropout = PerBatchChoice()
    codec.train()
    x = torch.randn(2, 1, 600) * 0.1
    seen = {int(codec(x, generator=torch.Generator().manual_seed(s)).quantized.n_q[0]) for s in range(12)}
    assert seen == {2, 4}
    codec.eval()
    encoded = codec.encode(x, bandwidth=1.5)
    assert encoded.codes.shape == (2, 2, 75)
    forward = codec(x, n_q=2)
    assert torch.equal(forward.quantized.codes, encoded.codes)
    assert torch.allclose(codec.decode(encoded), forward.x_hat, atol=1e-5)


def test_normalize_scale_travels_with_the_codes():
    torch.manual_seed(0)
    codec = make_codec(ratios=(4, 2), n_q=2, normalize=True, causal=False).eval()
    x = torch.randn(2, 1, 800)
    loud = codec.encode(10 * x)
    quiet = codec.encode(x)
    assert torch.equal(loud.codes, quiet.codes)  # scale-invariant codes
    assert torch.allclose(loud.scale, 10 * quiet.scale, rtol=1e-5)
    assert torch.allclose(codec.decode(loud), 10 * codec.decode(quiet), rtol=1e-4, atol=1e-5)


def test_streaming_encode_equals_whole_encode():
    torch.manual_seed(0)
    codec = make_codec(ratios=(4, 2), n_q=4).eval()
    codec.train()
    codec(torch.randn(2, 1, 800))  # k-means init
    codec.eval()
    x = torch.randn(1, 1, 8 * 50)
    whole = codec.encoder(x)
    with streaming(codec.encoder):
        chunks = [codec.encoder(c) for c in x.split(40, dim=-1)]
    assert torch.allclose(torch.cat(chunks, dim=-1), whole, atol=1e-5)


def test_mismatched_parts_are_rejected():
    enc = SEANetEncoder(dimension=8, n_filters=2, ratios=[2])
    dec = SEANetDecoder(dimension=4, n_filters=2, ratios=[2])
    with pytest.raises(ValueError, match="latent sizes differ"):
        Codec(enc, ResidualVectorQuantizer(dimension=8, n_q=1, codebook_size=4), dec, 16000)
    codec = make_codec(ratios=(2,), n_q=1)
    with pytest.raises(ValueError, match="channels"):
        codec(torch.randn(1, 2, 100))
    with pytest.raises(ValueError, match="bandwidth or n_q"):
        codec.encode(torch.randn(1, 1, 100), bandwidth=1.0, n_q=1)


def test_from_config_builds_the_codec():
    config = {
        "class_path": "codecplatform.models.codec.Codec",
        "init_args": {
            "sample_rate": 16000,
            "encoder": {
                "class_path": "codecplatform.generators.seanet.SEANetEncoder",
                "init_args": {"dimension": 4, "n_filters": 2, "ratios": [2]},
            },
            "quantizer": {
                "class_path": "codecplatform.quantizers.ema_residual.ResidualVectorQuantizer",
                "init_args": {"dimension": 4, "n_q": 2, "codebook_size": 8},
            },
            "decoder": {
                "class_path": "codecplatform.generators.seanet.SEANetDecoder",
                "init_args": {"dimension": 4, "n_filters": 2, "ratios": [2]},
            },
        },
    }
    codec = Codec.from_config(config)
    assert codec.hop_length == 2 and codec.quantizer.n_q == 2


# ------------------------------------------------------------------------------ loading checkpoints
class RunsCode:
    """A pickle payload: unpickling it creates ``marker`` (a stand-in for arbitrary code)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_from_checkpoint_refuses_a_pickle_that_would_run_code(tmp_path):
    marker = tmp_path / "code_ran"
    path = tmp_path / "planted.ckpt"
    codec = make_codec(ratios=(2,), n_q=2)
    state = {f"codec.{k}": v for k, v in codec.state_dict().items()}
    torch.save({"codec_config": {"class_path": "x"}, "state_dict": state, "payload": RunsCode(marker)}, path)
    with pytest.raises(ValueError, match=r"planted.ckpt is not a codec checkpoint: torch.load\(weights_only=True\)"):
        Codec.from_checkpoint(path)
    assert not marker.exists()
    torch.load(path, weights_only=False)  # the payload is live: a full unpickling runs it
    assert marker.exists()


def test_from_checkpoint_names_a_file_that_is_no_checkpoint(tmp_path):
    from codecplatform.checkpoints.io import load_codec_state

    for name, content in (("text.ckpt", b"hello\n"), ("empty.ckpt", b""), ("random.ckpt", bytes(range(256)) * 4)):
        (tmp_path / name).write_bytes(content)
        with pytest.raises(ValueError, match=f"{tmp_path / name} is not a codec checkpoint: ") as error:
            load_codec_state(tmp_path / name)
        assert "\n" not in str(error.value)
    torch.save({"codec_config": {"class_path": "x"}, "state_dict": [1, 2]}, tmp_path / "list.ckpt")
    with pytest.raises(ValueError, match="list.ckpt is not a codec checkpoint: its 'state_dict' is a list, not a dict"):
        load_codec_state(tmp_path / "list.ckpt")
