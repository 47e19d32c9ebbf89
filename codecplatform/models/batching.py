"""Batch coding with per-item lengths: a padded batch (B, C, T) and its lengths (B,) coded so that
every item gets exactly the codes and audio it gets when coded alone (the padding never leaks).

What one batched network call can give exactly, and therefore how items are grouped into calls:

* a causal encoder without look-ahead (EnCodec 24 kHz: every part streams, see
  :func:`~codecplatform.nn.streaming.streams_exactly`) gives the frames before a sample from the
  samples before it only: items whose length is a multiple of the hop share one call, zero-padded
  to the longest. An item with a partial last frame gets that frame from padding it completes inside
  every strided convolution (reflection or zeros of its own samples), so it shares a call only with
  items of its own length.
* a causal decoder without look-ahead gives an item's samples from its own frames only: every item
  in one call.
* a part whose convolutions all pad with zeros and whose other layers act on each time step alone
  (or, like GRN, take their statistics over each item's own steps): DAC, MUFFIN
  (:func:`masks_exactly`) runs every item in one call with the steps beyond each item's length
  zeroed before every convolution (:func:`~codecplatform.nn.conv.item_lengths`): the item then sees
  exactly the zeros it sees alone.
* anything else (reflect padding, time layer norm, an STFT: non-causal EnCodec, EnCodec 48 kHz,
  SpectroStream) sees the padding near the item's end (measured in ``benchmarks/RESULTS.md``):
  items of equal length share a call.

The quantizer codes each item's own latent frames (items with equal frame counts in one call): a
quantizer may look at the whole sequence (MUFFIN's band limits filter it along time). Normalizing
codecs compute each item's scale over its own samples; segmented codecs (EnCodec 48 kHz) cut every
item into its own segments first, so all full segments of a batch share one call.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from codecplatform.models.chunking import linear_overlap_add
from codecplatform.nn.conv import StreamableConv1d, StreamableConvTranspose1d, item_lengths
from codecplatform.nn.grn import GRN
from codecplatform.nn.lstm import StreamableLSTM
from codecplatform.nn.snake import ModifiedSnake1d, Snake1d
from codecplatform.nn.streaming import streams_exactly
from codecplatform.types import EncodedAudio

if TYPE_CHECKING:
    from codecplatform.models.codec import Codec

PAD_CODE = -1  # code frames beyond an item's own frames


def check_lengths(lengths: Tensor | Sequence[int], batch: int, total: int) -> list[int]:
    """``lengths`` (B,) as a list of ints in 1..``total``; ValueError naming the problem."""
    values = lengths.tolist() if isinstance(lengths, Tensor) else list(lengths)
    if len(values) != batch or any(isinstance(v, list) for v in values):
        raise ValueError(f"lengths must hold one length per batch item ({batch}), got {values}")
    if any(int(v) != v or not 1 <= v <= total for v in values):
        raise ValueError(f"lengths must be whole numbers in 1..{total} (the padded length), got {values}")
    return [int(v) for v in values]


def is_causal(codec: Codec, part: str) -> bool:
    """Whether ``codec.encoder`` / ``codec.decoder`` gives every output from the inputs before it
    (streams exactly, no look-ahead); cached on the codec."""
    cache = codec.__dict__.setdefault("_causal_parts", {})
    if part not in cache:
        hop, probe = codec.hop_length, 64
        device = next(codec.parameters()).device
        if part == "encoder":
            lookahead = codec.encoder_lookahead
            x = torch.zeros(1, codec.channels, probe * hop, device=device)
            exact = streams_exactly(codec.encoder, x, probe) if lookahead == 0 else False
        else:
            lookahead = codec.decoder_lookahead
            z = torch.zeros(1, codec.quantizer.dimension, probe, device=device)
            exact = streams_exactly(codec.decoder, z, probe * hop) if lookahead == 0 else False
        cache[part] = exact
    return cache[part]


_STEPWISE = (Snake1d, ModifiedSnake1d, nn.ELU, nn.ReLU, nn.LeakyReLU, nn.SiLU, nn.GELU, nn.Tanh, nn.Identity)


def _masks_exactly(module: nn.Module) -> bool:
    if isinstance(module, StreamableConv1d):
        return module.pad_mode == "constant" and module.norm_type != "time_layer_norm"
    if isinstance(module, StreamableConvTranspose1d):
        return module.norm_type != "time_layer_norm"
    if isinstance(module, (GRN, StreamableLSTM)):  # own steps only / causal
        return True
    children = list(module.children())
    if not children:
        return isinstance(module, _STEPWISE)
    return all(_masks_exactly(child) for child in children)


def masks_exactly(part: nn.Module) -> bool:
    """Whether zeroing each item's steps beyond its length before every convolution makes a
    padded batch exact for ``part``: its convolutions pad with zeros (no time layer norm), and
    every other layer without sub-layers acts on each step alone (activations), takes its
    statistics over each item's own steps (GRN) or is causal (LSTM)."""
    return _masks_exactly(part)


def _groups(sizes: list[int], shared: Callable[[int], bool]) -> list[list[int]]:
    """Indices grouped into calls: all with ``shared(size)`` together, the others by equal size."""
    together = [i for i, n in enumerate(sizes) if shared(n)]
    by_size: dict[int, list[int]] = {}
    for i, n in enumerate(sizes):
        if not shared(n):
            by_size.setdefault(n, []).append(i)
    return ([together] if together else []) + list(by_size.values())


