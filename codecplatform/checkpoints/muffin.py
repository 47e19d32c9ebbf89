"""Import of official MUFFIN weights (Ng et al. 2025, "Multi-band Frequency Reconstruction for Neural
Psychoacoustic Coding", arXiv:2505.07235; https://github.com/dianwen-ng/MUFFIN) into a :class:`Codec`.

    codecplatform import-checkpoint --family muffin --variant 75hz --source g_00500000 --out muffin_75hz.ckpt

The official file is what the official ``train.py`` saves as ``g_<step>`` (``torch.save`` of
``{"generator": Generator.state_dict(), "encoder": Encoder.state_dict(), "quantizer":
Quantizer.state_dict()}``): the repository documents no other weight file, so this is the released
format. The variant (``egs/configs/config_24k_*.json``) must be named: the file does not say which.

Key map (module paths are the same as ours, see :mod:`codecplatform.generators.muffin`)::

    encoder.P.weight_g / weight_v / bias     -> encoder.P.conv.parametrizations.weight.original0 / original1 / bias
    generator.ups.i.1.weight_g / ...         -> decoder.ups.i.1.convtr.* (the transposed convs)
    generator.P.weight_g / ...               -> decoder.P.conv.*
    *.alpha / beta / gamma                   -> unchanged (modified snake, GRN)
    quantizer.quantizer.vq.layers.k._codebook.inited -> quantizer.layers.k.initialized  float [1.] -> bool
    quantizer.quantizer.vq.layers.k._codebook.{cluster_size, embed, embed_avg} -> quantizer.layers.k.*

New-style weight norm keys (``parametrizations.weight.original0/1``) are accepted as well. Only the
EMA quantizer (``quantizer_type: ema``, every official config) is supported; the DAC-style
``spectral`` quantizer has other keys and is refused by name.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

from torch import Tensor

from codecplatform.checkpoints.base import CheckpointImporter
from codecplatform.checkpoints.keymap import (
    check_converted,
    load_weights_file,
    rename_state_dict,
    write_codec_checkpoint,
)
from codecplatform.models.codec import Codec

#: The official configs (``egs/configs/config_24k_*.json``): encoder strides (``model_sample_rates``
#: reversed), MBS scales, MRF dilations, codebook size.
OFFICIAL_VARIANTS: dict[str, dict[str, Any]] = {
    "75hz": dict(strides=[2, 4, 5, 8], scales=[4, 2, 1, 1], dilations=[1, 3, 3, 5], codebook_size=1024),
    "75hz_512codes": dict(strides=[2, 4, 5, 8], scales=[4, 2, 1, 1], dilations=[1, 3, 5], codebook_size=512),
    "12.5hz": dict(strides=[3, 5, 8, 16], scales=[4, 4, 2, 2, 1, 1, 1, 1], dilations=[1, 3, 3, 5], codebook_size=1024),
    "6.25hz": dict(strides=[4, 5, 12, 16], scales=[4, 4, 2, 2, 1, 1, 1, 1], dilations=[1, 3, 3, 5], codebook_size=1024),
}
VARIANTS: tuple[str, ...] = tuple(OFFICIAL_VARIANTS)
SAMPLE_RATE, DIMENSION = 24000, 512


def muffin_codec_config(variant: str) -> dict[str, Any]:
    """Our Codec config of an official MUFFIN variant: the architecture of ``experiments/muffin/<rate>.yaml``
    (the training settings of ``_muffin.yaml`` too: search dropout 0.1, per-stage straight-through),
    one bandwidth per codebook count."""
    if variant not in OFFICIAL_VARIANTS:
        raise ValueError(f"unknown MUFFIN variant {variant!r}: choose one of {', '.join(VARIANTS)}")
    v = copy.deepcopy(OFFICIAL_VARIANTS[variant])
    hop = 1
    for s in v["strides"]:
        hop *= s
    kbps_per_codebook = SAMPLE_RATE / hop * (v["codebook_size"] - 1).bit_length() / 1000
    n_q = len(v["scales"])
    blocks = dict(resblock_kernel_sizes=[3, 7, 11], resblock_dilations=v["dilations"], groups=32, expansion=3)
    return {
        "class_path": "codecplatform.models.codec.Codec",
        "init_args": {
            "sample_rate": SAMPLE_RATE,
            "bandwidths": [round(kbps_per_codebook * (k + 1), 6) for k in range(n_q)],
            "encoder": {
                "class_path": "codecplatform.generators.muffin.MuffinEncoder",
                "init_args": {"channels": 1, "d_model": 32, "strides": v["strides"], "dimension": DIMENSION, **blocks},
            },
            "quantizer": {
                "class_path": "codecplatform.quantizers.ema_residual.ResidualVectorQuantizer",
                "init_args": {
                    "dimension": DIMENSION,
                    "n_q": n_q,
                    "codebook_size": v["codebook_size"],
                    "decay": 0.99,
                    "kmeans_init": True,
                    "kmeans_iters": 50,
                    "threshold_ema_dead_code": 2.0,
                    "search_dropout": 0.1,
                    "dropout": None,
                    "straight_through": "per_stage",
                    "stage_hook": {
                        "class_path": "codecplatform.quantizers.band_limit.BandLimit",
                        "init_args": {"scales": v["scales"]},
                    },
                },
            },
            "decoder": {
                "class_path": "codecplatform.generators.muffin.MuffinDecoder",
                "init_args": {
                    "channels": 1,
                    "dimension": DIMENSION,
                    "decoder_dim": DIMENSION,
                    "rates": v["strides"][::-1],
                    **blocks,
                },
            },
        },
    }


# -- state dicts ---------------------------------------------------------------------------------
_WN = {
    "weight_g": "parametrizations.weight.original0",
    "weight_v": "parametrizations.weight.original1",
    "parametrizations.weight.original0": "parametrizations.weight.original0",
    "parametrizations.weight.original1": "parametrizations.weight.original1",
    "bias": "bias",
}
_PATH = r"(?:conv_pre|conv_post\.\d+|(?:downs|ups|resblock_post)\.\d+\.\d+|resblocks\.\d+\.convs[12]\.\d+\.\d+)"
_CONV = re.compile(rf"^({_PATH})\.({'|'.join(re.escape(k) for k in _WN)})$")
_ACTIVATION = re.compile(
    r"^(?:(?:downs|ups|resblock_post)\.\d+\.\d+|conv_post\.\d+|resblocks\.\d+\.convs[12]\.\d+\.0|resblocks\.\d+\.norm)"
    r"\.(?:alpha|beta|gamma)$"
)
_CODEBOOK = re.compile(r"^quantizer\.vq\.layers\.(\d+)\._codebook\.(inited|cluster_size|embed|embed_avg)$")
_BUFFERS = {"inited": "initialized", "cluster_size": "cluster_size", "embed": "embed", "embed_avg": "embed_avg"}
#: the official file's parts and ours
PARTS = {"encoder": "encoder", "generator": "decoder", "quantizer": "quantizer"}


def _convert_key(key: str) -> str | None:
    """``<part>.<official key>`` (part = encoder, generator, quantizer) -> our Codec key, None if unknown."""
    part, _, rest = key.partition(".")
    if part in ("encoder", "generator"):
        ours = PARTS[part]
        if m := _CONV.match(rest):
            path, param = m.groups()
            wrapper = "convtr" if part == "generator" and path.startswith("ups.") else "conv"
            return f"{ours}.{path}.{wrapper}.{_WN[param]}"
        return f"{ours}.{rest}" if _ACTIVATION.match(rest) else None
    if part == "quantizer" and (m := _CODEBOOK.match(rest)):
        return f"quantizer.layers.{m.group(1)}.{_BUFFERS[m.group(2)]}"
    return None


def _official_key(key: str) -> str:
    """Our Codec key -> the official file's (old-style weight norm), for messages."""
    part, _, rest = key.partition(".")
    if part == "quantizer" and (m := re.match(r"^layers\.(\d+)\.(\w+)$", rest)):
        names = {ours: theirs for theirs, ours in _BUFFERS.items()}
        return f"quantizer.quantizer.vq.layers.{m.group(1)}._codebook.{names.get(m.group(2), m.group(2))}"
    rest = re.sub(r"\.(conv|convtr)\.parametrizations\.weight\.original0$", ".weight_g", rest)
    rest = re.sub(r"\.(conv|convtr)\.parametrizations\.weight\.original1$", ".weight_v", rest)
    rest = re.sub(r"\.(conv|convtr)\.bias$", ".bias", rest)
    return f"{'generator' if part == 'decoder' else part}.{rest}"


