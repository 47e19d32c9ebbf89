"""MuCodec's tokenizer: RVQ over frozen MuEncoder features at 25 Hz.

Official (Xu et al. 2024; xuyaoxun/MuCodec ``model.py``, ``libs/rvq/descript_quantize3.py``): the MuEncoder's
``layer_results[6]`` (feature layer 7, see :mod:`codecplatform.mucodec.muencoder`) of the
mono mix, (B, 1024, T'), goes through DAC's factorized residual VQ (input 1024, codebook dim 32,
weight-normed 1x1 projections, L2-normalized lookup, no quantizer dropout) with stale-code
replacement after 200 unused steps; ``from_codes`` gives the quantized features (B, 1024, T') that
condition the flow-matching model. Low rate: 1 x 16384 codes (25 Hz x 14 bits = 0.35 kbps); high
rate: 4 x 10000 (4 x 25 x log2(10000) = 1.33 kbps).

Here: ``FactorizedResidualVectorQuantizer(stale_tolerance=200)``. ``decode`` returns features, not
audio: MuCodec's audio comes from the flow model, the Mel-VAE decoder and the vocoder.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from codecplatform.mucodec.muencoder import MuEncoder
from codecplatform.quantizers.factorized import FactorizedResidualVectorQuantizer
from codecplatform.types import EncodedAudio, QuantizerOutput


class MuCodecTokenizer(nn.Module):
    """Audio (B, C, T) at 24 kHz -> codes (B, K, T // 960) through a frozen MuEncoder and an RVQ.

    Args:
        encoder: the MuEncoder (frozen: no gradient, always in eval mode; its ``feature_layer``
            picks the features).
        quantizer: the residual quantizer over the features (``dimension`` = encoder hidden size).
    """

    def __init__(self, encoder: MuEncoder, quantizer: FactorizedResidualVectorQuantizer):
        super().__init__()
        if quantizer.dimension != encoder.hidden_size:
            raise ValueError(
                f"quantizer.dimension={quantizer.dimension} but the MuEncoder's features have "
                f"{encoder.hidden_size} channels: make them equal"
            )
        self.encoder = encoder
        self.quantizer = quantizer
        self.encoder.requires_grad_(False)
        self.encoder.eval()

    def train(self, mode: bool = True) -> MuCodecTokenizer:
        super().train(mode)
        self.encoder.eval()  # frozen: BatchNorm statistics and dropout stay in inference mode
        return self

    # -- the interface the callbacks and later stages use ------------------------------------------
    @property
    def sample_rate(self) -> int:
        return self.encoder.sample_rate

    @property
    def frame_rate(self) -> float:
        return self.encoder.frame_rate

    @property
    def codebook_sizes(self) -> list[int]:
        return list(self.quantizer.codebook_sizes)

    @property
    def n_q(self) -> int:
        return self.quantizer.n_q

    def bitrate(self, n_q: int | None = None) -> float:
        """kbps with the first ``n_q`` codebooks (default all): frame_rate x sum of log2(size) / 1000."""
        n = self.n_q if n_q is None else n_q
        return self.frame_rate * sum(self.quantizer.bits_per_frame[:n]) / 1000

    def describe(self) -> dict[str, str]:
        """Short strings naming the structure (MLflow run tags, as ``AudioCodec.describe``)."""
        return {
            "family": type(self).__name__,
            "sample_rate": str(self.sample_rate),
            "frame_rate": f"{self.frame_rate:g}",
            "feature_layer": str(self.encoder.feature_layer),
            "codebooks": "x".join(str(s) for s in self.codebook_sizes),
            "max_kbps": f"{self.bitrate():.3g}",
        }

    def num_parameters(self) -> dict[str, int]:
        """Parameter counts: ``encoder`` (frozen), ``quantizer`` (trained), ``total``."""
        encoder = sum(p.numel() for p in self.encoder.parameters())
        quantizer = sum(p.numel() for p in self.quantizer.parameters())
        return {"encoder": encoder, "quantizer": quantizer, "total": encoder + quantizer}

    @torch.no_grad()
    def features(self, x: Tensor) -> Tensor:
        """Audio (B, C, T) -> frozen MuEncoder features (B, H, T') of the feature layer, float32."""
        with torch.autocast(device_type=x.device.type, enabled=False):
            return self.encoder.features(x.float()).float()

    def forward(self, x: Tensor) -> tuple[Tensor, QuantizerOutput]:
        """Audio (B, C, T) -> (features z (B, H, T'), the quantizer's output over all codebooks)."""
        z = self.features(x)
        return z, self.quantizer(z)

    @torch.no_grad()
    def encode(self, x: Tensor, n_q: int | None = None) -> EncodedAudio:
        """Audio (B, C, T) -> EncodedAudio with codes (B, n_q, T') (default all codebooks)."""
        return EncodedAudio(codes=self.quantizer.encode(self.features(x), n_q), scale=None, length=x.shape[-1])

    def decode(self, codes: Tensor) -> Tensor:
        """Codes (B, K, T') -> quantized features (B, H, T') (official ``from_codes``)."""
        return self.quantizer.decode(codes)


__all__ = ["MuCodecTokenizer"]
