"""``codecplatform tokenize``: every item of a corpus -> its codes, stored beside its lhotse cut.

    codecplatform tokenize --checkpoint model.ckpt (--manifest cuts.jsonl.gz | --audio_dir DIR) --out DIR
        [--bandwidth KBPS | --n_q N] [--num_workers N] [--chunk_seconds S] [--batch_seconds S] [--max_batch N]
        [--streams N] [--device cuda]

The output folder (docs/tokenize.md):

* ``tokenize.json``: what made the codes (checkpoint sha256, codebooks, rates); a second run into the
  same folder must match it (chunk and batch sizes and workers may change);
* ``cuts.jsonl``: one lhotse cut per finished item, custom fields ``codes`` (a ``TemporalArray``
  over ``codes/<key>.npy``: (frames, codebooks) int16, int32 for codebooks over 32768 entries; time
  first as lhotse features, ``temporal_dim=0``), ``codes_samples`` (samples at the codec's rate the
  codes decode to) and, for normalizing codecs, ``codes_scale`` (one input scale per segment);
* ``failed.txt``: the items of the last run that failed (also one stderr line each, as they fail).

Resumable: an item's array is written to a temporary file and renamed, then its cut is appended to
``cuts.jsonl``; a second run skips the items listed there whose array exists. A failing item is
named in one line and the run goes on (exit status 1 at the end).

Which codes: exactly those ``codecplatform encode`` writes for the item at the same settings
(:meth:`AudioCodec.encode_chunked`): an item of at most ``--chunk_seconds`` is coded whole (=
``codec.encode`` of the item; several share a network call through ``encode(x, lengths=...)``, which
gives every item exactly its own codes); a longer one in chunks of ``--chunk_seconds`` by the
codec's own rule (:mod:`codecplatform.models.chunking`: segmented and streaming codecs equal
``encode`` of the whole, streaming ones except a partial last frame; others, such as DAC, with
context on each side: by default the encoder's reach (:func:`encoder_reach`), which makes the codes
those of ``encode`` of the whole, up to floating-point rounding). Audio is decoded and resampled as the shard writer
does (:mod:`datamodules.shards`: soundfile blocks through a streaming soxr resampler; channels mapped
as for training).

Work: items are sorted longest first and packed into batches (the short ones up to ``--batch_seconds``
of padded audio and ``--max_batch`` items a call; the longer ones of a codec that streams up to
``--streams`` items, coded as concurrent streams by :meth:`Codec.encode_chunked_many`, the same codes
as one at a time); ``--num_workers`` processes decode the batches. On the CPU each worker also
encodes its batches with its own copy of the model (one torch thread each by default: processes use
the cores better than intra-op threads) and short items are coded one at a time (``--max_batch 1``:
on a CPU a padded batch is no faster, benchmarks/RESULTS.md); on CUDA the main process encodes what
the workers decoded, in batches.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import re
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from codecplatform.bitstream import file_sha256
from codecplatform.inference import (
    DEFAULT_CONTEXT_SECONDS,
    _chunk_samples,
    _context_frames,
    _device,
    choose_n_q,
    keep_freed_memory,
)
from codecplatform.models.base import AudioCodec

if TYPE_CHECKING:
    from codecplatform.models.codec import Codec

PROG = "codecplatform tokenize"
USAGE_ERROR, FAILURE = 2, 1
DEFAULT_BATCH_SECONDS = 20.0
#: chunk length of codecs that stream or segment (no context to recompute: short chunks stay in cache)
#: and of codecs chunked with context (each chunk recomputes 2 x context): measured, docs/tokenize.md
CHUNK_SECONDS_CONTEXT_FREE, CHUNK_SECONDS_WITH_CONTEXT = 5.0, 20.0
DEFAULT_MAX_BATCH = 16
#: long items of a codec that streams coded together (measured, docs/tokenize.md), and at most this
#: much audio in one such batch (its decoded audio is held in memory)
DEFAULT_STREAMS, STREAM_BATCH_SECONDS = 8, 3600.0
SETTINGS_FILE, CUTS_FILE, CODES_DIR, FAILED_FILE = "tokenize.json", "cuts.jsonl", "codes", "failed.txt"
FORMAT = 1
#: settings a resumed run must share with the first (the others do not change the codes)
IDENTITY = ("format", "checkpoint_sha256", "n_q", "sample_rate", "channels", "hop_length", "context_frames")


# ------------------------------------------------------------------------------------------ items
@dataclass
class Item:
    """One cut to tokenize; ``source`` names it in messages (its file, else the cut id)."""

    id: str
    cut: Any  # lhotse Cut (picklable: sent to the workers)
    source: str
    seconds: float


@dataclass
class Coded:
    """An item's codes (frames, K), the scales of a normalizing codec (S,) and its length in samples."""

    item: Item
    codes: np.ndarray
    scale: np.ndarray | None
    samples: int


