"""At a given bitrate, which codec does best on held-out audio? Every family's small config trained for
the same wall-clock budget on the same training data, tested at every bitrate on the same held-out
windows, beside Opus (libopus) and MP3 (LAME) at matching bitrates, scored as the DAC paper scores.

    python benchmarks/leaderboard.py --budget 120 [--data_dir ../shared/data/music_large | --manifests DIR]
        [--families encodec dac muffin spectrostream mucodec] [--domain music|speech]
        [--opus_kbps 6 9 12 18 24] [--mp3_kbps 8 16 24 32] [--eval_seconds 5] [--eval_windows 48]
        [--no_visqol] [--classical_only] [--extra_config experiments/tiny/{family}.yaml]
        [--work_dir outputs/benchmarks/leaderboard] [-- --KEY=VALUE ...]
    python benchmarks/leaderboard.py --trained WORK_DIR --domain speech --manifests SPEECH_MANIFESTS ...
        (the codecs an earlier run trained, tested on other audio: no training)

1. manifests: ``--manifests`` (a folder with ``cuts_{train,val,test}.jsonl.gz`` from ``codecplatform
   prepare``), else ``--data_dir`` prepared as ``short_run_quality.py`` does (per rate and channel
   count, into the work folder; ``--group_regex`` keeps versions of one piece in one split). The test
   manifest is the held-out audio of every row.
2. every GAN family (``short_run_quality.SMALL_CONFIGS``) trains for ``--budget`` seconds of wall
   clock (``trainer.max_time``; its ``max_batches`` lifted, no validation), then its last weights are
   tested at every bitrate (``codecplatform test`` into the fit's MLflow run).
3. ``mucodec``: the tiny chain of ``mucodec_tiny_end_to_end.py`` with ``--budget`` shared over its six
   stages (:func:`run_mucodec`), scored on the same test windows at its one bitrate.
4. Opus and MP3 code the same test windows (the first family's data settings, or 24 kHz mono with
   ``--classical_only``) at ``--opus_kbps`` / ``--mp3_kbps``
   (:mod:`codecplatform.metrics.classical`), logged as runs with the families' metric names.
   The trivial baseline beside them: the constant spectrum (:func:`constant_spectrum_row`, 0 kbps),
   noise with the training audio's mean magnitude spectrum; each family's verdict says whether it
   beats it.
5. metrics, every row: ``mel_distance``, ``stft_distance`` (at the codec's rate), ``mel_distance_44k``,
   ``stft_distance_44k`` (after DAC's resampling to 44.1 kHz, as DAC's ``scripts/evaluate.py``),
   ``si_sdr``, ``visqol_audio`` (music) or ``visqol_speech`` plus DNSMOS ``dnsmos_{sig,bak,ovrl,p808}``
   (``--domain speech``); test windows of ``--eval_seconds``, at most ``--eval_windows`` of them.
6. ``codecplatform compare`` over this invocation's runs (tag ``leaderboard=<id>``): one rate-quality
   plot per metric and its tables in ``<work_dir>/comparison``; then ``leaderboard.md`` (one table,
   rows = codec x bitrate, and per family the bitrate where it beats Opus on mel distance or by how
   much it misses) and ``leaderboard.json``; the experiment's saved UI view "leaderboard" (every run's
   per-bitrate ``mel_distance`` and ``si_sdr`` columns, its address printed at the end).

A private MLflow store (``<work_dir>/mlflow.db``, experiment ``leaderboard``) keeps the runs.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import json
import math
import os
import platform
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
EXPERIMENT = "leaderboard"
BASE_METRICS = ("mel_distance", "stft_distance", "si_sdr")
COLUMNS = {
    "music": ("mel_distance", "stft_distance", "mel_distance_44k", "stft_distance_44k", "si_sdr", "visqol_audio"),
    "speech": (
        "mel_distance",
        "stft_distance",
        "mel_distance_44k",
        "stft_distance_44k",
        "si_sdr",
        "visqol_speech",
        "dnsmos_ovrl",
        "dnsmos_sig",
        "dnsmos_bak",
        "dnsmos_p808",
    ),
}


def _benchmark(name: str):
    """The benchmark script ``benchmarks/<name>.py`` as a module (the folder is not a package)."""
    spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name(f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


srq = _benchmark("short_run_quality")


FAMILIES = [*srq.SMALL_CONFIGS, "mucodec"]
#: MuCodec's budget over its stages, in proportion to what their default batches took in
#: ``mucodec_tiny_end_to_end.py`` (the flow and the vocoder most; each stage at least 4 %)
MUCODEC_SHARES = {
    "muencoder_stage1": 0.04,
    "muencoder_stage2": 0.04,
    "tokenizer": 0.04,
    "melvae": 0.16,
    "flow": 0.30,
    "vocoder": 0.42,
}
MUCODEC_EXCERPT_SECONDS = 60.0
MUCODEC_NUM_STEPS = 50  # the official decode's Euler steps


def metric_specs(sample_rate: int, domain: str, visqol: bool = True) -> dict[str, dict[str, Any]]:
    """The test metrics beyond the families' own (name -> ``{class_path, init_args}``, as in a config)."""

    def resampled(metric: str, init: dict[str, Any]) -> dict[str, Any]:
        inner = {"class_path": f"codecplatform.metrics.reconstruction.{metric}", "init_args": init}
        return {
            "class_path": "codecplatform.metrics.reconstruction.Resampled",
            "init_args": {"metric": inner, "sample_rate": sample_rate, "score_rate": 44100},
        }

    specs = {
        "mel_distance_44k": resampled("MelDistance", {"sample_rate": 44100}),
        "stft_distance_44k": resampled("STFTDistance", {}),
    }
    mode = "audio" if domain == "music" else "speech"
    if visqol:
        specs[f"visqol_{mode}"] = {
            "class_path": "codecplatform.metrics.perceptual.ViSQOL",
            "init_args": {"sample_rate": sample_rate, "mode": mode},
        }
    if domain == "speech":
        for score in ("ovrl", "sig", "bak", "p808"):
            specs[f"dnsmos_{score}"] = {
                "class_path": "codecplatform.metrics.dnsmos.DNSMOS",
                "init_args": {"sample_rate": sample_rate, "score": score},
            }
    return specs