def _inited_to_bool(key: str, value: Tensor) -> Tensor:
    if value.numel() != 1 or float(value.reshape(())) not in (0.0, 1.0):
        raise ValueError(f"{key} must hold one value 0 or 1, got {value.tolist()}")
    return value.reshape(()).bool()


def convert_muffin_checkpoint(content: dict[str, Any], source: str | Path = "the MUFFIN file") -> dict[str, Tensor]:
    """The official ``{"generator", "encoder", "quantizer"}`` state dicts -> our Codec's state dict
    (``encoder.*``, ``quantizer.*``, ``decoder.*``; see the module docstring).

    Raises ValueError naming ``source`` and the first keys when a part is missing, is not a mapping
    of names to tensors, or holds keys that are no MUFFIN entry (``spectral`` quantizer included)."""
    missing = [part for part in PARTS if not isinstance(content.get(part), dict)]
    if missing:
        raise ValueError(
            f"{source} is not a MUFFIN generator checkpoint (g_<step>): it has no {', '.join(map(repr, missing))} "
            f"state dict (keys: {', '.join(map(str, list(content)[:8]))})"
        )
    flat: dict[str, Tensor] = {}
    for part in PARTS:
        for key, value in content[part].items():
            if not isinstance(value, Tensor):
                raise ValueError(f"{source}: {part}.{key} is a {type(value).__name__}, not a tensor")
            flat[f"{part}.{key}"] = value
    return rename_state_dict(
        flat,
        _convert_key,
        f"MUFFIN ({source})",
        lambda key, value: _inited_to_bool(key, value) if key.endswith("._codebook.inited") else value,
    )


