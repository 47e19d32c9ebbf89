"""The codec interface (models/base.py AudioCodec): rates, operating points, codebook ablation,
chunked coding through the codec's own rules, the residual loop's per-stage hook."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from codecplatform.generators.dac import DACDecoder, DACEncoder
from codecplatform.generators.seanet import SEANetDecoder, SEANetEncoder
from codecplatform.models.base import AudioCodec
from codecplatform.models.codec import Codec
from codecplatform.quantizers.ema_residual import ResidualVectorQuantizer
from codecplatform.quantizers.factorized import FactorizedResidualVectorQuantizer
from codecplatform.quantizers.residual import StageHook
from codecplatform.types import EncodedAudio


def seanet_codec(n_q: int = 4, causal: bool = True, **codec_kw) -> Codec:
    kw = dict(channels=1, dimension=8, n_filters=2, ratios=[4, 2], lstm_layers=1, causal=causal)
    quantizer = ResidualVectorQuantizer(dimension=8, n_q=n_q, codebook_size=16, kmeans_iters=2)
    return Codec(SEANetEncoder(**kw), quantizer, SEANetDecoder(**kw), 8000, **codec_kw)


def trained(codec: Codec, seed: int = 0) -> Codec:
    """One training forward (k-means init of the EMA codebooks), then eval mode."""
    torch.manual_seed(seed)
    codec.train()
    codec(0.1 * torch.randn(4, codec.channels, 800), n_q=codec.n_q)
    return codec.eval()


def test_codec_implements_the_interface():
    codec = seanet_codec(bandwidths=[4.0, 8.0])  # 1 kHz frames, 4 bits a codebook
    assert isinstance(codec, AudioCodec)
    assert codec.frame_rate == 1000 and codec.samples_per_frame == 8
    assert codec.n_q == 4 and codec.codebook_sizes == [16] * 4
    assert codec.bitrate(3) == pytest.approx(12.0)
    assert codec.operating_points() == {4.0: 1, 8.0: 2}
    assert codec.resolve_n_q(bandwidth=13.0) == 3  # the largest count that fits
    assert codec.resolve_n_q() == 4 and codec.resolve_n_q(n_q=2) == 2
    with pytest.raises(ValueError, match="bandwidth or n_q, not both"):
        codec.resolve_n_q(bandwidth=4.0, n_q=1)
    with pytest.raises(ValueError, match="out of range"):
        codec.resolve_n_q(n_q=5)
    layout = codec.bitstream_layout()
    assert layout == {
        "sample rate": 8000,
        "channels": 1,
        "hop length": 8,
        "segment length": None,
        "segment stride": None,
        "normalize": False,
    }
    tags = codec.describe()
    assert tags["family"] == "SEANet" and tags["max_kbps"] == "16" and tags["quantizer"] == "ResidualVectorQuantizer"
    without = seanet_codec()
    assert without.operating_points() == {4.0: 1, 8.0: 2, 12.0: 3, 16.0: 4}


@pytest.mark.parametrize("family", ["seanet", "dac"])
def test_codebook_ablation_decodes_subsets(family: str):
    torch.manual_seed(0)
    if family == "seanet":
        codec = trained(seanet_codec())
    else:
        quantizer = FactorizedResidualVectorQuantizer(dimension=8, n_q=4, codebook_size=16, codebook_dim=2)
        encoder = DACEncoder(d_model=4, strides=[2, 4], dimension=8)
        codec = Codec(encoder, quantizer, DACDecoder(dimension=8, decoder_dim=16, rates=[4, 2]), 8000).eval()
    x = 0.1 * torch.randn(2, 1, 800)
    encoded = codec.encode(x)
    # a prefix of codebooks decodes exactly as the first k codebooks
    for k in range(1, 5):
        prefix = codec.decode(encoded, codebooks=list(range(k)))
        first_k = codec.decode(EncodedAudio(encoded.codes[:, :k], encoded.scale, encoded.length))
        torch.testing.assert_close(prefix, first_k)
    # one codebook alone: the decoder of that codebook's entries only
    for k in range(4):
        alone = codec.decode(encoded, codebooks=[k])
        latent = codec.quantizer.layers[k].decode(encoded.codes[:, k])
        torch.testing.assert_close(alone, codec.decoder(latent)[..., : x.shape[-1]])
    assert not torch.allclose(codec.decode(encoded, codebooks=[1]), codec.decode(encoded, codebooks=[0]))
    for bad in ([], [4], [-1]):
        with pytest.raises(ValueError, match="codebook"):
            codec.decode(encoded, codebooks=bad)


def test_chunked_decoding_honours_codebooks():
    codec = trained(seanet_codec())
    x = 0.1 * torch.randn(1, 1, 8 * 50)
    encoded = codec.encode(x)
    whole = codec.decode(encoded, codebooks=[0, 2])[0]
    blocks = torch.cat(list(codec.decode_chunked(encoded, chunk_frames=7, context_frames=0, codebooks=[0, 2])), -1)
    torch.testing.assert_close(blocks, whole, atol=1e-5, rtol=0)


def test_chunked_encoding_reads_through_the_callback():
    codec = trained(seanet_codec(causal=False))  # neither streams nor segments: context around chunks
    x = 0.1 * torch.randn(1, 1, 8 * 60)
    reads = []

    def read(start: int, stop: int) -> Tensor:
        reads.append((start, stop))
        return x[0, :, start:stop]

    chunked = codec.encode_chunked(read, x.shape[-1], n_q=3, chunk_samples=8 * 10, context_frames=20)
    assert max(stop - start for start, stop in reads) < x.shape[-1]  # never the whole signal at once
    assert torch.equal(chunked.codes, codec.encode(x, n_q=3).codes)
    with pytest.raises(ValueError, match="multiple of the hop 8"):
        codec.encode_chunked(read, x.shape[-1], n_q=3, chunk_samples=12, context_frames=0)


class Shift(StageHook):
    """A test hook: stage k quantizes the residual shifted by k frames; records the calls."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[int] = []

    def forward(self, residual: Tensor, stage: int) -> Tensor:
        self.calls.append(stage)
        return residual.roll(shifts=stage, dims=-1)


