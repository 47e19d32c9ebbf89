"""Do MuCodec's codes carry the music? Every stage is trained (tiny configs, chained by checkpoint
paths) on excerpts of training tracks; then on excerpts of held-out tracks (whole tracks, never trained
on) the same run compares

  (a) the trained chain (MuEncoder -> tokenizer -> flow DiT -> Mel-VAE -> vocoder),
  (b) the constant spectrum: the per-bin mean log-mel of the training audio, for every frame,
  (c) the trained chain fed another held-out track's codes (mismatched): the same sampler, noise and
      guidance, only the codes are wrong; a chain whose codes carry nothing scores as (a),
  (d) the trained chain with the condition dropped (zeros, the CFG branch) at the same guidance,
  (e) the trained vocoder alone on the input's own log-mel: the floor the vocoder sets on the audio
      column,

on two metrics: log-mel L1 before the vocoder (the Mel-VAE decode of the generated latents against
the input's log-mel, the Mel-VAE's own mel function) and the audio mel distance after the vocoder.
Prints a table and writes JSON with the chain's gain over (b) and (c) in percent.

    python benchmarks/mucodec_tiny_end_to_end.py [--data_dir MUSIC_LARGE] [--batches N ...]
        [--work_dir outputs/benchmarks/mucodec_tiny] [--out outputs/benchmarks/mucodec_tiny_end_to_end.json]

Stages (``codecplatform fit`` = ``cli_main(["fit", ...])``, each with its real YAML + tiny override):
MuEncoder stage 1 (masked prediction) -> stage 2 (+ mel and CQT reconstruction; the lyrics CTC is off:
the music has no transcripts) -> tokenizer (1 codebook of 64, on stage 2's encoder) ->
Mel-VAE (exported) -> flow (DiT on the frozen Mel-VAE, codes from the trained tokenizer, whose
quantizer the flow starts from and trains on) -> vocoder. ``E2E`` grows the tiny test geometries.
Data: every audio file of ``--data_dir`` is one track; ``--test_tracks`` groups of them (``--group_regex``:
versions of one piece are one group; evenly spaced in key order) are held out whole;
``--excerpt_seconds`` from the middle of each track are written as 48 kHz stereo FLAC under
``<work_dir>/data/{train,test}`` and prepared into ``<work_dir>/manifests``.
"""

from __future__ import annotations

import argparse
import json
import re
import time
import warnings
from pathlib import Path
from typing import Any

import soundfile as sf
import torch
import yaml

from codecplatform.checkpoints.io import read_checkpoint
from codecplatform.cli import cli_main
from codecplatform.config import compose_config, instantiate, merge_config
from codecplatform.dsp.spectral import resample
from codecplatform.metrics.reconstruction import MelDistance
from codecplatform.mucodec.bundle import save_bundle
from codecplatform.mucodec.codec import MuCodec
from datamodules.manifests import AUDIO_EXTENSIONS, group_key, load_cuts, prepare_manifests

