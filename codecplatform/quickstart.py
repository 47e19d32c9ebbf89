"""``make quickstart``: demo data -> fit -> test (trained and untrained) -> where to look.

    python -m codecplatform.quickstart [--data_dir data/demo] [--config experiments/quickstart.yaml]

Everything is logged to the MLflow store ``sqlite:///mlflow.db`` in the current directory.
"""

from __future__ import annotations

import argparse
import math
import warnings
from pathlib import Path

from codecplatform.checkpoints.io import read_checkpoint
from codecplatform.cli import cli_main
from codecplatform.compare import UI_SERVER, run_url

METRICS = ("test/mel_distance", "test/si_sdr")
MIN_PERPLEXITY = 8.0  # of 64 entries: a codebook below this is barely used


def _test_metrics(args: list[str]) -> tuple[dict[str, float], list[dict[str, float]], str]:
    """Runs ``codecplatform test``: (full-bitrate metrics, one dict of metrics per evaluated bitrate in
    increasing order, MLflow run id)."""
    cli = cli_main(["test", *args])
    logged = cli.trainer.callback_metrics
    metrics = {name: float(logged[name]) for name in METRICS}
    module = cli.model
    per_bitrate = []
    for n_q in module.evaluation.eval_n_q["test"]:
        label = module.evaluation.bitrate_labels[n_q]
        prefix = f"test/{label}/"
        row = {key[len(prefix) :]: float(value) for key, value in logged.items() if key.startswith(prefix)}
        per_bitrate.append({"label": label, "n_q": n_q, **row})
    return metrics, per_bitrate, cli.trainer.logger.run_id