@dataclass
class Decoded:
    item: Item
    audio: np.ndarray  # (C, N) float32 at the codec's rate


@dataclass
class Failed:
    item: Item
    message: str


@dataclass
class CodingPlan:
    """How the worker codes: codebooks, chunk length (samples, a multiple of the hop), context
    frames of context-chunked codecs, the device, whether several short items share a call."""

    n_q: int
    chunk_samples: int
    context_frames: int
    device: str = "cpu"
    batched: bool = True
    streams: int = 1  # items longer than a chunk that share calls (encode_chunked_many); 1: one at a time


def _one_line(text: object, limit: int = 300) -> str:
    return " ".join(str(text).split())[:limit]


def _source_of(cut: Any) -> str:
    rec = cut.recording if getattr(cut, "has_recording", False) else None
    if rec is not None and len(rec.sources) == 1 and rec.sources[0].type == "file":
        return str(rec.sources[0].source)
    return str(cut.id)


def items_from_manifest(path: Path) -> list[Item]:
    """The cuts of a lhotse cut or recording manifest (a recording becomes one whole cut);
    ValueError naming the file when it is neither."""
    from lhotse import CutSet, RecordingSet, load_manifest

    try:
        manifest = load_manifest(path)
    except Exception as error:
        raise ValueError(f"--manifest {path}: not a readable lhotse manifest ({_one_line(error, 200)})") from None
    if isinstance(manifest, RecordingSet):  # one whole cut per recording, cut id = recording id
        manifest = CutSet.from_cuts(recording.to_cut() for recording in manifest)
    if not isinstance(manifest, CutSet):
        raise ValueError(f"--manifest {path} holds {type(manifest).__name__}, not cuts or recordings")
    return [Item(cut.id, cut, _source_of(cut), float(cut.duration)) for cut in manifest]


def items_from_folder(folder: Path) -> tuple[list[Item], list[Failed]]:
    """Whole-file cuts of the audio under ``folder`` (ids as ``codecplatform prepare`` gives them:
    the relative path without extension), reading headers only; unreadable files -> Failed."""
    import soundfile as sf
    from lhotse import MonoCut, MultiCut, Recording
    from lhotse.audio import AudioSource

    from datamodules.manifests import audio_files

    items: list[Item] = []
    failed: list[Failed] = []
    for path, rec_id in audio_files(folder):
        try:
            info = sf.info(str(path))
            if info.frames < 1:
                raise ValueError("no audio samples")
            recording = Recording(
                rec_id,
                [AudioSource("file", list(range(info.channels)), str(path))],
                info.samplerate,
                info.frames,
                info.frames / info.samplerate,
            )
        except Exception as error:  # named, not fatal
            failed.append(Failed(Item(rec_id, None, str(path), 0.0), _one_line(error)))
            continue
        cls, channel = (MonoCut, 0) if info.channels == 1 else (MultiCut, list(range(info.channels)))
        cut = cls(rec_id, 0.0, recording.duration, channel, recording=recording)
        items.append(Item(rec_id, cut, str(path), recording.duration))
    return items, failed


