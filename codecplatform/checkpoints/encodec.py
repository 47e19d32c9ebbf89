"""Import of official EnCodec weights (Défossez et al. 2022, arXiv:2210.13438; facebookresearch/encodec)
into a :class:`Codec`.

    from codecplatform.checkpoints.encodec import import_encodec
    import_encodec("encodec_24khz-d7cc33bc.th", "24khz", "encodec_24khz.ckpt")
    codec = Codec.from_checkpoint("encodec_24khz.ckpt")

The official file is a bare ``EncodecModel.state_dict()`` (the released ``encodec_24khz-d7cc33bc.th``
and ``encodec_48khz-7e698e3e.th``). Key map (``P`` = a ``model.<i>`` path such as ``model.1.block.1``,
``model.1.shortcut``, ``model.3``; see :mod:`codecplatform.generators.seanet`)::

    P.conv.conv.weight_g       -> P.conv.parametrizations.weight.original0   (24 kHz: weight norm)
    P.conv.conv.weight_v       -> P.conv.parametrizations.weight.original1
    P.conv.conv.weight / bias  -> P.conv.weight / bias                       (48 kHz: plain conv)
    P.conv.norm.weight / bias  -> P.norm.weight / bias                       (48 kHz: GroupNorm(1, C))
    P.convtr.convtr.*          -> P.convtr.*              (decoder transposed convs, same rules)
    P.convtr.norm.*            -> P.norm.*
    model.i.lstm.*             -> unchanged                (P and model.i under encoder. / decoder.)
    quantizer.vq.layers.k._codebook.inited      -> quantizer.layers.k.initialized   float [1.] -> bool scalar
    quantizer.vq.layers.k._codebook.{cluster_size,embed,embed_avg} -> quantizer.layers.k.{same}

Weight norm is over dim 0 in both libraries, so g and v are copied unchanged (new-style
``parametrizations.weight.original0/1`` official keys are accepted as well).

Official model vs ours (all handled so that the outputs agree; see ``tests/checkpoints``):

* 48 kHz normalization: the official ``norm="time_group_norm"`` is ``GroupNorm(1, C)`` after each
  convolution, which our SEANet calls ``norm="time_layer_norm"`` (same module, same keys after the map).
* 48 kHz inference: the official model cuts the audio into 1 s segments with 1 % overlap,
  normalizes each by its own RMS and overlap-adds the decoded segments; the import config sets
  ``segment_seconds=1.0, segment_overlap=0.01`` (``Codec.encode`` then returns the segments' codes
  concatenated along time and one scale per segment).
* frame rate: official ``ceil(sample_rate / hop)``, ours ``sample_rate / hop``: equal (75, 150 Hz).
* the official ``decode`` returns the decoder's full output (a multiple of the hop); ours is
  trimmed to the input length.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor

from codecplatform.checkpoints.base import CheckpointImporter
from codecplatform.checkpoints.io import check_codec_state, key_list
from codecplatform.checkpoints.keymap import load_weights_file, rename_state_dict
from codecplatform.config import merge_config
from codecplatform.models.codec import Codec
from codecplatform.nn.conv import StreamableConvTranspose1d

EncodecVariant = Literal["24khz", "48khz"]


def _seanet(channels: int, causal: bool, norm: str) -> dict[str, Any]:
    """Official ``SEANetEncoder``/``SEANetDecoder`` arguments (``encodec/modules/seanet.py``)."""
    return {
        "channels": channels,
        "dimension": 128,
        "n_filters": 32,
        "n_residual_layers": 1,
        "ratios": [8, 5, 4, 2],
        "activation_alpha": 1.0,
        "norm": norm,
        "kernel_size": 7,
        "last_kernel_size": 7,
        "residual_kernel_size": 3,
        "dilation_base": 2,
        "causal": causal,
        "pad_mode": "reflect",
        "true_skip": False,
        "compress": 2,
        "lstm_layers": 2,
    }


def _official_config(
    sample_rate: int,
    channels: int,
    bandwidths: list[float],
    n_q: int,
    causal: bool,
    norm: str,
    normalize: bool,
    segment_seconds: float | None,
) -> dict[str, Any]:
    """The architecture of ``EncodecModel._get_model(...)`` as our Codec config."""
    return {
        "class_path": "codecplatform.models.codec.Codec",
        "init_args": {
            "sample_rate": sample_rate,
            "bandwidths": bandwidths,
            "normalize": normalize,
            "segment_seconds": segment_seconds,
            "segment_overlap": 0.01,
            "encoder": {
                "class_path": "codecplatform.generators.seanet.SEANetEncoder",
                "init_args": _seanet(channels, causal, norm),
            },
            "quantizer": {
                "class_path": "codecplatform.quantizers.ema_residual.ResidualVectorQuantizer",
                "init_args": {
                    "dimension": 128,
                    "n_q": n_q,
                    "codebook_size": 1024,
                    "decay": 0.99,
                    "epsilon": 1e-5,
                    "kmeans_init": True,
                    "kmeans_iters": 50,
                    "threshold_ema_dead_code": 2.0,
                },
            },
            "decoder": {
                "class_path": "codecplatform.generators.seanet.SEANetDecoder",
                "init_args": {**_seanet(channels, causal, norm), "trim_right_ratio": 1.0},
            },
        },
    }


#: ``encodec_model_24khz`` / ``encodec_model_48khz``; n_q = 1000 * max bandwidth // (frame rate * 10 bits).
OFFICIAL_CONFIGS: dict[str, dict[str, Any]] = {
    "24khz": _official_config(
        24000,
        1,
        [1.5, 3.0, 6.0, 12.0, 24.0],
        32,
        causal=True,
        norm="weight_norm",
        normalize=False,
        segment_seconds=None,
    ),
    # Official norm "time_group_norm" = GroupNorm(1, C), which our SEANet names "time_layer_norm".
    # segment_seconds=1.0: the official 48 kHz inference (our 48khz_stereo.yaml leaves it unset,
    # i.e. whole-signal inference, since training only sees 1 s windows anyway).
    "48khz": _official_config(
        48000,
        2,
        [3.0, 6.0, 12.0, 24.0],
        16,
        causal=False,
        norm="time_layer_norm",
        normalize=True,
        segment_seconds=1.0,
    ),
}


# -- configs -----------------------------------------------------------------------------------
#: The family recipe's training-only settings that the official files do not describe, as
#: ``experiments/encodec/_encodec.yaml`` sets them (used when fine-tuning an imported model).
TRAINING_SETTINGS: dict[str, Any] = {
    "init_args": {
        "quantizer": {"init_args": {"dropout": {"class_path": "codecplatform.quantizers.dropout.PerBatchChoice"}}}
    }
}


def encodec_codec_config(variant: EncodecVariant) -> dict[str, Any]:
    """Our Codec config (``{class_path, init_args}``) of a released EnCodec model.

    The official architecture and inference values (:data:`OFFICIAL_CONFIGS`) with the family's
    training-only settings (:data:`TRAINING_SETTINGS`, e.g. the quantizer dropout policy): the
    codec of ``experiments/encodec/<24khz_mono|48khz_stereo>.yaml`` with every architecture and
    inference value set to the official model's (``tests/checkpoints`` checks that they agree).
    """
    if variant not in OFFICIAL_CONFIGS:
        raise ValueError(f"unknown EnCodec variant {variant!r}: choose one of {', '.join(OFFICIAL_CONFIGS)}")
    return copy.deepcopy(merge_config(TRAINING_SETTINGS, OFFICIAL_CONFIGS[variant]))  # callers may edit it


# -- state dicts ---------------------------------------------------------------------------------
_WN_PARAMS: dict[str, str] = {
    "weight_g": "parametrizations.weight.original0",
    "weight_v": "parametrizations.weight.original1",
    "parametrizations.weight.original0": "parametrizations.weight.original0",
    "parametrizations.weight.original1": "parametrizations.weight.original1",
    "weight": "weight",
    "bias": "bias",
}
_PARAM = "|".join(re.escape(p) for p in _WN_PARAMS)
_PATH = r"model\.\d+(?:\.block\.\d+|\.shortcut)?"  # a Sequential entry, or a residual block's conv
_CONV = re.compile(rf"^(encoder|decoder)\.({_PATH})\.(conv\.conv|convtr\.convtr)\.({_PARAM})$")
_NORM = re.compile(rf"^(encoder|decoder)\.({_PATH})\.(?:conv|convtr)\.norm\.(weight|bias)$")
_LSTM = re.compile(r"^(encoder|decoder)\.model\.\d+\.lstm\.(?:weight|bias)_(?:ih|hh)_l\d+$")
_CODEBOOK = re.compile(r"^quantizer\.vq\.layers\.(\d+)\._codebook\.(inited|cluster_size|embed|embed_avg)$")
_CODEBOOK_BUFFERS: dict[str, str] = {
    "inited": "initialized",
    "cluster_size": "cluster_size",
    "embed": "embed",
    "embed_avg": "embed_avg",
}


def convert_encodec_state_dict(official: dict[str, Tensor]) -> dict[str, Tensor]:
    """Official ``EncodecModel.state_dict()`` -> our Codec's state dict (see the module docstring).

    Tensors are unchanged except ``inited`` (float [0.] or [1.]) -> ``initialized`` (bool scalar).
    Raises ValueError naming every key that is no EnCodec encoder/decoder/quantizer entry, every
    entry given twice (old- and new-style weight norm together) and every ``inited`` that is not
    one 0/1 value. Missing entries are found against the architecture by :func:`import_encodec`.
    """
    return rename_state_dict(
        official,
        _convert_key,
        "EnCodec",
        lambda key, value: _inited_to_bool(key, value) if key.endswith(".inited") else value,
    )


def _convert_key(key: str) -> str | None:
    if m := _CONV.match(key):
        part, path, wrapper, param = m.groups()
        if wrapper == "convtr.convtr" and part != "decoder":
            return None
        return f"{part}.{path}.{wrapper.split('.')[0]}.{_WN_PARAMS[param]}"
    if m := _NORM.match(key):
        part, path, param = m.groups()
        return f"{part}.{path}.norm.{param}"
    if _LSTM.match(key):
        return key
    if m := _CODEBOOK.match(key):
        k, buffer = m.groups()
        return f"quantizer.layers.{k}.{_CODEBOOK_BUFFERS[buffer]}"
    return None


def _inited_to_bool(key: str, value: Tensor) -> Tensor:
    """Official ``inited`` (float tensor [0.] or [1.]) -> bool scalar."""
    if value.numel() != 1 or float(value.reshape(())) not in (0.0, 1.0):
        raise ValueError(f"{key} must hold one value 0 or 1, got {value.tolist()}")
    return value.reshape(()).bool()


def _official_key(codec: Codec, key: str) -> str:
    """Our ``codec`` state-dict key -> the released file's key (old-style weight norm), for messages."""
    if m := re.match(r"^quantizer\.layers\.(\d+)\.(\w+)$", key):
        names = {ours: theirs for theirs, ours in _CODEBOOK_BUFFERS.items()}
        return f"quantizer.vq.layers.{m.group(1)}._codebook.{names.get(m.group(2), m.group(2))}"
    if m := re.match(r"^(.*)\.norm\.(weight|bias)$", key):
        wrapper = "convtr" if isinstance(codec.get_submodule(m.group(1)), StreamableConvTranspose1d) else "conv"
        return f"{m.group(1)}.{wrapper}.norm.{m.group(2)}"
    if m := re.match(r"^(.*)\.(conv|convtr)\.(.*)$", key):
        path, wrapper, param = m.groups()
        param = {"parametrizations.weight.original0": "weight_g", "parametrizations.weight.original1": "weight_v"}.get(
            param, param
        )
        return f"{path}.{wrapper}.{wrapper}.{param}"
    return key


