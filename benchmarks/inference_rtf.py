"""Encode / decode real-time factor of every codec family, side by side with the reference packages.

    python benchmarks/inference_rtf.py [--families encodec24 dac44 muffin75 spectrostream48]
        [--threads 1] [--repeats 3] [--no_gpu] [--no_onnx] [--out outputs/benchmarks/inference_rtf.json]

Real-time factor (RTF) = audio seconds / wall seconds of compute (> 1: faster than real time).
Families and their real configs (weights random: speed does not depend on them):

* ``encodec24``: the official ``encodec`` 24 kHz model, random init with filled codebooks, saved and
  imported through :class:`~codecplatform.checkpoints.EncodecImporter`: ours and the reference run
  the SAME weights (the codes are checked equal); 1.5 / 6 / 24 kbps.
* ``dac44``: the official ``dac`` 44.1 kHz model, random weights, imported through
  :class:`~codecplatform.checkpoints.DACImporter`; 2 and 9 codebooks (1.7 / 7.7 kbps).
* ``muffin75``, ``spectrostream48``: experiments/muffin/75hz.yaml, experiments/spectrostream/48khz_stereo.yaml
  (no reference package); lowest and highest codebook count.

Rows per family and bitrate: ``ours`` (:meth:`Codec.prepare_for_inference`: weight norm folded,
in-place activations, ``torch.inference_mode``; the default of ``codecplatform encode/decode``),
``ours_unprepared`` (the same weights as ``Codec.from_checkpoint`` loads them: weight norm computed
at every call, ``no_grad``) and ``reference`` (the official package's ``encode``/``decode`` of the
same weights, under ``no_grad``); for causal codecs ``stream`` (``codec.stream()`` fed one code
frame of audio per call, EnCodec: 320 samples = 13.3 ms), ``stream_xN`` (N frames per call,
``--stream_frames``), ``streams_N`` (N concurrent one-frame streams of different signals in one
``codec.stream(batch=N)``, ``--streams``: ``RTF`` counts the audio of all N, ``per_stream_rtf`` one
stream's, ``vs_whole`` = N streams' audio per second / whole-file RTF) and ``stream_floor`` (the
weight-read floor of one-frame streaming: one matrix-vector product with every weight matrix per
frame, see :func:`weight_read_floor`; its ``vs_whole`` is the best a one-frame stream could reach),
and for EnCodec ``onnxruntime`` (the graphs of ``codecplatform export``, one intra-op thread).
Variants are interleaved within each repeat; the median is reported. ``vs_ref`` = RTF / reference
RTF, measured in the same run.
On a GPU (when present): batch 1 and batch 8, ours vs reference.

MuCodec (``--mucodec_checkpoint`` a bundled MuCodec, e.g. the trained tiny chain that
``benchmarks/mucodec_tiny_end_to_end.py`` writes; ``--mucodec_real``: experiments/mucodec/codec_1x16384.yaml,
random weights): RTF of ``encode`` and ``decode`` and of their parts (``muencoder``: the tokenizer on
24 kHz audio; ``dit``: the flow's Euler sampling, CFG included; ``melvae``: the Mel-VAE decoder;
``vocoder``), per Euler step count (``--mucodec_steps``); with ``--mucodec_audio`` (a folder of held-out
audio) the log-mel L1 (the Mel-VAE's mel) and mel distance of each step count's decode against the input.
The real-size DiT is timed for ``--mucodec_real_steps`` Euler steps (each step is the same computation).

Timings on a shared machine are noisy: the load average at start and end is recorded; with one
thread, ``--clock cpu`` times each call by the CPU time of this process instead of the wall clock.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from codecplatform.config import compose_config
from codecplatform.dsp.spectral import resample
from codecplatform.models.codec import Codec

REPO = Path(__file__).resolve().parents[1]
PAPER = {"encode": 9.8, "decode": 10.4}  # EnCodec paper Table 5: 24 kHz, 6 kbps, one MacBook Pro 2019 thread


# ------------------------------------------------------------------------------------ models
def encodec_models(folder: Path) -> tuple[Any, Codec, Codec, dict[float, int]]:
    """(official 24 kHz model, ours prepared, ours unprepared, kbps -> n_q); same weights."""
    import encodec

    from codecplatform.checkpoints.encodec import import_encodec

    torch.manual_seed(0)
    official = encodec.EncodecModel.encodec_model_24khz(pretrained=False).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # random codebooks (the untrained ones are all zero: every code would be 0)
        for layer in official.quantizer.vq.layers:
            book = layer._codebook
            book.embed.copy_(0.1 * torch.randn(book.embed.shape, generator=g))
            book.embed_avg.copy_(book.embed)
            book.cluster_size.fill_(1.0)
            book.inited.fill_(1.0)
    source = folder / "encodec_24khz.th"
    torch.save(official.state_dict(), source)
    checkpoint = import_encodec(source, "24khz", folder / "encodec_24khz.ckpt")
    ours = Codec.from_checkpoint(checkpoint)
    return official, ours.prepare_for_inference(), Codec.from_checkpoint(checkpoint), {1.5: 2, 6.0: 8, 24.0: 32}


def dac_models(folder: Path) -> tuple[Any, Codec, Codec, dict[float, int]]:
    import dac

    from codecplatform.checkpoints.dac import OFFICIAL_KWARGS, import_dac

    torch.manual_seed(0)
    official = dac.DAC(**{**OFFICIAL_KWARGS["44khz"], "latent_dim": None, "quantizer_dropout": False}).eval()
    source = official.save(str(folder / "weights_44khz.pth"), package=False)
    checkpoint = import_dac(source, "44khz", folder / "dac_44khz.ckpt")
    ours = Codec.from_checkpoint(checkpoint)
    points = {round(ours.bitrate(n), 2): n for n in (2, 9)}
    return official, ours.prepare_for_inference(), Codec.from_checkpoint(checkpoint), points


def initialised_codec(codec_config: dict[str, Any]) -> Codec:
    """The codec of ``codec_config`` (``{class_path, init_args}``), random weights, its codebooks
    k-means initialised on noise (untrained EMA codebooks are all zero: every code would be 0), eval mode."""
    torch.manual_seed(0)
    codec = Codec.from_config(codec_config)
    codec.train()
    with torch.no_grad():
        codec(0.1 * torch.randn(1, codec.channels, 20 * codec.hop_length))
    return codec.eval()


def config_models(config: str) -> tuple[None, Codec, Codec, dict[float, int]]:
    codec_config = compose_config(REPO / "experiments" / config)["model"]["init_args"]["codec"]
    codec = initialised_codec(codec_config)
    state = codec.state_dict()
    unprepared = Codec.from_config(codec_config)
    unprepared.load_state_dict(state)
    unprepared.eval()
    points = {round(codec.bitrate(n), 2): n for n in (1, codec.n_q)}
    return None, codec.prepare_for_inference(), unprepared, points


FAMILIES: dict[str, tuple[Callable[[Path], tuple], float]] = {
    # name -> (builder, seconds of audio on CPU)
    "encodec24": (encodec_models, 5.0),
    "dac44": (dac_models, 2.0),
    "muffin75": (lambda folder: config_models("muffin/75hz.yaml"), 2.0),
    "spectrostream48": (lambda folder: config_models("spectrostream/48khz_stereo.yaml"), 2.0),
}


# ----------------------------------------------------------------------------------- coding
def reference_coders(family: str, official: Any, n_q: int, x: torch.Tensor) -> tuple[Callable, Callable, Callable]:
    """(encode(), decode(), codes()) of the reference package at ``n_q`` codebooks on ``x``."""
    if family == "encodec24":
        official.set_target_bandwidth({2: 1.5, 8: 6.0, 32: 24.0}[n_q])
        with torch.no_grad():
            frames = official.encode(x)

        def encode() -> None:
            with torch.no_grad():
                official.encode(x)

        def decode() -> None:
            with torch.no_grad():
                official.decode(frames)

        return encode, decode, lambda: frames[0][0]
    with torch.no_grad():  # dac
        x_pre = official.preprocess(x, official.sample_rate)
        _, codes, *_ = official.encode(x_pre, n_quantizers=n_q)

    def encode() -> None:
        with torch.no_grad():
            official.encode(official.preprocess(x, official.sample_rate), n_quantizers=n_q)

    def decode() -> None:
        with torch.no_grad():
            official.decode(official.quantizer.from_codes(codes)[0])

    return encode, decode, lambda: codes


def ours_coders(codec: Codec, n_q: int, x: torch.Tensor) -> tuple[Callable, Callable, torch.Tensor]:
    encoded = codec.encode(x, n_q=n_q)
    return lambda: codec.encode(x, n_q=n_q), lambda: codec.decode(encoded), encoded.codes


def stream_coders(codec: Codec, n_q: int, x: torch.Tensor, frames: int = 1) -> tuple[Callable, Callable]:
    """Streaming encode / decode, ``frames`` code frames of audio (``frames`` hops) per call."""
    hop = codec.hop_length
    codes = codec.encode(x, n_q=n_q).codes
    pieces = list(x.split(frames * hop, dim=-1))
    blocks = list(codes.split(frames, dim=-1))

    def encode() -> None:
        with codec.stream(n_q=n_q) as s:
            for piece in pieces:
                s.encode(piece)
            s.flush_encoder()

    def decode() -> None:
        with codec.stream(n_q=n_q) as s:
            for block in blocks:
                s.decode(block)
            s.flush_decoder()

    return encode, decode


def stream_batch_coders(codec: Codec, n_q: int, x: torch.Tensor, streams: int) -> tuple[Callable, Callable]:
    """``streams`` concurrent one-frame streams in one ``codec.stream(batch=N)``: encode / decode of
    N different signals as long as ``x``, one code frame of each per call."""
    hop = codec.hop_length
    torch.manual_seed(3)
    xs = 0.1 * torch.randn(streams, x.shape[1], x.shape[-1])
    pieces = list(xs.split(hop, dim=-1))
    blocks = list(codec.encode(xs, n_q=n_q).codes.split(1, dim=-1))

    def encode() -> None:
        with codec.stream(n_q=n_q, batch=streams) as s:
            for piece in pieces:
                s.encode(piece)
            s.flush_encoder()

    def decode() -> None:
        with codec.stream(n_q=n_q, batch=streams) as s:
            for block in blocks:
                s.decode(block)
            s.flush_decoder()

    return encode, decode


def weight_read_floor(codec: Codec, n_q: int, op: str, n_frames: int) -> tuple[Callable, float]:
    """(a function, megabytes): one matrix-vector product with every weight matrix that a streamed
    frame must read, once per code frame: the encoder's weights and the ``n_q`` codebooks the
    nearest-code search scans (encode) or the decoder's weights (decode; looking codes up reads
    only their rows). A one-frame-per-call stream cannot be faster than this on the same machine:
    every weight is read at least once per frame, from memory when the weights exceed the last-level
    cache (the EnCodec 24 kHz encoder and 8 codebooks: 34 MB). Copies of the weights are used."""
    module = codec.encoder if op == "encode" else codec.decoder
    tensors = [p for p in module.parameters() if p.dim() >= 2]
    if op == "encode":
        tensors += [layer.embed for layer in list(codec.quantizer.layers)[:n_q] if hasattr(layer, "embed")]
    pairs = []
    for t in tensors:
        w = t.detach().reshape(t.shape[0], -1).clone()
        pairs.append((w, torch.randn(w.shape[1])))
    megabytes = sum(w.numel() * w.element_size() for w, _ in pairs) / 1e6

    def floor() -> None:
        for _ in range(n_frames):
            for w, v in pairs:
                torch.mv(w, v)

    return floor, megabytes


def onnx_coders(codec: Codec, n_q: int, x: torch.Tensor, folder: Path, threads: int) -> tuple[Callable, Callable]:
    import onnxruntime as ort

    from codecplatform.export import export_onnx

    paths = export_onnx(codec, folder / f"onnx_{n_q}", n_q)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    encoder = ort.InferenceSession(str(paths["encoder"]), options, providers=["CPUExecutionProvider"])
    decoder = ort.InferenceSession(str(paths["decoder"]), options, providers=["CPUExecutionProvider"])
    audio = x.numpy()
    codes = encoder.run(None, {"audio": audio})[0]
    return lambda: encoder.run(None, {"audio": audio}), lambda: decoder.run(None, {"codes": codes})


def interleaved(
    fns: dict[str, Callable[[], Any]],
    repeats: int,
    sync: Callable[[], None] = lambda: None,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, float]:
    """Median seconds of each function, the functions interleaved within each repeat (after one
    warm-up each), on ``clock`` (wall time; ``time.process_time``: this process's CPU time, which
    other jobs on a shared machine do not inflate by taking the CPU away)."""
    for fn in fns.values():
        fn()
    sync()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = clock()
            fn()
            sync()
            times[name].append(clock() - start)
    return {name: statistics.median(values) for name, values in times.items()}


# ------------------------------------------------------------------------------------ MuCodec
def mucodec_real() -> Any:
    """experiments/mucodec/codec_1x16384.yaml's MuCodec (the Mel-VAE of mucodec/melvae.yaml), random weights."""
    from codecplatform.config import instantiate
    from codecplatform.mucodec.codec import MuCodec

    config = compose_config(REPO / "experiments" / "mucodec" / "codec_1x16384.yaml")["model"]["init_args"]["codec"]
    vae = compose_config(REPO / "experiments" / "mucodec" / "melvae.yaml")["model"]["init_args"]["vae"]
    args = {
        **config["init_args"],
        "melvae": vae,
        "require_checkpoints": False,
        "tokenizer_checkpoint": None,
        "flow_checkpoint": None,
        "vocoder_checkpoint": None,
    }
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "untrained MuCodec": random weights are the point here
        return instantiate({**config, "init_args": args}, MuCodec)


