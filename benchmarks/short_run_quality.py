"""What does a short training run teach each codec family? Per family, its small config is trained
for a fixed number of batches on real recordings and tested against the same model untrained, at
every evaluated bitrate, both in the same run.

    python benchmarks/short_run_quality.py [--families encodec dac] [--batches 300]
        [--data_dir ../shared/data] [--checkpoint best|last] [--work_dir outputs/benchmarks/short_run_quality]
        [--extra_config experiments/tiny/{family}.yaml ...] [--threads N]
        [--out outputs/benchmarks/short_run_quality.json] [-- --KEY=VALUE ...]

For each family (``SMALL_CONFIGS``: EnCodec ``experiments/quickstart.yaml``, DAC
``experiments/dac/small.yaml``, MUFFIN ``experiments/muffin/small.yaml``, SpectroStream
``experiments/spectrostream/small.yaml`` (24 kHz stereo); a new family adds its small config there):

1. manifests: ``--data_dir`` (any folder of recordings, searched recursively) is prepared with
   ``codecplatform prepare``'s function at the config's sample rate and channel count, into
   ``<work_dir>/manifests/<rate>hz_<channels>ch`` (never into the data folder). Files of a lower
   rate or with fewer channels are skipped and listed; more channels are down-mixed by the data
   module (stereo music for a mono codec), higher rates resampled.
2. ``codecplatform fit`` (``cli_main(["fit", ...])``) for ``--batches`` batches, with a private MLflow
   store (``<work_dir>/mlflow.db``), checkpoints under ``<work_dir>/outputs`` and the working
   directory ``<work_dir>``. The config's ``val_check_interval`` is lowered to ``--batches`` when
   larger, so that a run always validates at least once.
3. ``codecplatform test`` on the test manifest: the trained model (``--checkpoint best``: the
   checkpoint with the best validation mel distance, as the quickstart; ``last``: the latest
   checkpoint, written at the last validation) logged into the fit's MLflow run, and the untrained
   model (the same seed, hence the same initial weights) in a run of its own.
4. the per-bitrate test tables (``test/<kbps>kbps/<metric>`` in ``trainer.callback_metrics``, the
   cells of the table GANCodecModule prints and logs as ``tables/test_per_bitrate.json``), and the
   discriminator's state at the last training batch (``train/d/loss``, ``real_score``,
   ``fake_score``, ``accuracy`` where the module logs them).

Prints one table per family (rows: metrics, untrained and trained; columns: bitrates) and writes
everything as JSON. ``--extra_config`` (repeatable; ``{family}`` is replaced by the family's name)
is appended to every family's config, e.g. ``experiments/tiny/{family}.yaml`` for a quick check;
overrides after ``--`` go to every fit and test. Without the data folder it prints why and skips.

Time: the quickstart's EnCodec trains 300 batches in about 4 minutes on 2 idle CPU cores; the small
DAC is about as large and took about as long per batch (1-3 s each for either on 2 busy cores); with
validation and the four tests, the default run of both families takes about 10-30 minutes. The small
SpectroStream trains 1500 batches (its codebooks separate only after about 800): about 1 hour
(2000 batches took 4764 s, 0.45 batches/s once the discriminator joins).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch

from codecplatform.checkpoints.io import read_checkpoint
from codecplatform.cli import CodecCLI, cli_main, expand_args
from datamodules.manifests import load_cuts, prepare_manifests

REPO = Path(__file__).resolve().parents[1]

# family -> its small config for short CPU runs (a new family adds its own here)
SMALL_CONFIGS: dict[str, Path] = {
    "encodec": REPO / "experiments" / "quickstart.yaml",
    "dac": REPO / "experiments" / "dac" / "small.yaml",
    "muffin": REPO / "experiments" / "muffin" / "small.yaml",
    "spectrostream": REPO / "experiments" / "spectrostream" / "small.yaml",
}
METRICS = ("mel_distance", "stft_distance", "si_sdr", "codebook_perplexity", "codebook_efficiency")
HIGHER_IS_BETTER = {"si_sdr", "codebook_perplexity", "codebook_efficiency"}
DISCRIMINATOR = ("train/d/loss", "train/d/real_score", "train/d/fake_score", "train/d/accuracy")


def config_args(config: Path, extra: list[str], family: str) -> list[str]:
    args = ["--config", str(config)]
    for item in extra:
        args += ["--config", item.format(family=family)]
    return args


def resolved_settings(args: list[str]) -> dict[str, Any]:
    """Sample rate, channels and validation interval as ``fit`` would resolve them (config chain and
    overrides), read from the instantiated datamodule and trainer (no logger, no data)."""
    no_data = [f"--data.init_args.{split}_cuts=null" for split in ("train", "val", "test")]
    argv, sys.argv = sys.argv, sys.argv[:1]  # LightningCLI warns when it sees both args and sys.argv
    try:
        cli = CodecCLI(args=expand_args([*args, *no_data, "--trainer.logger=false"]), run=False)
    finally:
        sys.argv = argv
    return {
        "sample_rate": cli.datamodule.sample_rate,
        "channels": cli.datamodule.channels,
        "segment_seconds": cli.datamodule.segment_seconds,
        "batch_size": cli.datamodule.batch_size,
        "val_check_interval": cli.trainer.val_check_interval,
        "codec_parameters": cli.model.codec.num_parameters()["total"],
        "max_batches": cli.model.max_batches,
    }


def test_table(cli: CodecCLI) -> dict[str, Any]:
    """The per-bitrate test table of a finished ``test``: columns (label, n_q, kbps), rows (metric ->
    one value per column), read from the logged ``test/<label>/<metric>`` cells."""
    module, logged = cli.model, cli.trainer.callback_metrics
    table: dict[str, dict[str, float]] = {}
    for k in module.evaluation.eval_n_q["test"]:
        label = module.evaluation.bitrate_labels[k]
        prefix = f"test/{label}/"
        for key, value in logged.items():
            if key.startswith(prefix):
                table.setdefault(key[len(prefix) :], {})[label] = float(value)
    return module.evaluation.table_json("test", table, int(module.batch_counter))


def run_family(
    family: str, config: Path, opts: argparse.Namespace, work: Path, overrides: list[str], manifests_done: dict
) -> dict[str, Any]:
    configs = config_args(config, opts.extra_config, family)
    settings = resolved_settings([*configs, *overrides])
    rate, channels = settings["sample_rate"], settings["channels"]
    key = (rate, channels)
    if key not in manifests_done:
        manifest_dir = work / "manifests" / f"{rate}hz_{channels}ch"
        print(f"\n== {family}: preparing {opts.data_dir} at {rate} Hz, {channels} channel(s) -> {manifest_dir} ==")
        try:
            manifests_done[key] = prepare_manifests(
                opts.data_dir,
                manifest_dir,
                val_fraction=opts.val_fraction,
                test_fraction=opts.test_fraction,
                seed=opts.split_seed,
                num_workers=opts.prepare_workers,
                min_sample_rate=rate,
                channels=channels,
            )
        except ValueError as err:  # no usable audio at this rate and channel count
            manifests_done[key] = str(err)
    manifests = manifests_done[key]
    if isinstance(manifests, str):
        print(f"short_run_quality: {family} skipped: {manifests}")
        return {"skipped": manifests, "sample_rate": rate, "channels": channels}
    common = [
        *configs,
        *(f"--data.init_args.{split}_cuts={path}" for split, path in manifests.items()),
        f"--trainer.default_root_dir={work / 'outputs'}",
        f"--trainer.logger.init_args.tracking_uri=sqlite:///{work / 'mlflow.db'}",
        f"--trainer.logger.init_args.save_dir={work / 'mlruns'}",
        "--trainer.logger.init_args.experiment_name=short_run_quality",
        *overrides,
    ]
    batches = opts.batches or settings["max_batches"]  # default: the config's own training length
    if batches is None:
        raise ValueError(f"{config}: model.init_args.max_batches is not set; pass --batches")
    fit_args = [f"--model.init_args.max_batches={batches}"]
    interval = settings["val_check_interval"]
    if isinstance(interval, int) and interval > batches:
        fit_args.append(f"--trainer.val_check_interval={batches}")
        interval = batches

    print(f"\n== {family}: training {config.name} for {batches} batches (codecplatform fit) ==")
    start = time.perf_counter()
    fit = cli_main(["fit", *common, *fit_args, f"--trainer.logger.init_args.run_name={family}-short-run"])
    fit_seconds = time.perf_counter() - start
    trainer = fit.trainer
    run_id = trainer.logger.run_id
    logged = trainer.callback_metrics
    discriminator = {name.removeprefix("train/d/"): float(logged[name]) for name in DISCRIMINATOR if name in logged}
    trained_batches = int(fit.model.batch_counter)
    if opts.checkpoint == "best":
        checkpoint = trainer.checkpoint_callback.best_model_path
    else:
        checkpoint = next((c.last_model_path for c in trainer.checkpoint_callbacks if c.last_model_path), "")
    if not checkpoint:
        raise RuntimeError(f"{family}: the fit wrote no {opts.checkpoint} checkpoint (did it validate?)")
    checkpoint = os.path.realpath(checkpoint)  # last.ckpt is a link
    saved = read_checkpoint(checkpoint, "training checkpoint", required={"state_dict": dict})
    checkpoint_batch = int(saved["state_dict"]["batch_counter"])

    print(f"\n== {family}: testing the trained model ({opts.checkpoint} checkpoint, batch {checkpoint_batch}) ==")
    trained = cli_main(["test", *common, "--ckpt_path", checkpoint, f"--trainer.logger.init_args.run_id={run_id}"])
    trained_table = test_table(trained)
    print(f"\n== {family}: testing the same model untrained ==")
    untrained = cli_main(["test", *common, f"--trainer.logger.init_args.run_name={family}-untrained"])
    untrained_table = test_table(untrained)
    test_cuts = load_cuts(manifests["test"])
    domains: dict[str, int] = {}
    for cut in test_cuts:
        domain = (cut.custom or {}).get("domain", "general")
        domains[domain] = domains.get(domain, 0) + 1
    return {
        "config": str(config.relative_to(REPO)) if config.is_relative_to(REPO) else str(config),
        "configs": configs[1::2],
        **settings,
        "val_check_interval": interval,
        "manifests": {split: str(path) for split, path in manifests.items()},
        "test_set": {"recordings": len(test_cuts), "seconds": sum(c.duration for c in test_cuts), "domains": domains},
        "batches": trained_batches,
        "fit_seconds": fit_seconds,
        "checkpoint": {"kind": opts.checkpoint, "path": checkpoint, "batch": checkpoint_batch},
        "mlflow": {
            "tracking_uri": f"sqlite:///{work / 'mlflow.db'}",
            "trained_run": run_id,
            "untrained_run": untrained.trainer.logger.run_id,
        },
        "discriminator_last_batch": discriminator,
        "untrained": untrained_table,
        "trained": trained_table,
    }


def format_family(family: str, result: dict[str, Any]) -> str:
    """Rows: metric x (untrained, trained); columns: bitrates (the trained table's)."""
    columns = result["trained"]["columns"]
    heads = [c["label"] for c in columns]
    width = max(11, *(len(h) + 2 for h in heads))
    ckpt, test = result["checkpoint"], result["test_set"]
    domains = ", ".join(f"{d} {n}" for d, n in test["domains"].items())
    lines = [
        f"{family} ({result['config']}): {result['sample_rate']} Hz, {result['channels']} ch, "
        f"{result['codec_parameters']:,} codec parameters; {result['batches']} batches of {result['batch_size']} x "
        f"{result['segment_seconds']:g} s in {result['fit_seconds']:.0f} s",
        f"trained = {ckpt['kind']} checkpoint (batch {ckpt['batch']}); test set: {test['recordings']} recordings, "
        f"{test['seconds']:.1f} s ({domains})",
        f"{'metric':<22}{'model':<11}" + "".join(f"{h:>{width}}" for h in heads) + "   better",
    ]
    for name in METRICS:
        rows = {which: result[which]["rows"].get(name) for which in ("untrained", "trained")}
        if rows["trained"] is None:
            lines.append(f"{name:<22}(not logged)")
            continue
        for which, values in rows.items():
            cells = "".join(
                f"{'nan' if v is None or not math.isfinite(v) else f'{v:.3f}':>{width}}" for v in (values or [])
            )
            better = ""
            if which == "trained" and rows["untrained"] is not None:
                pairs = zip(rows["untrained"], values)
                wins = [(t > u) if name in HIGHER_IS_BETTER else (t < u) for u, t in pairs]
                better = f"   {sum(wins)}/{len(wins)}"
            lines.append(f"{name if which == 'untrained' else '':<22}{which:<11}{cells}{better}")
    d = result["discriminator_last_batch"]
    if d:
        lines.append("discriminator, last batch: " + ", ".join(f"{k} {v:.3f}" for k, v in d.items()))
    else:
        lines.append("discriminator, last batch: not logged (no discriminator step yet)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    overrides: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, overrides = argv[:cut], argv[cut + 1 :]
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--families", nargs="+", default=list(SMALL_CONFIGS), choices=list(SMALL_CONFIGS))
    parser.add_argument(
        "--batches", type=int, default=None, help="training batches per family (default: each config's max_batches)"
    )
    parser.add_argument("--data_dir", default=str(REPO.parent / "shared" / "data"), help="folder of recordings")
    parser.add_argument("--checkpoint", default="best", choices=["best", "last"], help="which checkpoint is tested")
    parser.add_argument("--extra_config", action="append", default=[], help="appended config ({family} replaced)")
    parser.add_argument("--val_fraction", type=float, default=0.1, help="share of validation recordings")
    parser.add_argument("--test_fraction", type=float, default=0.2, help="share of test recordings")
    parser.add_argument("--split_seed", type=int, default=0, help="seed of prepare's train/val/test split")
    parser.add_argument("--prepare_workers", type=int, default=2, help="processes probing the data folder")
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    parser.add_argument("--work_dir", default=str(REPO / "outputs" / "benchmarks" / "short_run_quality"))
    parser.add_argument("--out", default=str(REPO / "outputs" / "benchmarks" / "short_run_quality.json"))
    opts = parser.parse_args(argv)
    if opts.batches is not None and opts.batches < 1:
        parser.error("--batches must be >= 1")
    opts.data_dir = Path(opts.data_dir).resolve()
    if not opts.data_dir.is_dir():
        print(
            f"short_run_quality: skipped: the data folder {opts.data_dir} does not exist "
            "(pass --data_dir with a folder of recordings)"
        )
        return {"skipped": f"no data folder {opts.data_dir}"}
    if opts.threads is not None:
        torch.set_num_threads(opts.threads)
    # paths given relative to the caller's directory, before the runs change into the work directory
    opts.extra_config = [str(Path(item).resolve()) for item in opts.extra_config]
    out = Path(opts.out).resolve()
    work = Path(opts.work_dir).resolve()
    work.mkdir(parents=True, exist_ok=True)

    results: dict[str, Any] = {
        "data_dir": str(opts.data_dir),
        "batches": opts.batches,
        "checkpoint": opts.checkpoint,
        "extra_configs": opts.extra_config,
        "overrides": overrides,
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "families": {},
    }
    manifests_done: dict = {}
    with contextlib.chdir(work):  # anything written relative to the working directory lands here
        for family in opts.families:
            results["families"][family] = run_family(
                family, SMALL_CONFIGS[family], opts, work, overrides, manifests_done
            )

    print("\n" + "=" * 100)
    for family, result in results["families"].items():
        print(f"{family}: skipped: {result['skipped']}" if "skipped" in result else format_family(family, result))
        print()
    print("better: bitrates where the trained model beats the untrained one")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"wrote {out}")
    return results


if __name__ == "__main__":
    main()
