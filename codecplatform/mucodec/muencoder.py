"""MuEncoder: MuCodec's music feature extractor, audio (B, C, T) at 24 kHz -> (B, T', 1024) at 25 Hz.

Follows the official code (Xu et al. 2024, "MuCodec: Ultra Low-Bitrate Music Codec"; xuyaoxun/MuCodec,
``muq_dev/muq_fairseq/models/muq/``: ``model/muq.py``, ``modules/{features,conv,random_quantizer}.py``,
``model/w2v2_config.json``; ``model.py:preprocess_audio`` for the input):

* Input: mean of L and R, each first peak-limited to 0.9 per example.
* Mel: torchaudio ``MelSpectrogram(24000, n_fft=2048, hop_length=240, n_mels=128)`` defaults +
  ``AmplitudeToDB()``, last frame dropped, normalized by the official ``melspec_2048`` statistics.
* Two ``Res2d`` blocks (stride 2 in frequency and time) -> Linear(512 * 32, 1024): 100 Hz -> 25 Hz.
* Conformer: transformers ``Wav2Vec2ConformerEncoder`` with the official ``w2v2_config.json``, 12 blocks.

Feature layer: the official model takes ``layer_results[layer_num - 1]`` with ``layer_num = 7`` from
the 13 hidden states (index 0 = Conformer input, i = output of block i, 12 = final LayerNorm).
``feature_layer = L`` selects ``hidden_states[L - 1]``: 7 -> block 6 (default), 3 more acoustic,
11 more semantic. transformers 5 returns no hidden states from the bare encoder, so
:meth:`MuEncoder.run` walks the blocks itself.

Deviation: transformers' unused convolutional position embedding (``pos_conv_embed``, 8.4M
parameters) is deleted, so DDP needs no ``find_unused_parameters``.

BEST-RQ target (``RandomProjectionQuantizer``): 4 stacked mel frames (512 values per token) ->
Xavier (512, 16) projection -> cosine lookup in a (4096, 16) N(0, 1) codebook, both drawn from seed
142 (official ``torch.manual_seed(142)``) by a private generator.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import Wav2Vec2ConformerConfig
from transformers.models.wav2vec2_conformer.modeling_wav2vec2_conformer import Wav2Vec2ConformerEncoder

from codecplatform.checkpoints.io import check_codec_state, read_checkpoint
from codecplatform.dsp.spectral import mel_filterbank, stft

MEL_MEAN = 6.768444971712967  # official stat table, "melspec_2048_mean"
MEL_STD = 18.417922652295623  # "melspec_2048_std"


def downmix(x: Tensor, peak_limit: float | None = 0.9) -> Tensor:
    """(B, C, T) audio -> (B, T) mono: each channel of each example peak-limited to ``peak_limit``
    (scaled down only when its peak exceeds it; None: no limiting), then the mean over channels
    (MuCodec: mean of L and R)."""
    if x.dim() != 3:
        raise ValueError(f"x must be (batch, channels, samples), got shape {tuple(x.shape)}")
    if peak_limit is not None:
        peak = x.abs().amax(dim=-1, keepdim=True)  # (B, C, 1)
        x = x / (peak / peak_limit).clamp(min=1.0)
    return x.mean(dim=1)


def stack_frames(mel: Tensor, n: int) -> Tensor:
    """(B, F, N) frames -> (B, N // n, n * F): each group of n consecutive frames concatenated, frame
    by frame (official ``rearrange(x, "b f (t s) -> b t (s f)")``)."""
    b, f, frames = mel.shape
    t = frames // n
    return mel[:, :, : t * n].reshape(b, f, t, n).permute(0, 2, 3, 1).reshape(b, t, n * f)


class MelFrontEnd(nn.Module):
    """Normalized dB mel spectrogram: mono (B, T) -> (B, n_mels, N), N = (T // hop) // 4 * 4.

    Matches torchaudio ``MelSpectrogram`` defaults + ``AmplitudeToDB`` (module docstring), minus
    the last frame, cut to a multiple of ``frames_multiple`` frames (whole 25 Hz tokens), then
    ``(mel_db - mean) / std``. Float32 with autocast off; no gradient reaches the audio.
    """

    def __init__(
        self,
        sample_rate: int = 24000,
        n_fft: int = 2048,
        hop_length: int = 240,
        n_mels: int = 128,
        mean: float = MEL_MEAN,
        std: float = MEL_STD,
        frames_multiple: int = 4,
    ):
        super().__init__()
        if std <= 0:
            raise ValueError(f"std must be > 0, got {std}")
        self.n_fft = n_fft
        self.hop_length = hop_length
        self.n_mels = n_mels
        self.mean = mean
        self.std = std
        self.frames_multiple = frames_multiple
        self.register_buffer("window", torch.hann_window(n_fft), persistent=False)
        self.register_buffer(
            "filterbank", mel_filterbank(sample_rate, n_fft, n_mels, norm=None, mel_scale="htk"), persistent=False
        )

    def num_frames(self, samples: int) -> int:
        return samples // self.hop_length // self.frames_multiple * self.frames_multiple

    @torch.no_grad()
    def forward(self, mono: Tensor) -> Tensor:
        frames = self.num_frames(mono.shape[-1])
        if frames == 0:
            raise ValueError(
                f"{mono.shape[-1]} samples are shorter than one token "
                f"({self.hop_length * self.frames_multiple} samples)"
            )
        with torch.autocast(device_type=mono.device.type, enabled=False):
            spec = stft(mono.float()[:, None, :], self.n_fft, self.hop_length, window=self.window)[:, 0]  # (B, F, N+1)
            power = spec.real.square() + spec.imag.square()
            mel = self.filterbank @ power[..., :frames]  # (n_mels, F) @ (B, F, N) -> (B, n_mels, N)
            mel_db = 10.0 * torch.log10(mel.clamp(min=1e-10))
            return (mel_db - self.mean) / self.std


class Res2d(nn.Module):
    """Residual 2-D conv block: (B, C_in, F, N) -> (B, C_out, F / s_f, N / s_t) (official ``Res2dModule``)."""

    def __init__(self, in_channels: int, out_channels: int, stride: tuple[int, int] = (2, 2)):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1, stride=stride)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut: nn.Module | None = None
        if in_channels != out_channels or stride[0] > 1:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 3, padding=1, stride=stride), nn.BatchNorm2d(out_channels)
            )

    def forward(self, x: Tensor) -> Tensor:
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        skip = x if self.shortcut is None else self.shortcut(x)
        return F.relu(skip + out)


@dataclass
class MuEncoderOutput:
    """hidden_states: the (B, T', H) states computed, index 0 = Conformer input (see the module
    docstring; all 13 unless the run stopped early); mel: (B, n_mels, 4 T') the normalized mel."""

    hidden_states: list[Tensor]
    mel: Tensor


class MuEncoder(nn.Module):
    """Audio (B, C, T) at 24 kHz -> Conformer hidden states (B, T', H) at 25 Hz, T' = T // 960.

    Args:
        sample_rate, n_fft, hop_length, n_mels, mel_mean, mel_std: the mel front end.
        conv_dim: channels of the two Res2d blocks (512).
        hidden_size, num_layers, num_heads, ffn_dim, conv_kernel, dropout: the Conformer (1024, 12,
            16, 4096, 31, 0.1).
        feature_layer: 1-based hidden state (1..num_layers + 1) that :meth:`features` returns; 7 =
            output of block 6 (MuCodec's choice; see the module docstring).
        peak_limit: per-channel peak limit before the downmix (0.9); None: none.
        attn_implementation: transformers attention kernel ("sdpa" or "eager").
    """

    frames_per_token = 4  # two stride-2 blocks in time

    def __init__(
        self,
        sample_rate: int = 24000,
        n_fft: int = 2048,
        hop_length: int = 240,
        n_mels: int = 128,
        mel_mean: float = MEL_MEAN,
        mel_std: float = MEL_STD,
        conv_dim: int = 512,
        hidden_size: int = 1024,
        num_layers: int = 12,
        num_heads: int = 16,
        ffn_dim: int = 4096,
        conv_kernel: int = 31,
        dropout: float = 0.1,
        feature_layer: int = 7,
        peak_limit: float | None = 0.9,
        attn_implementation: str = "sdpa",
    ):
        super().__init__()
        if n_mels % 4:
            raise ValueError(f"n_mels must be a multiple of 4 (two stride-2 blocks), got {n_mels}")
        if not 1 <= feature_layer <= num_layers + 1:
            raise ValueError(
                f"feature_layer must lie in 1..{num_layers + 1} (1-based hidden state), got {feature_layer}"
            )
        self.sample_rate = sample_rate
        self.hop_length = hop_length
        self.n_mels = n_mels
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.feature_layer = feature_layer
        self.peak_limit = peak_limit
        self.front_end = MelFrontEnd(sample_rate, n_fft, hop_length, n_mels, mel_mean, mel_std, self.frames_per_token)
        self.subsample = nn.Sequential(Res2d(1, conv_dim, (2, 2)), Res2d(conv_dim, conv_dim, (2, 2)))
        self.proj = nn.Linear(conv_dim * (n_mels // 4), hidden_size)
        config = Wav2Vec2ConformerConfig(
            hidden_size=hidden_size,
            num_hidden_layers=num_layers,
            num_attention_heads=num_heads,
            intermediate_size=ffn_dim,
            conv_depthwise_kernel_size=conv_kernel,
            position_embeddings_type="rotary",
            rotary_embedding_base=10000,
            hidden_act="swish",
            hidden_dropout=dropout,
            activation_dropout=dropout,
            attention_dropout=dropout,
            conformer_conv_dropout=dropout,
            layerdrop=0.0,
            layer_norm_eps=1e-5,
            # the convolutional position embedding is deleted below: build it as small as possible
            num_conv_pos_embeddings=2,
            num_conv_pos_embedding_groups=hidden_size,
        )
        config._attn_implementation = attn_implementation
        self.conformer = Wav2Vec2ConformerEncoder(config)
        del self.conformer.pos_conv_embed  # unused with rotary positions (module docstring)

    # -- rates -------------------------------------------------------------------------------
    @property
    def samples_per_token(self) -> int:
        return self.hop_length * self.frames_per_token

    @property
    def frame_rate(self) -> float:
        """Hidden-state frames per second (25 Hz)."""
        return self.sample_rate / self.samples_per_token

    @property
    def num_hidden_states(self) -> int:
        return self.num_layers + 1

    # -- pieces ------------------------------------------------------------------------------
    def mono(self, x: Tensor) -> Tensor:
        """(B, C, T) -> (B, T): :func:`downmix` with this encoder's peak limit."""
        return downmix(x, self.peak_limit)

    def embed(self, mel: Tensor) -> Tensor:
        """Normalized mel (B, n_mels, N) -> Conformer input (B, N / 4, H)."""
        h = self.subsample(mel[:, None])  # (B, conv_dim, n_mels / 4, N / 4)
        b, c, f, t = h.shape
        return self.proj(h.permute(0, 3, 1, 2).reshape(b, t, c * f))  # (B,C,F,T)->(B,T,C*F)->(B,T,H)

    def run(self, mono: Tensor, up_to: int | None = None) -> MuEncoderOutput:
        """Mono audio (B, T) -> the hidden states 1..``up_to`` (1-based, default all 13).

        Blocks after the last needed state are not run. State ``num_layers + 1`` is the final
        LayerNorm of the last block's output (as transformers' ``output_hidden_states``).
        """
        up_to = self.num_hidden_states if up_to is None else up_to
        if not 1 <= up_to <= self.num_hidden_states:
            raise ValueError(f"up_to must lie in 1..{self.num_hidden_states}, got {up_to}")
        mel = self.front_end(mono)  # (B, n_mels, N)
        h = self.conformer.dropout(self.embed(mel))  # (B, T', H)
        rotary = self.conformer.embed_positions(h)
        states = [h]
        for i, block in enumerate(self.conformer.layers[: up_to - 1]):
            h = block(h, attention_mask=None, relative_position_embeddings=rotary)
            states.append(self.conformer.layer_norm(h) if i == self.num_layers - 1 else h)
        return MuEncoderOutput(hidden_states=states, mel=mel)

    def forward(self, x: Tensor, up_to: int | None = None) -> MuEncoderOutput:
        """Audio (B, C, T) -> :class:`MuEncoderOutput` (see :meth:`run`)."""
        if x.dim() != 3:
            raise ValueError(f"x must be (batch, channels, samples), got shape {tuple(x.shape)}")
        return self.run(self.mono(x), up_to)

    def features(self, x: Tensor, layer: int | None = None) -> Tensor:
        """Audio (B, C, T) -> hidden state ``layer`` (1-based, default ``feature_layer``) as (B, H, T')."""
        layer = self.feature_layer if layer is None else layer
        return self(x, up_to=layer).hidden_states[layer - 1].transpose(1, 2)  # (B,T',H)->(B,H,T')


class RandomProjectionQuantizer(nn.Module):
    """Frozen BEST-RQ target: (B, T', input_dim) -> codes (B, T') by cosine lookup of a random
    projection. ``input_dim`` = 4 stacked mel frames x 128 = 512 officially.

    Buffers ``projection`` (input_dim, codebook_dim) Xavier-normal and ``codebook``
    (codebook_size, codebook_dim) N(0, 1), drawn in that order from a generator seeded with
    ``seed`` (official: ``torch.manual_seed(142)``): the same numbers for the same seed, whatever
    the global random state.
    """

    def __init__(self, input_dim: int = 512, codebook_dim: int = 16, codebook_size: int = 4096, seed: int = 142):
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        projection = torch.empty(input_dim, codebook_dim)
        nn.init.xavier_normal_(projection, generator=generator)
        codebook = torch.empty(codebook_size, codebook_dim)
        nn.init.normal_(codebook, generator=generator)
        self.register_buffer("projection", projection)
        self.register_buffer("codebook", codebook)
        self.codebook_size = codebook_size

    @torch.no_grad()
    def forward(self, x: Tensor) -> Tensor:
        with torch.autocast(device_type=x.device.type, enabled=False):
            z = F.normalize(x.float() @ self.projection, dim=-1)  # (B, T', codebook_dim)
            entries = F.normalize(self.codebook, dim=-1)  # (K, codebook_dim)
            return (z @ entries.t()).argmax(dim=-1)  # nearest by cosine = nearest unit vector


# -- masking (stage 1 and 2) ---------------------------------------------------------------------
def span_mask(batch: int, samples: int, span: int, prob: float, generator: torch.Generator | None = None) -> Tensor:
    """(B, T // span) bool: each whole span of ``span`` samples is masked with probability ``prob``
    (official ``MuQ.masking``: the tail shorter than a span is never masked)."""
    return torch.rand(batch, samples // span, generator=generator) < prob


def mask_waveform(
    mono: Tensor, spans: Tensor, span: int, noise_std: float = 0.1, generator: torch.Generator | None = None
) -> Tensor:
    """Replace the masked spans of mono audio (B, T) by N(0, noise_std^2) noise: (B, T) -> (B, T)."""
    b, t = mono.shape
    mask = torch.zeros(b, t, dtype=torch.bool)
    mask[:, : spans.shape[1] * span] = spans.repeat_interleave(span, dim=1)
    noise = torch.randn(b, t, generator=generator) * noise_std
    mask, noise = mask.to(mono.device), noise.to(device=mono.device, dtype=mono.dtype)
    return torch.where(mask, noise, mono)


def token_mask(spans: Tensor, tokens_per_span: int, tokens: int) -> Tensor:
    """Span mask (B, S) -> token mask (B, tokens): each span covers ``tokens_per_span`` tokens."""
    mask = torch.zeros(spans.shape[0], tokens, dtype=torch.bool, device=spans.device)
    covered = spans.repeat_interleave(tokens_per_span, dim=1)[:, :tokens]
    mask[:, : covered.shape[1]] = covered
    return mask


# -- checkpoints -----------------------------------------------------------------------------------
ENCODER_PREFIXES = ("encoder.", "tokenizer.encoder.")


def load_muencoder_state(
    path: str | Path, encoder: MuEncoder, field: str = "muencoder_checkpoint", strict: bool = True
) -> dict[str, Tensor]:
    """Load MuEncoder weights from ``path`` into ``encoder`` and return the file's whole state dict.

    ``path`` is a training checkpoint of a MuEncoder stage (keys ``encoder.*``) or of the
    tokenizer (``tokenizer.encoder.*``), or a bare MuEncoder state dict. Errors name ``field``
    and the file: FileNotFoundError when it is missing, ValueError when it holds no MuEncoder
    weights or weights of another geometry (keys and shapes listed), or when
    :func:`~codecplatform.checkpoints.io.read_checkpoint` refuses or cannot read it.
    """
    path = Path(path)
    checkpoint = read_checkpoint(
        path,
        f"MuEncoder checkpoint ({field})",
        missing=f"{field}: checkpoint {path} does not exist (train the MuEncoder stage first)",
    )
    state = checkpoint.get("state_dict", checkpoint)
    if not isinstance(state, dict):
        raise ValueError(f"{field}: {path} holds no state dict")
    own = encoder.state_dict()
    for prefix in ENCODER_PREFIXES:
        weights = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        if weights:
            break
    else:
        weights = {k: v for k, v in state.items() if k in own}
        if not weights:
            raise ValueError(f"{field}: {path} holds no MuEncoder weights (no 'encoder.*' keys)")
    check_codec_state(encoder, weights, f"MuEncoder of {field}={path}")
    encoder.load_state_dict(weights, strict=strict)
    return state


__all__ = [
    "MEL_MEAN",
    "MEL_STD",
    "MelFrontEnd",
    "MuEncoder",
    "MuEncoderOutput",
    "RandomProjectionQuantizer",
    "Res2d",
    "downmix",
    "load_muencoder_state",
    "mask_waveform",
    "span_mask",
    "stack_frames",
    "token_mask",
]
