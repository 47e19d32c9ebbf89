"""Import of official DAC weights (Kumar et al. 2023, "High-Fidelity Audio Compression with Improved
RVQGAN"; descriptinc/descript-audio-codec) into a :class:`Codec`.

    from codecplatform.checkpoints.dac import import_dac
    import_dac("weights_44khz_8kbps_0.0.1.pth", "44khz", "dac_44khz.ckpt")
    codec = Codec.from_checkpoint("dac_44khz.ckpt")

The official file is what ``DAC.save(path, package=False)`` writes (and what the released
``weights_*.pth`` are): ``{"state_dict": DAC.state_dict(), "metadata": {"kwargs": {...}}}`` with
the constructor's keyword arguments (``encoder_dim``, ``encoder_rates``, ``latent_dim``,
``decoder_dim``, ``decoder_rates``, ``n_codebooks``, ``codebook_size``, ``codebook_dim``,
``quantizer_dropout``, ``sample_rate``). A bare state dict is accepted too (then the variant must
be named).

Key map (the module paths are the same; see :mod:`codecplatform.generators.dac`)::

    encoder.P.weight_g / weight_v          -> encoder.P.conv.parametrizations.weight.original0 / original1
    encoder.P.bias                         -> encoder.P.conv.bias
    decoder.model.i.block.1.*  (i >= 1)    -> decoder.model.i.block.1.convtr.*   (the transposed convs)
    decoder.P.*  (other convs)             -> decoder.P.conv.*
    *.alpha                                -> unchanged (Snake)
    quantizer.quantizers.i.P.weight_g/v    -> quantizer.layers.i.P.parametrizations.weight.original0/1
    quantizer.quantizers.i.P.bias          -> quantizer.layers.i.P.bias          (P = in_proj, out_proj)
    quantizer.quantizers.i.codebook.weight -> quantizer.layers.i.codebook.weight

Old-style weight norm (``weight_g``/``weight_v``, the released files) and new-style
(``parametrizations.weight.original0/1``) are both accepted. Weight norm is over dim 0 in both
libraries, so the tensors are copied unchanged.

Differences between the official model and ours (none in the 44.1 kHz model's outputs):

* the 24/16 kHz decoders (odd rate 5): the official transposed convolution returns one sample
  less per odd-rate block, so the official decoder output is ``320 T' - 8`` samples and ours
  ``320 T'``; the two agree except in the last few hundred samples (see
  :mod:`codecplatform.generators.dac`).
* the lookup: official code takes the argmax of ``-||e - c||^2`` of L2-normalized vectors, ours
  the argmax of their dot product: equal up to float rounding (exact ties aside).
* quantizer dropout is a training setting: the saved ``quantizer_dropout`` is not read; the
  imported config keeps the family recipe (``PerExampleDropout(p=0.5)``).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor

from codecplatform.checkpoints.base import CheckpointImporter
from codecplatform.checkpoints.io import check_codec_state
from codecplatform.checkpoints.keymap import load_weights_file, rename_state_dict
from codecplatform.models.codec import Codec

DACVariant = Literal["44khz", "24khz", "16khz"]
VARIANTS: tuple[str, ...] = ("44khz", "24khz", "16khz")

#: Constructor arguments of the released models (``conf/final/*.yml``), as ``DAC.save`` records them.
_SHARED_KWARGS: dict[str, Any] = dict(
    encoder_dim=64, latent_dim=1024, decoder_dim=1536, codebook_size=1024, codebook_dim=8
)
OFFICIAL_KWARGS: dict[str, dict[str, Any]] = {
    "44khz": dict(
        encoder_rates=[2, 4, 8, 8], decoder_rates=[8, 8, 4, 2], n_codebooks=9, sample_rate=44100, **_SHARED_KWARGS
    ),
    "24khz": dict(
        encoder_rates=[2, 4, 5, 8], decoder_rates=[8, 5, 4, 2], n_codebooks=32, sample_rate=24000, **_SHARED_KWARGS
    ),
    "16khz": dict(
        encoder_rates=[2, 4, 5, 8], decoder_rates=[8, 5, 4, 2], n_codebooks=12, sample_rate=16000, **_SHARED_KWARGS
    ),
}
#: The kwargs that define the architecture (``quantizer_dropout`` is a training setting).
ARCHITECTURE_KWARGS = tuple(OFFICIAL_KWARGS["44khz"])

_WN_PARAMS = {
    "weight_g": "parametrizations.weight.original0",
    "weight_v": "parametrizations.weight.original1",
    "parametrizations.weight.original0": "parametrizations.weight.original0",
    "parametrizations.weight.original1": "parametrizations.weight.original1",
    "bias": "bias",
}
_PARAM = "|".join(re.escape(p) for p in _WN_PARAMS)
_MODULE_PATH = r"(?:block|model)\.\d+(?:\.block\.\d+)*"  # Sequential indices, nested blocks
_GENERATOR_CONV = re.compile(rf"^(encoder|decoder)\.({_MODULE_PATH})\.({_PARAM})$")
_GENERATOR_ALPHA = re.compile(rf"^(encoder|decoder)\.({_MODULE_PATH})\.alpha$")
_DECODER_TRANSPOSED = re.compile(r"^model\.[1-9]\d*\.block\.1$")
_QUANTIZER_PROJ = re.compile(rf"^quantizer\.quantizers\.(\d+)\.(in_proj|out_proj)\.({_PARAM})$")
_QUANTIZER_CODEBOOK = re.compile(r"^quantizer\.quantizers\.(\d+)\.codebook\.weight$")


# -- configs -----------------------------------------------------------------------------------
def normalize_dac_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    """The architecture kwargs of an official ``DAC`` with defaults and derived values filled in
    (``latent_dim=None`` -> ``encoder_dim * 2**len(encoder_rates)``, lists as lists)."""
    out = dict(OFFICIAL_KWARGS["44khz"])  # the DAC constructor's defaults
    out["latent_dim"] = None
    out.update({k: v for k, v in kwargs.items() if k in ARCHITECTURE_KWARGS})
    for key in ("encoder_rates", "decoder_rates"):
        out[key] = [int(v) for v in out[key]]
    if out["latent_dim"] is None:
        out["latent_dim"] = int(out["encoder_dim"]) * 2 ** len(out["encoder_rates"])
    cb = out["codebook_dim"]
    out["codebook_dim"] = int(cb) if isinstance(cb, int) else [int(v) for v in cb]
    return out


def dac_codec_config_from_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Our Codec config (``{class_path, init_args}``) for an official ``DAC(**kwargs)`` of any size."""
    k = normalize_dac_kwargs(kwargs)
    if isinstance(k["codebook_dim"], list) and len(set(k["codebook_dim"])) == 1:
        k["codebook_dim"] = k["codebook_dim"][0]
    if isinstance(k["codebook_dim"], list) and len(k["codebook_dim"]) != k["n_codebooks"]:
        raise ValueError(f"codebook_dim {k['codebook_dim']} has not one entry per codebook ({k['n_codebooks']})")
    latent = k["latent_dim"]
    return {
        "class_path": "codecplatform.models.codec.Codec",
        "init_args": {
            "sample_rate": int(k["sample_rate"]),
            "bandwidths": None,
            "encoder": {
                "class_path": "codecplatform.generators.dac.DACEncoder",
                "init_args": {
                    "channels": 1,
                    "d_model": int(k["encoder_dim"]),
                    "strides": k["encoder_rates"],
                    "dimension": latent,
                },
            },
            "quantizer": {
                "class_path": "codecplatform.quantizers.factorized.FactorizedResidualVectorQuantizer",
                "init_args": {
                    "dimension": latent,
                    "n_q": int(k["n_codebooks"]),
                    "codebook_size": int(k["codebook_size"]),
                    "codebook_dim": k["codebook_dim"],
                    "dropout": {
                        "class_path": "codecplatform.quantizers.dropout.PerExampleDropout",
                        "init_args": {"p": 0.5},
                    },
                },
            },
            "decoder": {
                "class_path": "codecplatform.generators.dac.DACDecoder",
                "init_args": {
                    "channels": 1,
                    "dimension": latent,
                    "decoder_dim": int(k["decoder_dim"]),
                    "rates": k["decoder_rates"],
                },
            },
        },
    }