def plan_batches(
    items: Sequence[Item],
    chunk_seconds: float,
    batch_seconds: float,
    max_batch: int,
    streams: int = 1,
    workers: int = 1,
) -> list[list[Item]]:
    """Items longest first. Items longer than ``chunk_seconds`` (coded in chunks) in consecutive
    groups of at most ``streams`` items and :data:`STREAM_BATCH_SECONDS` of audio, as many groups
    as whole rounds of ``workers`` need, sizes as equal as that allows (so that the workers finish
    together); shorter items packed while (items x the batch's longest) <= ``batch_seconds`` and
    items <= ``max_batch``."""
    ordered = sorted(items, key=lambda i: (-i.seconds, i.id))
    long = [i for i in ordered if i.seconds > chunk_seconds]
    batches: list[list[Item]] = []
    streams, workers = max(1, streams), max(1, workers)
    groups = min(len(long), -(-len(long) // (streams * workers)) * workers)  # whole rounds of the workers
    sizes = [len(long) // groups + (k < len(long) % groups) for k in range(groups)] if long else []
    while long:
        size = sizes.pop(0) if sizes else streams
        group = [long.pop(0)]
        while long and len(group) < size and sum(i.seconds for i in group) + long[0].seconds <= STREAM_BATCH_SECONDS:
            group.append(long.pop(0))
        batches.append(group)
    current: list[Item] = []
    for item in ordered:
        if item.seconds > chunk_seconds:
            continue
        if current and ((len(current) + 1) * current[0].seconds > batch_seconds or len(current) >= max_batch):
            batches.append(current)
            current = []
        current.append(item)
    return batches + ([current] if current else [])


# -------------------------------------------------------------------------------- decode and code
def decode_item(item: Item, sample_rate: int, channels: int) -> np.ndarray:
    """(C, N) float32 at ``sample_rate`` with ``channels`` (the shard writer's decoding)."""
    from datamodules.shards import _decode

    audio, _ = _decode(item.cut, sample_rate, channels, item.source)
    if audio.shape[1] == 0:
        raise ValueError("no audio samples")
    if not np.isfinite(audio).all():
        raise ValueError("NaN or infinite samples")
    return audio


def default_chunk_seconds(codec: AudioCodec) -> float:
    """Chunk length for ``codec``: short for codecs that segment or stream, longer for codecs
    whose chunks carry context (:data:`CHUNK_SECONDS_CONTEXT_FREE`)."""
    context_free = getattr(codec, "segment_length", None) is not None or getattr(codec, "can_stream", False)
    return CHUNK_SECONDS_CONTEXT_FREE if context_free else CHUNK_SECONDS_WITH_CONTEXT


def encoder_reach(codec: AudioCodec) -> int | None:
    """Input samples beyond a code frame's own hop that reach it, on either side (the larger), for an
    encoder made of convolutions and per-step activations only: summed over its convolutions in
    order, each one's left or right padding times the stride before it. None for any other layer
    (an LSTM, a time-wide norm, a global statistic such as GRN: no finite reach)."""
    from codecplatform.models.batching import _STEPWISE
    from codecplatform.nn.conv import StreamableConv1d

    left = right = 0
    jump = 1

    def visit(module: torch.nn.Module) -> bool:
        nonlocal left, right, jump
        if isinstance(module, StreamableConv1d):
            if module.norm_type == "time_layer_norm":
                return False
            pad_left = module.padding_total if module.causal else module.padding_total - module.padding_total // 2
            left += pad_left * jump
            right += (module.kernel_size_eff - 1 - pad_left) * jump
            jump *= module.stride
            return True
        children = [child for name, child in module.named_children() if name != "parametrizations"]
        if not children:
            return isinstance(module, _STEPWISE)
        return all(visit(child) for child in children)

    encoder = getattr(codec, "encoder", None)
    if encoder is None or not visit(encoder) or jump != codec.samples_per_frame:
        return None
    return max(left, right)


def default_context_frames(codec: AudioCodec) -> int | None:
    """Context frames on each side of a chunk that make context-chunked coding exact: the
    encoder's reach (:func:`encoder_reach`) in frames, plus one; None when it has no finite reach."""
    reach = encoder_reach(codec)
    return None if reach is None else math.ceil(reach / codec.samples_per_frame) + 1


def codes_dtype(codec: AudioCodec) -> np.dtype:
    return np.dtype(np.int16) if max(codec.codebook_sizes) <= 32768 else np.dtype(np.int32)


def _code_one(codec: AudioCodec, decoded: Decoded, plan: CodingPlan) -> Coded | Failed:
    audio = torch.from_numpy(decoded.audio)
    n = audio.shape[-1]
    try:
        encoded = codec.encode_chunked(
            lambda a, b: audio[:, a:b], n, plan.n_q, plan.chunk_samples, plan.context_frames, plan.device
        )
    except (RuntimeError, ValueError) as error:
        return Failed(decoded.item, _one_line(error))
    scale = None if encoded.scale is None else encoded.scale[0, :, 0].numpy().astype(np.float32)
    return Coded(decoded.item, encoded.codes[0].T.numpy().astype(codes_dtype(codec)), scale, n)


def _code_together(codec: AudioCodec, group: list[Decoded], plan: CodingPlan) -> list[Coded]:
    """Several items in one ``encode(x, lengths=...)`` call: each gets its codes alone."""
    lengths = [d.audio.shape[-1] for d in group]
    x = torch.zeros(len(group), codec.channels, max(lengths))
    for b, d in enumerate(group):
        x[b, :, : lengths[b]] = torch.from_numpy(d.audio)
    encoded = codec.encode(x.to(plan.device), n_q=plan.n_q, lengths=lengths).to("cpu")
    out = []
    for b, d in enumerate(group):
        segments = codec.segments(lengths[b])
        frames = sum(math.ceil(size / codec.hop_length) for _, size in segments)
        codes = encoded.codes[b, :, :frames].T.numpy().astype(codes_dtype(codec))
        scale = None if encoded.scale is None else encoded.scale[b, : len(segments), 0].numpy().astype(np.float32)
        out.append(Coded(d.item, codes, scale, lengths[b]))
    return out


def _code_streams(codec: Codec, group: list[Decoded], plan: CodingPlan) -> list[Coded]:
    """Several items longer than a chunk through ``encode_chunked_many``: each gets its codes alone."""
    signals = [torch.from_numpy(d.audio) for d in group]
    encoded = codec.encode_chunked_many(signals, plan.n_q, plan.chunk_samples, plan.context_frames, plan.device)
    dtype = codes_dtype(codec)
    return [Coded(d.item, e.codes[0].T.numpy().astype(dtype), None, e.length) for d, e in zip(group, encoded)]


def code_items(codec: AudioCodec, decoded: list[Decoded], plan: CodingPlan) -> list[Coded | Failed]:
    """Codes of every decoded item: longer than a chunk, chunked (several as concurrent streams
    when ``plan.streams`` and the codec streams); the rest in one batched call when the codec takes
    ``lengths``. A failing shared call is retried item by item, to name the item."""
    from codecplatform.models.codec import Codec

    short = [d for d in decoded if d.audio.shape[-1] <= plan.chunk_samples]
    long = [d for d in decoded if d.audio.shape[-1] > plan.chunk_samples]
    results: list[Coded | Failed] = []
    if len(long) > 1 and plan.streams > 1 and isinstance(codec, Codec):
        try:
            results, long = list(_code_streams(codec, long, plan)), []
        except (RuntimeError, ValueError):
            pass
    results += [_code_one(codec, d, plan) for d in long]
    if len(short) > 1 and plan.batched and isinstance(codec, Codec):
        try:
            return results + _code_together(codec, short, plan)
        except (RuntimeError, ValueError):
            pass
    return results + [_code_one(codec, d, plan) for d in short]


def decode_batch(batch: list[Item], sample_rate: int, channels: int) -> list[Decoded | Failed]:
    out: list[Decoded | Failed] = []
    for item in batch:
        try:
            out.append(Decoded(item, decode_item(item, sample_rate, channels)))
        except Exception as error:  # any decoder failure names the item; the others go on
            out.append(Failed(item, _one_line(error)))
    return out


_WORKER: dict[str, Any] = {}


def _start_worker(job: dict[str, Any], codec: AudioCodec | None = None) -> None:
    """Worker set-up: torch threads, in a worker process glibc keeping freed memory
    (:func:`keep_freed_memory`), and on the CPU its own copy of the codec."""
    if codec is None:  # a worker process of its own (the pool's initializer)
        keep_freed_memory()
    if job["threads"]:
        torch.set_num_threads(job["threads"])
    _WORKER.clear()
    _WORKER.update(job)
    if job["encode"]:
        _WORKER["codec"] = codec if codec is not None else load_codec(job["checkpoint"], "cpu")


def _work(batch: list[Item]) -> list[Coded | Decoded | Failed]:
    """One batch in a worker: decode, and (CPU) code. Never raises: failures are per item."""
    try:
        decoded = decode_batch(batch, _WORKER["sample_rate"], _WORKER["channels"])
        if not _WORKER["encode"]:
            return decoded
        ok = [d for d in decoded if isinstance(d, Decoded)]
        return [d for d in decoded if isinstance(d, Failed)] + code_items(_WORKER["codec"], ok, _WORKER["plan"])
    except Exception as error:
        return [Failed(item, _one_line(f"{type(error).__name__}: {error}")) for item in batch]


def load_codec(checkpoint: str | Path, device: str | torch.device) -> AudioCodec:
    return AudioCodec.from_checkpoint(checkpoint, map_location="cpu").to(device).prepare_for_inference()


def run_batches(
    batches: Sequence[list[Item]],
    job: dict[str, Any],
    num_workers: int,
    codec: AudioCodec | None,
) -> Iterator[Coded | Failed]:
    """Results of every batch, as they finish. ``job["encode"]``: the workers code (CPU); else they
    decode and ``codec`` (the main process's) codes. ``num_workers`` 0: all in this process."""

    def finish(results: list[Coded | Decoded | Failed]) -> list[Coded | Failed]:
        if job["encode"]:
            return results  # type: ignore[return-value]
        ok = [r for r in results if isinstance(r, Decoded)]
        return [r for r in results if isinstance(r, Failed)] + code_items(codec, ok, job["plan"])

    if num_workers == 0:
        _start_worker({**job, "threads": 0}, codec)
        for batch in batches:
            yield from finish(_work(batch))
        return
    import multiprocessing

    context = multiprocessing.get_context("spawn")  # no fork of a process that holds torch threads
    queue = iter(batches)
    with ProcessPoolExecutor(num_workers, mp_context=context, initializer=_start_worker, initargs=(job,)) as pool:
        pending: set[Future] = set()

        def top_up() -> None:  # a bounded number in flight: decoded audio waits in memory
            while len(pending) < 2 * num_workers and (batch := next(queue, None)) is not None:
                pending.add(pool.submit(_work, batch))

        top_up()
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                yield from finish(future.result())
            top_up()


# ------------------------------------------------------------------------------------------ output
def storage_key(item_id: str) -> str:
    """``ab/<id>.npy``: a safe file name (unsafe characters or a long id: with a hash of the id),
    in one of 256 subfolders."""
    digest = hashlib.sha1(item_id.encode()).hexdigest()
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", item_id)
    if safe != item_id or len(safe) > 150 or safe.startswith("."):
        safe = f"{safe[:120]}-{digest[:12]}"
    return f"{digest[:2]}/{safe}.npy"


def read_done(out: Path) -> set[str]:
    """Ids of the items in ``out/cuts.jsonl`` whose array exists. A line that does not parse (a run
    stopped while writing it) or whose array is missing is dropped from the file."""
    path = out / CUTS_FILE
    if not path.is_file():
        return set()
    kept, done, dropped = [], set(), 0
    for line in path.read_text().splitlines():
        try:
            data = json.loads(line)
            key = data["custom"]["codes"]["array"]["storage_key"]
        except (ValueError, KeyError, TypeError):
            dropped += 1
            continue
        if not (out / CODES_DIR / key).is_file() or data["id"] in done:
            dropped += 1
            continue
        kept.append(line)
        done.add(data["id"])
    if dropped:
        tmp = path.with_name(f".{CUTS_FILE}.tmp")
        tmp.write_text("".join(f"{line}\n" for line in kept))
        os.replace(tmp, path)
    return done


def check_output(out: Path, settings: dict[str, Any]) -> None:
    """``out`` must be a new folder or one written with the same :data:`IDENTITY` settings;
    ValueError naming the first difference (checked before anything is written)."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file, not a folder")
    path = out / SETTINGS_FILE
    if not path.is_file():
        if out.is_dir() and (out / CUTS_FILE).exists():
            raise ValueError(f"--out {out} holds {CUTS_FILE} without {SETTINGS_FILE}: choose another folder")
        return
    try:
        saved = json.loads(path.read_text())
    except ValueError:
        raise ValueError(f"{path} is not valid JSON: remove the folder or choose another --out") from None
    for key in IDENTITY:
        if saved.get(key) != settings[key]:
            raise ValueError(
                f"--out {out} holds codes made with {key}={saved.get(key)!r}, this run gives {settings[key]!r}: "
                "choose another --out (or the same settings to resume)"
            )


class Store:
    """Writes finished items: the array (temporary file, renamed), then its cut line."""

    def __init__(self, out: Path, codec: AudioCodec):
        self.out, self.codes_dir = out, (out / CODES_DIR).resolve()
        self.frame_shift = codec.samples_per_frame / codec.sample_rate
        self.manifest = open(out / CUTS_FILE, "a")  # noqa: SIM115 (closed by close())

    def add(self, coded: Coded) -> None:
        from lhotse.array import Array, TemporalArray
        from lhotse.utils import fastcopy

        key = storage_key(coded.item.id)
        path = self.codes_dir / key
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        with open(tmp, "wb") as file:
            np.save(file, coded.codes, allow_pickle=False)
        os.replace(tmp, path)
        cut = coded.item.cut
        array = Array("numpy_files", str(self.codes_dir), key, list(coded.codes.shape))
        custom = {
            **(cut.custom or {}),
            "codes": TemporalArray(array, temporal_dim=0, frame_shift=self.frame_shift, start=float(cut.start)),
            "codes_samples": int(coded.samples),
        }
        if coded.scale is not None:
            custom["codes_scale"] = [float(s) for s in coded.scale]
        self.manifest.write(json.dumps(fastcopy(cut, custom=custom).to_dict()) + "\n")
        self.manifest.flush()

    def close(self) -> None:
        self.manifest.close()


# -------------------------------------------------------------------------------------------- CLI
def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description="Tokenize a corpus: codes of every item, stored beside its lhotse cuts (resumable)."
    )
    parser.add_argument("--checkpoint", required=True, help="codec checkpoint (codecplatform fit or import-checkpoint)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--manifest", default=None, help="lhotse cut or recording manifest (.jsonl or .jsonl.gz)")
    source.add_argument("--audio_dir", default=None, help="a folder of audio files (searched recursively)")
    parser.add_argument("--out", required=True, help="output folder (created; a second run resumes it)")
    rate = parser.add_mutually_exclusive_group()
    rate.add_argument("--bandwidth", type=float, default=None, help="kbps, one of the model's (default: the highest)")
    rate.add_argument("--n_q", type=int, default=None, help="number of codebooks instead of --bandwidth")
    parser.add_argument(
        "--num_workers",
        type=int,
        default=None,
        help="processes decoding (on the CPU also coding) batches; 0: all in this process "
        "(default: the cores, at most 8)",
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads per coding process (default: cores / workers)"
    )
    parser.add_argument(
        "--chunk_seconds",
        type=float,
        default=None,
        help=f"longer items are coded in chunks of this (default {CHUNK_SECONDS_CONTEXT_FREE:g} for codecs that stream "
        f"or segment, {CHUNK_SECONDS_WITH_CONTEXT:g} for codecs chunked with context); bounds memory",
    )
    parser.add_argument(
        "--batch_seconds",
        type=float,
        default=DEFAULT_BATCH_SECONDS,
        help=f"padded audio per network call of shorter items (default {DEFAULT_BATCH_SECONDS:g})",
    )
    parser.add_argument(
        "--max_batch", type=int, default=None, help=f"items per call (default {DEFAULT_MAX_BATCH}; 1 on the CPU)"
    )
    parser.add_argument(
        "--streams",
        type=int,
        default=None,
        help=f"items longer than a chunk coded together as concurrent streams, for codecs that stream "
        f"(default {DEFAULT_STREAMS}; 1: one at a time); the same codes either way",
    )
    parser.add_argument(
        "--context_seconds",
        type=float,
        default=None,
        help="context on each side of a chunk for codecs that neither stream nor segment (default: the "
        f"encoder's reach when it is made of convolutions only, DAC 44.1 kHz 0.12 s; else {DEFAULT_CONTEXT_SECONDS})",
    )
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    return parser


def _fail(message: object, status: int = USAGE_ERROR) -> int:
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return status


def _report_failed(failed: Failed) -> None:
    print(f"{PROG}: failed: {failed.item.source}: {failed.message}", file=sys.stderr, flush=True)


def _check_numbers(args: argparse.Namespace) -> str | None:
    if args.num_workers is not None and args.num_workers < 0:
        return f"--num_workers must be >= 0, got {args.num_workers}"
    if args.threads is not None and args.threads < 1:
        return f"--threads must be >= 1, got {args.threads}"
    if not args.batch_seconds > 0:
        return f"--batch_seconds must be > 0, got {args.batch_seconds}"
    if args.chunk_seconds is not None and not args.chunk_seconds > 0:
        return f"--chunk_seconds must be > 0, got {args.chunk_seconds}"
    if args.max_batch is not None and args.max_batch < 1:
        return f"--max_batch must be >= 1, got {args.max_batch}"
    if args.streams is not None and args.streams < 1:
        return f"--streams must be >= 1, got {args.streams}"
    if args.context_seconds is not None and not args.context_seconds >= 0:
        return f"--context_seconds must be >= 0, got {args.context_seconds}"
    return None


def tokenize_main(argv: list[str] | None = None) -> int:
    """``codecplatform tokenize``; returns the exit status (0, 1 some items failed, 2 usage error).
    Every usage error is one line, given before the output folder is created."""
    parser = _parser()
    try:
        args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    except SystemExit as exit_:  # argparse printed the message (or the help)
        return int(exit_.code or 0)
    problem = _check_numbers(args)
    if problem:
        return _fail(problem)
    checkpoint, out = Path(args.checkpoint), Path(args.out)
    if not checkpoint.is_file():
        return _fail(f"checkpoint not found: {checkpoint}")
    if args.manifest is not None and not Path(args.manifest).is_file():
        return _fail(f"--manifest {args.manifest}: no such file")
    if args.audio_dir is not None and not Path(args.audio_dir).is_dir():
        return _fail(f"--audio_dir {args.audio_dir}: no such folder")
    try:
        device = _device(args.device)
        codec = load_codec(checkpoint, device)
        n_q = choose_n_q(codec, args.bandwidth, args.n_q)
        if args.context_seconds is not None:
            context_frames = _context_frames(codec, args.context_seconds)
        else:
            context_frames = default_context_frames(codec) or _context_frames(codec, DEFAULT_CONTEXT_SECONDS)
        if args.manifest is not None:
            items, unreadable = items_from_manifest(Path(args.manifest)), []
        else:
            items, unreadable = items_from_folder(Path(args.audio_dir))
        settings = {
            "format": FORMAT,
            "checkpoint": str(checkpoint.resolve()),
            "checkpoint_sha256": file_sha256(checkpoint).hex(),
            "n_q": n_q,
            "kbps": round(codec.bitrate(n_q), 4),
            "sample_rate": codec.sample_rate,
            "channels": codec.channels,
            "hop_length": codec.samples_per_frame,
            "frame_rate": codec.frame_rate,
            "codebook_sizes": list(codec.codebook_sizes[:n_q]),
            "context_frames": context_frames,
            "dtype": codes_dtype(codec).name,
            "layout": "codes/<key>.npy: (frames, codebooks); cuts.jsonl: custom codes, codes_samples, codes_scale",
        }
        check_output(out, settings)
    except ValueError as error:  # CheckpointError included
        return _fail(error)
    if not items and not unreadable:
        return _fail(f"no audio items in {args.manifest or args.audio_dir}")

    cpu = device.type == "cpu"
    workers = min(_cores(), 8) if args.num_workers is None else args.num_workers
    max_batch = args.max_batch or (1 if cpu else DEFAULT_MAX_BATCH)
    chunk_seconds = args.chunk_seconds or default_chunk_seconds(codec)
    plan = CodingPlan(
        n_q,
        _chunk_samples(codec, chunk_seconds),
        context_frames,
        str(device) if not (cpu and workers) else "cpu",
        batched=max_batch > 1,
        streams=(args.streams or DEFAULT_STREAMS) if getattr(codec, "can_stream", False) else 1,
    )
    out.mkdir(parents=True, exist_ok=True)
    (out / SETTINGS_FILE).write_text(json.dumps(settings, indent=1) + "\n")
    done = read_done(out)
    todo = [item for item in items if item.id not in done]
    encode_in_workers = cpu and workers > 0
    job = {
        "checkpoint": str(checkpoint),
        "sample_rate": codec.sample_rate,
        "channels": codec.channels,
        "plan": plan,
        "encode": encode_in_workers or workers == 0,
        "threads": args.threads or (max(1, _cores() // workers) if encode_in_workers else 1),
    }
    if workers == 0 and args.threads:
        torch.set_num_threads(args.threads)
    print(
        f"tokenizing {len(todo)} items ({sum(i.seconds for i in todo) / 3600:.3g} h) with {n_q} codebooks "
        f"({codec.bitrate(n_q):.3g} kbps) -> {out}; {len(items) - len(todo)} done before; "
        f"{workers} worker process(es)" + (", coding in the workers" if encode_in_workers else ""),
        flush=True,
    )
    failed = list(unreadable)
    for problem_item in unreadable:
        _report_failed(problem_item)
    store = Store(out, codec)
    began, last_report, seconds, finished = time.perf_counter(), time.perf_counter(), 0.0, 0
    try:
        results = run_batches(
            plan_batches(todo, chunk_seconds, args.batch_seconds, max_batch, plan.streams, max(1, workers)),
            job,
            workers,
            None if encode_in_workers else codec,
        )
        if encode_in_workers:
            del codec  # the workers hold their own copies
        for result in results:
            if isinstance(result, Failed):
                failed.append(result)
                _report_failed(result)
                continue
            store.add(result)
            finished += 1
            seconds += result.samples / settings["sample_rate"]
            if time.perf_counter() - last_report > 30:
                last_report = time.perf_counter()
                print(f"  {finished}/{len(todo)} items, {_rate(seconds, last_report - began)}", flush=True)
    except BrokenProcessPool:
        return _fail(
            "a worker process died (out of memory?); finished items are kept: run again to resume "
            "(fewer --num_workers or --streams, or a smaller --batch_seconds, need less memory)",
            FAILURE,
        )
    finally:
        store.close()
    elapsed = time.perf_counter() - began
    _write_failed(out, failed)
    print(
        f"tokenized {finished} items ({seconds / 3600:.3g} h of audio) in {elapsed:.1f} s: "
        f"{_rate(seconds, elapsed)}; {len(items) - len(todo)} skipped (done before); {len(failed)} failed"
        + (f" (listed in {out / FAILED_FILE})" if failed else "")
    )
    return FAILURE if failed else 0


def _rate(audio_seconds: float, wall_seconds: float) -> str:
    return f"{audio_seconds / max(wall_seconds, 1e-9):.1f} audio hours per hour"


def _write_failed(out: Path, failed: Iterable[Failed]) -> None:
    path = out / FAILED_FILE
    lines = [f"{f.item.source}\t{f.message}\n" for f in failed]
    if not lines:
        path.unlink(missing_ok=True)
        return
    tmp = path.with_name(f".{FAILED_FILE}.tmp")
    tmp.write_text("".join(lines))
    os.replace(tmp, path)
