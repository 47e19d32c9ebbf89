"""Real-time coding with carried state: the stream objects of :meth:`Codec.stream
<codecplatform.models.codec.Codec.stream>`, chunks of audio in, the code frames they complete out:
one stream (:class:`CodecStream`) or N independent ones in one batch (:class:`StreamBatch`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from codecplatform.nn.streaming import StreamingModule, concat_states, select_state, state_signature

if TYPE_CHECKING:
    from codecplatform.models.codec import Codec


class CodecStream:
    """The stream of :meth:`Codec.stream`: ``encode`` audio chunks of any length to the code
    frames they complete, ``decode`` code frames to their audio, ``flush_*`` at the end (the
    look-ahead of the encoder / decoder, zeros). Encoder and decoder streams are independent
    (a sender and a receiver). Every call runs in ``codec.grad_off()``."""

    def __init__(self, codec: Codec, n_q: int) -> None:
        self.codec, self.n_q = codec, n_q
        self.samples_in = 0  # audio samples given to encode
        self.frames_in = 0  # code frames given to decode

    def encode(self, chunk: Tensor) -> Tensor:
        """(B, C, n) audio -> (B, K, m) codes of the frames this chunk completes (m may be 0)."""
        codec = self.codec
        with codec.grad_off():
            self.samples_in += chunk.shape[-1]
            z = codec.encoder(chunk)
            if not z.shape[-1]:
                return torch.zeros(chunk.shape[0], self.n_q, 0, dtype=torch.long, device=chunk.device)
            return codec.quantizer.encode(z, self.n_q)

    def decode(self, codes: Tensor) -> Tensor:
        """(B, K, m) codes -> (B, C, samples) audio that these frames complete."""
        codec = self.codec
        with codec.grad_off():
            self.frames_in += codes.shape[-1]
            if not codes.shape[-1]:
                return torch.zeros(codes.shape[0], codec.channels, 0, device=codes.device)
            return codec.decoder(codec.quantizer.decode(codes))

    def flush_encoder(self, batch: int = 1, device: torch.device | str = "cpu") -> Tensor:
        """Complete the last frame and the encoder's look-ahead with zeros -> the last codes."""
        pad = -self.samples_in % self.codec.hop_length + self.codec.encoder_lookahead
        return self.encode(torch.zeros(batch, self.codec.channels, pad, device=device))

    def flush_decoder(self, batch: int = 1, device: torch.device | str = "cpu") -> Tensor:
        """Feed the decoder's look-ahead (zero latent frames) -> the last samples."""
        codec = self.codec
        flush = codec.decoder_lookahead
        with codec.grad_off():
            if not flush:
                return torch.zeros(batch, codec.channels, 0, device=device)
            return codec.decoder(torch.zeros(batch, codec.quantizer.dimension, flush, device=device))


