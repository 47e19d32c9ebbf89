"""Corpus tokenization throughput: ``codecplatform tokenize`` against the reference packages' own
per-file loop, same weights, same files, same run.

    python benchmarks/tokenize_throughput.py [--families encodec24 dac44] [--data_dir MUSIC_LARGE]
        [--seconds_per_file 180] [--repeats 1] [--ref_threads 2 1] [--num_workers 2]
        [--out outputs/benchmarks/tokenize_throughput.json]

Models: the official ``encodec`` 24 kHz model and ``dac`` 44.1 kHz model, random weights (filled
codebooks), saved in the official format and imported with our importers (as
``benchmarks/inference_rtf.py``); a check on the same 2 s of audio confirms that both give the same
codes. EnCodec at 6 kbps (8 codebooks), DAC with all 9 codebooks.

Corpus: every audio file of ``--data_dir``; with ``--seconds_per_file S`` the first S seconds of each
file, written once as Ogg Opus (48 kHz as the source) into a temporary folder that both sides read.
The reference EnCodec loop codes a file whole (its 24 kHz model has no chunking: about 1 GB of
memory per minute of audio), so the default keeps files to 180 s.

Variants, each a separate process, timed from its start to its end (wall clock) with its CPU time
(its own and its children's):

* ``reference`` (``--ref_threads``: torch intra-op threads; the package default is one per core):
  per file, as the packages' command lines do it. EnCodec (``encodec`` CLI): read the file,
  ``encodec.utils.convert_audio`` to 24 kHz mono, ``model.encode`` of the whole file (the CLI reads
  with ``torchaudio.load``, which needs torchcodec, absent here: soundfile instead). DAC (``dac
  encode``): ``audiotools.AudioSignal(path)``, mixed to mono (the model is mono; ``dac encode``
  would code each channel), ``model.compress(signal, win_duration=5.0)`` (its windows and loudness
  normalization). Codes saved with ``np.save``.
* ``ours``: the ``codecplatform tokenize`` command (``--num_workers`` processes, one torch thread
  each; its defaults otherwise).

Both run as processes timed whole (start-up, imports and weight loading included; the reference's
loop alone is recorded too, ``loop_seconds``).

Throughput = audio hours per wall-clock hour (and per CPU hour). The machine's load average is
recorded before and after each run; repeats interleave the variants.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DATA = Path("/work/shared/data/music_large")
N_Q = {"encodec24": 8, "dac44": 9}


# ------------------------------------------------------------------------------------ models
def build_models(family: str, folder: Path) -> tuple[Path, Path]:
    """(official weights file, our imported checkpoint) of ``family``, random weights."""
    import torch

    sys.path.insert(0, str(REPO / "benchmarks"))
    from inference_rtf import dac_models, encodec_models

    folder.mkdir(parents=True, exist_ok=True)
    official, ours, _, _ = (encodec_models if family == "encodec24" else dac_models)(folder)
    torch.manual_seed(3)
    x = 0.1 * torch.randn(1, 1, 2 * ours.sample_rate)
    n_q = N_Q[family]
    with torch.no_grad():
        if family == "encodec24":
            official.set_target_bandwidth(6.0)
            ref = torch.cat([codes for codes, _ in official.encode(x)], dim=-1)
        else:
            ref = official.encode(official.preprocess(x, official.sample_rate), n_quantizers=n_q)[1][:, :n_q]
    if not torch.equal(ref, ours.encode(x, n_q=n_q).codes):
        raise SystemExit(f"{family}: the imported checkpoint does not give the reference's codes")
    if family == "encodec24":
        return folder / "encodec_24khz.th", folder / "encodec_24khz.ckpt"
    return folder / "weights_44khz.pth", folder / "dac_44khz.ckpt"


# ------------------------------------------------------------------------------- reference loop
def reference_loop(family: str, weights: str, files: list[str], out: str, threads: int) -> dict[str, float]:
    """The package's own per-file loop (see the module docstring); runs in its own process."""
    import numpy as np
    import soundfile as sf
    import torch

    from codecplatform.checkpoints.io import read_checkpoint

    torch.set_num_threads(threads)
    if family == "encodec24":
        import encodec
        from encodec.utils import convert_audio

        model = encodec.EncodecModel.encodec_model_24khz(pretrained=False)
        model.load_state_dict(read_checkpoint(weights, "EnCodec state dict"))
        model.eval().set_target_bandwidth(6.0)
    else:
        import dac
        from audiotools import AudioSignal

        model = dac.DAC.load(weights).eval()
    began, seconds = time.perf_counter(), 0.0
    for path in files:
        if family == "encodec24":
            audio, rate = sf.read(path, dtype="float32", always_2d=True)
            wav = convert_audio(torch.from_numpy(audio.T.copy()), rate, model.sample_rate, model.channels)
            with torch.no_grad():
                codes = torch.cat([c for c, _ in model.encode(wav[None])], dim=-1)[0]
            seconds += wav.shape[-1] / model.sample_rate
        else:
            signal = AudioSignal(path).to_mono()
            seconds += signal.signal_duration
            codes = model.compress(signal, win_duration=5.0, n_quantizers=N_Q[family]).codes[0]
        np.save(Path(out) / f"{Path(path).stem}.npy", codes.numpy().astype(np.int16))
    return {"loop_seconds": time.perf_counter() - began, "audio_seconds": seconds}