def _discriminator_history(run_id: str, tracking_uri: str) -> dict[str, float] | None:
    """Mean of the last half of the discriminator's logged loss, equilibrium loss and real/fake scores
    (None when the discriminator never stepped)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    out = {}
    for name in ("loss", "equilibrium_loss", "real_score", "fake_score"):
        history = [m.value for m in client.get_metric_history(run_id, f"train/d/{name}")]
        if not history:
            return None
        tail = history[len(history) // 2 :]
        out[name] = sum(tail) / len(tail)
    return out


def _checks(per_bitrate: list[dict[str, float]], discriminator: dict[str, float] | None) -> list[tuple[bool, str]]:
    """What a working codec shows after the quickstart (issue: a short run must give a codec)."""
    full = per_bitrate[-1]
    mels = [row["mel_distance"] for row in per_bitrate]
    checks = [
        (full["si_sdr"] > 0.0, f"SI-SDR at the full bitrate above 0 dB: {full['si_sdr']:.2f} dB"),
        (
            all(b < a for a, b in zip(mels, mels[1:])),
            "mel distance falls with every added codebook: " + " > ".join(f"{m:.3f}" for m in mels),
        ),
        (
            full["codebook_min_perplexity"] >= MIN_PERPLEXITY,
            f"every codebook in use (least used codebook's perplexity >= {MIN_PERPLEXITY:g}): "
            f"{full['codebook_min_perplexity']:.1f}",
        ),
    ]
    if discriminator is None:
        checks.append((False, "the discriminator learns: it never stepped"))
    else:
        gap = discriminator["real_score"] - discriminator["fake_score"]
        left = discriminator["loss"] < discriminator["equilibrium_loss"] - 0.02 and gap > 0
        checks.append(
            (
                left,
                f"the discriminator learns (loss below its equilibrium, real scored above fake; second half of "
                f"its training): loss {discriminator['loss']:.3f} vs {discriminator['equilibrium_loss']:.3f}, "
                f"real - fake score {gap:.3f}",
            )
        )
    return checks


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", default="data/demo", help="where the demo dataset is written")
    parser.add_argument(
        "--config", default=str(Path(__file__).resolve().parents[1] / "experiments" / "quickstart.yaml")
    )
    parser.add_argument("--max_batches", type=int, default=None, help="override the config's training length")
    parser.add_argument("overrides", nargs="*", help="extra CLI overrides, e.g. --trainer.precision=bf16-mixed")
    # overrides start with "--" like this script's options: whatever it does not know is passed on
    # to the CLI, which names a mistyped key in one line
    opts, passed_on = parser.parse_known_args(argv)
    opts.overrides = [*opts.overrides, *passed_on]
    # cli_main gets its arguments as a list; LightningCLI warns (printing the whole config) whenever
    # sys.argv holds anything else, such as this script's own options.
    warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")

    from datamodules.demo import make_demo_dataset

    data_dir = Path(opts.data_dir)
    manifests = (
        make_demo_dataset(data_dir)
        if not (data_dir / "manifests" / "cuts_train.jsonl.gz").exists()
        else {split: data_dir / "manifests" / f"cuts_{split}.jsonl.gz" for split in ("train", "val", "test")}
    )
    common = [
        "--config",
        opts.config,
        f"--data.init_args.train_cuts={manifests['train']}",
        f"--data.init_args.val_cuts={manifests['val']}",
        f"--data.init_args.test_cuts={manifests['test']}",
        *opts.overrides,
    ]
    if opts.max_batches is not None:
        common.append(f"--model.init_args.max_batches={opts.max_batches}")

    print("\n== 1/3 training (codecplatform fit) ==")
    fit = cli_main(["fit", *common])
    run_id = fit.trainer.logger.run_id
    # the checkpoint with the best validation mel distance (model selection on val, test on test)
    checkpoint = fit.trainer.checkpoint_callback.best_model_path
    best = read_checkpoint(checkpoint, "training checkpoint", required={"state_dict": dict})
    best_batch = int(best["state_dict"]["batch_counter"])
    print(f"\n== 2/3 testing the trained model (best validation checkpoint, batch {best_batch}) on held-out cuts ==")
    trained, per_bitrate, _ = _test_metrics(
        [*common, "--ckpt_path", checkpoint, f"--trainer.logger.init_args.run_id={run_id}"]
    )
    print("\n== 3/3 testing the same model untrained, for comparison ==")
    untrained, _, untrained_run = _test_metrics([*common, "--trainer.logger.init_args.run_name=quickstart-untrained"])
    discriminator = _discriminator_history(run_id, fit.trainer.logger._tracking_uri)

    width = 20
    print("\n" + "=" * 64)
    print(f"{'metric':<{width}}{'untrained':>14}{'trained':>14}   better")
    for name in METRICS:
        higher_better = name.endswith("si_sdr")
        better = trained[name] > untrained[name] if higher_better else trained[name] < untrained[name]
        print(f"{name:<{width}}{untrained[name]:>14.3f}{trained[name]:>14.3f}   {'yes' if better else 'NO'}")
    print("=" * 64)
    print(f"MLflow run (trained):   {run_id}")
    print(f"MLflow run (untrained): {untrained_run}")
    print(f"checkpoint:             {checkpoint} (best validation, batch {best_batch})")
    print(f"latest checkpoint:      {fit.trainer.checkpoint_callbacks[-1].last_model_path} (resume from this one)")
    print("open the MLflow UI:     make ui   (or: .venv/bin/mlflow ui --backend-store-uri sqlite:///mlflow.db)")
    print(f"                        then browse {run_url(UI_SERVER, fit.trainer.logger.experiment_id, run_id)}")
    ok = all(math.isfinite(v) for v in (*trained.values(), *untrained.values()))
    ok = (
        ok
        and trained["test/mel_distance"] < untrained["test/mel_distance"]
        and trained["test/si_sdr"] > untrained["test/si_sdr"]
    )
    if not ok:
        print("the trained model is not better than the untrained one: something is wrong")
    print("\nchecks of the trained model (test set):")
    for passed, text in _checks(per_bitrate, discriminator):
        print(f"  [{'PASS' if passed else 'FAIL'}] {text}")
        ok = ok and passed
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
