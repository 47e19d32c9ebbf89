"""The codec interface: what inference, the bitstream, tracking, callbacks and notebooks rely on.

Every family implements it: the GAN codecs through :class:`codecplatform.models.codec.Codec`
(EnCodec, DAC, SpectroStream, MUFFIN), MuCodec through its own end-to-end model. Nothing outside a
family's own module reads a codec's encoder, quantizer or decoder.

Shapes: audio (B, C, T) at ``sample_rate``; codes (B, K, T') at ``frame_rate``; K <= ``n_q``.

Chunked file coding (``codecplatform encode/decode``) asks the codec itself how to cut a long
signal: :meth:`AudioCodec.encode_chunked` / :meth:`AudioCodec.decode_chunked`. The base class
codes the whole signal at once (always correct, memory grows with the file); a family overrides
them to stream with carried state, to use its own segments, or to add context around chunks.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from codecplatform.checkpoints.io import load_codec_state
from codecplatform.types import EncodedAudio


class AudioCodec(nn.Module):
    """Base of every codec family: (B, C, T) audio <-> EncodedAudio (codes (B, K, T')).

    A subclass sets ``sample_rate`` and ``channels`` and implements ``frame_rate``,
    ``codebook_sizes``, ``encode`` and ``decode``; it may set ``bandwidths`` (the kbps it is
    trained for; None: every codebook count is an operating point).
    """

    sample_rate: int
    channels: int
    bandwidths: list[float] | None = None

    # -- rates -------------------------------------------------------------------------------
    @property
    def frame_rate(self) -> float:  # pragma: no cover - abstract
        """Code frames per second."""
        raise NotImplementedError

    @property
    def codebook_sizes(self) -> list[int]:  # pragma: no cover - abstract
        """Entries of each codebook, in residual order (length ``n_q``)."""
        raise NotImplementedError

    @property
    def n_q(self) -> int:
        """Maximum number of codebooks."""
        return len(self.codebook_sizes)

    @property
    def samples_per_frame(self) -> int:
        """Audio samples per code frame (chunks of file coding are multiples of it)."""
        return round(self.sample_rate / self.frame_rate)

    def bitrate(self, n_q: int) -> float:
        """Nominal bitrate in kbps with the first ``n_q`` codebooks (log2 of each size per frame)."""
        if not 0 <= n_q <= self.n_q:
            raise ValueError(f"n_q={n_q} is out of range: this codec has 1..{self.n_q} codebooks")
        return self.frame_rate * sum(math.log2(s) for s in self.codebook_sizes[:n_q]) / 1000.0

    def n_q_for_bandwidth(self, bandwidth: float) -> int:
        """The largest codebook count whose bitrate fits in ``bandwidth`` kbps (at least 1);
        ValueError above the codec's maximum (EnCodec: 6 kbps at 75 Hz, 10 bits -> 8)."""
        if bandwidth <= 0:
            raise ValueError(f"bandwidth must be > 0 kbps, got {bandwidth}")
        full = self.bitrate(self.n_q)
        if bandwidth > full + 1e-6:
            raise ValueError(f"bandwidth {bandwidth} kbps exceeds this codec's maximum of {full:g} kbps")
        n = 1
        while n < self.n_q and self.bitrate(n + 1) <= bandwidth + 1e-6:
            n += 1
        return n

    def operating_points(self) -> dict[float, int]:
        """kbps -> codebook count of every rate this codec is meant to run at: its ``bandwidths``
        when set, else the bitrate of every count 1..n_q."""
        if self.bandwidths:
            return {bw: self.n_q_for_bandwidth(bw) for bw in self.bandwidths}
        return {self.bitrate(n): n for n in range(1, self.n_q + 1)}

    def resolve_n_q(self, bandwidth: float | None = None, n_q: int | None = None) -> int:
        """Codebook count for ``bandwidth`` (kbps, the largest count that fits:
        :meth:`n_q_for_bandwidth`) or ``n_q``; default all codebooks."""
        if bandwidth is not None and n_q is not None:
            raise ValueError("give bandwidth or n_q, not both")
        if bandwidth is not None:
            return self.n_q_for_bandwidth(bandwidth)
        if n_q is None:
            return self.n_q
        if not 1 <= n_q <= self.n_q:
            raise ValueError(f"n_q={n_q} is out of range: this codec has 1..{self.n_q} codebooks")
        return n_q

    # -- coding ------------------------------------------------------------------------------
    def encode(
        self, x: Tensor, bandwidth: float | None = None, n_q: int | None = None
    ) -> EncodedAudio:  # pragma: no cover - abstract
        """(B, C, T) audio -> EncodedAudio with K codebooks from ``bandwidth`` or ``n_q``."""
        raise NotImplementedError

    def decode(
        self, encoded: EncodedAudio | Tensor, codebooks: Sequence[int] | None = None
    ) -> Tensor:  # pragma: no cover - abstract
        """EncodedAudio -> audio (B, C, T). ``codebooks``: decode only these codebook indices
        (codebook ablation: the others contribute nothing); default all that were encoded."""
        raise NotImplementedError

    # -- chunked file coding -----------------------------------------------------------------
    def encode_chunked(
        self,
        read: Callable[[int, int], Tensor],
        length: int,
        n_q: int,
        chunk_samples: int,
        context_frames: int,
        device: torch.device | str = "cpu",
    ) -> EncodedAudio:
        """Encode a ``length``-sample signal given by ``read(start, stop) -> (C, stop - start)``
        chunk by chunk -> EncodedAudio on CPU (batch 1), equal to ``encode`` of the whole.

        The base implementation reads and encodes the whole signal at once."""
        encoded = self.encode(read(0, length)[None].to(device), n_q=n_q)
        return encoded.to("cpu")

    def decode_chunked(
        self,
        encoded: EncodedAudio,
        chunk_frames: int,
        context_frames: int,
        device: torch.device | str = "cpu",
        codebooks: Sequence[int] | None = None,
    ) -> Iterator[Tensor]:
        """Yield consecutive (C, n) CPU blocks that join into ``decode(encoded, codebooks)[0]``.

        The base implementation decodes the whole signal at once."""
        yield self.decode(encoded.to(device), codebooks)[0].cpu()

    def bitstream_layout(self) -> dict[str, Any]:
        """Everything besides the codebooks that a ``.cpc`` file must agree on with this codec
        to be decodable (written to the header, compared on decode): ``sample rate``,
        ``channels``, ``hop length`` (samples per code frame), ``segment length`` and
        ``segment stride`` (samples; None unless the codec codes fixed segments) and
        ``normalize`` (whether ``EncodedAudio.scale`` is used)."""
        return {
            "sample rate": self.sample_rate,
            "channels": self.channels,
            "hop length": self.samples_per_frame,
            "segment length": None,
            "segment stride": None,
            "normalize": False,
        }

    # -- inference ---------------------------------------------------------------------------
    def prepare_for_inference(self) -> AudioCodec:
        """Make this codec an inference-only model, in place, and return it: eval mode, no
        gradients, and whatever a family folds away for speed (the GAN codecs: weight norm).
        ``encode``/``decode`` of a prepared codec run under ``torch.inference_mode``. The outputs do
        not change; the state dict's layout may (prepare after saving or checksumming)."""
        self.eval()
        self.requires_grad_(False)
        self._inference_only = True
        return self

    def grad_off(self) -> Any:
        """The context its coding methods run in: ``torch.inference_mode()`` once prepared for
        inference (:meth:`prepare_for_inference`), else ``torch.no_grad()`` (outputs stay usable
        in autograd, e.g. codes fed to a model being trained)."""
        return torch.inference_mode() if getattr(self, "_inference_only", False) else torch.no_grad()

    def stream(self, bandwidth: float | None = None, n_q: int | None = None, batch: int | None = None) -> Any:
        """Context manager for real-time coding chunk by chunk with carried state::

            with codec.stream(bandwidth=6.0) as s:
                codes = s.encode(chunk)      # (B, C, n) -> (B, K, frames completed)
                audio = s.decode(codes)      # (B, K, m) -> (B, C, samples completed)
                codes = s.flush_encoder()    # the look-ahead: the last frames (if any)
                audio = s.flush_decoder()

        ``batch=N``: N independent streams that start and stop at different calls, carried in
        one batch (per-stream lists in and out, ``s.reset(streams)``; see ``Codec.stream``).

        Only causal codecs stream; others raise ``RuntimeError`` (this base class always does)."""
        raise RuntimeError(f"{type(self).__name__} does not stream: it is not a causal codec")

    # -- description ------------------------------------------------------------------------
    def describe(self) -> dict[str, str]:
        """Short strings naming this codec's structure (MLflow run tags)."""
        return {
            "family": type(self).__name__,
            "sample_rate": str(self.sample_rate),
            "channels": str(self.channels),
            "frame_rate": f"{self.frame_rate:g}",
            "max_kbps": f"{self.bitrate(self.n_q):g}",
        }

    def num_parameters(self) -> dict[str, int]:
        """Parameter counts (at least ``total``)."""
        return {"total": sum(p.numel() for p in self.parameters())}

    # -- loading -----------------------------------------------------------------------------
    @classmethod
    def from_config(cls, config: dict[str, Any]) -> AudioCodec:
        """Build a codec from its ``{class_path, init_args}`` config (as in experiment YAMLs); the
        class must be ``cls`` or a subclass (``AudioCodec.from_config`` builds any family)."""
        from codecplatform.config import instantiate

        codec = instantiate(config, cls)
        if not isinstance(codec, cls):
            raise TypeError(f"config builds a {type(codec).__name__}, not a {cls.__name__}")
        return codec

    @classmethod
    def from_checkpoint(
        cls, path: str | Path, map_location: str | torch.device = "cpu", weights: str = "auto"
    ) -> AudioCodec:
        """Load the codec of a training checkpoint (from ``codecplatform fit``) or an imported one,
        without Lightning; ``AudioCodec.from_checkpoint`` loads any family (the class named by
        the checkpoint's codec config).

        The checkpoint carries the codec's config (``codec_config``) and the training module's
        state dict, whose ``codec.`` entries are the codec's trained weights and, with generator
        EMA, whose ``codec_ema.`` entries are their exponential moving average (see
        :func:`codecplatform.checkpoints.io.load_codec_state`). ``weights``: ``"auto"`` (default)
        the EMA weights when the checkpoint has them (as the training run evaluated), else the
        trained ones; ``"raw"`` the trained ones; ``"ema"`` the EMA weights or an error.
        """
        config, state = load_codec_state(path, map_location, weights)
        with warnings.catch_warnings():  # "untrained" at construction is moot: the weights follow
            warnings.filterwarnings("ignore", message=r".*\buntrained\b", category=UserWarning)
            codec = cls.from_config(config)
        codec.load_state_dict(state)
        return codec.eval()


def grad_off_method(method: Callable) -> Callable:
    """Run a coding method of an :class:`AudioCodec` in ``self.grad_off()`` (inference mode once
    prepared, else no_grad): coding never builds an autograd graph."""

    @functools.wraps(method)
    def wrapper(self: AudioCodec, *args: Any, **kwargs: Any) -> Any:
        with self.grad_off():
            return method(self, *args, **kwargs)

    return wrapper


def grad_off_generator(method: Callable) -> Callable:
    """:func:`grad_off_method` for a generator method: each step runs in the context, the caller's
    code between the items does not (it may train on what it is given)."""

    @functools.wraps(method)
    def wrapper(self: AudioCodec, *args: Any, **kwargs: Any) -> Iterator[Any]:
        items = method(self, *args, **kwargs)
        while True:
            with self.grad_off():
                try:
                    item = next(items)
                except StopIteration:
                    return
            yield item

    return wrapper