def instantiate(spec: Any) -> Any:
    """``{class_path, init_args}`` (nested ones too) -> the object."""
    if isinstance(spec, dict) and "class_path" in spec:
        module, _, name = spec["class_path"].rpartition(".")
        args = {key: instantiate(value) for key, value in (spec.get("init_args") or {}).items()}
        return getattr(importlib.import_module(module), name)(**args)
    return spec


def eval_config(path: Path, sample_rate: int, opts: argparse.Namespace) -> Path:
    """The leaderboard's evaluation settings as a config file appended to every family's."""
    config = {
        "model": {"init_args": {"test_metrics": metric_specs(sample_rate, opts.domain, not opts.no_visqol)}},
        "data": {"init_args": {"eval_segment_seconds": opts.eval_seconds, "max_eval_windows": opts.eval_windows}},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def max_time(seconds: float) -> str:
    """Lightning's ``DD:HH:MM:SS`` for ``seconds`` (at least 1)."""
    total = max(1, int(round(seconds)))
    return f"{total // 86400:02d}:{total // 3600 % 24:02d}:{total // 60 % 60:02d}:{total % 60:02d}"


def manifests_for(rate: int, channels: int, opts: argparse.Namespace, work: Path, done: dict) -> dict[str, Path] | str:
    if opts.manifests is not None:
        found = {split: opts.manifests / f"cuts_{split}.jsonl.gz" for split in ("train", "val", "test")}
        missing = [str(p) for p in found.values() if not p.is_file()]
        return f"missing manifests: {', '.join(missing)}" if missing else found
    key = (rate, channels)
    if key not in done:
        try:
            done[key] = srq.prepare_manifests(
                opts.data_dir,
                work / "manifests" / f"{rate}hz_{channels}ch",
                val_fraction=opts.val_fraction,
                test_fraction=opts.test_fraction,
                seed=opts.split_seed,
                num_workers=opts.prepare_workers,
                min_sample_rate=rate,
                channels=channels,
                group_regex=opts.group_regex,
            )
        except ValueError as error:
            done[key] = str(error)
    return done[key]


def common_args(configs: list[str], manifests: dict[str, Path], work: Path, overrides: list[str]) -> list[str]:
    return [
        *configs,
        *(f"--data.init_args.{split}_cuts={path}" for split, path in manifests.items()),
        f"--trainer.default_root_dir={work / 'outputs'}",
        f"--trainer.logger.init_args.tracking_uri=sqlite:///{work / 'mlflow.db'}",
        f"--trainer.logger.init_args.save_dir={work / 'mlruns'}",
        f"--trainer.logger.init_args.experiment_name={EXPERIMENT}",
        *overrides,
    ]


def run_family(family: str, opts: argparse.Namespace, work: Path, overrides: list[str], done: dict) -> dict[str, Any]:
    configs = srq.config_args(srq.SMALL_CONFIGS[family], opts.extra_config, family)
    settings = srq.resolved_settings([*configs, *overrides])
    rate, channels = settings["sample_rate"], settings["channels"]
    manifests = manifests_for(rate, channels, opts, work, done)
    if isinstance(manifests, str):
        print(f"leaderboard: {family} skipped: {manifests}")
        return {"skipped": manifests, "sample_rate": rate, "channels": channels}
    evaluation = eval_config(work / f"eval_{rate}hz.yaml", rate, opts)
    common = common_args([*configs, "--config", str(evaluation)], manifests, work, overrides)
    described = {
        "config": str(srq.SMALL_CONFIGS[family].relative_to(REPO)),
        **settings,
        "manifests": {split: str(path) for split, path in manifests.items()},
    }
    if opts.trained is not None:  # test the weights an earlier run trained, on this run's test data
        checkpoint = opts.trained / "outputs" / f"{family}-budget.ckpt"
        if not checkpoint.is_file():
            return {"skipped": f"--trained: no {checkpoint}"}
        print(f"\n== {family}: testing {checkpoint} ==")
        tested = srq.cli_main(
            ["test", *common, "--ckpt_path", str(checkpoint), f"--trainer.logger.init_args.run_name={family}-tested"]
        )
        return {
            **described,
            "trained": str(checkpoint),
            "batches": int(tested.model.batch_counter),
            "fit_seconds": 0.0,
            "run_id": tested.trainer.logger.run_id,
            "table": srq.test_table(tested),
        }
    print(f"\n== {family}: training for {opts.budget:g} s of wall clock (codecplatform fit) ==")
    start = time.perf_counter()
    fit = srq.cli_main(
        [
            "fit",
            *common,
            f"--trainer.max_time={max_time(opts.budget)}",
            "--model.init_args.max_batches=1000000000",
            "--trainer.limit_val_batches=0",  # the whole budget trains; the last weights are tested
            f"--trainer.logger.init_args.run_name={family}-{opts.budget:g}s",
        ]
    )
    fit_seconds = time.perf_counter() - start
    run_id = fit.trainer.logger.run_id
    checkpoint = work / "outputs" / f"{family}-budget.ckpt"
    fit.trainer.save_checkpoint(str(checkpoint))  # the last weights: a short budget may never validate
    print(f"\n== {family}: testing after {int(fit.model.batch_counter)} batches ==")
    tested = srq.cli_main(
        ["test", *common, "--ckpt_path", str(checkpoint), f"--trainer.logger.init_args.run_id={run_id}"]
    )
    return {
        **described,
        "batches": int(fit.model.batch_counter),
        "fit_seconds": fit_seconds,
        "run_id": run_id,
        "table": srq.test_table(tested),
    }


def test_data(
    opts: argparse.Namespace, work: Path, overrides: list[str], done: dict, family: str, settings=None
) -> dict[str, Any] | str:
    """The test windows of ``family``'s data settings (``settings``: its resolved ones, when already
    known), as its ``codecplatform test`` reads them -> {batches, sample_rate, channels, manifests},
    or why there are none."""
    from codecplatform.cli import CodecCLI, expand_args

    configs = srq.config_args(srq.SMALL_CONFIGS[family], opts.extra_config, family)
    settings = settings or srq.resolved_settings([*configs, *overrides])
    rate, channels = settings["sample_rate"], settings["channels"]
    manifests = manifests_for(rate, channels, opts, work, done)
    if isinstance(manifests, str):
        return manifests
    evaluation = eval_config(work / f"eval_{rate}hz.yaml", rate, opts)
    data = [f"--data.init_args.{split}_cuts={manifests[split] if split == 'test' else 'null'}" for split in manifests]
    args = [*configs, "--config", str(evaluation), *data, *overrides]
    argv, sys.argv = sys.argv, sys.argv[:1]
    try:
        cli = CodecCLI(args=expand_args([*args, "--trainer.logger=false"]), run=False)
    finally:
        sys.argv = argv
    cli.datamodule.setup("test")
    batches = list(cli.datamodule.test_dataloader())
    return {"batches": batches, "sample_rate": rate, "channels": channels, "manifests": manifests}


def test_metrics(rate: int, opts: argparse.Namespace) -> dict[str, Any]:
    """The metrics every row is scored with (name -> torchmetrics ``Metric``), as the families' test."""
    from codecplatform.metrics.reconstruction import SISDR, MelDistance, STFTDistance

    metrics = {"mel_distance": MelDistance(rate), "stft_distance": STFTDistance(), "si_sdr": SISDR()}
    specs = metric_specs(rate, opts.domain, not opts.no_visqol)
    metrics.update({name: instantiate(spec) for name, spec in specs.items()})
    return metrics


def classical_rows(test: dict[str, Any] | str, opts: argparse.Namespace, work: Path) -> dict:
    """Opus and MP3 on ``test`` (:func:`test_data`) -> codec -> result."""
    from codecplatform.metrics.classical import evaluate_classical, log_classical_run

    if isinstance(test, str):
        print(f"leaderboard: Opus/MP3 skipped: {test}")
        return {}
    batches, rate, channels = test["batches"], test["sample_rate"], test["channels"]
    results = {}
    for codec, bitrates in (("opus", opts.opus_kbps), ("mp3", opts.mp3_kbps)):
        if not bitrates:
            continue
        metrics = test_metrics(rate, opts)
        print(f"\n== {codec}: {', '.join(f'{b:g}' for b in bitrates)} kbps on {len(batches)} test batches ==")
        start = time.perf_counter()
        table = evaluate_classical(batches, rate, codec, list(bitrates), metrics)
        run_id = log_classical_run(table, f"sqlite:///{work / 'mlflow.db'}", EXPERIMENT, run_name=f"{codec}-reference")
        results[codec] = {
            "run_id": run_id,
            "seconds": time.perf_counter() - start,
            "sample_rate": rate,
            "channels": channels,
            "test_seconds": table.seconds,
            "table": {"columns": table.columns, "rows": table.rows},
            "max_abs_lag": max((abs(lag) for lags in table.lags.values() for lag in lags), default=0),
        }
    return results


def run_mucodec(test: dict[str, Any] | str, opts: argparse.Namespace, work: Path) -> dict[str, Any]:
    """MuCodec's tiny chain (``mucodec_tiny_end_to_end.py``'s stages and sizes) trained for ``--budget``
    seconds in all (``MUCODEC_SHARES`` per stage, each by ``trainer.max_time``) on the middle
    ``MUCODEC_EXCERPT_SECONDS`` of every training track of ``test``'s manifests (48 kHz stereo, as
    its stages read them), then scored on ``test``'s windows at its one bitrate: encoded from the
    windows' rate, decoded (``MUCODEC_NUM_STEPS`` Euler steps) at 48 kHz, mixed to the windows'
    channels and resampled back. Logged as an MLflow run of ``family=mucodec``."""
    from codecplatform.config import instantiate as build
    from codecplatform.models.base import AudioCodec
    from codecplatform.mucodec.bundle import save_bundle
    from codecplatform.mucodec.codec import MuCodec
    from datamodules.manifests import load_cuts, prepare_manifests

    if isinstance(test, str):
        print(f"leaderboard: mucodec skipped: {test}")
        return {"skipped": test}
    if opts.trained is not None:
        bundle = opts.trained / "outputs" / "mucodec-budget.ckpt"
        if not bundle.is_file():
            return {"skipped": f"--trained: no {bundle}"}
        trained = json.loads(bundle.with_suffix(".json").read_text())
        print(f"\n== mucodec: testing {bundle} ==")
        scored = score_mucodec(AudioCodec.from_checkpoint(bundle), bundle, test, opts, work)
        return {**trained, "trained": str(bundle), "fit_seconds": 0.0, **scored}
    e2e = _benchmark("mucodec_tiny_end_to_end")
    home = work / "mucodec"
    print(f"\n== mucodec: training its six stages for {opts.budget:g} s of wall clock in all ==")
    start = time.perf_counter()
    for cut in load_cuts(test["manifests"]["train"]):
        source = Path(cut.recording.sources[0].source)
        target = home / "data" / f"{cut.recording.id}.flac"
        if not target.exists():
            e2e.write_excerpt(source, target, MUCODEC_EXCERPT_SECONDS)
    train = prepare_manifests(home / "data", home / "manifests", 0.0, 0.0, channels=2)["train"]
    manifests = {"train": train, "val": train, "test": train}  # never validated: the budget trains
    batches = {stage: default for stage, (_, _, default) in e2e.STAGES.items()}
    seconds = {stage: opts.budget * share for stage, share in MUCODEC_SHARES.items()}
    paths: dict[str, str] = {}
    times: dict[str, float] = {}
    e2e.BATCHES_RUN.clear()
    e2e.train_chain(manifests, home, batches, paths, times, seconds=seconds)
    fit_seconds = time.perf_counter() - start
    config = e2e.codec_config(paths, MUCODEC_NUM_STEPS)
    codec = build(config, MuCodec).eval()
    bundle = save_bundle(codec, config, work / "outputs" / "mucodec-budget.ckpt")
    trained = {
        "config": "benchmarks/mucodec_tiny_end_to_end.py (tiny stages)",
        "batches": sum(e2e.BATCHES_RUN.values()),
        "stage_batches": dict(e2e.BATCHES_RUN),
        "stage_seconds": times,
    }
    bundle.with_suffix(".json").write_text(json.dumps(trained, indent=1) + "\n")  # for --trained
    print(f"\n== mucodec: testing after {trained['batches']} batches ==")
    return {**trained, "fit_seconds": fit_seconds, **score_mucodec(codec, bundle, test, opts, work)}


def score_mucodec(codec: Any, bundle: Path, test: dict[str, Any], opts: argparse.Namespace, work: Path) -> dict:
    """``codec`` (a MuCodec) on ``test``'s windows at its one bitrate, logged as an MLflow run of
    ``family=mucodec`` -> {sample_rate, channels, bundle, run_id, table}."""
    from codecplatform.dsp.spectral import resample
    from codecplatform.lightning.evaluation import bitrate_label
    from codecplatform.metrics.classical import ClassicalTable, log_classical_run

    rate, channels = test["sample_rate"], test["channels"]
    metrics = test_metrics(rate, opts)
    samples, bits = 0, 0.0
    with torch.no_grad():
        for x in test["batches"]:
            x = x.float()
            encoded = codec.encode(x, sample_rate=rate)
            x_hat = resample(codec.decode(encoded, channels=channels), codec.sample_rate, rate)
            x_hat = torch.nn.functional.pad(x_hat, (0, max(0, x.shape[-1] - x_hat.shape[-1])))[..., : x.shape[-1]]
            for metric in metrics.values():
                metric.update(x_hat, x)
            samples += x.shape[0] * x.shape[-1]
            bits += encoded.codes.shape[0] * encoded.codes.shape[-1] * sum(math.log2(n) for n in codec.codebook_sizes)
    seconds_tested = samples / rate
    kbps = float(codec.bitrate(codec.n_q))
    columns = [{"label": bitrate_label(kbps), "kbps": kbps, "true_kbps": bits / seconds_tested / 1000}]
    rows = {name: [float(metric.compute())] for name, metric in metrics.items()}
    table = ClassicalTable("mucodec", rate, channels, seconds_tested, columns, rows)
    run_id = log_classical_run(
        table,
        f"sqlite:///{work / 'mlflow.db'}",
        EXPERIMENT,
        run_name="mucodec-tested" if opts.trained else f"mucodec-{opts.budget:g}s",
        tags={"module": "mucodec", "bundle": str(bundle), "num_steps": str(MUCODEC_NUM_STEPS)},
    )
    return {
        "sample_rate": rate,
        "channels": channels,
        "bundle": str(bundle),
        "run_id": run_id,
        "table": {"columns": columns, "rows": rows},
    }


N_FFT, HOP = 2048, 512  # the constant spectrum's STFT (85 ms windows at 24 kHz)


def mean_magnitude(windows: list[torch.Tensor]) -> torch.Tensor:
    """(C, T) windows -> their mean STFT magnitude per channel and bin, (C, N_FFT // 2 + 1)."""
    window = torch.hann_window(N_FFT)
    mags = [torch.stft(x, N_FFT, HOP, window=window, return_complex=True).abs().mean(-1) for x in windows]
    return torch.stack(mags).mean(0)


def constant_spectrum(magnitude: torch.Tensor, length: int, generator: torch.Generator) -> torch.Tensor:
    """Audio (C, length) whose every STFT frame has ``magnitude`` (C, F) and a random phase: what a
    codec that sends nothing but knows the training audio's average spectrum can output."""
    window = torch.hann_window(N_FFT)
    frames = length // HOP + 1
    phase = 2 * math.pi * torch.rand(*magnitude.shape, frames, generator=generator)
    spectrum = torch.polar(magnitude[..., None].expand(-1, -1, frames).contiguous(), phase)
    return torch.istft(spectrum, N_FFT, HOP, window=window, length=length)


def constant_spectrum_row(test: dict[str, Any] | str, opts: argparse.Namespace, windows: int = 12) -> dict:
    """The trivial baseline at 0 kbps: every test window replaced by :func:`constant_spectrum` of the mean
    magnitude of ``windows`` windows of ``--eval_seconds`` from the middle of training recordings,
    scored with every row's metrics. A codec that does not beat it carries nothing about the input."""
    from codecplatform.dsp.spectral import resample
    from datamodules.manifests import load_cuts

    if isinstance(test, str):
        return {}
    rate, channels = test["sample_rate"], test["channels"]
    cuts = list(load_cuts(test["manifests"]["train"]))
    cuts = [c for c in cuts if c.duration >= opts.eval_seconds][:: max(1, len(cuts) // windows)][:windows]
    training = []
    for cut in cuts:
        piece = cut.truncate(offset=(cut.duration - opts.eval_seconds) / 2, duration=opts.eval_seconds)
        audio = torch.from_numpy(piece.load_audio()).float()  # (C, T) at the cut's rate
        audio = audio.mean(0, keepdim=True) if channels == 1 else audio.expand(channels, -1)[:channels]
        training.append(resample(audio.contiguous(), int(cut.sampling_rate), rate))
    if not training:
        return {}
    magnitude = mean_magnitude(training)
    metrics = test_metrics(rate, opts)
    generator = torch.Generator().manual_seed(0)
    for x in test["batches"]:
        x = x.float()
        x_hat = torch.stack([constant_spectrum(magnitude, x.shape[-1], generator) for _ in range(x.shape[0])])
        for metric in metrics.values():
            metric.update(x_hat, x)
    columns = [{"label": "0kbps", "kbps": 0.0, "true_kbps": 0.0}]
    rows = {name: [float(metric.compute())] for name, metric in metrics.items()}
    return {"constant spectrum": {"training_windows": len(training), "table": {"columns": columns, "rows": rows}}}


def guarded(family: str, run, *args) -> dict[str, Any]:
    """``run(*args)``, or, when it raises, ``{"failed": the error}`` after printing its traceback: one
    family's failure leaves the other rows of a long run standing."""
    try:
        return run(*args)
    except Exception as error:  # noqa: BLE001 - reported in the table, the run goes on
        traceback.print_exc()
        print(f"leaderboard: {family} failed: {type(error).__name__}: {error}")
        return {"failed": f"{type(error).__name__}: {error}"}


def opus_mel_at(opus: dict, kbps: float) -> tuple[float, float] | None:
    """Opus's mel distance at the Opus bitrate nearest ``kbps`` on a log scale -> (that bitrate, mel)."""
    if not opus:
        return None
    columns, mels = opus["table"]["columns"], opus["table"]["rows"]["mel_distance"]
    i = min(range(len(columns)), key=lambda j: abs(math.log(columns[j]["kbps"] / kbps)))
    return columns[i]["kbps"], mels[i]


def leaderboard_rows(results: dict) -> list[dict[str, Any]]:
    """One row per codec and bitrate: name, kbps, true kbps (classical), metrics."""
    rows = []
    for family, result in results["families"].items():
        if "table" not in result:
            continue
        table = result["table"]
        for i, column in enumerate(table["columns"]):
            values = {name: row[i] for name, row in table["rows"].items()}
            rows.append({"codec": family, "kbps": column["kbps"], "true_kbps": None, **values})
    for codec, result in [*results["classical"].items(), *results.get("baselines", {}).items()]:
        table = result["table"]
        for i, column in enumerate(table["columns"]):
            values = {name: row[i] for name, row in table["rows"].items()}
            rows.append({"codec": codec, "kbps": column["kbps"], "true_kbps": column["true_kbps"], **values})
    return rows


def markdown(results: dict, domain: str) -> str:
    names = [n for n in COLUMNS[domain] if any(n in row for row in results["rows"])]
    lines = [
        f"| codec | kbps | true kbps | {' | '.join(names)} |",
        "| --- | ---: | ---: |" + " ---: |" * len(names),
    ]
    for row in results["rows"]:
        true = "-" if row["true_kbps"] is None else f"{row['true_kbps']:.2f}"
        cells = [f"{row[n]:.3f}" if n in row and math.isfinite(row[n]) else "-" for n in names]
        lines.append(f"| {row['codec']} | {row['kbps']:g} | {true} | " + " | ".join(cells) + " |")
    lines.append("")
    opus = results["classical"].get("opus")
    for family, result in results["families"].items():
        if "table" not in result:
            lines.append(
                f"- {family}: "
                + (f"failed ({result['failed']})" if "failed" in result else f"skipped ({result.get('skipped')})")
            )
            continue
        verdicts = []
        for i, column in enumerate(result["table"]["columns"]):
            found = opus_mel_at(opus, column["kbps"])
            if found is None:
                break
            mel = result["table"]["rows"]["mel_distance"][i]
            verdicts.append((column["kbps"], mel, *found))
        if not verdicts:
            lines.append(f"- {family}: no Opus rows to compare with")
            continue
        wins = [v for v in verdicts if v[1] < v[3]]
        if wins:
            kbps, mel, opus_kbps, opus_mel = wins[0]
            verdict = (
                f"- {family} ({result['batches']} batches): beats Opus on mel distance from {kbps:g} kbps "
                f"({mel:.3f} against Opus {opus_kbps:g} kbps: {opus_mel:.3f})"
            )
        else:
            kbps, mel, opus_kbps, opus_mel = min(verdicts, key=lambda v: v[1] - v[3])
            verdict = (
                f"- {family} ({result['batches']} batches): never beats Opus on mel distance; closest at {kbps:g} "
                f"kbps, {mel:.3f} against Opus {opus_kbps:g} kbps: {opus_mel:.3f} (misses by {mel - opus_mel:.3f})"
            )
        lines.append(verdict + below_constant(result, results.get("baselines", {})))
    return "\n".join(lines) + "\n"


def below_constant(result: dict, baselines: dict) -> str:
    """What the family's mel distance says against the constant spectrum (0 kbps), as a clause."""
    if "constant spectrum" not in baselines:
        return ""
    floor = baselines["constant spectrum"]["table"]["rows"]["mel_distance"][0]
    mels = result["table"]["rows"]["mel_distance"]
    below = [c["kbps"] for c, mel in zip(result["table"]["columns"], mels) if mel < floor]
    if not below:
        return f"; but never below the constant spectrum ({floor:.3f}): its output carries nothing the metric sees"
    return f"; below the constant spectrum ({floor:.3f}) from {below[0]:g} kbps (best {min(mels):.3f})"


def main(argv: list[str] | None = None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    overrides: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, overrides = argv[:cut], argv[cut + 1 :]
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget", type=float, default=None, help="seconds of training per family")
    parser.add_argument("--families", nargs="*", default=FAMILIES, choices=FAMILIES)
    parser.add_argument("--data_dir", default=str(REPO.parent / "shared" / "data" / "music_large"))
    parser.add_argument("--manifests", default=None, help="folder with cuts_{train,val,test}.jsonl.gz (skips prepare)")
    parser.add_argument(
        "--domain", default="music", choices=sorted(COLUMNS), help="music: ViSQOL audio; speech: ViSQOL speech, DNSMOS"
    )
    parser.add_argument("--opus_kbps", type=float, nargs="*", default=[6, 9, 12, 18, 24])
    parser.add_argument("--mp3_kbps", type=float, nargs="*", default=[8, 16, 24, 32])
    parser.add_argument("--eval_seconds", type=float, default=5.0, help="test window length (s)")
    parser.add_argument("--eval_windows", type=int, default=48, help="at most this many test windows")
    parser.add_argument("--no_visqol", action="store_true", help="leave ViSQOL out (about 0.5 s of CPU per s of audio)")
    parser.add_argument("--classical_only", action="store_true", help="only the Opus and MP3 rows")
    parser.add_argument(
        "--trained",
        default=None,
        help="the --work_dir of an earlier run: test the families it trained (no training) on this run's "
        "test data, e.g. music-trained codecs on speech with --domain speech",
    )
    parser.add_argument("--extra_config", action="append", default=[], help="appended config ({family} replaced)")
    parser.add_argument("--val_fraction", type=float, default=0.1)
    parser.add_argument("--test_fraction", type=float, default=0.1)
    parser.add_argument("--split_seed", type=int, default=0)
    parser.add_argument("--group_regex", default=None, help="prepare's --group_regex: files of a group share a split")
    parser.add_argument("--prepare_workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    parser.add_argument("--work_dir", default=str(REPO / "outputs" / "benchmarks" / "leaderboard"))
    opts = parser.parse_args(argv)
    if opts.trained is None and (opts.budget is None or opts.budget <= 0):
        parser.error("give --budget (> 0 seconds of training per family) or --trained")
    if opts.manifests is not None:
        opts.manifests = Path(opts.manifests).resolve()
        if not opts.manifests.is_dir():
            parser.error(f"--manifests {opts.manifests}: no such folder")
    if opts.trained is not None:
        opts.trained = Path(opts.trained).resolve()
        if not (opts.trained / "outputs").is_dir():
            parser.error(f"--trained {opts.trained}: no outputs/ folder of a leaderboard run there")
    opts.data_dir = Path(opts.data_dir).resolve()
    if opts.manifests is None and not opts.data_dir.is_dir():
        print(f"leaderboard: skipped: the data folder {opts.data_dir} does not exist (pass --data_dir or --manifests)")
        return {"skipped": f"no data folder {opts.data_dir}"}
    if opts.threads is not None:
        torch.set_num_threads(opts.threads)
    opts.extra_config = [str(Path(item).resolve()) for item in opts.extra_config]
    work = Path(opts.work_dir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    results: dict[str, Any] = {
        "id": stamp,
        "budget_seconds": opts.budget,
        "data": str(opts.manifests or opts.data_dir),
        "domain": opts.domain,
        "machine": f"{platform.node()}: {os.cpu_count()} CPU cores"
        + (f", {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ""),
        "torch_threads": torch.get_num_threads(),
        "families": {},
        "classical": {},
        "baselines": {},
    }
    done: dict = {}
    families = [] if opts.classical_only else opts.families
    with contextlib.chdir(work):
        for family in (f for f in families if f != "mucodec"):
            results["families"][family] = guarded(family, run_family, family, opts, work, overrides, done)
        trained = [f for f in families if f in results["families"] and "table" in results["families"][f]]
        settings = results["families"][trained[0]] if trained else None
        # the held-out windows every other row is scored on: the first family's data settings
        test = test_data(opts, work, overrides, done, trained[0] if trained else "encodec", settings)
        if "mucodec" in families:
            results["families"]["mucodec"] = guarded("mucodec", run_mucodec, test, opts, work)
        results["classical"] = classical_rows(test, opts, work)
        results["baselines"] = constant_spectrum_row(test, opts)
    from mlflow.tracking import MlflowClient

    from codecplatform import compare

    uri = f"sqlite:///{work / 'mlflow.db'}"
    client = MlflowClient(uri)
    run_ids = [r["run_id"] for r in [*results["families"].values(), *results["classical"].values()] if "run_id" in r]
    for run_id in run_ids:
        client.set_tag(run_id, "leaderboard", stamp)
    if run_ids:  # the UI's "leaderboard" view: every run's per-bitrate mel distance and SI-SDR columns
        experiment_id = client.get_experiment_by_name(EXPERIMENT).experiment_id
        keys = {key for run_id in run_ids for key in client.get_run(run_id).data.metrics}
        view = compare.leaderboard_view(keys)
        compare.save_view(client, experiment_id, compare.LEADERBOARD_VIEW_ID, "leaderboard", view)
        url = compare.view_url(compare.UI_SERVER, experiment_id, compare.LEADERBOARD_VIEW_ID)
        results["ui"] = f"mlflow ui --app-name codecplatform --backend-store-uri {uri}, then {url}"
    results["rows"] = leaderboard_rows(results)
    if run_ids:
        status = compare.main(
            [
                "--tracking_uri",
                uri,
                "--experiment",
                EXPERIMENT,
                "--filter",
                f"leaderboard={stamp}",
                "--out_dir",
                str(work / "comparison"),
                "--run_name",
                f"leaderboard {stamp}",
            ]
        )
        results["comparison"] = str(work / "comparison") if status == 0 else f"compare failed ({status})"
    text = markdown(results, opts.domain)
    header = (
        f"Leaderboard {stamp}: "
        + (f"trained in {opts.trained}" if opts.trained else f"budget {opts.budget:g} s per family")
        + f", {results['machine']}, data {results['data']}\n\n"
    )
    (work / "leaderboard.md").write_text(header + text)
    (work / "leaderboard.json").write_text(json.dumps(results, indent=1, default=str))
    print("\n" + header + text)
    print(f"wrote {work / 'leaderboard.md'}, {work / 'leaderboard.json'}, {work / 'comparison'}")
    if "ui" in results:
        print(f"in the MLflow UI: {results['ui']}")
    return results


if __name__ == "__main__":
    main()