@torch.no_grad()
def mucodec_parts(codec: Any, x: torch.Tensor, steps: int) -> dict[str, Callable[[], Any]]:
    """``encode``, ``decode`` (``steps`` Euler steps) and their parts on ``x`` (1, C, T) at 48 kHz."""
    from codecplatform.mucodec.flow import crossfade

    encoded = codec.encode(x)
    audio24 = resample(x.float(), codec.sample_rate, codec.tokenizer.sample_rate)
    flow = codec.flow
    generator = torch.Generator().manual_seed(0)
    long = flow.sample_long(encoded.codes, codec.window_codes, codec.hop_codes, steps, codec.guidance_scale, generator)
    d = codec.melvae.downsample

    def melvae() -> torch.Tensor:
        mels = [codec.melvae.decode(codec.melvae.denormalize(z)) for z in long.windows]
        return crossfade(mels, long.overlap * d, dim=2)[:, :, : long.frames * d]

    mel = melvae()
    return {  # called under no_grad (bench_mucodec_speed)
        "encode": lambda: codec.encode(x),
        "muencoder": lambda: codec.tokenizer.encode(audio24, codec.n_q),
        "decode": lambda: codec.decode(encoded, num_steps=steps),
        "dit": lambda: flow.sample_long(
            encoded.codes, codec.window_codes, codec.hop_codes, steps, codec.guidance_scale, generator
        ),
        "melvae": melvae,
        "vocoder": lambda: codec.vocoder(mel),
    }