def dac_codec_config(variant: DACVariant) -> dict[str, Any]:
    """Our Codec config for a released DAC model, built from :data:`OFFICIAL_KWARGS`: the codec of
    ``experiments/dac/<variant>.yaml`` (``tests/checkpoints`` checks that the two agree)."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown DAC variant {variant!r}: choose one of {', '.join(VARIANTS)}")
    return dac_codec_config_from_kwargs(OFFICIAL_KWARGS[variant])


def variant_of(kwargs: dict[str, Any]) -> str | None:
    """The released variant whose architecture ``kwargs`` describe, or None."""
    arch = normalize_dac_kwargs(kwargs)
    for name, official in OFFICIAL_KWARGS.items():
        if arch == normalize_dac_kwargs(official):
            return name
    return None


def _kwargs_diff(a: dict[str, Any], b: dict[str, Any]) -> str:
    a, b = normalize_dac_kwargs(a), normalize_dac_kwargs(b)
    return ", ".join(f"{k}={a[k]!r} (expected {b[k]!r})" for k in ARCHITECTURE_KWARGS if a[k] != b[k])


# -- state dicts ---------------------------------------------------------------------------------
def convert_dac_state_dict(official: dict[str, Tensor]) -> dict[str, Tensor]:
    """Official ``DAC.state_dict()`` keys -> our Codec's keys (tensors unchanged).

    Raises ValueError naming every key that is not a DAC encoder/decoder/quantizer parameter,
    and every parameter given twice (old- and new-style weight norm together).
    """
    return rename_state_dict(official, _convert_key, "DAC")


def _convert_key(key: str) -> str | None:
    if m := _GENERATOR_ALPHA.match(key):
        part, path = m.groups()
        return key if path.startswith("block." if part == "encoder" else "model.") else None
    if m := _GENERATOR_CONV.match(key):
        part, path, param = m.groups()
        if part == "encoder" and not path.startswith("block."):
            return None
        if part == "decoder" and not path.startswith("model."):
            return None
        wrapper = "convtr" if part == "decoder" and _DECODER_TRANSPOSED.match(path) else "conv"
        return f"{part}.{path}.{wrapper}.{_WN_PARAMS[param]}"
    if m := _QUANTIZER_PROJ.match(key):
        i, proj, param = m.groups()
        return f"quantizer.layers.{i}.{proj}.{_WN_PARAMS[param]}"
    if m := _QUANTIZER_CODEBOOK.match(key):
        return f"quantizer.layers.{m.group(1)}.codebook.weight"
    return None


# -- files ---------------------------------------------------------------------------------------
def read_dac_file(source: str | Path) -> tuple[dict[str, Tensor], dict[str, Any] | None]:
    """An official DAC weights file -> (state dict, constructor kwargs or None for a bare state dict)."""
    content = load_weights_file(source, "DAC")
    if not isinstance(content, dict):
        raise ValueError(f"{source} holds a {type(content).__name__}, not a DAC state dict")
    if "state_dict" in content:
        state = content["state_dict"]
        metadata = content.get("metadata") or {}
        kwargs = metadata.get("kwargs") if isinstance(metadata, dict) else None
    else:
        state, kwargs = content, None
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ValueError(f"{source}: 'state_dict' is not a mapping of names to tensors")
    return state, kwargs


def import_dac(source: str | Path, variant: DACVariant | None, out: str | Path) -> Path:
    """Convert an official DAC weights file into a checkpoint for ``Codec.from_checkpoint``.

    Args:
        source: ``DAC.save`` output or a released ``weights_*.pth`` (or a bare ``state_dict``).
        variant: ``44khz``, ``24khz`` or ``16khz``; None infers it from the file's metadata. With
            metadata whose architecture is none of the released ones and ``variant=None``, the
            config is built from the metadata (custom sizes, e.g. for tests).
        out: where to write ``{"codec_config", "state_dict": {"codec.<key>"}, "source", "family"}``.

    Returns the written path. Raises ValueError on a variant that contradicts the metadata, on
    unknown keys, and on missing keys or wrong shapes (strict load).
    """
    state, kwargs = read_dac_file(source)
    if variant is not None and variant not in VARIANTS:
        raise ValueError(f"unknown DAC variant {variant!r}: choose one of {', '.join(VARIANTS)}")
    if kwargs is not None:
        found = variant_of(kwargs)
        if variant is not None and found != variant:
            raise ValueError(
                f"{source} is not the DAC {variant} model: its metadata differs in "
                f"{_kwargs_diff(kwargs, OFFICIAL_KWARGS[variant])}" + (f" (it is the {found} model)" if found else "")
            )
        variant = variant or found
        config = dac_codec_config(variant) if variant else dac_codec_config_from_kwargs(kwargs)
    elif variant is None:
        raise ValueError(f"{source} has no metadata (a bare state dict): name the variant ({', '.join(VARIANTS)})")
    else:
        config = dac_codec_config(variant)

    converted = convert_dac_state_dict(state)
    codec = Codec.from_config(config)
    check_codec_state(codec, converted, f"converted state dict of {source}")
    codec.load_state_dict(converted, strict=True)

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(
        {
            "codec_config": config,
            "state_dict": {f"codec.{k}": v.detach().clone() for k, v in codec.state_dict().items()},
            "source": str(Path(source).resolve()),
            "family": "dac",
            "variant": variant,
        },
        out,
    )
    return out


class DACImporter(CheckpointImporter):
    """Official DAC weights (``DAC.save`` / released ``weights_*.pth``): :func:`import_dac`."""

    family = "dac"
    variants = VARIANTS
    variant_from_file = True  # DAC.save's metadata names the architecture

    def codec_config(self, variant: str) -> dict[str, Any]:
        return dac_codec_config(variant)  # type: ignore[arg-type]

    def import_file(self, source: str | Path, variant: str | None, out: str | Path) -> Path:
        return import_dac(source, variant, out)  # type: ignore[arg-type]
