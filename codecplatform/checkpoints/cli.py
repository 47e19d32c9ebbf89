"""``codecplatform import-checkpoint``: official weights -> a checkpoint ``Codec.from_checkpoint`` reads.

    codecplatform import-checkpoint --family dac --variant 44khz \\
        --source weights_44khz_8kbps_0.0.1.pth --out dac_44khz.ckpt
    codecplatform import-checkpoint --family encodec --variant 24khz \\
        --source encodec_24khz-d7cc33bc.th --out encodec_24khz.ckpt

For DAC ``--variant`` may be left out when the file carries ``DAC.save``'s metadata (it names the
architecture); a variant that contradicts the metadata is an error. Prints the parameter count
and the written path; exit status 2 for a missing source file or an unknown family/variant.

Use the result in a notebook::

    codec = Codec.from_checkpoint("dac_44khz.ckpt")

Fine-tune from it: train the same experiment and start the codec from the imported weights
(the discriminators start fresh; the codec config of the experiment must describe the imported
architecture, which is checked strictly when fitting starts)::

    codecplatform fit --config experiments/dac/44khz.yaml \\
        --model.init_args.init_codec_from=dac_44khz.ckpt [--model.init_args.generator_optimizer.init_args.lr=1e-5 ...]

``init_codec_from`` is read in ``setup("fit")``; resuming an interrupted fine-tuning with
``--ckpt_path`` restores that checkpoint's weights on top, as usual.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

FAMILIES: dict[str, tuple[str, ...]] = {"dac": ("44khz", "24khz", "16khz"), "encodec": ("24khz", "48khz")}
USAGE_ERROR = 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="codecplatform import-checkpoint",
        description="Convert official codec weights into a codecplatform checkpoint.",
    )
    parser.add_argument("--family", required=True, help=f"one of {', '.join(FAMILIES)}")
    parser.add_argument(
        "--variant",
        default=None,
        help="dac: 44khz|24khz|16khz (default: from the file's metadata); encodec: 24khz|48khz",
    )
    parser.add_argument("--source", required=True, help="the official weights file")
    parser.add_argument("--out", required=True, help="where to write the checkpoint")
    return parser


def _fail(message: str) -> int:
    print(f"import-checkpoint: error: {message}", file=sys.stderr)
    return USAGE_ERROR


def main(argv: list[str] | None = None) -> int:
    """Run the import; returns the exit status (0, 1 for a failed conversion, 2 for usage errors)."""
    parser = _parser()
    try:
        args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    except SystemExit as exit_:  # argparse has printed the message
        return int(exit_.code or 0)
    family = args.family.lower()
    if family not in FAMILIES:
        return _fail(f"unknown family {args.family!r}: choose one of {', '.join(FAMILIES)}")
    if args.variant is not None and args.variant not in FAMILIES[family]:
        return _fail(f"unknown {family} variant {args.variant!r}: choose one of {', '.join(FAMILIES[family])}")
    source = Path(args.source)
    if not source.is_file():
        return _fail(f"source file not found: {source}")

    if family == "dac":
        from codecplatform.checkpoints.dac import import_dac as importer
    else:
        if args.variant is None:
            return _fail(f"--variant is required for encodec: choose one of {', '.join(FAMILIES[family])}")
        importer = _encodec_importer()
        if importer is None:
            return _fail("encodec import is not available (codecplatform.checkpoints.encodec.import_encodec)")
    try:
        out = importer(source, args.variant, args.out)
    except (ValueError, KeyError, RuntimeError) as error:
        print(f"import-checkpoint: conversion failed: {error}", file=sys.stderr)
        return 1

    from codecplatform.models.codec import Codec

    codec = Codec.from_checkpoint(out)
    counts = codec.num_parameters()
    print(
        f"imported {family} {args.variant or '(variant from metadata)'}: {counts['total']:,} parameters "
        f"(encoder {counts['encoder']:,}, quantizer {counts['quantizer']:,}, decoder {counts['decoder']:,})"
    )
    print(f"wrote {Path(out).resolve()}")
    return 0


def _encodec_importer():
    try:
        module = importlib.import_module("codecplatform.checkpoints.encodec")
    except ModuleNotFoundError as error:
        if error.name == "codecplatform.checkpoints.encodec":
            return None
        raise
    return getattr(module, "import_encodec", None)


if __name__ == "__main__":
    raise SystemExit(main())