# ----------------------------------------------------------------------------------- variants
def timed(command: list[str]) -> dict[str, Any]:
    """Run ``command``; wall seconds, CPU seconds of it and its children, load before and after."""
    load = os.getloadavg()[0]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    began = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
    wall = time.perf_counter() - began
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {
        "wall_seconds": wall,
        "cpu_seconds": cpu,
        "load_start": load,
        "load_end": os.getloadavg()[0],
        "peak_rss_mb": after.ru_maxrss / 1024,  # the largest child so far
        "stdout": result.stdout[-600:],
    }


def run_reference(family: str, weights: Path, files: list[str], folder: Path, threads: int) -> dict[str, Any]:
    out = Path(tempfile.mkdtemp(dir=folder, prefix="ref_"))
    code = (
        "import json, sys; sys.path.insert(0, 'benchmarks'); from tokenize_throughput import reference_loop; "
        f"print(json.dumps(reference_loop({family!r}, {str(weights)!r}, {files!r}, {str(out)!r}, {threads})))"
    )
    row = timed([sys.executable, "-c", code])
    row.update(json.loads(row.pop("stdout").strip().splitlines()[-1]))
    row["frames"] = sum(int(__import__("numpy").load(p, mmap_mode="r").shape[-1]) for p in out.glob("*.npy"))
    return row


def run_ours(family: str, checkpoint: Path, corpus: Path, folder: Path, workers: int) -> dict[str, Any]:
    out = Path(tempfile.mkdtemp(dir=folder, prefix="ours_")) / "tokens"
    command = [sys.executable, "-m", "codecplatform.cli", "tokenize", "--checkpoint", str(checkpoint)]
    command += ["--audio_dir", str(corpus), "--out", str(out), "--n_q", str(N_Q[family])]
    command += ["--num_workers", str(workers)]
    row = timed(command)
    row["command_output"] = row.pop("stdout").strip().splitlines()[-1]
    from lhotse import CutSet

    cuts = CutSet.from_file(out / "cuts.jsonl")
    row["audio_seconds"] = sum(c.codes_samples for c in cuts) / (44100 if family == "dac44" else 24000)
    row["frames"] = sum(c.codes.shape[0] for c in cuts)
    return row


