"""Chunk-by-chunk (streaming) evaluation of causal modules.

A :class:`StreamingModule` behaves as a plain module until streaming is switched on with the
:func:`streaming` context manager. Inside the context every call receives the next chunk of one
signal (any length, possibly empty) and returns the outputs that chunk completes; what cannot be
consumed yet is kept in the module's state and used by the next call::

    with streaming(encoder):
        frames = torch.cat([encoder(chunk) for chunk in chunks], dim=-1)
    # == encoder(torch.cat(chunks, dim=-1)) when the total length is a multiple of hop_length

The state lives only inside the context: entering starts every module afresh and leaving (also
through an exception) clears it, so the next ``with streaming(...)`` starts a new stream.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn


class StreamingModule(nn.Module):
    """Base of modules that can process a signal chunk by chunk.

    Subclasses branch on :attr:`is_streaming` in ``forward`` and keep whatever they must carry
    from one chunk to the next in ``self._stream_state`` (a fresh empty dict per stream).
    Subclasses that cannot stream in some configuration override :meth:`check_streamable`.
    """

    #: The batch axis of state entries that do not keep it first (default 0), e.g. an LSTM's
    #: (layers, B, hidden) state: used to carry several streams in one batch (``select_state``).
    state_batch_dims: dict[str, int] = {}

    def __init__(self) -> None:
        super().__init__()
        self._stream_state: dict[str, Any] | None = None

    @property
    def is_streaming(self) -> bool:
        """True between entering and leaving a :func:`streaming` context."""
        return self._stream_state is not None

    def check_streamable(self) -> None:
        """Raise a ``RuntimeError`` saying why this module cannot stream; by default it can."""

    def start_streaming(self) -> None:
        """Switch streaming on with an empty state (used by :func:`streaming`)."""
        if self.is_streaming:
            raise RuntimeError(f"{type(self).__name__} is already streaming (nested streaming())")
        self.check_streamable()
        self._stream_state = {}

    def stop_streaming(self) -> None:
        """Switch streaming off and drop the state (used by :func:`streaming`)."""
        self._stream_state = None

    @property
    def stream_state(self) -> dict[str, Any]:
        """The current stream's state; only valid while streaming."""
        if self._stream_state is None:
            raise RuntimeError(f"{type(self).__name__} is not streaming")
        return self._stream_state


@contextmanager
def streaming(module: nn.Module) -> Iterator[nn.Module]:
    """Stream every :class:`StreamingModule` inside ``module`` (itself included) for the block.

    Raises (before the block runs) if any of them cannot stream, e.g. a non-causal convolution.
    On exit, normal or not, streaming is switched off and all state is cleared.
    """
    started: list[StreamingModule] = []
    try:
        for sub in module.modules():
            if isinstance(sub, StreamingModule):
                sub.start_streaming()
                started.append(sub)
        yield module
    finally:
        for sub in started:
            sub.stop_streaming()


def run_in_chunks(module: nn.Module, x: Tensor, chunk_sizes: Sequence[int]) -> Tensor:
    """Stream ``x`` (..., T) through ``module`` in consecutive chunks along the last axis, whose
    sizes cycle through ``chunk_sizes`` (a size of 0 sends an empty chunk), and concatenate the
    outputs: what a real-time client receives, frame by frame.
    """
    if not chunk_sizes or any(size < 0 for size in chunk_sizes) or not any(chunk_sizes):
        raise ValueError(f"chunk_sizes must be >= 0 with at least one > 0, got {list(chunk_sizes)}")
    outputs, start, i = [], 0, 0
    with torch.no_grad(), streaming(module):
        while start < x.shape[-1]:
            size = chunk_sizes[i % len(chunk_sizes)]
            outputs.append(module(x[..., start : start + size]))
            start, i = start + size, i + 1
    return torch.cat(outputs, dim=-1)


def streams_exactly(module: nn.Module, probe: Tensor, expected: int, flush: int = 0) -> bool:
    """True when every StreamingModule inside ``module`` can stream (there is at least one) and
    streaming ``probe`` (B, C, T) in two halves, then ``flush`` zeros along time (a module with a
    declared look-ahead, e.g. SpectroStream's ``stream_flush_samples``), yields ``expected``
    outputs along time, i.e. the stream holds nothing back at its end beyond its declared
    look-ahead (a causal decoder with ``trim_right_ratio < 1`` would; a reflect-padded convolution
    waits for ``kernel_size`` inputs before its first output, so the probe must be at least that
    long)."""
    parts = [m for m in module.modules() if isinstance(m, StreamingModule)]
    if not parts:
        return False
    try:
        for part in parts:
            part.check_streamable()
    except RuntimeError:
        return False
    half = probe.shape[-1] // 2
    tail = probe.new_zeros(*probe.shape[:-1], flush)
    with torch.no_grad(), streaming(module):
        outputs = [module(probe[..., :half]), module(probe[..., half:])]
        if flush:
            outputs.append(module(tail))
    return torch.cat(outputs, dim=-1).shape[-1] == expected


def _map_state(module: StreamingModule, state: dict[str, Any], fn: Any) -> dict[str, Any]:
    """``state`` with ``fn(tensor, batch_dim)`` applied to every tensor (also inside tuples)."""
    out: dict[str, Any] = {}
    for key, value in state.items():
        dim = module.state_batch_dims.get(key, 0)
        if isinstance(value, Tensor):
            out[key] = fn(value, dim)
        elif isinstance(value, tuple) and all(isinstance(v, Tensor) for v in value):
            out[key] = tuple(fn(v, dim) for v in value)
        else:
            out[key] = value
    return out


def select_state(module: StreamingModule, state: dict[str, Any], rows: Tensor) -> dict[str, Any]:
    """The stream state of the batch rows ``rows`` (indices) of a batched ``state`` of ``module``."""
    return _map_state(module, state, lambda t, dim: t.index_select(dim, rows.to(t.device)))


def state_signature(module: StreamingModule, state: dict[str, Any]) -> tuple:
    """What must agree for two stream states of ``module`` to be carried in one batch: the keys,
    every tensor's shape except its batch axis, and every other value."""
    sig = []
    for key, value in sorted(state.items()):
        dim = module.state_batch_dims.get(key, 0)
        values = value if isinstance(value, tuple) else (value,)
        for v in values:
            if isinstance(v, Tensor):
                sig.append((key, v.dtype, tuple(n for i, n in enumerate(v.shape) if i != dim)))
            else:
                sig.append((key, v))
    return tuple(sig)


def concat_states(module: StreamingModule, states: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Join stream states of equal :func:`state_signature` along their batch axes."""
    first = states[0]
    out: dict[str, Any] = {}
    for key, value in first.items():
        dim = module.state_batch_dims.get(key, 0)
        if isinstance(value, Tensor):
            out[key] = torch.cat([s[key] for s in states], dim=dim)
        elif isinstance(value, tuple) and all(isinstance(v, Tensor) for v in value):
            out[key] = tuple(torch.cat([s[key][i] for s in states], dim=dim) for i in range(len(value)))
        else:
            out[key] = value
    return out
