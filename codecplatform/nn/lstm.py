"""LSTM over convolutional layout, with its hidden state carried across streaming chunks."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from codecplatform.nn.conv import fast_paths_allowed
from codecplatform.nn.streaming import StreamingModule

#: Streaming chunks of at most this many frames run the LSTM step by step here (one matrix product
#: per layer and frame with a cached [W_ih | W_hh]): ``nn.LSTM`` on the CPU (oneDNN) spends ~10 ms
#: re-packing its weights on every call, 10x the arithmetic of one frame.
STEP_FRAMES = 8


class StreamableLSTM(StreamingModule):
    """Unidirectional multi-layer LSTM with an optional skip: (B, D, T) -> (B, D, T).

    ``y = lstm(x) + x`` when ``skip``. In streaming the (h, c) state of the previous chunk is the
    initial state of the next, so chunked and whole outputs are equal. ``lstm`` is a plain
    time-major ``nn.LSTM(dimension, dimension, num_layers)`` (EnCodec's parameter names).
    """

    state_batch_dims = {"hc": 1}  # (h, c): (layers, B, hidden) each

    def __init__(self, dimension: int, num_layers: int = 2, skip: bool = True) -> None:
        super().__init__()
        self.skip = skip
        self.lstm = nn.LSTM(dimension, dimension, num_layers)
        self._step_cache: dict = {}

    def forward(self, x: Tensor) -> Tensor:
        """(B, D, T) -> (B, D, T)."""
        if x.shape[-1] == 0:  # an empty streaming chunk: nothing to run, state unchanged
            return x
        seq = x.permute(2, 0, 1)  # (B, D, T) -> (T, B, D)
        if self.is_streaming and seq.shape[0] <= STEP_FRAMES and fast_paths_allowed():
            y, self.stream_state["hc"] = self._steps(seq, self.stream_state.get("hc"))
        elif self.is_streaming:
            y, self.stream_state["hc"] = self.lstm(seq, self.stream_state.get("hc"))
        else:
            y, _ = self.lstm(seq)
        if self.skip:
            y = y + seq
        return y.permute(1, 2, 0)  # (T, B, D) -> (B, D, T)

    def _step_weights(self) -> list[tuple[Tensor, Tensor]]:
        """Per layer ([W_ih | W_hh]^T (D_in + H, 4H), b_ih + b_hh (1, 4H)), cached while unchanged."""
        params = [p for p in self.lstm.parameters()]
        key = None if any(p.is_inference() for p in params) else tuple((p.data_ptr(), p._version) for p in params)
        if key is None or self._step_cache.get("key") != key:
            layers = []
            for layer in range(self.lstm.num_layers):
                w_ih, w_hh = getattr(self.lstm, f"weight_ih_l{layer}"), getattr(self.lstm, f"weight_hh_l{layer}")
                b_ih, b_hh = getattr(self.lstm, f"bias_ih_l{layer}"), getattr(self.lstm, f"bias_hh_l{layer}")
                layers.append((torch.cat([w_ih, w_hh], dim=1).t().contiguous(), (b_ih + b_hh)[None]))
            self._step_cache = {"key": key, "layers": layers}
        return self._step_cache["layers"]

    def _steps(self, seq: Tensor, hc: tuple[Tensor, Tensor] | None) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """``nn.LSTM`` (time-major (T, B, D), state (L, B, H) pairs) frame by frame, inference only."""
        layers, hidden = self._step_weights(), self.lstm.hidden_size
        if hc is None:
            zeros = seq.new_zeros(len(layers), seq.shape[1], hidden)
            hc = (zeros, zeros)
        h, c = list(hc[0].unbind(0)), list(hc[1].unbind(0))
        outputs = []
        for t in range(seq.shape[0]):
            inp = seq[t]  # (B, D)
            for layer, (weight, bias) in enumerate(layers):
                gates = torch.addmm(bias, torch.cat([inp, h[layer]], dim=1), weight)  # (B, 4H): i, f, g, o
                act = gates.sigmoid()
                forget, cell = act[:, hidden : 2 * hidden], gates[:, 2 * hidden : 3 * hidden].tanh()
                c[layer] = torch.addcmul(forget * c[layer], act[:, :hidden], cell)
                h[layer] = inp = act[:, 3 * hidden :] * c[layer].tanh()
            outputs.append(inp)
        return torch.stack(outputs), (torch.stack(h), torch.stack(c))