class _StreamSlots:
    """The carried state of N independent streams through the StreamingModules of one part
    (encoder or decoder), as groups of streams whose states have one signature
    (:func:`~codecplatform.nn.streaming.state_signature`) and therefore run as one batch; a group
    splits when its streams get different inputs (or none) and groups merge again once their
    states agree."""

    def __init__(self, part: nn.Module, batch: int) -> None:
        self.modules = [m for m in part.modules() if isinstance(m, StreamingModule)]
        self.groups: list[tuple[list[int], list[dict[str, Any]]]] = [(list(range(batch)), [{} for _ in self.modules])]

    def reset(self, streams: Sequence[int]) -> None:
        """Start new streams in ``streams`` (fresh state, as a stream that has seen nothing)."""
        drop = set(streams)
        kept = []
        for slots, states in self.groups:
            rows = [i for i, s in enumerate(slots) if s not in drop]
            if len(rows) == len(slots):
                kept.append((slots, states))
            elif rows:
                kept.append(self._select(slots, states, rows))
        self.groups = kept + [([s], [{} for _ in self.modules]) for s in sorted(drop)]

    def _select(self, slots: list[int], states: list[dict], rows: list[int]) -> tuple[list[int], list[dict]]:
        index = torch.tensor(rows)
        return [slots[r] for r in rows], [select_state(m, st, index) for m, st in zip(self.modules, states)]

    def run(self, inputs: dict[int, Tensor], fn: Callable[[Tensor], Tensor]) -> dict[int, Tensor]:
        """``fn`` over the inputs ((C, n) per stream), batched per group of streams with equal
        states and input lengths -> each stream's output (its ``fn`` output row)."""
        outputs: dict[int, Tensor] = {}
        groups = []
        for slots, states in self.groups:
            by_length: dict[int | None, list[int]] = {}
            for row, slot in enumerate(slots):
                by_length.setdefault(inputs[slot].shape[-1] if slot in inputs else None, []).append(row)
            parts = [(n, rows) for n, rows in by_length.items()]
            for n, rows in parts:
                sub = (slots, states) if len(parts) == 1 else self._select(slots, states, rows)
                groups.append(sub)
                if n is None:
                    continue
                for module, state in zip(self.modules, sub[1]):
                    module._stream_state = state
                y = fn(torch.stack([inputs[slot] for slot in sub[0]]))
                for module, state in zip(self.modules, sub[1]):
                    if module._stream_state is not state:  # a module that replaced its dict
                        state.clear()
                        state.update(module._stream_state)
                outputs.update(zip(sub[0], y.unbind(0)))
        self.groups = self._merged(groups)
        return outputs

    def _merged(self, groups: list[tuple[list[int], list[dict]]]) -> list[tuple[list[int], list[dict]]]:
        if len(groups) == 1:
            return groups
        by_signature: dict[tuple, list[tuple[list[int], list[dict]]]] = {}
        for group in groups:
            key = tuple(state_signature(m, st) for m, st in zip(self.modules, group[1]))
            by_signature.setdefault(key, []).append(group)
        merged = []
        for same in by_signature.values():
            if len(same) == 1:
                merged.append(same[0])
                continue
            slots = [s for g in same for s in g[0]]
            states = [concat_states(m, [g[1][j] for g in same]) for j, m in enumerate(self.modules)]
            merged.append((slots, states))
        return merged


