"""``codecplatform import-checkpoint``: official weights -> a checkpoint ``Codec.from_checkpoint`` reads.

    codecplatform import-checkpoint --family dac --variant 44khz \\
        --source weights_44khz_8kbps_0.0.1.pth --out dac_44khz.ckpt
    codecplatform import-checkpoint --family encodec --variant 24khz \\
        --source encodec_24khz-d7cc33bc.th --out encodec_24khz.ckpt
    codecplatform import-checkpoint --family muffin --variant 75hz --source g_00500000 --out muffin_75hz.ckpt
    codecplatform import-checkpoint --family spectrostream \\
        --source encoder.safetensors mrt2_small.safetensors --out spectrostream.ckpt
    codecplatform import-checkpoint --family mucodec --source mucodec.pt audioldm_48k.pth --out mucodec.ckpt

For DAC ``--variant`` may be left out when the file carries ``DAC.save``'s metadata (it names the
architecture); a variant that contradicts the metadata is an error. Prints the parameter count
and the written path; exit status 2 for a missing source file or an unknown family/variant.
``--family`` is a name of :data:`IMPORTERS` or the class path of a
:class:`~codecplatform.checkpoints.base.CheckpointImporter` subclass.

Use the result in a notebook::

    codec = Codec.from_checkpoint("dac_44khz.ckpt")

Fine-tune from it with ``--model.init_args.init_codec_from=dac_44khz.ckpt`` (docs/training.md).
"""

from __future__ import annotations

import argparse
import sys
from importlib import import_module
from pathlib import Path

from codecplatform.checkpoints.base import CheckpointImporter
from codecplatform.checkpoints.dac import DACImporter
from codecplatform.checkpoints.encodec import EncodecImporter
from codecplatform.checkpoints.mucodec import MuCodecImporter
from codecplatform.checkpoints.muffin import MuffinImporter
from codecplatform.checkpoints.spectrostream import SpectroStreamImporter

USAGE_ERROR = 2

IMPORTERS: dict[str, type[CheckpointImporter]] = {
    cls.family: cls for cls in (DACImporter, EncodecImporter, MuffinImporter, SpectroStreamImporter, MuCodecImporter)
}


def importer_class(name: str) -> type[CheckpointImporter]:
    """The importer for ``name``: a family of :data:`IMPORTERS` (any case) or the class path
    (``package.module.Class``) of a :class:`CheckpointImporter` subclass. ValueError otherwise."""
    if name.lower() in IMPORTERS:
        return IMPORTERS[name.lower()]
    module, _, attribute = name.rpartition(".")
    cls = None
    if module:
        try:
            cls = getattr(import_module(module), attribute, None)
        except ImportError:
            cls = None
    if cls is None:
        raise ValueError(
            f"unknown family {name!r}: choose one of {', '.join(IMPORTERS)} or a CheckpointImporter class path"
        )
    if not (isinstance(cls, type) and issubclass(cls, CheckpointImporter)):
        raise ValueError(f"{name} is not a CheckpointImporter subclass")
    return cls


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="codecplatform import-checkpoint",
        description="Convert official codec weights into a codecplatform checkpoint.",
    )
    parser.add_argument(
        "--family",
        required=True,
        help=f"one of {', '.join(IMPORTERS)}, or the class path of a codecplatform.checkpoints.base.CheckpointImporter",
    )
    variants = "; ".join(
        f"{name}: {'|'.join(cls.variants)}" + (" (default: from the file)" if cls.variant_from_file else "")
        for name, cls in IMPORTERS.items()
    )
    parser.add_argument("--variant", default=None, help=variants)
    several = ", ".join(name for name, cls in IMPORTERS.items() if cls.multiple_sources)
    parser.add_argument("--source", required=True, nargs="+", help=f"the official weights file (several for {several})")
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
    try:
        importer = importer_class(args.family)()
    except ValueError as error:
        return _fail(str(error))
    family, choices = importer.family, ", ".join(importer.variants)
    if args.variant is not None and args.variant not in importer.variants:
        return _fail(f"unknown {family} variant {args.variant!r}: choose one of {choices}")
    if args.variant is None and not importer.variant_from_file:
        return _fail(f"--variant is required for {family}: choose one of {choices}")
    sources = [Path(s) for s in args.source]
    if len(sources) > 1 and not importer.multiple_sources:
        return _fail(f"{family} takes one --source file, got {len(sources)}")
    for source in sources:
        if not source.is_file():
            return _fail(f"source file not found: {source}")
    try:
        out = importer.import_file(sources if importer.multiple_sources else sources[0], args.variant, args.out)
    except (ValueError, KeyError, RuntimeError) as error:
        print(f"import-checkpoint: conversion failed: {error}", file=sys.stderr)
        return 1

    from codecplatform.models.base import AudioCodec

    codec = AudioCodec.from_checkpoint(out)
    counts = codec.num_parameters()
    parts = ", ".join(f"{name} {count:,}" for name, count in counts.items() if name != "total")
    print(
        f"imported {family} {args.variant or '(variant from the file)'}: {counts['total']:,} parameters"
        + (f" ({parts})" if parts else "")
    )
    print(f"wrote {Path(out).resolve()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
