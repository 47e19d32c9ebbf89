"""The code language model of EnCodec's entropy coding (Défossez et al. 2022, arXiv:2210.13438,
section 3.3; facebookresearch/encodec ``encodec/model.py`` LMModel).

A small causal Transformer over code frames predicts the distribution of every codebook of frame
t from the frames before t, all codebooks at once (the mutual information between the codebooks of
one frame is neglected, as in the paper):

- input of frame t: the sum over codebooks k of ``emb[k](codes[k, t - 1] + 1)``; 0 is the start
  token, so frame 0 sees only start tokens (one table of ``card + 1`` entries per codebook);
- a LayerNorm on the input (``norm_in``), sinusoidal positions ``offset + t`` (cos then sin,
  max period 1e4, as the reference) where training draws a random ``offset`` per example to
  emulate being inside a longer sequence;
- ``num_layers`` Transformer layers with a causal attention window: frame t attends to frames
  ``t - past_context .. t`` (EnCodec: 3.5 s, ``int(3.5 * frame_rate)`` = 262 frames at 75 Hz);
- one linear head per codebook -> logits of that codebook's ``card`` entries.

EnCodec: 5 layers, 8 heads, 200 channels, FFN 800, GELU, no dropout, post-norm layers (the
reference builds ``nn.TransformerEncoderLayer`` with ``norm_first=False``). With K < ``n_q``
codebooks only the first K embedding tables and heads are used (the reference's one model serves
every bandwidth).

The layers are ``torch.nn.TransformerEncoderLayer`` modules (their parameters, norms, activation and
dropouts) run by :func:`_layer_forward`, a functional form of the same computation that adds the
key/value cache. Parameter names equal the reference's ``LMModel`` (``emb.<k>``, ``linears.<k>``,
``transformer.norm_in``, ``transformer.layers.<i>.self_attn...``): its state dict loads as is, and
with ``zero_initial_state=True`` (the reference's streaming state starts with one all-zero key
that stays in the window for the first ``past_context`` frames) the outputs are the reference's;
tests/entropy/test_code_lm.py checks both, and that ``forward`` equals the layer's own forward.

Streaming (:meth:`CodeLM.step`): a per-layer cache of keys and values of the last ``past_context``
frames; each call consumes frames and returns their logits. ``forward`` is the same computation
from an empty cache, so a batch evaluation and a step-by-step one agree up to float rounding
(``codecplatform.entropy.coding`` evaluates in float64 for bit-exact coding).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from codecplatform.checkpoints.io import read_checkpoint


def sin_embedding(positions: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """(..., T, 1) positions -> (..., T, dim) embedding: cos then sin, as the EnCodec reference."""
    if dim % 2:
        raise ValueError(f"the model dimension must be even for sinusoidal positions, got {dim}")
    half = dim // 2
    scale = torch.arange(half, device=positions.device, dtype=positions.dtype) / max(half - 1, 1)
    phase = positions / (max_period**scale)
    return torch.cat([torch.cos(phase), torch.sin(phase)], dim=-1)


@dataclass
class LMState:
    """Streaming state of :class:`CodeLM`: per layer the keys and values (B, H, S, D/H) of the
    cached frames, whose absolute positions start at ``start``; ``offset``: the next frame's
    position; ``n_q``: the codebook count the stream was started with. A state is advanced by
    ``step`` calls or by ``forward_chunk`` calls, not both."""

    keys: list[Tensor] = field(default_factory=list)
    values: list[Tensor] = field(default_factory=list)
    start: int = 0
    offset: int = 0
    n_q: int | None = None
    batch: int = 1
    last: Tensor | None = None  # (B, K) last codes given to forward_chunk (the next frame's input)


class CodeLM(nn.Module):
    """Causal Transformer LM over code frames: codes (B, K, T) -> logits (B, K, T, card).

    Args:
        n_q: codebooks the model has embeddings and heads for (K <= n_q at use).
        card: entries of every codebook (the largest, when the codec's differ).
        dim, num_heads, num_layers, ffn_dim: Transformer sizes (EnCodec 200, 8, 5, 800).
        past_context: frames before the current one that attention sees (EnCodec
            ``int(3.5 * frame_rate)``); None: unbounded.
        dropout: in attention and feed-forward blocks (EnCodec 0).
        norm_first: pre-norm layers (EnCodec: post-norm, False).
        norm_in: LayerNorm on the summed embeddings (EnCodec: True).
        activation: ``gelu`` (EnCodec) or ``relu``.
        max_period: of the sinusoidal positions.
        zero_initial_state: the reference's streaming quirk: one all-zero layer input (key and
            value = the projections' biases) at position -1 that the first ``past_context`` frames
            attend to. Needed to reproduce the reference's outputs with its weights.
        frame_rate: code frames per second of the codec the model was trained on (recorded only).
    """

    def __init__(
        self,
        n_q: int,
        card: int,
        dim: int = 200,
        num_heads: int = 8,
        num_layers: int = 5,
        ffn_dim: int = 800,
        past_context: int | None = 262,
        dropout: float = 0.0,
        norm_first: bool = False,
        norm_in: bool = True,
        activation: str = "gelu",
        max_period: float = 10000.0,
        zero_initial_state: bool = False,
        frame_rate: float | None = None,
    ):
        super().__init__()
        if n_q < 1 or card < 1:
            raise ValueError(f"n_q and card must be >= 1, got {n_q} and {card}")
        if dim % num_heads:
            raise ValueError(f"dim={dim} must be a multiple of num_heads={num_heads}")
        if past_context is not None and past_context < 1:
            raise ValueError(f"past_context must be >= 1 or None, got {past_context}")
        if activation not in ("gelu", "relu"):
            raise ValueError(f"activation must be 'gelu' or 'relu', got {activation!r}")
        self.n_q = n_q
        self.card = card
        self.dim = dim
        self.num_heads = num_heads
        self.past_context = past_context
        self.max_period = max_period
        self.zero_initial_state = zero_initial_state
        self.frame_rate = frame_rate
        self._config = {
            "n_q": n_q,
            "card": card,
            "dim": dim,
            "num_heads": num_heads,
            "num_layers": num_layers,
            "ffn_dim": ffn_dim,
            "past_context": past_context,
            "dropout": dropout,
            "norm_first": norm_first,
            "norm_in": norm_in,
            "activation": activation,
            "max_period": max_period,
            "zero_initial_state": zero_initial_state,
            "frame_rate": frame_rate,
        }
        self.transformer = nn.Module()
        self.transformer.norm_in = nn.LayerNorm(dim) if norm_in else nn.Identity()
        act = F.gelu if activation == "gelu" else F.relu
        self.transformer.layers = nn.ModuleList(
            nn.TransformerEncoderLayer(
                dim, num_heads, ffn_dim, dropout=dropout, activation=act, batch_first=True, norm_first=norm_first
            )
            for _ in range(num_layers)
        )
        self.emb = nn.ModuleList(nn.Embedding(card + 1, dim) for _ in range(n_q))
        self.linears = nn.ModuleList(nn.Linear(dim, card) for _ in range(n_q))

    # -- description -------------------------------------------------------------------------------
    def config(self) -> dict[str, Any]:
        """The constructor arguments (stored in LM checkpoints; ``CodeLM(**config)`` rebuilds it)."""
        return dict(self._config)

    @property
    def layers(self) -> nn.ModuleList:
        return self.transformer.layers  # type: ignore[return-value]

    # -- evaluation --------------------------------------------------------------------------------
    def forward(self, codes: Tensor, offset: int | Tensor = 0) -> Tensor:
        """codes (B, K, T) int64 -> logits (B, K, T, card); frame t's logits depend on frames < t.

        ``offset``: position of frame 0 (int, or (B,) per example: training's random offsets)."""
        self._check_codes(codes)
        B, K, T = codes.shape
        inputs = torch.zeros_like(codes)
        inputs[..., 1:] = codes[..., :-1] + 1  # (B,K,T): previous frame, 0 = start token
        state = self.initial_state(B, K, codes.device, offset=0)
        logits, _ = self._run(inputs, state, offset)
        return logits

    def initial_state(self, batch: int, n_q: int, device: torch.device | str = "cpu", offset: int = 0) -> LMState:
        """An empty stream of ``n_q`` codebooks (the reference's zero key when ``zero_initial_state``)."""
        if not 1 <= n_q <= self.n_q:
            raise ValueError(f"n_q={n_q} is out of range: the model has 1..{self.n_q} codebooks")
        state = LMState(start=offset, offset=offset, n_q=n_q, batch=batch)
        if self.zero_initial_state:
            hd = self.dim // self.num_heads
            for layer in self.layers:
                _, k, v = _in_bias(layer, self.dim)
                dtype = layer.self_attn.in_proj_weight.dtype
                shape = (batch, self.num_heads, 1, hd)
                state.keys.append(k.to(device, dtype).view(1, self.num_heads, 1, hd).expand(shape))
                state.values.append(v.to(device, dtype).view(1, self.num_heads, 1, hd).expand(shape))
            state.start = offset - 1
        return state

    def step(
        self, prev: Tensor | None, state: LMState | None = None, n_q: int | None = None, batch: int = 1
    ) -> tuple[Tensor, LMState]:
        """Streaming evaluation of one frame (the decoder's): ``prev`` (B, K) codes of the frame
        before it, None for frame 0 (start tokens; then give ``n_q`` and ``batch`` or a state).
        Returns (logits (B, K, card) of the frame, the new state). The sequence
        ``step(None, n_q=K)``, ``step(codes[..., 0], s)``, ``step(codes[..., 1], s)``, ... equals
        ``forward(codes)`` frame by frame."""
        if state is None:
            if prev is not None:
                batch, n_q = prev.shape
            elif n_q is None:
                raise ValueError("the first step needs n_q (the number of codebooks)")
            state = self.initial_state(batch, n_q, self.emb[0].weight.device)
        if prev is None:
            inputs = torch.zeros(state.batch, state.n_q, 1, dtype=torch.long, device=self.emb[0].weight.device)
        else:
            if prev.dim() != 2 or prev.shape[1] != state.n_q:
                raise ValueError(f"prev must be (batch, {state.n_q}) codes, got shape {tuple(prev.shape)}")
            inputs = prev[..., None] + 1
        logits, new_state = self._run(inputs, state, 0)
        new_state.last = None if prev is None else prev
        return logits[:, :, 0], new_state

    def forward_chunk(self, codes: Tensor, state: LMState | None = None) -> tuple[Tensor, LMState]:
        """Teacher-forced streaming (the batch encoder's): the logits (B, K, n, card) of the frames
        ``codes`` (B, K, n) that follow those of earlier calls, and the new state.
        ``forward(codes)`` equals the concatenation over consecutive chunks."""
        self._check_codes(codes)
        if state is None:
            state = self.initial_state(codes.shape[0], codes.shape[1], codes.device)
        if codes.shape[1] != state.n_q:
            raise ValueError(f"the stream has {state.n_q} codebooks, got codes of {codes.shape[1]}")
        first = torch.zeros_like(codes[..., :1]) if state.last is None else state.last[..., None] + 1
        inputs = torch.cat([first, codes[..., :-1] + 1], dim=-1)
        logits, new_state = self._run(inputs, state, 0)
        new_state.last = codes[..., -1]
        return logits, new_state

    # -- internals ---------------------------------------------------------------------------------
    def _check_codes(self, codes: Tensor) -> None:
        if codes.dim() != 3:
            raise ValueError(f"codes must be (batch, codebooks, frames), got shape {tuple(codes.shape)}")
        if not 1 <= codes.shape[1] <= self.n_q:
            raise ValueError(f"{codes.shape[1]} codebooks: the model has 1..{self.n_q}")
        if codes.dtype not in (torch.int64, torch.int32):
            raise TypeError(f"codes must be integers, got {codes.dtype}")

    def _run(self, inputs: Tensor, state: LMState, offset: int | Tensor) -> tuple[Tensor, LMState]:
        """inputs (B, K, n) token ids (0 start, else code + 1) of the frames at ``state.offset``
        (+ ``offset``, per example in training) -> logits (B, K, n, card) and the new state."""
        B, K, n = inputs.shape
        x = sum(self.emb[k](inputs[:, k]) for k in range(K))  # (B,n,D)
        dtype = x.dtype
        pos = torch.arange(state.offset, state.offset + n, device=x.device, dtype=dtype).view(1, n, 1)
        if isinstance(offset, Tensor):
            pos = pos + offset.to(dtype).view(-1, 1, 1)
        elif offset:
            pos = pos + offset
        x = self.transformer.norm_in(x) + sin_embedding(pos, self.dim, self.max_period)
        # attention mask over the cached frames then the new ones: 0 <= query - key <= past_context
        cached = state.keys[0].shape[2] if state.keys else 0
        q_pos = torch.arange(state.offset, state.offset + n, device=x.device).view(-1, 1)
        k_pos = torch.arange(state.start, state.start + cached + n, device=x.device).view(1, -1)
        delta = q_pos - k_pos
        mask = delta >= 0
        if self.past_context is not None:
            mask &= delta <= self.past_context
        keys, values = [], []
        for i, layer in enumerate(self.layers):
            past = (state.keys[i], state.values[i]) if state.keys else None
            x, k, v = _layer_forward(layer, x, past, mask, self.num_heads)
            keys.append(k)
            values.append(v)
        end = state.offset + n
        new_start = state.start
        if self.past_context is not None and end - self.past_context > state.start:
            drop = end - self.past_context - state.start
            keys = [k[:, :, drop:] for k in keys]
            values = [v[:, :, drop:] for v in values]
            new_start = state.start + drop
        new_state = LMState(keys, values, new_start, end, state.n_q, B)
        logits = torch.stack([self.linears[k](x) for k in range(K)], dim=1)  # (B,K,n,card)
        return logits, new_state

    # -- loading -----------------------------------------------------------------------------------
    @classmethod
    def from_checkpoint(cls, path: str | Path, map_location: str | torch.device = "cpu") -> CodeLM:
        """Load the LM of a ``CodeLMModule`` training checkpoint (``lm_config`` + ``lm.*`` weights)
        or of a file ``{"lm_config": ..., "state_dict": {...}}``; read with ``weights_only=True``
        (tensors and plain data only: a file that would build other objects is refused, not run).
        ValueError ``"<path> is not a code LM checkpoint: ..."`` for a file that is not one
        (:func:`~codecplatform.checkpoints.io.read_checkpoint`)."""
        checkpoint = read_checkpoint(path, "code LM checkpoint", map_location, required={"lm_config": dict})
        state = checkpoint.get("state_dict", {})
        if not isinstance(state, dict):
            raise ValueError(f"{path} is not a code LM checkpoint: its 'state_dict' is not a dict of tensors")
        lm_state = {k[len("lm.") :]: v for k, v in state.items() if k.startswith("lm.")}
        try:
            model = cls(**checkpoint["lm_config"])
            model.load_state_dict(lm_state or state)
        except (TypeError, RuntimeError) as error:
            detail = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise ValueError(f"{path} is not a loadable code LM checkpoint ({detail[:200]})") from error
        return model.eval()


def _in_bias(layer: nn.TransformerEncoderLayer, dim: int) -> tuple[Tensor, Tensor, Tensor]:
    bias = layer.self_attn.in_proj_bias
    if bias is None:
        zero = layer.self_attn.in_proj_weight.new_zeros(dim)
        return zero, zero, zero
    return bias[:dim], bias[dim : 2 * dim], bias[2 * dim :]


def _layer_forward(
    layer: nn.TransformerEncoderLayer,
    x: Tensor,
    past: tuple[Tensor, Tensor] | None,
    mask: Tensor,
    num_heads: int,
) -> tuple[Tensor, Tensor, Tensor]:
    """``nn.TransformerEncoderLayer`` computation on x (B, n, D) with cached keys/values
    (B, H, S, D/H) in front of the new frames' -> (output (B, n, D), keys, values (B, H, S + n, D/H)).
    ``mask`` (n, S + n) bool: True where a query may attend."""

    def attention(h: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        B, n, D = h.shape
        attn = layer.self_attn
        qkv = F.linear(h, attn.in_proj_weight, attn.in_proj_bias)  # (B,n,3D)
        q, k, v = (t.view(B, n, num_heads, D // num_heads).transpose(1, 2) for t in qkv.chunk(3, dim=-1))
        if past is not None:
            k = torch.cat([past[0], k], dim=2)
            v = torch.cat([past[1], v], dim=2)
        p = attn.dropout if layer.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)  # (B,H,n,D/H)
        out = attn.out_proj(out.transpose(1, 2).reshape(B, n, D))
        return layer.dropout1(out), k, v

    def feed_forward(h: Tensor) -> Tensor:
        return layer.dropout2(layer.linear2(layer.dropout(layer.activation(layer.linear1(h)))))

    if layer.norm_first:
        a, k, v = attention(layer.norm1(x))
        x = x + a
        x = x + feed_forward(layer.norm2(x))
    else:
        a, k, v = attention(x)
        x = layer.norm1(x + a)
        x = layer.norm2(x + feed_forward(x))
    return x, k, v


def context_frames(seconds: float, frame_rate: float) -> int:
    """Attention window in frames for ``seconds`` of context (EnCodec: ``int(3.5 * frame_rate)``)."""
    return max(1, int(seconds * frame_rate))


__all__ = ["CodeLM", "LMState", "context_frames", "sin_embedding"]
