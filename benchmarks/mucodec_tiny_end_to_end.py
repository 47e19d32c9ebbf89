"""Does the MuCodec chain learn anything in a tiny end-to-end run? Every stage is trained (tiny configs,
chained by checkpoint paths), then on held-out audio the reconstruction mel distance of

  (a) the trained chain (MuEncoder -> tokenizer -> flow DiT -> Mel-VAE -> vocoder),
  (b) the same chain untrained (random weights of the same geometry),
  (c) the trained chain with the DiT sampled with the condition dropped (zeros, as the CFG branch):
      what the codes contribute beyond the unconditional model,
  (d) the trained vocoder alone on the input's own log-mel: the floor the vocoder sets on the audio
      column (a tiny vocoder that is worse than the flow hides what the codes carry),

is compared, in the same run. Prints a table and writes JSON.

    python benchmarks/mucodec_tiny_end_to_end.py [--data_dir ../shared/data/music] [--batches N ...]
        [--work_dir outputs/benchmarks/mucodec_tiny] [--out outputs/benchmarks/mucodec_tiny_end_to_end.json]

Stages (``codecplatform fit`` = ``cli_main(["fit", ...])``, each with its real YAML + tiny override):
MuEncoder stage 1 (masked prediction) -> stage 2 (+ mel and CQT reconstruction; the lyrics CTC is off:
the music has no transcripts) -> tokenizer (1 codebook of 64, on stage 2's encoder) ->
Mel-VAE (exported) -> flow (DiT on the frozen Mel-VAE, codes from the trained tokenizer) -> vocoder.
``E2E`` grows the tiny test geometries for this run (reasons and measurements in its comments).
Data: ``--data_dir`` prepared like ``benchmarks/short_run_quality.py`` (``codecplatform prepare``'s
function, into ``<work_dir>/manifests``; 44.1 kHz files are resampled to the stages' 24 / 48 kHz).
Budget: sized for about 20 minutes on 2 CPU cores (``--batches`` per stage); ``--batches 2`` for a check.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path
from typing import Any

import torch
import yaml

from codecplatform.cli import cli_main
from codecplatform.config import compose_config, instantiate, merge_config
from codecplatform.dsp.spectral import resample
from codecplatform.metrics.reconstruction import MelDistance
from codecplatform.mucodec.codec import MuCodec
from datamodules.manifests import load_cuts, prepare_manifests

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
DATA = {"data": {"init_args": {"decode_cache_mb": 1024}}}


def stage_config(stage: str) -> dict[str, Any]:
    real, tiny, _ = STAGES[stage]
    return merge_config(merge_config(compose_config(EXP / real), compose_config(EXP / tiny)), E2E[stage])


def last_checkpoint(cli: Any) -> str:
    paths = [c.last_model_path for c in cli.trainer.checkpoint_callbacks if c.last_model_path]
    if not paths:
        raise RuntimeError("the stage wrote no last.ckpt")
    return paths[0]


def fit(stage: str, batches: int, manifests: dict[str, Path], work: Path, *extra: str) -> tuple[str, float]:
    real, tiny, _ = STAGES[stage]
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
        f"--model.init_args.max_batches={batches}",
        f"--trainer.val_check_interval={batches}",
        "--trainer.limit_val_batches=2",
        f"--trainer.default_root_dir={work / 'outputs' / stage}",
        "--trainer.logger=false",
        "--trainer.enable_progress_bar=false",
        *extra,
    ]
    print(f"\n== {stage}: {batches} batches ==", flush=True)
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cli = cli_main(args)
    return last_checkpoint(cli), time.perf_counter() - start


def codec_config(paths: dict[str, str] | None, num_steps: int) -> dict[str, Any]:
    """The tiny MuCodec of the stages' tiny geometries; ``paths`` None: untrained."""
    tokenizer = stage_config("tokenizer")["model"]["init_args"]["tokenizer"]
    flow = stage_config("flow")["model"]["init_args"]
    vocoder = stage_config("vocoder")["model"]["init_args"]["vocoder"]
    sizes = [tokenizer["init_args"]["quantizer"]["init_args"]["codebook_size"]] * tokenizer["init_args"]["quantizer"][
        "init_args"
    ].get("n_q", 1)
    flow_args = {**flow["flow"], "init_args": {**flow["flow"]["init_args"], "codebook_sizes": sizes}}
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


def held_out(manifest: Path, seconds: float, count: int) -> list[torch.Tensor]:
    """Up to ``count`` windows (1, 2, T) at 48 kHz from the test recordings."""
    out = []
    for cut in load_cuts(manifest):
        audio = torch.from_numpy(cut.load_audio()).float()  # (C, T) at the cut's rate
        audio = audio.expand(2, -1) if audio.shape[0] == 1 else audio[:2]
        audio = resample(audio.contiguous(), int(cut.sampling_rate), 48000)
        n = int(seconds * 48000)
        for start in range(0, audio.shape[-1] - n + 1, n):
            out.append(audio[None, :, start : start + n])
            if len(out) >= count:
                return out
    return out


@torch.no_grad()
def mel_distances(codec: MuCodec, windows: list[torch.Tensor], drop_condition: bool = False) -> dict[str, float]:
    """``audio``: MelDistance of the decoded audio (the whole chain, vocoder included); ``latent_mel``:
    L1 between the Mel-VAE log-mel the flow generated and the input's log-mel (before the vocoder: the
    tokenizer + flow + Mel-VAE part alone, undisturbed by an undertrained vocoder)."""
    metric = MelDistance(48000)
    mel_l1, count = 0.0, 0
    for x in windows:
        encoded = codec.encode(x)
        mel = codec.codes_to_mel(encoded.codes, condition_scale=0.0 if drop_condition else 1.0)
        x_hat = codec.vocoder(mel)[..., : x.shape[-1]]
        x_hat = torch.nn.functional.pad(x_hat, (0, x.shape[-1] - x_hat.shape[-1]))
        metric.update(x_hat, x)
        target = codec.melvae.mel(x)
        frames = min(target.shape[2], mel.shape[2])
        mel_l1 += float((mel[:, :, :frames] - target[:, :, :frames]).abs().mean())
        count += 1
    return {"audio": float(metric.compute()), "latent_mel": mel_l1 / max(count, 1)}


