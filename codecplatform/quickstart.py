"""``make quickstart``: demo data -> fit -> test (trained and untrained) -> where to look.

    python -m codecplatform.quickstart [--data_dir data/demo] [--config experiments/quickstart.yaml]

Everything is logged to the MLflow store ``sqlite:///mlflow.db`` in the current directory.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch

from codecplatform.cli import cli_main

METRICS = ("test/mel_distance", "test/si_sdr")


def _test_metrics(args: list[str]) -> tuple[dict[str, float], str]:
    cli = cli_main(["test", *args])
    metrics = {name: float(cli.trainer.callback_metrics[name]) for name in METRICS}
    return metrics, cli.trainer.logger.run_id


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", default="data/demo", help="where the demo dataset is written")
    parser.add_argument(
        "--config", default=str(Path(__file__).resolve().parents[1] / "experiments" / "quickstart.yaml")
    )
    parser.add_argument("--max_batches", type=int, default=None, help="override the config's training length")
    parser.add_argument("overrides", nargs="*", help="extra CLI overrides, e.g. --trainer.precision=bf16-mixed")
    opts = parser.parse_args(argv)

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
    best_batch = int(torch.load(checkpoint, map_location="cpu", weights_only=False)["state_dict"]["batch_counter"])
    print(f"\n== 2/3 testing the trained model (best validation checkpoint, batch {best_batch}) on held-out cuts ==")
    trained, _ = _test_metrics([*common, "--ckpt_path", checkpoint, f"--trainer.logger.init_args.run_id={run_id}"])
    print("\n== 3/3 testing the same model untrained, for comparison ==")
    untrained, untrained_run = _test_metrics([*common, "--trainer.logger.init_args.run_name=quickstart-untrained"])

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
    print("                        then browse http://127.0.0.1:5000, experiment 'codecplatform'")
    ok = all(math.isfinite(v) for v in (*trained.values(), *untrained.values()))
    ok = (
        ok
        and trained["test/mel_distance"] < untrained["test/mel_distance"]
        and trained["test/si_sdr"] > untrained["test/si_sdr"]
    )
    if not ok:
        print("the trained model is not better than the untrained one: something is wrong")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
