"""Does the MuCodec chain learn anything in a tiny end-to-end run? Every stage is trained (tiny configs,
chained by checkpoint paths), then on held-out audio the reconstruction mel distance of

  (a) the trained chain (MuEncoder -> tokenizer -> flow DiT -> Mel-VAE -> vocoder),
  (b) the same chain untrained (random weights of the same geometry),
  (c) the trained chain with the DiT sampled with the condition dropped (zeros, as the CFG branch):
      what the codes contribute beyond the unconditional model

is compared, in the same run. Prints a table and writes JSON.

    python benchmarks/mucodec_tiny_end_to_end.py [--data_dir ../shared/data/music] [--batches N ...]
        [--work_dir outputs/benchmarks/mucodec_tiny] [--out outputs/benchmarks/mucodec_tiny_end_to_end.json]

Stages (``codecplatform fit`` = ``cli_main(["fit", ...])``, each with its real YAML + tiny override):
MuEncoder stage 1 (masked prediction) -> stage 2 (+ mel and CQT reconstruction; the lyrics CTC is off:
the music has no transcripts) -> tokenizer (1 codebook of the tiny size, on stage 2's encoder) ->
Mel-VAE (exported) -> flow (DiT on the frozen Mel-VAE, codes from the trained tokenizer) -> vocoder.
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

from codecplatform.cli import cli_main
from codecplatform.config import compose_config, instantiate, merge_config
from codecplatform.dsp.spectral import resample
from codecplatform.metrics.reconstruction import MelDistance
from codecplatform.models.mucodec.codec import MuCodec
from datamodules.manifests import load_cuts, prepare_manifests

REPO = Path(__file__).resolve().parents[1]
EXP = REPO / "experiments"
# stage -> (real YAML, tiny override, default batches). Measured 2026-11-30 on the 2-core machine with
# another training run beside it (so about 2 x slower than alone): 49.9 min in all with flow 1200 and
# vocoder 200 batches (flow 1496 s, vocoder 653 s, Mel-VAE 560 s); with flow 300 / vocoder 300 and
# less contention 9.1 min. In neither run did the tiny DiT use its codes yet: sampling with the
# condition dropped scored as well as with the codes (see the MuCodec README).
STAGES = {
    "muencoder_stage1": ("mucodec/muencoder_stage1.yaml", "tiny/mucodec_muencoder.yaml", 60),
    "muencoder_stage2": ("mucodec/muencoder_stage2.yaml", "tiny/mucodec_muencoder.yaml", 40),
    "tokenizer": ("mucodec/tokenizer_1x16384.yaml", "tiny/mucodec_tokenizer.yaml", 100),
    "melvae": ("mucodec/melvae.yaml", "tiny/mucodec_melvae.yaml", 150),
    "flow": ("mucodec/flow.yaml", "tiny/mucodec_flow.yaml", 1200),
    "vocoder": ("mucodec/vocoder.yaml", "tiny/mucodec_vocoder.yaml", 200),
}


def stage_config(stage: str) -> dict[str, Any]:
    real, tiny, _ = STAGES[stage]
    return merge_config(compose_config(EXP / real), compose_config(EXP / tiny))


def last_checkpoint(cli: Any) -> str:
    paths = [c.last_model_path for c in cli.trainer.checkpoint_callbacks if c.last_model_path]
    if not paths:
        raise RuntimeError("the stage wrote no last.ckpt")
    return paths[0]


def fit(stage: str, batches: int, manifests: dict[str, Path], work: Path, *extra: str) -> tuple[str, float]:
    real, tiny, _ = STAGES[stage]
    args = [
        "fit",
        "--config",
        str(EXP / real),
        "--config",
        str(EXP / tiny),
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
    return {"class_path": "codecplatform.models.mucodec.codec.MuCodec", "init_args": args}


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


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", default=str(REPO.parent / "shared" / "data" / "music"))
    parser.add_argument("--batches", type=int, default=None, help="batches of every stage (default: per stage)")
    parser.add_argument("--num_steps", type=int, default=10, help="Euler steps of the decode")
    parser.add_argument("--eval_seconds", type=float, default=2.0)
    parser.add_argument("--eval_windows", type=int, default=4)
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
        "class_path": "codecplatform.models.mucodec.flow.TokenizerCodeSource",
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
        "--model.init_args.window_codes=64",
        "--model.init_args.hop_codes=48",
        # the real config's 1e-4 (with a 5k-batch warm-up) leaves the tiny DiT at the unconditional
        # mean within this budget (measured: the same loss with the codes and with zeros); 1e-3 from
        # the first batch for this short run
        "--model.init_args.optimizer.init_args.lr=1e-3",
        "--model.init_args.scheduler=null",
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