REPO = Path(__file__).resolve().parents[1]
EXP = REPO / "experiments"
# stage -> (real YAML, tiny override, default batches). The tiny YAMLs are sized for one-batch tests;
# E2E (below) grows them for this run. Measured 2026-11-30 on the 2-core machine: 16.5 min with --threads 2
# (experiments/mucodec/README.md has the table).
STAGES = {
    "muencoder_stage1": ("mucodec/muencoder_stage1.yaml", "tiny/mucodec_muencoder.yaml", 200),
    "muencoder_stage2": ("mucodec/muencoder_stage2.yaml", "tiny/mucodec_muencoder.yaml", 100),
    "tokenizer": ("mucodec/tokenizer_1x16384.yaml", "tiny/mucodec_tokenizer.yaml", 200),
    "melvae": ("mucodec/melvae.yaml", "tiny/mucodec_melvae.yaml", 2000),
    "flow": ("mucodec/flow.yaml", "tiny/mucodec_flow.yaml", 4000),
    "vocoder": ("mucodec/vocoder.yaml", "tiny/mucodec_vocoder.yaml", 1000),
}
# What this run changes on top of the tiny YAMLs (written to <work_dir>/overrides/<stage>.yaml and
# passed after them; the evaluated MuCodec is built from the same merged configs). Every stage decodes
# the Ogg music once (decode_cache_mb: per-window decoding made every stage data-bound: 150 Mel-VAE
# batches took 560 s before, 300 take 29 s now). Why each of the rest, measured on this data:
#  - Mel-VAE at lr 1e-3 (the real 1e-4 is for 400k batches) and 2000 batches: after 150 batches at 1e-4
#    its log-mel L1 on held-out music was 4.0 (worse than the per-bin mean, 1.18) and the posterior
#    means varied 0.016 against unit posterior noise, so the flow's targets were noise; after 2000 at
#    1e-3: L1 0.72, posterior variance 0.009, means varying ~1.
#  - the DiT: 2 layers, 4 heads x 8 (the tiny test DiT has 1 layer of 2 x 8), trained on 2.56 s windows
#    (32 latent frames, the evaluation's window) instead of 0.64 s, lr 1e-3 without warm-up.
#  - the tokenizer: 64 codes instead of 16 (6 bits at 25 Hz: 150 bit/s).
#  - the vocoder at lr 1e-3 (real 1e-4), batch 8 (tiny 2), 1000 batches: at 1e-4 for 600 batches it scored
#    3.96 on the input's own log-mel, worse than the chain's mels, and hid what the codes carry.
TINY_DIT = compose_config(EXP / "tiny" / "mucodec_flow.yaml")["model"]["init_args"]["flow"]["init_args"]["transformer"]
DIT = {"num_layers": 2, "num_attention_heads": 4, "attention_head_dim": 16, "sample_size": 32}
TOKENIZER = {"codebook_size": 64}
E2E: dict[str, dict[str, Any]] = {
    "muencoder_stage1": {},
    "muencoder_stage2": {},
    "tokenizer": {"model": {"init_args": {"tokenizer": {"init_args": {"quantizer": {"init_args": TOKENIZER}}}}}},
    "melvae": {"model": {"init_args": {"generator_optimizer": {"init_args": {"lr": 1.0e-3}}}}},
    "flow": {
        "model": {
            "init_args": {
                # the whole dict: a later config replaces a dict-typed argument instead of merging it
                "flow": {"init_args": {"transformer": {**TINY_DIT, **DIT}}},
                "optimizer": {"init_args": {"lr": 1.0e-3}},
                "scheduler": None,
                "window_codes": 64,
                "hop_codes": 48,
            }
        },
        "data": {"init_args": {"segment_seconds": 2.56, "batch_size": 4}},
    },
    "vocoder": {
        "model": {
            "init_args": {
                "generator_optimizer": {"init_args": {"lr": 1.0e-3}},
                "discriminator_optimizer": {"init_args": {"lr": 1.0e-3}},
            }
        },
        "data": {"init_args": {"batch_size": 8}},
    },
}
# music_large holds versions of one piece (``original_soundtrack__track3`` and
# ``aftermath_soundtrack__track3_enhanced``): one group, held out or trained on together
PIECE_REGEX = r"(?:.*__)?(.+?)(?:_enhanced)?\.[^.]+$"
DATA = {"data": {"init_args": {"decode_cache_mb": 1024}}}


def stage_config(stage: str) -> dict[str, Any]:
    real, tiny, _ = STAGES[stage]
    return merge_config(merge_config(compose_config(EXP / real), compose_config(EXP / tiny)), E2E[stage])


def last_checkpoint(cli: Any) -> str:
    paths = [c.last_model_path for c in cli.trainer.checkpoint_callbacks if c.last_model_path]
    if not paths:
        raise RuntimeError("the stage wrote no last.ckpt")
    return paths[0]


REUSED: dict[str, int] = {}  # stage -> batches its reused checkpoint was trained for