@torch.no_grad()
def vocoder_alone(codec: MuCodec, windows: list[torch.Tensor]) -> dict[str, float]:
    """The vocoder on the input's own log-mel: the floor the vocoder sets for the ``audio`` column
    (``latent_mel`` is 0 by definition)."""
    metric = MelDistance(48000)
    for x in windows:
        x_hat = codec.vocoder(codec.melvae.mel(x))[..., : x.shape[-1]]
        metric.update(torch.nn.functional.pad(x_hat, (0, x.shape[-1] - x_hat.shape[-1])), x)
    return {"audio": float(metric.compute()), "latent_mel": 0.0}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", default=str(REPO.parent / "shared" / "data" / "music"))
    parser.add_argument("--batches", type=int, default=None, help="batches of every stage (default: per stage)")
    parser.add_argument("--num_steps", type=int, default=10, help="Euler steps of the decode")
    parser.add_argument("--eval_seconds", type=float, default=2.0)
    parser.add_argument("--eval_windows", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--work_dir", default=str(REPO / "outputs" / "benchmarks" / "mucodec_tiny"))
    parser.add_argument("--out", default=str(REPO / "outputs" / "benchmarks" / "mucodec_tiny_end_to_end.json"))
    opts = parser.parse_args(argv)
    torch.set_num_threads(opts.threads)
    work = Path(opts.work_dir).resolve()
    if not Path(opts.data_dir).is_dir():
        print(f"mucodec_tiny_end_to_end: no data folder {opts.data_dir}: skipped")
        return {"skipped": f"no data folder {opts.data_dir}"}
    manifests = prepare_manifests(
        opts.data_dir, work / "manifests", val_fraction=0.2, test_fraction=0.2, seed=0, channels=2
    )
    batches = {stage: opts.batches or default for stage, (_, _, default) in STAGES.items()}
    times: dict[str, float] = {}
    paths: dict[str, str] = {}
    paths["muencoder_stage1"], times["muencoder_stage1"] = fit(
        "muencoder_stage1", batches["muencoder_stage1"], manifests, work
    )
    paths["muencoder_stage2"], times["muencoder_stage2"] = fit(
        "muencoder_stage2",
        batches["muencoder_stage2"],
        manifests,
        work,
        f"--model.init_args.muencoder_checkpoint={paths['muencoder_stage1']}",
        '--model.init_args.loss_weights={"ce": 1.0, "mel": 1.0, "cqt": 1.0}',  # no lyrics in the music
        "--data.init_args.return_text=false",
    )
    paths["tokenizer"], times["tokenizer"] = fit(
        "tokenizer",
        batches["tokenizer"],
        manifests,
        work,
        f"--model.init_args.muencoder_checkpoint={paths['muencoder_stage2']}",
    )
    melvae_dir = work / "melvae_export"
    _, times["melvae"] = fit("melvae", batches["melvae"], manifests, work, f"--model.init_args.export_dir={melvae_dir}")
    paths["melvae"] = str(melvae_dir)
    tokenizer = stage_config("tokenizer")["model"]["init_args"]["tokenizer"]
    source = {
        "class_path": "codecplatform.mucodec.flow.TokenizerCodeSource",
        "init_args": {"tokenizer": tokenizer, "checkpoint": paths["tokenizer"]},
    }
    sizes = codec_config(None, 1)["init_args"]["flow"]["init_args"]["codebook_sizes"]
    paths["flow"], times["flow"] = fit(
        "flow",
        batches["flow"],
        manifests,
        work,
        f"--model.init_args.melvae_checkpoint={melvae_dir}",
        f"--model.init_args.code_source={json.dumps(source)}",
        f"--model.init_args.flow.init_args.codebook_sizes={json.dumps(sizes)}",
    )
    paths["vocoder"], times["vocoder"] = fit("vocoder", batches["vocoder"], manifests, work)

    print("\n== evaluation on held-out audio ==", flush=True)
    windows = held_out(manifests["test"], opts.eval_seconds, opts.eval_windows)
    if not windows:
        raise ValueError(f"no held-out window of {opts.eval_seconds} s in {manifests['test']}")
    start = time.perf_counter()
    trained = instantiate(codec_config(paths, opts.num_steps), MuCodec)
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        untrained = instantiate(codec_config(None, opts.num_steps), MuCodec)
    rows = {
        "trained chain": mel_distances(trained, windows),
        "untrained chain": mel_distances(untrained, windows),
        "trained, condition dropped": mel_distances(trained, windows, drop_condition=True),
        "trained vocoder alone, on the input's log-mel": vocoder_alone(trained, windows),
    }
    times["evaluation"] = time.perf_counter() - start
    result = {
        "mel_distance": rows,
        "batches": batches,
        "seconds": times,
        "total_seconds": sum(times.values()),
        "checkpoints": paths,
        "held_out_windows": len(windows),
        "window_seconds": opts.eval_seconds,
        "num_steps": opts.num_steps,
    }
    print("\n| held-out reconstruction | mel distance (audio) | log-mel L1 before the vocoder |\n|---|---:|---:|")
    for name, value in rows.items():
        print(f"| {name} | {value['audio']:.4f} | {value['latent_mel']:.4f} |")
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
