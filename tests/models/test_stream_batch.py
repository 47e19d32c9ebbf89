"""Many streams in one batch (``codec.stream(batch=N)``): streams that start, pause, stop and
restart at different calls each get exactly what their own single stream gives; chunked encoding
of many signals as concurrent streams (``encode_chunked_many``) gives each its own codes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from codecplatform.config import compose_config, merge_config
from codecplatform.models.codec import Codec

EXPERIMENTS = Path(__file__).resolve().parents[2] / "experiments"


def tiny_encodec(init: bool = True) -> Codec:
    torch.manual_seed(0)
    config = merge_config(
        compose_config(EXPERIMENTS / "encodec" / "24khz_mono.yaml"),
        compose_config(EXPERIMENTS / "tiny" / "encodec.yaml"),
    )
    codec = Codec.from_config(config["model"]["init_args"]["codec"])
    if not init:
        return codec.eval()
    codec.train()
    with torch.no_grad():
        codec(0.1 * torch.randn(2, 1, 40 * codec.hop_length))  # k-means init of the codebooks
    return codec.eval().prepare_for_inference()


def single_stream(codec: Codec, x: torch.Tensor, n_q: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Codes (K, F) and audio (C, T) of one stream fed one frame per call, then flushed."""
    codes, audio = [], []
    with codec.stream(n_q=n_q) as s:
        for piece in x[None].split(codec.hop_length, dim=-1):
            codes.append(s.encode(piece))
            audio.append(s.decode(codes[-1]))
        codes.append(s.flush_encoder())
        audio += [s.decode(codes[-1]), s.flush_decoder()]
    return torch.cat(codes, dim=-1)[0], torch.cat(audio, dim=-1)[0]


def test_streams_starting_and_stopping_at_different_calls_equal_their_own_stream():
    codec = tiny_encodec()
    hop, calls, n_q = codec.hop_length, 24, 3
    # slot -> [(first call, last call)] of the streams it carries
    plan = {0: [(0, 23)], 1: [(0, 8), (11, 23)], 2: [(4, 19)], 3: [(2, 12), (13, 23)]}
    torch.manual_seed(1)
    signals = {
        (slot, span): 0.1 * torch.randn(1, (span[1] - span[0] + 1) * hop) for slot in plan for span in plan[slot]
    }
    got = {key: ([], []) for key in signals}
    with codec.stream(n_q=n_q, batch=len(plan)) as s:
        for t in range(calls):
            starting = [slot for slot in plan if any(a == t for a, _ in plan[slot])]
            if starting:
                s.reset(starting)
            live = {slot: span for slot in plan for span in plan[slot] if span[0] <= t <= span[1]}
            chunk = torch.zeros(len(plan), 1, hop)
            for slot, span in live.items():
                chunk[slot] = signals[(slot, span)][:, (t - span[0]) * hop : (t - span[0] + 1) * hop]
            codes = s.encode(chunk, active=sorted(live))
            audio = s.decode(codes)
            assert all(codes[slot] is None and audio[slot] is None for slot in plan if slot not in live)
            ending = [slot for slot, span in live.items() if span[1] == t]
            if ending:
                last = s.flush_encoder(ending)
                tail = s.decode(last)
                flushed = s.flush_decoder(ending)
            for slot, span in live.items():
                got[(slot, span)][0].append(codes[slot])
                got[(slot, span)][1].append(audio[slot])
                if slot in ending:
                    got[(slot, span)][0].append(last[slot])
                    got[(slot, span)][1].extend([tail[slot], flushed[slot]])
        assert len(s._encoder.groups) < len(plan)  # streams in the same phase merged into one batch
    for key, x in signals.items():
        codes, audio = single_stream(codec, x, n_q)
        assert torch.equal(torch.cat(got[key][0], dim=-1), codes), key
        torch.testing.assert_close(torch.cat(got[key][1], dim=-1), audio, atol=1e-5, rtol=1e-4)


def test_stream_batch_checks_its_inputs():
    codec = tiny_encodec(init=False)
    with codec.stream(batch=2) as s:
        with pytest.raises(ValueError, match=r"\(2, channels, samples\)"):
            s.encode(torch.zeros(3, 1, 8))
        with pytest.raises(ValueError, match=r"streams must be in 0\.\.1"):
            s.reset([2])
        with pytest.raises(ValueError, match=r"2 \(channels, samples\) tensors or None"):
            s.encode([torch.zeros(1, 8)])


def test_signals_chunked_as_concurrent_streams_get_the_codes_they_get_one_at_a_time():
    codec = tiny_encodec()
    hop, chunk = codec.hop_length, 10 * codec.hop_length
    torch.manual_seed(2)
    # unequal lengths (one ends inside a frame), and one no longer than a chunk (coded whole)
    signals = [0.1 * torch.randn(1, n) for n in (37 * hop + 5, 50 * hop, 21 * hop, 8 * hop)]
    batch_sizes = []
    hook = codec.encoder.register_forward_hook(lambda module, args, out: batch_sizes.append(args[0].shape[0]))
    many = codec.encode_chunked_many(signals, n_q=3, chunk_samples=chunk, context_frames=0)
    calls_together = len(batch_sizes)
    alone = [codec.encode_chunked(lambda a, b, x=x: x[:, a:b], x.shape[-1], 3, chunk, 0) for x in signals]
    hook.remove()
    assert max(batch_sizes[:calls_together]) == 3  # the three long signals ran as one batch
    assert calls_together < len(batch_sizes) - calls_together
    for x, got, expected in zip(signals, many, alone):
        assert got.length == x.shape[-1]
        assert torch.equal(got.codes, expected.codes)