def reusable(stage: str, work: Path) -> str | None:
    """The newest ``<work>/outputs/<stage>/checkpoints/last*.ckpt`` (``--reuse``), else None."""
    paths = [p.resolve() for p in (work / "outputs" / stage / "checkpoints").glob("last*.ckpt") if p.exists()]
    return str(max(paths, key=lambda p: p.stat().st_mtime)) if paths else None


def fit(
    stage: str, batches: int, manifests: dict[str, Path], work: Path, *extra: str, seconds: float | None = None
) -> tuple[str, float]:
    """Train ``stage`` for ``batches`` batches (validating twice on 2 batches at the end), or, with
    ``seconds``, for that much wall clock (``trainer.max_time``, no validation, the last weights
    saved as ``budget.ckpt``) -> (its checkpoint, seconds taken)."""
    real, tiny, _ = STAGES[stage]
    if stage in REUSED and (path := reusable(stage, work)) is not None:
        state = read_checkpoint(path, "training checkpoint", required={"state_dict": dict})
        REUSED[stage] = int(state["state_dict"].get("batch_counter", torch.tensor(-1)))
        print(f"\n== {stage}: reused {path} ({REUSED[stage]} batches) ==", flush=True)
        return path, 0.0
    override = work / "overrides" / f"{stage}.yaml"
    override.parent.mkdir(parents=True, exist_ok=True)
    override.write_text(yaml.safe_dump(merge_config(E2E[stage], DATA), sort_keys=False))
    args = [
        "fit",
        "--config",
        str(EXP / real),
        "--config",
        str(EXP / tiny),
        "--config",
        str(override),
        *(f"--data.init_args.{split}_cuts={path}" for split, path in manifests.items()),
        *(
            [f"--model.init_args.max_batches={batches}", f"--trainer.val_check_interval={batches}"]
            + ["--trainer.limit_val_batches=2"]
            if seconds is None
            else ["--model.init_args.max_batches=1000000000", f"--trainer.max_time={max_time(seconds)}"]
            + ["--trainer.limit_val_batches=0"]
        ),
        f"--trainer.default_root_dir={work / 'outputs' / stage}",
        "--trainer.logger=false",
        "--trainer.enable_progress_bar=false",
        *extra,
    ]
    print(f"\n== {stage}: {batches if seconds is None else f'{seconds:.0f} s of'} batches ==", flush=True)
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cli = cli_main(args)
    if seconds is None:
        return last_checkpoint(cli), time.perf_counter() - start
    path = work / "outputs" / stage / "budget.ckpt"
    cli.trainer.save_checkpoint(str(path))  # max_time may stop before any checkpoint callback runs
    BATCHES_RUN[stage] = int(cli.model.batch_counter)
    return str(path), time.perf_counter() - start


def max_time(seconds: float) -> str:
    """Lightning's ``DD:HH:MM:SS`` for ``seconds`` (at least 1)."""
    total = max(1, int(round(seconds)))
    return f"{total // 86400:02d}:{total // 3600 % 24:02d}:{total // 60 % 60:02d}:{total % 60:02d}"


BATCHES_RUN: dict[str, int] = {}  # stage -> batches trained in its last budget-bound fit