def excerpts(data_dir: Path, seconds: float | None, max_files: int | None, folder: Path) -> Path:
    """``data_dir`` itself, or (the first ``max_files`` of) its files, each cut to its first
    ``seconds``, written as Ogg Opus into ``folder``."""
    import soundfile as sf

    from datamodules.manifests import find_audio

    paths = find_audio(data_dir)[0]
    if seconds is None and (max_files is None or max_files >= len(paths)):
        return data_dir
    out = folder / "corpus"
    out.mkdir()
    for path in paths[:max_files]:
        if seconds is None:
            os.symlink(path.resolve(), out / path.name)
            continue
        audio, rate = sf.read(str(path), frames=int(seconds * sf.info(str(path)).samplerate), dtype="float32")
        sf.write(str(out / f"{path.stem}.opus"), audio, rate, format="OGG", subtype="OPUS")
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--families", nargs="+", default=["encodec24", "dac44"], choices=list(N_Q))
    parser.add_argument("--data_dir", default=str(DATA))
    parser.add_argument(
        "--seconds_per_file", type=float, default=180.0, help="first seconds of each file; 0: whole files"
    )
    parser.add_argument("--max_files", type=int, default=None, help="only the first N files (a quick check)")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--ref_threads", type=int, nargs="+", default=[os.cpu_count() or 1, 1])
    parser.add_argument("--num_workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--out", default=str(REPO / "outputs" / "benchmarks" / "tokenize_throughput.json"))
    opts = parser.parse_args(argv)
    from datamodules.manifests import find_audio

    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        corpus = excerpts(Path(opts.data_dir), opts.seconds_per_file or None, opts.max_files, folder)
        files = [str(p) for p in find_audio(corpus)[0]]
        print(f"{len(files)} files from {opts.data_dir}, first {opts.seconds_per_file or 'all'} s of each")
        for family in opts.families:
            weights, checkpoint = build_models(family, folder / family)
            for repeat in range(opts.repeats):
                variants = [("reference", t) for t in opts.ref_threads[:1]] + [("ours", opts.num_workers)]
                variants += [("reference", t) for t in opts.ref_threads[1:]]
                for variant, n in variants if repeat % 2 == 0 else variants[::-1]:
                    if variant == "reference":
                        row = run_reference(family, weights, files, folder, n)
                        setup = f"1 process, {n} torch thread(s)"
                    else:
                        row = run_ours(family, checkpoint, corpus, folder, n)
                        setup = f"{n} worker processes, 1 torch thread each"
                    row.update(family=family, variant=variant, setup=setup, repeat=repeat, processes_or_threads=n)
                    row["audio_hours_per_hour"] = row["audio_seconds"] / row["wall_seconds"]
                    row["audio_hours_per_cpu_hour"] = row["audio_seconds"] / row["cpu_seconds"]
                    rows.append(row)
                    print(
                        f"{family:<10} {variant:<10} {setup:<40} audio {row['audio_seconds'] / 3600:.3f} h  "
                        f"wall {row['wall_seconds']:8.1f} s  cpu {row['cpu_seconds']:8.1f} s  "
                        f"{row['audio_hours_per_hour']:6.2f} h/h  {row['audio_hours_per_cpu_hour']:6.2f} h/CPU h  "
                        f"load {row['load_start']:.1f}->{row['load_end']:.1f}",
                        flush=True,
                    )
    for family in opts.families:
        for threads in opts.ref_threads:
            mine = [r for r in rows if r["family"] == family]
            refs = [r for r in mine if r["variant"] == "reference" and r["processes_or_threads"] == threads]
            ours = [r for r in mine if r["variant"] == "ours"]
            if refs and ours:
                ratio = sum(r["audio_hours_per_hour"] for r in ours) / len(ours)
                ratio /= sum(r["audio_hours_per_hour"] for r in refs) / len(refs)
                print(f"{family}: ours / reference ({threads} thread(s)) = {ratio:.2f}x audio hours per hour")
    results = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count()},
        "data_dir": opts.data_dir,
        "seconds_per_file": opts.seconds_per_file,
        "rows": rows,
    }
    out = Path(opts.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"wrote {out}")
    return results


if __name__ == "__main__":
    main()