@pytest.mark.parametrize("kind", ["ema", "factorized"])
def test_stage_hook_runs_in_training_and_encode_alike(kind: str):
    torch.manual_seed(0)
    hook = Shift()
    if kind == "ema":
        quantizer = ResidualVectorQuantizer(dimension=8, n_q=3, codebook_size=16, kmeans_iters=2, stage_hook=hook)
    else:
        quantizer = FactorizedResidualVectorQuantizer(
            dimension=8, n_q=3, codebook_size=16, codebook_dim=2, stage_hook=hook
        )
    z = torch.randn(2, 8, 30)
    quantizer.train()
    quantizer(z)
    assert hook.calls == [0, 1, 2]
    quantizer.eval()
    hook.calls.clear()
    forward = quantizer(z)
    assert hook.calls == [0, 1, 2]
    hook.calls.clear()
    codes = quantizer.encode(z)
    assert hook.calls == [0, 1, 2]
    assert torch.equal(codes, forward.codes)
    torch.testing.assert_close(quantizer.decode(codes), forward.z_q)
    # the hook changes what is quantized: without it the codes differ
    quantizer.stage_hook = None
    assert not torch.equal(quantizer.encode(z), codes)


def test_any_family_loads_through_the_interface(tmp_path):
    codec = trained(seanet_codec())
    config = {
        "class_path": "codecplatform.models.codec.Codec",
        "init_args": {
            "sample_rate": 8000,
            "encoder": {
                "class_path": "codecplatform.generators.seanet.SEANetEncoder",
                "init_args": {
                    "channels": 1,
                    "dimension": 8,
                    "n_filters": 2,
                    "ratios": [4, 2],
                    "lstm_layers": 1,
                    "causal": True,
                },
            },
            "quantizer": {
                "class_path": "codecplatform.quantizers.ema_residual.ResidualVectorQuantizer",
                "init_args": {"dimension": 8, "n_q": 4, "codebook_size": 16, "kmeans_iters": 2},
            },
            "decoder": {
                "class_path": "codecplatform.generators.seanet.SEANetDecoder",
                "init_args": {
                    "channels": 1,
                    "dimension": 8,
                    "n_filters": 2,
                    "ratios": [4, 2],
                    "lstm_layers": 1,
                    "causal": True,
                },
            },
        },
    }
    state = {f"codec.{k}": v for k, v in codec.state_dict().items()}
    torch.save({"codec_config": config, "state_dict": state}, tmp_path / "c.ckpt")
    loaded = AudioCodec.from_checkpoint(tmp_path / "c.ckpt")
    assert type(loaded) is Codec
    x = 0.1 * torch.randn(1, 1, 400)
    assert torch.equal(loaded.encode(x).codes, codec.encode(x).codes)