def import_muffin(source: str | Path, variant: str, out: str | Path, config: dict[str, Any] | None = None) -> Path:
    """Convert an official MUFFIN ``g_<step>`` file into a checkpoint for ``Codec.from_checkpoint``.

    ``config``: our Codec config to build instead of the ``variant``'s (tests: a small model).
    Raises ValueError naming the file and the first offending keys (unknown, missing, wrong shape:
    a file of another variant) before anything is written."""
    config = copy.deepcopy(config) if config is not None else muffin_codec_config(variant)
    converted = convert_muffin_checkpoint(load_weights_file(source, "MUFFIN"), source)
    codec = Codec.from_config(config)
    check_converted(codec, converted, source, f"the MUFFIN {variant} model", _official_key)
    codec.load_state_dict(converted, strict=True)
    return write_codec_checkpoint(codec, config, source, "muffin", variant, out)


class MuffinImporter(CheckpointImporter):
    """Official MUFFIN weights (``train.py``'s ``g_<step>``): :func:`import_muffin`."""

    family = "muffin"
    variants = VARIANTS
    variant_from_file = False  # the file does not name its config

    def codec_config(self, variant: str) -> dict[str, Any]:
        return muffin_codec_config(variant)

    def import_file(self, source: str | Path, variant: str | None, out: str | Path) -> Path:
        if variant is None:
            raise ValueError(f"name the MUFFIN variant of {source}: one of {', '.join(self.variants)}")
        return import_muffin(source, variant, out)
