"""The base class of importers: official weights of one codec family -> a codecplatform checkpoint.

An importer knows its family's released variants, builds our Codec config for each in code (no
experiment YAML is read at run time) and converts a weights file into a checkpoint that
``Codec.from_checkpoint`` reads::

    {"codec_config": {class_path, init_args}, "state_dict": {"codec.<key>": tensor}, "source", "family", "variant"}

A new family is one subclass plus its entry in :data:`codecplatform.checkpoints.cli.IMPORTERS`
(``codecplatform import-checkpoint --family`` also takes the class path of any subclass).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar


class CheckpointImporter(ABC):
    """Converts official weights of one codec family.

    Class attributes:
        family: the name ``import-checkpoint --family`` knows it by (``dac``, ``encodec``).
        variants: the released models (``--variant`` choices).
        variant_from_file: True when a weights file names its own variant (DAC's metadata), so
            ``variant=None`` is allowed.
        multiple_sources: True when the official weights come in several files (SpectroStream's
            encoder and model checkpoint, MuCodec's codec and AudioLDM files): ``import_file``
            then receives the list of files (``--source`` takes several).
    """

    family: ClassVar[str]
    variants: ClassVar[tuple[str, ...]]
    variant_from_file: ClassVar[bool] = False
    multiple_sources: ClassVar[bool] = False

    @abstractmethod
    def codec_config(self, variant: str) -> dict[str, Any]:
        """Our Codec config (``{class_path, init_args}``) of the released ``variant``."""

    @abstractmethod
    def import_file(self, source: str | Path | list[Path], variant: str | None, out: str | Path) -> Path:
        """Convert the official weights file ``source`` (the list of files when ``multiple_sources``)
        into a checkpoint at ``out``; returns ``out``.

        Raises ValueError (or KeyError/RuntimeError) naming the problem when ``source`` is not
        this family's ``variant``.
        """
