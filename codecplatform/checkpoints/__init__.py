"""Importers of official codec weights (see :mod:`codecplatform.checkpoints.base`).

:data:`IMPORTERS` is the one mapping from ``import-checkpoint --family`` names to importer
classes; :func:`importer_class` also accepts the class path of any :class:`CheckpointImporter`.
"""

from __future__ import annotations

from importlib import import_module

from codecplatform.checkpoints.base import CheckpointImporter
from codecplatform.checkpoints.dac import DACImporter, convert_dac_state_dict, dac_codec_config, import_dac
from codecplatform.checkpoints.encodec import (
    EncodecImporter,
    convert_encodec_state_dict,
    encodec_codec_config,
    import_encodec,
)

IMPORTERS: dict[str, type[CheckpointImporter]] = {cls.family: cls for cls in (DACImporter, EncodecImporter)}


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


__all__ = [
    "IMPORTERS",
    "CheckpointImporter",
    "DACImporter",
    "EncodecImporter",
    "convert_dac_state_dict",
    "convert_encodec_state_dict",
    "dac_codec_config",
    "encodec_codec_config",
    "import_dac",
    "import_encodec",
    "importer_class",
]