def bench_mucodec_speed(
    name: str, codec: Any, seconds: float, steps_list: list[int], opts: argparse.Namespace
) -> list[dict[str, Any]]:
    """RTF rows of ``codec`` on ``seconds`` of noise, for each Euler step count."""
    torch.manual_seed(2)
    x = 0.1 * torch.randn(1, codec.channels, int(seconds * codec.sample_rate))
    rows = []
    clock = time.process_time if opts.clock == "cpu" else time.perf_counter
    for steps in steps_list:
        fns = mucodec_parts(codec, x, steps)
        if steps != steps_list[0]:  # the encode side does not depend on the steps
            fns = {k: v for k, v in fns.items() if k not in ("encode", "muencoder")}
        with torch.no_grad():
            medians = interleaved(fns, opts.repeats, clock=clock)
        for part, sec in medians.items():
            op = "encode" if part in ("encode", "muencoder") else "decode"
            whole = medians.get(op)
            row = {
                "family": name,
                "kbps": round(codec.bitrate(codec.n_q), 3),
                "n_q": codec.n_q,
                "op": op,
                "device": "cpu",
                "threads": opts.threads,
                "batch": 1,
                "variant": part if part == op else f"{op}:{part}",
                "euler_steps": None if op == "encode" else steps,
                "audio_seconds": x.shape[-1] / codec.sample_rate,
                "seconds": sec,
                "rtf": x.shape[-1] / codec.sample_rate / sec,
                "share_of_op": None if whole is None else sec / whole,
                "vs_ref": None,
                "vs_whole": None,
                "codes_equal_reference": None,
            }
            rows.append(row)
            print(format_row(row) + ("" if row["share_of_op"] is None else f"  {100 * row['share_of_op']:.1f} %"))
    return rows


