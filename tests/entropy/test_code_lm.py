"""CodeLM: batch forward == chunked == step by step (float32 ~1e-6; float64 -> identical integer
cdfs), equal to nn.TransformerEncoderLayer's own forward and to the EnCodec reference LMModel,
causal within its window, per-example offsets, fewer codebooks than the model has."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from code_lm_helpers import tiny_lm

from codecplatform.entropy.range_coder import quantize_pdf
from codecplatform.models.code_lm import CodeLM, sin_embedding


def stepped(lm: CodeLM, codes: torch.Tensor) -> torch.Tensor:
    """(B, K, T) -> logits (B, K, T, card) through step()."""
    B, K, T = codes.shape
    logits, state = lm.step(None, n_q=K, batch=B)
    out = [logits]
    for t in range(T - 1):
        logits, state = lm.step(codes[:, :, t], state)
        out.append(logits)
    return torch.stack(out, dim=2)


def chunked(lm: CodeLM, codes: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    out, state, start = [], None, 0
    for size in sizes:
        logits, state = lm.forward_chunk(codes[..., start : start + size], state)
        out.append(logits)
        start += size
    return torch.cat(out, dim=2)


@pytest.mark.parametrize("zero_initial_state", [False, True])
@pytest.mark.parametrize("norm_first", [False, True])
@pytest.mark.parametrize("past_context", [5, None])
def test_batch_chunked_and_step_agree(zero_initial_state, norm_first, past_context):
    lm = tiny_lm(past_context=past_context, zero_initial_state=zero_initial_state, norm_first=norm_first)
    codes = torch.randint(0, 16, (2, 3, 14), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        full = lm(codes)
        assert full.shape == (2, 3, 14, 16)
        for other in (stepped(lm, codes), chunked(lm, codes, [4, 1, 6, 3])):
            torch.testing.assert_close(torch.softmax(other, -1), torch.softmax(full, -1), rtol=0, atol=1e-6)
        lm64 = lm.double()
        full64, step64 = lm64(codes), stepped(lm64, codes)
    np.testing.assert_array_equal(quantize_pdf(torch.softmax(step64, -1)), quantize_pdf(torch.softmax(full64, -1)))


def test_equals_torch_transformer_encoder_layers():
    """With an unbounded window, forward == nn.TransformerEncoderLayer's own forward (causal mask)."""
    lm = tiny_lm(past_context=None, dropout=0.0)
    codes = torch.randint(0, 16, (2, 4, 9))
    inputs = torch.zeros_like(codes)
    inputs[..., 1:] = codes[..., :-1] + 1
    with torch.no_grad():
        x = sum(lm.emb[k](inputs[:, k]) for k in range(4))
        pos = torch.arange(9, dtype=torch.float32).view(1, -1, 1)
        x = lm.transformer.norm_in(x) + sin_embedding(pos, lm.dim)
        mask = torch.nn.Transformer.generate_square_subsequent_mask(9)
        for layer in lm.layers:
            x = layer(x, src_mask=mask)
        reference = torch.stack([lm.linears[k](x) for k in range(4)], dim=1)
        torch.testing.assert_close(lm(codes), reference, rtol=1e-5, atol=1e-5)


def test_equals_the_encodec_reference_lm():
    """The reference's state dict loads as is; with its zero initial state the outputs are its own."""
    from encodec.model import LMModel

    torch.manual_seed(0)
    reference = LMModel(n_q=4, card=16, dim=32, num_heads=4, num_layers=2, past_context=5).eval()
    lm = CodeLM(n_q=4, card=16, dim=32, num_heads=4, num_layers=2, ffn_dim=128, past_context=5, zero_initial_state=True)
    lm.load_state_dict(reference.state_dict(), strict=True)
    lm.eval()
    codes = torch.randint(0, 16, (2, 4, 12))
    inputs = torch.zeros_like(codes)
    inputs[..., 1:] = codes[..., :-1] + 1
    with torch.no_grad():
        ours = torch.softmax(lm(codes), -1).permute(0, 3, 1, 2)  # (B, card, K, T) as the reference
        batch, _, _ = reference(inputs)
        states, offset, steps = None, 0, []
        for t in range(12):
            probs, states, offset = reference(inputs[..., t : t + 1], states, offset)
            steps.append(probs)
    torch.testing.assert_close(ours, batch, rtol=0, atol=1e-6)
    torch.testing.assert_close(ours, torch.cat(steps, -1), rtol=0, atol=1e-6)


def test_causal_within_the_window():
    lm = tiny_lm(past_context=3)
    codes = torch.randint(0, 16, (1, 4, 12))
    changed = codes.clone()
    changed[..., 5] = (codes[..., 5] + 1) % 16
    with torch.no_grad():
        a, b = lm(codes), lm(changed)
    torch.testing.assert_close(a[..., :6, :], b[..., :6, :])  # frame 5's codes enter at frame 6
    assert not torch.allclose(a[..., 6, :], b[..., 6, :])
    # the change reaches later frames only through the layers' windows: 2 layers x 3 frames
    torch.testing.assert_close(a[..., 6 + 2 * 3 :, :], b[..., 6 + 2 * 3 :, :])


def test_offsets_codebook_subsets_and_gradients():
    lm = tiny_lm()
    codes = torch.randint(0, 16, (2, 4, 6))
    with torch.no_grad():
        per_example = lm(codes, offset=torch.tensor([0, 100]))
        torch.testing.assert_close(per_example[:1], lm(codes[:1]))
        torch.testing.assert_close(per_example[1:], lm(codes[1:], offset=100))
        assert not torch.allclose(per_example[1:], lm(codes[1:]))
        assert lm(codes[:, :2]).shape == (2, 2, 6, 16)  # the first 2 embeddings and heads
    lm.train()
    lm(codes, offset=torch.tensor([3, 7])).logsumexp(-1).sum().backward()
    assert all(p.grad is not None for n, p in lm.named_parameters() if not n.startswith(("emb.", "linears.")))
    with pytest.raises(ValueError, match="codebooks"):
        lm(torch.zeros(1, 5, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="multiple of num_heads"):
        CodeLM(n_q=1, card=4, dim=10, num_heads=3)


def test_config_rebuilds_the_model_and_encodec_sizes():
    lm = CodeLM(n_q=32, card=1024, past_context=int(3.5 * 75), frame_rate=75.0)
    assert CodeLM(**lm.config()).config() == lm.config()
    layer = lm.layers[0]
    assert (len(lm.layers), layer.self_attn.num_heads, lm.dim, layer.linear1.out_features) == (5, 8, 200, 800)
    assert not layer.norm_first and lm.past_context == 262 and layer.dropout.p == 0.0