def train_chain(
    manifests: dict[str, Path],
    work: Path,
    batches: dict[str, int],
    paths: dict[str, str],
    times: dict[str, float],
    seconds: dict[str, float] | None = None,
    stop_after: str | None = None,
) -> None:
    """Train the stages in order, each from the previous ones' checkpoints, for ``batches[stage]``
    batches or, given ``seconds``, ``seconds[stage]`` of wall clock; fills ``paths`` (stage ->
    checkpoint; ``melvae`` -> the exported folder) and ``times`` (stage -> seconds); stops after
    ``stop_after``."""

    def run(stage: str, *extra: str) -> str:
        path, times[stage] = fit(
            stage, batches[stage], manifests, work, *extra, seconds=None if seconds is None else seconds[stage]
        )
        return path

    paths["muencoder_stage1"] = run("muencoder_stage1")
    if stop_after == "muencoder_stage1":
        return
    paths["muencoder_stage2"] = run(
        "muencoder_stage2",
        f"--model.init_args.muencoder_checkpoint={paths['muencoder_stage1']}",
        '--model.init_args.loss_weights={"ce": 1.0, "mel": 1.0, "cqt": 1.0}',  # no lyrics in the music
        "--data.init_args.return_text=false",
    )
    if stop_after == "muencoder_stage2":
        return
    paths["tokenizer"] = run("tokenizer", f"--model.init_args.muencoder_checkpoint={paths['muencoder_stage2']}")
    if stop_after == "tokenizer":
        return
    melvae_dir = work / "melvae_export"
    run("melvae", f"--model.init_args.export_dir={melvae_dir}")
    paths["melvae"] = str(melvae_dir)
    if stop_after == "melvae":
        return
    tokenizer = stage_config("tokenizer")["model"]["init_args"]["tokenizer"]
    source = {
        "class_path": "codecplatform.mucodec.flow.TokenizerCodeSource",
        "init_args": {"tokenizer": tokenizer, "checkpoint": paths["tokenizer"]},
    }
    paths["flow"] = run(
        "flow",
        f"--model.init_args.melvae_checkpoint={melvae_dir}",
        f"--model.init_args.code_source={json.dumps(source)}",
        f"--model.init_args.flow.init_args.quantizer={json.dumps(tokenizer['init_args']['quantizer'])}",
    )
    if stop_after == "flow":
        return
    paths["vocoder"] = run("vocoder")


def codec_config(paths: dict[str, str] | None, num_steps: int) -> dict[str, Any]:
    """The tiny MuCodec of the stages' tiny geometries; ``paths`` None: untrained."""
    tokenizer = stage_config("tokenizer")["model"]["init_args"]["tokenizer"]
    flow = stage_config("flow")["model"]["init_args"]
    vocoder = stage_config("vocoder")["model"]["init_args"]["vocoder"]
    flow_args = {
        **flow["flow"],
        "init_args": {**flow["flow"]["init_args"], "quantizer": tokenizer["init_args"]["quantizer"]},
    }
    args: dict[str, Any] = {
        "tokenizer": tokenizer,
        "flow": flow_args,
        "vocoder": vocoder,
        "num_steps": num_steps,
        "window_codes": 64,
        "hop_codes": 48,
        "seed": 0,
    }
    if paths is None:
        args.update(melvae=flow["melvae"], require_checkpoints=False)
    else:
        args.update(
            tokenizer_checkpoint=paths["tokenizer"], flow_checkpoint=paths["flow"], vocoder_checkpoint=paths["vocoder"]
        )
    return {"class_path": "codecplatform.mucodec.codec.MuCodec", "init_args": args}


def excerpt_tracks(
    data_dir: Path, out: Path, seconds: float, test_tracks: int, group_regex: str | None = None
) -> dict[str, list[str]]:
    """Write ``seconds`` from the middle of every track of ``data_dir`` (48 kHz stereo FLAC) to
    ``out/train`` or ``out/test``. Tracks are grouped by ``group_regex`` (``group_key``; versions of one
    piece are one group, each other track a group of its own); ``test_tracks`` groups, evenly spaced
    in key order, are held out whole, so no version of a held-out piece is trained on."""
    extensions = {*AUDIO_EXTENSIONS, ".opus"}
    tracks = sorted(p for p in Path(data_dir).rglob("*") if p.is_file() and p.suffix.lower() in extensions)
    pattern = None if group_regex is None else re.compile(group_regex)
    groups: dict[str, list[Path]] = {}
    for path in tracks:
        relative = path.relative_to(data_dir).as_posix()
        groups.setdefault(group_key(relative, pattern) or relative, []).append(path)
    if len(groups) < test_tracks + 1 or test_tracks < 2:
        raise ValueError(
            f"{data_dir}: {len(groups)} groups of tracks; need >= 2 held out (--test_tracks) and 1 to train on"
        )
    keys = sorted(groups)
    step = len(keys) / test_tracks
    held = {path for i in range(test_tracks) for path in groups[keys[int(i * step + step / 2)]]}
    split: dict[str, list[str]] = {"train": [], "test": []}
    for path in tracks:
        name = "test" if path in held else "train"
        target = out / name / f"{path.stem}.flac"
        split[name].append(path.name)
        if not target.exists():
            write_excerpt(path, target, seconds)
    return split