def held_out_windows(folder: Path, sample_rate: int, seconds: float, per_file: int) -> list[torch.Tensor]:
    """``per_file`` evenly spaced windows (1, 2, T) of every audio file of ``folder``, at ``sample_rate``."""
    import soundfile as sf

    n = int(seconds * sample_rate)
    out = []
    for path in sorted(p for p in folder.iterdir() if p.suffix.lower() in {".flac", ".wav", ".ogg", ".opus"}):
        audio, rate = sf.read(str(path), dtype="float32", always_2d=True)
        x = torch.from_numpy(audio.T.copy())
        x = x.expand(2, -1) if x.shape[0] == 1 else x[:2]
        x = resample(x.contiguous(), int(rate), sample_rate)
        if x.shape[-1] < n:
            continue
        out += [x[None, :, s : s + n] for s in torch.linspace(0, x.shape[-1] - n, per_file).long().tolist()]
    if not out:
        raise ValueError(f"--mucodec_audio {folder}: no audio file of at least {seconds} s")
    return out


@torch.no_grad()
def mucodec_quality(codec: Any, windows: list[torch.Tensor], steps_list: list[int]) -> dict[int, dict[str, float]]:
    """Per Euler step count: log-mel L1 (the Mel-VAE's mel) of the generated mel against the input's,
    and the mel distance of the decoded audio against the input, averaged over ``windows``."""
    from codecplatform.metrics.reconstruction import MelDistance

    codes = [codec.encode(x).codes for x in windows]
    out = {}
    for steps in steps_list:
        metric, l1 = MelDistance(codec.sample_rate), 0.0
        for x, c in zip(windows, codes, strict=True):
            mel = codec.codes_to_mel(c, num_steps=steps)
            target = codec.melvae.mel(x)
            frames = min(target.shape[2], mel.shape[2])
            l1 += float((mel[:, :, :frames] - target[:, :, :frames]).abs().mean())
            x_hat = codec.vocoder(mel)[..., : x.shape[-1]]
            metric.update(torch.nn.functional.pad(x_hat, (0, x.shape[-1] - x_hat.shape[-1])), x)
        out[steps] = {"log_mel_l1": l1 / len(windows), "mel_distance": float(metric.compute())}
        print(f"mucodec {steps} Euler steps on {len(windows)} held-out windows: {out[steps]}", flush=True)
    return out