def encode_batch(codec: Codec, x: Tensor, lengths: list[int], n_q: int | None) -> EncodedAudio:
    """(B, C, T) padded audio, lengths -> EncodedAudio: codes (B, K, F) with item b's own codes in
    its first F_b frames and :data:`PAD_CODE` after, scale (B, S, 1) per item and segment (1.0
    beyond an item's segments; None unless normalizing), length T."""
    hop = codec.hop_length
    pieces: list[tuple[int, Tensor, Tensor | None]] = []  # (item, (1, C, size), scale (1, 1, 1))
    for b, length in enumerate(lengths):
        for offset, size in codec.segments(length):
            piece, scale = codec.normalize_input(x[b : b + 1, :, offset : offset + size])
            pieces.append((b, piece, scale))
    sizes = [p.shape[-1] for _, p, _ in pieces]
    masked = masks_exactly(codec.encoder)
    causal = not masked and is_causal(codec, "encoder")
    frames = [math.ceil(n / hop) for n in sizes]
    latents: list[Tensor | None] = [None] * len(pieces)
    for group in _groups(sizes, lambda n: masked or (causal and n % hop == 0)):
        longest = max(sizes[i] for i in group)
        batch = torch.cat([F.pad(pieces[i][1], (0, longest - sizes[i])) for i in group])  # (G, C, longest)
        if masked:  # each item's steps: its hop-rounded length (it is zero-padded to whole frames alone)
            with item_lengths(torch.tensor([frames[i] for i in group]), math.ceil(longest / hop)):
                z = codec.encoder(batch)  # (G, D, ceil(longest / hop))
        else:
            z = codec.encoder(batch)
        for row, i in enumerate(group):
            latents[i] = z[row, :, : frames[i]]
    codes: list[Tensor | None] = [None] * len(pieces)
    for group in _groups(frames, lambda n: False):  # a quantizer may look at the whole item (MUFFIN's band limits)
        group_codes = codec.quantizer.encode(torch.stack([latents[i] for i in group]), n_q)  # (G, K, frames)
        for row, i in enumerate(group):
            codes[i] = group_codes[row]
    per_item: list[list[Tensor]] = [[] for _ in lengths]
    scales: list[list[Tensor]] = [[] for _ in lengths]
    for (b, _, scale), c in zip(pieces, codes):
        per_item[b].append(c)
        if scale is not None:
            scales[b].append(scale.reshape(1))
    joined = [torch.cat(c, dim=-1) for c in per_item]  # (K, F_b)
    frames = max(c.shape[-1] for c in joined)
    out = joined[0].new_full((len(lengths), joined[0].shape[0], frames), PAD_CODE)
    for b, c in enumerate(joined):
        out[b, :, : c.shape[-1]] = c
    scale_out = None
    if codec.normalize:
        segments = max(len(s) for s in scales)
        scale_out = x.new_ones(len(lengths), segments, 1)
        for b, s in enumerate(scales):
            scale_out[b, : len(s), 0] = torch.cat(s)
    return EncodedAudio(codes=out, scale=scale_out, length=x.shape[-1])


def decode_batch(
    codec: Codec, encoded: EncodedAudio, lengths: list[int], to_latent: Callable[[Tensor], Tensor]
) -> Tensor:
    """EncodedAudio of :func:`encode_batch` (codes (B, K, F)), lengths -> audio (B, C, max length)
    with item b's own audio in its first ``lengths[b]`` samples and zeros after."""
    hop, codes = codec.hop_length, encoded.codes
    pieces: list[tuple[int, int, Tensor]] = []  # (item, segment, codes (K, n))
    for b, length in enumerate(lengths):
        start = 0
        for s, (_, size) in enumerate(codec.segments(length)):
            n = math.ceil(size / hop)
            if start + n > codes.shape[-1] or bool((codes[b, :, start : start + n] < 0).any()):
                raise ValueError(f"item {b} ({length} samples) needs {start + n} code frames, the codes hold fewer")
            pieces.append((b, s, codes[b, :, start : start + n]))
            start += n
    sizes = [c.shape[-1] for _, _, c in pieces]
    latents: list[Tensor | None] = [None] * len(pieces)
    for group in _groups(sizes, lambda n: False):
        z = to_latent(torch.stack([pieces[i][2] for i in group]))  # (G, D, n)
        for row, i in enumerate(group):
            latents[i] = z[row]
    masked = masks_exactly(codec.decoder)
    shared = masked or is_causal(codec, "decoder")
    audio: list[Tensor | None] = [None] * len(pieces)
    for group in _groups(sizes, lambda n: shared):
        longest = max(sizes[i] for i in group)
        batch = torch.stack([F.pad(latents[i], (0, longest - sizes[i])) for i in group])  # (G, D, longest)
        if masked:
            with item_lengths(torch.tensor([sizes[i] for i in group]), longest):
                y = codec.decoder(batch)  # (G, C, longest * hop)
        else:
            y = codec.decoder(batch)
        for row, i in enumerate(group):
            audio[i] = y[row : row + 1, :, : sizes[i] * hop]
    per_item: list[list[Tensor]] = [[] for _ in lengths]
    for (b, s, _), y in zip(pieces, audio):
        if encoded.scale is not None:
            y = y * encoded.scale[b : b + 1, s : s + 1]
        per_item[b].append(y)
    out = codes.new_zeros((len(lengths), codec.channels, max(lengths)), dtype=audio[0].dtype)
    for b, ys in enumerate(per_item):
        y = ys[0] if codec.segment_stride is None else linear_overlap_add(ys, codec.segment_stride)
        out[b, :, : lengths[b]] = y[0, :, : lengths[b]]
    return out
