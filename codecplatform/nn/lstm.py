"""LSTM over convolutional layout, with its hidden state carried across streaming chunks."""

from __future__ import annotations

from torch import Tensor, nn

from codecplatform.nn.streaming import StreamingModule


class StreamableLSTM(StreamingModule):
    """Unidirectional multi-layer LSTM with an optional skip: (B, D, T) -> (B, D, T).

    ``y = lstm(x) + x`` when ``skip``. In streaming the (h, c) state of the previous chunk is the
    initial state of the next, so chunked and whole outputs are equal. ``lstm`` is a plain
    time-major ``nn.LSTM(dimension, dimension, num_layers)`` (EnCodec's parameter names).
    """

    def __init__(self, dimension: int, num_layers: int = 2, skip: bool = True) -> None:
        super().__init__()
        self.skip = skip
        self.lstm = nn.LSTM(dimension, dimension, num_layers)

    def forward(self, x: Tensor) -> Tensor:
        """(B, D, T) -> (B, D, T)."""
        if x.shape[-1] == 0:  # an empty streaming chunk: nothing to run, state unchanged
            return x
        seq = x.permute(2, 0, 1)  # (B, D, T) -> (T, B, D)
        if self.is_streaming:
            y, self.stream_state["hc"] = self.lstm(seq, self.stream_state.get("hc"))
        else:
            y, _ = self.lstm(seq)
        if self.skip:
            y = y + seq
        return y.permute(1, 2, 0)  # (T, B, D) -> (B, D, T)