def bench_mucodec(opts: argparse.Namespace) -> dict[str, Any]:
    from codecplatform.models.base import AudioCodec

    out: dict[str, Any] = {"rows": []}
    if opts.mucodec_checkpoint:
        codec = AudioCodec.from_checkpoint(opts.mucodec_checkpoint)
        out["tiny_parameters"] = codec.num_parameters()
        out["rows"] += bench_mucodec_speed("mucodec_tiny", codec, opts.mucodec_seconds, opts.mucodec_steps, opts)
        if opts.mucodec_audio:
            windows = held_out_windows(
                Path(opts.mucodec_audio), codec.sample_rate, opts.mucodec_eval_seconds, opts.mucodec_windows_per_file
            )
            out["quality"] = mucodec_quality(codec, windows, opts.mucodec_steps)
            out["quality_windows"] = len(windows)
    if opts.mucodec_real:
        codec = mucodec_real()
        codec.window_codes = codec.hop_codes = round(opts.mucodec_real_seconds * codec.frame_rate)  # one window
        out["real_parameters"] = codec.num_parameters()
        print(f"mucodec real size (random weights): {out['real_parameters']}", flush=True)
        out["rows"] += bench_mucodec_speed(
            "mucodec_real", codec, opts.mucodec_real_seconds, [opts.mucodec_real_steps], opts
        )
    return out