class StreamBatch:
    """N independent streams carried in one batch (:meth:`Codec.stream` with ``batch=N``): each
    stream gets exactly what it gets from its own :class:`CodecStream`, and streams start and
    stop at any call (:meth:`reset` starts a new stream in a slot; a slot given no input is left
    as it is). Streams in the same phase run as one batch: a network call reads every weight once
    for all of them. Encoder and decoder streams are independent (senders and receivers)."""

    def __init__(self, codec: Codec, n_q: int, batch: int) -> None:
        if batch < 1:
            raise ValueError(f"batch must be >= 1 streams, got {batch}")
        self.codec, self.n_q, self.batch = codec, n_q, batch
        self._encoder = _StreamSlots(codec.encoder, batch)
        self._decoder = _StreamSlots(codec.decoder, batch)
        self.samples_in = [0] * batch  # audio samples given to each stream's encoder

    def _slots(self, active: Sequence[int] | Tensor | None) -> list[int]:
        if active is None:
            return list(range(self.batch))
        if isinstance(active, Tensor) and active.dtype == torch.bool:
            if active.shape != (self.batch,):
                raise ValueError(f"active must be a ({self.batch},) mask, got shape {tuple(active.shape)}")
            return active.nonzero().flatten().tolist()
        slots = [int(s) for s in (active.tolist() if isinstance(active, Tensor) else active)]
        if any(not 0 <= s < self.batch for s in slots):
            raise ValueError(f"streams must be in 0..{self.batch - 1}, got {slots}")
        return slots

    def reset(self, streams: Sequence[int] | Tensor) -> None:
        """Start new streams (encoder and decoder) in the slots ``streams`` (indices or a mask)."""
        slots = self._slots(streams)
        self._encoder.reset(slots)
        self._decoder.reset(slots)
        for s in slots:
            self.samples_in[s] = 0

    def encode(
        self, chunk: Tensor | Sequence[Tensor | None], active: Sequence[int] | Tensor | None = None
    ) -> list[Tensor | None]:
        """(N, C, n) audio, one chunk per stream, or N (C, n_i) chunks of any lengths (None: not
        fed) -> per stream the (K, m) codes of the frames its chunk completes; only the streams in
        ``active`` (indices or an (N,) mask; default all) are fed, the others get None and keep
        their state. Streams given chunks of one length run as one batch."""
        if isinstance(chunk, Tensor):
            if chunk.dim() != 3 or chunk.shape[0] != self.batch:
                raise ValueError(f"chunk must be ({self.batch}, channels, samples), got shape {tuple(chunk.shape)}")
            chunks: Sequence[Tensor | None] = chunk.unbind(0)
        else:
            chunks = chunk
            if len(chunks) != self.batch or any(c is not None and c.dim() != 2 for c in chunks):
                raise ValueError(f"chunk must hold {self.batch} (channels, samples) tensors or None")
        inputs = {s: chunks[s] for s in self._slots(active) if chunks[s] is not None}
        for s, x in inputs.items():
            self.samples_in[s] += x.shape[-1]
        return self._encode(inputs)  # type: ignore[arg-type]

    def _encode(self, inputs: dict[int, Tensor]) -> list[Tensor | None]:
        codec, n_q = self.codec, self.n_q

        def fn(x: Tensor) -> Tensor:
            z = codec.encoder(x)
            if not z.shape[-1]:
                return torch.zeros(x.shape[0], n_q, 0, dtype=torch.long, device=x.device)
            return codec.quantizer.encode(z, n_q)

        with codec.grad_off():
            out = self._encoder.run(inputs, fn)
        return [out.get(s) for s in range(self.batch)]

    def decode(self, codes: Sequence[Tensor | None] | Tensor) -> list[Tensor | None]:
        """Per stream (K, m) codes (or None: not fed; or an (N, K, m) tensor for all) -> per stream
        the (C, samples) audio these frames complete (None where not fed)."""
        codec = self.codec
        if isinstance(codes, Tensor):
            codes = list(codes.unbind(0))
        if len(codes) != self.batch:
            raise ValueError(f"codes must hold one entry per stream ({self.batch}), got {len(codes)}")
        inputs = {s: c for s, c in enumerate(codes) if c is not None}

        def fn(c: Tensor) -> Tensor:
            if not c.shape[-1]:
                return torch.zeros(c.shape[0], codec.channels, 0, device=c.device)
            return codec.decoder(codec.quantizer.decode(c))

        with codec.grad_off():
            out = self._decoder.run(inputs, fn)
        return [out.get(s) for s in range(self.batch)]

    def flush_encoder(self, streams: Sequence[int] | Tensor | None = None) -> list[Tensor | None]:
        """Complete the last frame and the encoder's look-ahead of ``streams`` (default all) with
        zeros -> their last codes (None for the others)."""
        codec = self.codec
        inputs = {}
        for s in self._slots(streams):
            pad = -self.samples_in[s] % codec.hop_length + codec.encoder_lookahead
            self.samples_in[s] += pad
            inputs[s] = torch.zeros(codec.channels, pad, device=next(codec.parameters()).device)
        return self._encode(inputs)

    def flush_decoder(self, streams: Sequence[int] | Tensor | None = None) -> list[Tensor | None]:
        """Feed the decoder's look-ahead (zero latent frames) of ``streams`` -> their last samples."""
        codec = self.codec
        device = next(codec.parameters()).device
        latent = torch.zeros(codec.quantizer.dimension, codec.decoder_lookahead, device=device)
        inputs = {s: latent for s in self._slots(streams)}

        def fn(z: Tensor) -> Tensor:
            return codec.decoder(z) if z.shape[-1] else torch.zeros(z.shape[0], codec.channels, 0, device=device)

        with codec.grad_off():
            out = self._decoder.run(inputs, fn)
        return [out.get(s) for s in range(self.batch)]