def write_excerpt(path: Path, target: Path, seconds: float) -> None:
    """``seconds`` from the middle of ``path`` as 48 kHz stereo 16-bit FLAC at ``target``."""
    info = sf.info(str(path))
    n = min(info.frames, int(seconds * info.samplerate))
    start = (info.frames - n) // 2
    audio, rate = sf.read(str(path), start=start, frames=n, dtype="float32", always_2d=True)
    x = torch.from_numpy(audio.T.copy())  # (C, T)
    x = x.expand(2, -1) if x.shape[0] == 1 else x[:2]
    x = resample(x.contiguous(), int(rate), 48000)
    target.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(target), x.T.numpy(), 48000, subtype="PCM_16")


def windows_of(manifest: Path, seconds: float, per_track: int) -> list[torch.Tensor]:
    """``per_track`` windows (1, 2, T) at 48 kHz from every recording of ``manifest``, evenly spaced,
    track after track (window i and i + per_track are the same position in consecutive tracks)."""
    out = []
    n = int(seconds * 48000)
    for cut in load_cuts(manifest):
        audio = torch.from_numpy(cut.load_audio()).float()  # (C, T) at the cut's rate
        audio = audio.expand(2, -1) if audio.shape[0] == 1 else audio[:2]
        audio = resample(audio.contiguous(), int(cut.sampling_rate), 48000)
        if audio.shape[-1] < n:
            continue
        starts = torch.linspace(0, audio.shape[-1] - n, per_track).long().tolist()
        out += [audio[None, :, s : s + n] for s in starts]
    return out


@torch.no_grad()
def chain_rows(
    codec: MuCodec, windows: list[torch.Tensor], shift: int = 0, drop_condition: bool = False
) -> dict[str, float]:
    """``audio``: MelDistance of the decoded audio (the whole chain, vocoder included); ``latent_mel``:
    L1 between the Mel-VAE log-mel the flow generated and the input's log-mel (before the vocoder).
    Window i is decoded from the codes of window (i + shift) mod n (``shift`` 0: its own codes)."""
    metric = MelDistance(48000)
    codes = [codec.encode(x).codes for x in windows]
    mel_l1 = 0.0
    for i, x in enumerate(windows):
        mel = codec.codes_to_mel(codes[(i + shift) % len(windows)], condition_scale=0.0 if drop_condition else 1.0)
        metric.update(_vocode(codec, mel, x.shape[-1]), x)
        mel_l1 += _mel_l1(codec, mel, x)
    return {"audio": float(metric.compute()), "latent_mel": mel_l1 / len(windows)}


def _vocode(codec: MuCodec, mel: torch.Tensor, length: int) -> torch.Tensor:
    x_hat = codec.vocoder(mel)[..., :length]
    return torch.nn.functional.pad(x_hat, (0, length - x_hat.shape[-1]))


def _mel_l1(codec: MuCodec, mel: torch.Tensor, x: torch.Tensor) -> float:
    target = codec.melvae.mel(x)
    frames = min(target.shape[2], mel.shape[2])
    return float((mel[:, :, :frames] - target[:, :, :frames]).abs().mean())


@torch.no_grad()
def mean_log_mel(codec: MuCodec, windows: list[torch.Tensor]) -> torch.Tensor:
    """The per-(channel, bin) mean log-mel (C, n_mels) of ``windows`` (the Mel-VAE's mel function)."""
    return torch.cat([codec.melvae.mel(x)[0] for x in windows], dim=1).mean(dim=1)