# -------------------------------------------------------------------------------------- main
def bench_family(family: str, opts: argparse.Namespace, folder: Path) -> list[dict[str, Any]]:
    build, seconds = FAMILIES[family]
    seconds = opts.seconds or seconds
    official, ours, unprepared, points = build(folder)
    torch.manual_seed(2)
    x = 0.1 * torch.randn(1, ours.channels, int(seconds * ours.sample_rate) // ours.hop_length * ours.hop_length)
    rows = []
    for kbps, n_q in points.items():
        for op in ("encode", "decode"):
            fns: dict[str, Callable] = {}
            enc, dec, codes = ours_coders(ours, n_q, x)
            fns["ours"] = enc if op == "encode" else dec
            enc_u, dec_u, _ = ours_coders(unprepared, n_q, x)
            fns["ours_unprepared"] = enc_u if op == "encode" else dec_u
            codes_equal = None
            if official is not None:
                r_enc, r_dec, r_codes = reference_coders(family, official, n_q, x)
                fns["reference"] = r_enc if op == "encode" else r_dec
                ref_codes = r_codes()
                codes_equal = ref_codes.shape == codes.shape and bool(torch.equal(ref_codes, codes))
            if ours.can_stream:
                for frames in opts.stream_frames:
                    s_enc, s_dec = stream_coders(ours, n_q, x, frames)
                    fns["stream" if frames == 1 else f"stream_x{frames}"] = s_enc if op == "encode" else s_dec
                floor, megabytes = weight_read_floor(ours, n_q, op, x.shape[-1] // ours.hop_length)
                fns["stream_floor"] = floor
                for streams in opts.streams:
                    m_enc, m_dec = stream_batch_coders(ours, n_q, x, streams)
                    fns[f"streams_{streams}"] = m_enc if op == "encode" else m_dec
            if family == "encodec24" and not opts.no_onnx:
                o_enc, o_dec = onnx_coders(ours, n_q, x, folder, opts.threads)
                fns["onnxruntime"] = o_enc if op == "encode" else o_dec
            medians = interleaved(
                fns, opts.repeats, clock=time.process_time if opts.clock == "cpu" else time.perf_counter
            )
            ref = medians.get("reference")
            for variant, sec in medians.items():
                streams = int(variant.removeprefix("streams_")) if variant.startswith("streams_") else 1
                audio_seconds = streams * x.shape[-1] / ours.sample_rate
                row = {
                    "family": family,
                    "kbps": kbps,
                    "n_q": n_q,
                    "op": op,
                    "device": "cpu",
                    "threads": opts.threads,
                    "batch": streams,
                    "variant": variant,
                    "audio_seconds": audio_seconds,
                    "seconds": sec,
                    "rtf": audio_seconds / sec,  # all streams together
                    "per_stream_rtf": audio_seconds / sec / streams,
                    "vs_ref": None if ref is None else streams * ref / sec,  # per audio second
                    "vs_whole": streams * medians["ours"] / sec if variant.startswith("stream") else None,
                    "codes_equal_reference": codes_equal,
                }
                if variant == "stream_floor":
                    row["weight_megabytes"] = megabytes
                rows.append(row)
                print(format_row(row), flush=True)
    if torch.cuda.is_available() and not opts.no_gpu:
        rows += bench_gpu(family, official, ours, points, x)
    if ours.can_stream:
        print(f"{family}: streaming latency (architectural) {1000 * ours.stream_latency_seconds:.1f} ms")
    return rows


def bench_gpu(family: str, official: Any, ours: Codec, points: dict[float, int], x: torch.Tensor) -> list[dict]:
    rows = []
    device = torch.device("cuda")
    ours = ours.to(device)
    if official is not None:
        official = official.to(device)
    sync = torch.cuda.synchronize
    for batch in (1, 8):
        xb = x.to(device).repeat(batch, 1, 1)
        for kbps, n_q in points.items():
            for op in ("encode", "decode"):
                torch.cuda.reset_peak_memory_stats()
                enc, dec, _ = ours_coders(ours, n_q, xb)
                fns = {"ours": enc if op == "encode" else dec}
                if official is not None:
                    r_enc, r_dec, _ = reference_coders(family, official, n_q, xb)
                    fns["reference"] = r_enc if op == "encode" else r_dec
                medians = interleaved(fns, 5, sync)
                ref = medians.get("reference")
                for variant, sec in medians.items():
                    row = {
                        "family": family,
                        "kbps": kbps,
                        "n_q": n_q,
                        "op": op,
                        "device": torch.cuda.get_device_name(),
                        "threads": None,
                        "batch": batch,
                        "variant": variant,
                        "audio_seconds": batch * x.shape[-1] / ours.sample_rate,
                        "seconds": sec,
                        "rtf": batch * x.shape[-1] / ours.sample_rate / sec,
                        "vs_ref": None if ref is None else ref / sec,
                        "vs_whole": None,
                        "codes_equal_reference": None,
                        "peak_memory_gb": torch.cuda.max_memory_allocated() / 1e9,
                    }
                    rows.append(row)
                    print(format_row(row), flush=True)
    ours.to("cpu")
    if official is not None:
        official.to("cpu")
    return rows


HEADER = (
    f"{'family':<16}{'kbps':>6}{'op':>8}{'device':>8}{'B':>3} {'variant':<16}{'RTF':>9}{'vs_ref':>8}{'vs_whole':>9}"
)


def format_row(row: dict[str, Any]) -> str:
    vs_ref = "-" if row["vs_ref"] is None else f"{row['vs_ref']:.2f}"
    vs_whole = "-" if row["vs_whole"] is None else f"{row['vs_whole']:.2f}"
    device = "cpu" if row["device"] == "cpu" else "gpu"
    return (
        f"{row['family']:<16}{row['kbps']:>6g}{row['op']:>8}{device:>8}{row['batch']:>3} {row['variant']:<16}"
        f"{row['rtf']:>9.2f}{vs_ref:>8}{vs_whole:>9}"
    )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--families", nargs="*", default=list(FAMILIES), choices=list(FAMILIES), help="none: MuCodec rows only"
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=None, help="audio length (default per family)")
    parser.add_argument("--no_gpu", action="store_true")
    parser.add_argument("--no_onnx", action="store_true")
    parser.add_argument(
        "--stream_frames", type=int, nargs="+", default=[1, 4], help="code frames per streaming call (rows)"
    )
    parser.add_argument(
        "--streams", type=int, nargs="*", default=[1, 4, 16, 64], help="concurrent one-frame streams (rows)"
    )
    parser.add_argument(
        "--clock", choices=["wall", "cpu"], default="wall", help="cpu: CPU seconds of this process (shared machines)"
    )
    parser.add_argument("--mucodec_checkpoint", default=None, help="a bundled MuCodec (RTF split, Euler steps)")
    parser.add_argument("--mucodec_audio", default=None, help="held-out audio folder: quality per Euler step count")
    parser.add_argument("--mucodec_steps", type=int, nargs="+", default=[50, 25, 10], help="Euler steps (rows)")
    parser.add_argument("--mucodec_seconds", type=float, default=10.24, help="audio timed (noise)")
    parser.add_argument("--mucodec_eval_seconds", type=float, default=2.56, help="held-out windows (quality)")
    parser.add_argument("--mucodec_windows_per_file", type=int, default=4, help="held-out windows per file")
    parser.add_argument("--mucodec_real", action="store_true", help="also the real-size MuCodec, random weights")
    parser.add_argument("--mucodec_real_seconds", type=float, default=5.12, help="real size: audio = one window")
    parser.add_argument("--mucodec_real_steps", type=int, default=1, help="real size: Euler steps timed")
    parser.add_argument("--out", default=str(REPO / "outputs" / "benchmarks" / "inference_rtf.json"))
    opts = parser.parse_args(argv)
    torch.set_num_threads(opts.threads)
    load_start = os.getloadavg()
    print(
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, load {load_start[0]:.2f}; "
        f"{opts.threads} thread(s); torch {torch.__version__}"
    )
    print(HEADER)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for family in opts.families:
            rows += bench_family(family, opts, Path(tmp))
    mucodec = bench_mucodec(opts) if opts.mucodec_checkpoint or opts.mucodec_real else {}
    rows += mucodec.pop("rows", [])
    results = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": {
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        },
        "clock": opts.clock,
        "load_average_start": load_start,
        "load_average_end": os.getloadavg(),
        "torch": torch.__version__,
        "paper_encodec_24khz_6kbps_rtf": PAPER,
        "rows": rows,
        "mucodec": mucodec,
    }
    ratios: dict[tuple[str, str], list[float]] = {}
    for row in rows:
        if row["variant"] == "ours" and row["vs_ref"] is not None and row["device"] == "cpu":
            ratios.setdefault((row["family"], row["op"]), []).append(row["vs_ref"])
    for (family, op), values in ratios.items():
        print(f"{family} {op}: ours / reference {min(values):.2f}-{max(values):.2f} over the bitrates")
    print(
        f"load average at the end {results['load_average_end'][0]:.2f}; EnCodec paper (24 kHz, 6 kbps, one "
        f"thread, other machine): RTF encode {PAPER['encode']}, decode {PAPER['decode']}"
    )
    out = Path(opts.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"wrote {out}")
    return results


if __name__ == "__main__":
    main()