# -- files ---------------------------------------------------------------------------------------
def read_encodec_file(source: str | Path) -> dict[str, Tensor]:
    """An official EnCodec weights file (a bare ``EncodecModel.state_dict()``) -> the state dict."""
    state = load_weights_file(source, "EnCodec")
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ValueError(f"{source} is not an EnCodec state dict (a mapping of names to tensors)")
    return state


def import_encodec(source: str | Path, variant: EncodecVariant, out: str | Path) -> Path:
    """Convert an official EnCodec weights file into a checkpoint for ``Codec.from_checkpoint``.

    Args:
        source: a released ``encodec_24khz-*.th`` / ``encodec_48khz-*.th`` (``EncodecModel.state_dict()``).
        variant: ``24khz`` (mono, causal, weight norm, 32 codebooks) or ``48khz`` (stereo,
            non-causal, GroupNorm, 16 codebooks, normalized 1 s segments).
        out: where to write ``{"codec_config", "state_dict": {"codec.<key>"}, "source", "family",
            "variant"}``.

    Returns the written path. Raises ValueError naming, with the official names, keys that are
    no EnCodec entry, keys this architecture lacks (unexpected) or needs (missing); then shape
    mismatches; the weights are then loaded strictly.
    """
    config = encodec_codec_config(variant)
    official = read_encodec_file(source)
    converted = convert_encodec_state_dict(official)
    codec = Codec.from_config(config)
    own = codec.state_dict()
    missing = [_official_key(codec, k) for k in own if k not in converted]
    unexpected = [k for k in official if _convert_key(k) not in own]
    problems = [f"missing official keys ({len(missing)}): {key_list(missing)}"] if missing else []
    problems += [f"unexpected keys ({len(unexpected)}): {key_list(unexpected)}"] if unexpected else []
    if problems:
        raise ValueError(f"{source} is not the EnCodec {variant} model: " + "; ".join(problems))
    check_codec_state(codec, converted, f"converted state dict of {source}")
    codec.load_state_dict(converted, strict=True)

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(
        {
            "codec_config": config,
            "state_dict": {f"codec.{k}": v.detach().clone() for k, v in codec.state_dict().items()},
            "source": str(source),
            "family": "encodec",
            "variant": variant,
        },
        out,
    )
    return out


class EncodecImporter(CheckpointImporter):
    """Official EnCodec weights (a bare ``EncodecModel.state_dict()``): :func:`import_encodec`."""

    family = "encodec"
    variants = tuple(OFFICIAL_CONFIGS)
    variant_from_file = False  # a bare state dict does not say which model it is

    def codec_config(self, variant: str) -> dict[str, Any]:
        return encodec_codec_config(variant)  # type: ignore[arg-type]

    def import_file(self, source: str | Path, variant: str | None, out: str | Path) -> Path:
        if variant is None:
            raise ValueError(f"name the EnCodec variant of {source}: one of {', '.join(self.variants)}")
        return import_encodec(source, variant, out)  # type: ignore[arg-type]