@torch.no_grad()
def constant_rows(codec: MuCodec, windows: list[torch.Tensor], mean: torch.Tensor) -> dict[str, float]:
    """The constant spectrum ``mean`` (C, n_mels) in every frame, scored as :func:`chain_rows`."""
    metric = MelDistance(48000)
    mel_l1 = 0.0
    for x in windows:
        frames = codec.melvae.mel(x).shape[2]
        mel = mean[None, :, None, :].expand(1, -1, frames, -1).contiguous()
        metric.update(_vocode(codec, mel, x.shape[-1]), x)
        mel_l1 += _mel_l1(codec, mel, x)
    return {"audio": float(metric.compute()), "latent_mel": mel_l1 / len(windows)}


@torch.no_grad()
def vocoder_alone(codec: MuCodec, windows: list[torch.Tensor]) -> dict[str, float]:
    """The vocoder on the input's own log-mel: the floor the vocoder sets for the ``audio`` column
    (``latent_mel`` is 0 by definition)."""
    metric = MelDistance(48000)
    for x in windows:
        metric.update(_vocode(codec, codec.melvae.mel(x), x.shape[-1]), x)
    return {"audio": float(metric.compute()), "latent_mel": 0.0}


def gains(rows: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    """The chain's error below each baseline, percent of the baseline (positive: the chain is better)."""
    chain = rows[CHAIN]
    return {
        name: {k: 100.0 * (rows[name][k] - chain[k]) / rows[name][k] for k in ("latent_mel", "audio")}
        for name in (CONSTANT, MISMATCHED)
    }


CHAIN = "trained chain"
CONSTANT = "constant spectrum (training mean log-mel)"
MISMATCHED = "trained chain, another track's codes"
DROPPED = "trained chain, condition dropped"
VOCODER = "trained vocoder alone, on the input's log-mel"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", default=str(REPO.parent / "shared" / "data" / "music_large"))
    parser.add_argument("--test_tracks", type=int, default=6, help="groups of tracks held out (never trained on)")
    parser.add_argument(
        "--group_regex",
        default=PIECE_REGEX,
        help="groups versions of one piece (datamodules.manifests.group_key); '': every track its own group",
    )
    parser.add_argument("--excerpt_seconds", type=float, default=60.0, help="from the middle of each track")
    parser.add_argument("--batches", type=int, default=None, help="batches of every stage (default: per stage)")
    parser.add_argument("--stage_batches", default="{}", help='JSON {"flow": 2000, ...}: per stage, over --batches')
    parser.add_argument("--num_steps", type=int, default=10, help="Euler steps of the decode")
    parser.add_argument("--eval_seconds", type=float, default=2.56)
    parser.add_argument("--windows_per_track", type=int, default=2)
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (2 on the 2-core machine shared with other runs: Mel-VAE steps 8-17x slower)",
    )
    parser.add_argument("--codebook_size", type=int, default=TOKENIZER["codebook_size"], help="the tokenizer's codes")
    parser.add_argument("--stop_after", default=None, help="train up to this stage, write the times, no evaluation")
    parser.add_argument("--reuse", default="", help="comma-separated stages whose last.ckpt in work_dir is reused")
    parser.add_argument("--work_dir", default=str(REPO / "outputs" / "benchmarks" / "mucodec_tiny"))
    parser.add_argument("--out", default=str(REPO / "outputs" / "benchmarks" / "mucodec_tiny_end_to_end.json"))
    opts = parser.parse_args(argv)
    torch.set_num_threads(opts.threads)
    TOKENIZER["codebook_size"] = opts.codebook_size  # read by E2E["tokenizer"] (the stage and the evaluated codec)
    work = Path(opts.work_dir).resolve()
    if not Path(opts.data_dir).is_dir():
        print(f"mucodec_tiny_end_to_end: no data folder {opts.data_dir}: skipped")
        return {"skipped": f"no data folder {opts.data_dir}"}
    start = time.perf_counter()
    tracks = excerpt_tracks(
        Path(opts.data_dir), work / "data", opts.excerpt_seconds, opts.test_tracks, opts.group_regex or None
    )
    train = prepare_manifests(work / "data" / "train", work / "manifests" / "train", 0.0, 0.0, channels=2)["train"]
    test = prepare_manifests(work / "data" / "test", work / "manifests" / "test", 0.0, 0.0, channels=2)["train"]
    manifests = {"train": train, "val": test, "test": test}  # val: monitoring only (last.ckpt is used)
    times: dict[str, float] = {"data": time.perf_counter() - start}
    batches = {stage: opts.batches or default for stage, (_, _, default) in STAGES.items()}
    batches.update({k: int(v) for k, v in json.loads(opts.stage_batches).items()})
    REUSED.clear()
    REUSED.update({stage: -1 for stage in opts.reuse.split(",") if stage})
    if set(REUSED) - set(STAGES):
        raise ValueError(f"--reuse: unknown stages {sorted(set(REUSED) - set(STAGES))}; stages: {list(STAGES)}")
    if opts.stop_after is not None and opts.stop_after not in STAGES:
        raise ValueError(f"--stop_after: unknown stage {opts.stop_after!r}; stages: {list(STAGES)}")
    paths: dict[str, str] = {}

    train_chain(manifests, work, batches, paths, times, stop_after=opts.stop_after)
    if opts.stop_after is not None:
        result = {"stopped_after": opts.stop_after, "batches": batches, "seconds": times, "checkpoints": paths}
        result["tracks"] = tracks
        Path(opts.out).parent.mkdir(parents=True, exist_ok=True)
        Path(opts.out).write_text(json.dumps(result, indent=2) + "\n")
        print(f"stopped after {opts.stop_after}: " + ", ".join(f"{k} {v:.0f} s" for k, v in times.items()))
        return result
    print("\n== evaluation on held-out tracks ==", flush=True)
    windows = windows_of(test, opts.eval_seconds, opts.windows_per_track)
    if len(windows) < 2 * opts.windows_per_track:
        raise ValueError(f"fewer than 2 held-out tracks of {opts.eval_seconds} s in {test}")
    start = time.perf_counter()
    trained = instantiate(codec_config(paths, opts.num_steps), MuCodec)
    bundled = save_bundle(trained, codec_config(paths, opts.num_steps), work / "mucodec_tiny.ckpt")
    training_windows = windows_of(train, opts.eval_seconds, 4)
    rows = {
        CHAIN: chain_rows(trained, windows),
        CONSTANT: constant_rows(trained, windows, mean_log_mel(trained, training_windows)),
        MISMATCHED: chain_rows(trained, windows, shift=opts.windows_per_track),  # same place, next track
        DROPPED: chain_rows(trained, windows, drop_condition=True),
        VOCODER: vocoder_alone(trained, windows),
    }
    times["evaluation"] = time.perf_counter() - start
    gain = gains(rows)
    result = {
        "mel_distance": rows,
        "gain_percent": gain,
        "target_met": all(v >= 10.0 for g in gain.values() for v in g.values()),
        "batches": {**batches, **{k: v for k, v in REUSED.items() if v >= 0}},
        "reused": sorted(k for k, v in REUSED.items() if v >= 0),
        "seconds": times,
        "total_seconds": sum(times.values()),
        "checkpoints": paths,
        "bundle": str(bundled),  # the trained chain in one file (benchmarks/inference_rtf.py --mucodec_checkpoint)
        "tracks": tracks,
        "held_out_windows": len(windows),
        "window_seconds": opts.eval_seconds,
        "num_steps": opts.num_steps,
        "codebook_size": opts.codebook_size,
    }
    print("\n| held-out reconstruction | log-mel L1 before the vocoder | mel distance (audio) |\n|---|---:|---:|")
    for name, value in rows.items():
        print(f"| {name} | {value['latent_mel']:.4f} | {value['audio']:.4f} |")
    for name, value in gain.items():
        print(f"chain below {name}: log-mel L1 {value['latent_mel']:+.1f} %, audio {value['audio']:+.1f} %")
    print(
        f"\nstages and evaluation: {result['total_seconds'] / 60:.1f} min; "
        + ", ".join(f"{k} {v:.0f} s" for k, v in times.items())
    )
    out = Path(opts.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return result


if __name__ == "__main__":
    main()
