"""Import of official SpectroStream weights (Li et al. 2025, "SpectroStream: A Versatile Neural Codec for
General Audio", arXiv:2508.05207; https://github.com/magenta/magenta-realtime) into a :class:`Codec`.

    codecplatform import-checkpoint --family spectrostream \\
        --source encoder.safetensors mrt2_small.safetensors --out spectrostream.ckpt

The official model is JAX (flax, on google/sequence-layers). Its released weights are safetensors files
of the flattened flax parameter tree, paths joined by ``/`` (what ``magenta_rt/jax/system.py`` and
``magenta_rt/mlx/spectrostream/load_weights.py`` read with ``safetensors.flax``): the MagentaRT model
checkpoint (``mrt2_small.safetensors``, ``mrt2_base.safetensors``) holds the decoder and the quantizer
under ``params/soundstream/``, and ``encoder.safetensors`` holds the encoder under ``params/encoder/``.
Give every file that holds a part; they are read with the ``safetensors`` package (tensors only, no
code, no jax needed). A ``.npz`` with the same flat paths as keys is read too (``allow_pickle=False``).
An orbax/tensorstore checkpoint directory is not read: that would need jax and tensorstore, which
this package does not depend on; flatten it to such an ``.npz`` first (``flax.traverse_util
.flatten_dict(params, sep="/")``).

Paths (after an optional ``params/`` and ``soundstream/``, a ``conv/`` level and a ``/value`` box
suffix removed) -> our keys (:mod:`codecplatform.generators.spectrostream`)::

    encoder/base_conv_first/{kernel,bias}                     -> encoder.per_channel.0.conv.*
    encoder/encoder_i/conv2d_3x3 | conv2d_KxK_a | shortcut_layer/conv1x1
                          -> encoder.<B>.main.1.conv | main.3.conv | shortcut.1.conv
                             (B = per_channel.i+1 for i < 6, joint.0 for encoder_6, joint.1 for bottleneck)
    encoder/output_convs/conv1x1_last | shortcut_layer/conv1x1_b1 | conv1x1_b2
                          -> encoder.output.main | output.shortcut.1 | output.shortcut.3      (Conv1d)
    decoder/input_layer/conv1x1_first | shortcut_layer/conv1x1_b1 | conv1x1_b2
                          -> decoder.input.main | input.shortcut.0 | input.shortcut.2          (Conv1d)
    decoder/input_layers_residual_unit/conv2d_3x3_a | conv2d_3x3 -> decoder.joint.0.main.1.conv | main.3.conv
    decoder/decoder_i/conv2dtranspose_KxK | conv2d_3x3 | shortcut_layer/conv1x1
                          -> decoder.<B>.main.1.convtr | main.3.conv | shortcut.0.conv
                             (B = joint.1 for decoder_0, per_channel.i-1 otherwise)
    decoder/output_layer/base_conv_last                       -> decoder.per_channel.7.conv
    quantizer/embedding (K, N, D)                             -> quantizer.layers.k.embed (N, D)

Kernels: flax ``(kt, kf, in, out)`` -> torch ``Conv2d (out, in, kt, kf)``; transposed convolutions ->
``ConvTranspose2d (in, out, kt, kf)`` flipped in time and frequency (the official transposed
convolution does not flip its kernel, torch's does); the 1x1 frame-wise layers -> ``Conv1d (out, in, 1)``.
The released code has no weight norm, so the imported codec has none (``norm: none``). The file holds
only the codebooks: the EMA statistics start consistent with them (``embed_avg = embed``,
``cluster_size = 1``, initialized), so fine-tuning continues from the released entries.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from codecplatform.checkpoints.base import CheckpointImporter
from codecplatform.checkpoints.io import key_list
from codecplatform.checkpoints.keymap import check_converted, write_codec_checkpoint
from codecplatform.models.codec import Codec

VARIANTS: tuple[str, ...] = ("48khz_stereo",)
_GENERATOR = {"stft_frame_length": 960, "stft_hop_length": 480, "stft_fft_length": 960, "kernel_size": 7}
_GENERATOR.update(channels=2, dimension=256, fusion_block=-2, causal=True, norm="none")


def spectrostream_codec_config(variant: str = "48khz_stereo", n_q: int = 64) -> dict[str, Any]:
    """Our Codec config of the released model (``stft_spectrostream_40ms_generic_48khz_stereo_config``):
    the architecture of ``experiments/spectrostream/48khz_stereo.yaml`` without weight norm, ``n_q``
    codebooks of 1024 (64 released), bandwidths in steps of 4 kbps (16 codebooks) up to ``n_q``."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown SpectroStream variant {variant!r}: choose one of {', '.join(VARIANTS)}")
    bandwidths = [float(k // 4) for k in range(16, n_q + 1, 16)] or [n_q * 0.25]
    return {
        "class_path": "codecplatform.models.codec.Codec",
        "init_args": {
            "sample_rate": 48000,
            "bandwidths": bandwidths,
            "normalize": False,
            "encoder": {
                "class_path": "codecplatform.generators.spectrostream.SpectroStreamEncoder",
                "init_args": {**_GENERATOR, "base_depth": 32},
            },
            "quantizer": {
                "class_path": "codecplatform.quantizers.ema_residual.ResidualVectorQuantizer",
                "init_args": {
                    "dimension": 256,
                    "n_q": n_q,
                    "codebook_size": 1024,
                    "decay": 0.99,
                    "kmeans_init": True,
                    "kmeans_iters": 50,
                    "threshold_ema_dead_code": 0.01,
                    "dropout_mode": "mask_sum",
                    "dropout": {
                        "class_path": "codecplatform.quantizers.dropout.DiscreteLevelDropout",
                        "init_args": {"bypass_rate": 0.5},
                    },
                },
            },
            "decoder": {
                "class_path": "codecplatform.generators.spectrostream.SpectroStreamDecoder",
                "init_args": {**_GENERATOR, "base_depth": 64, "lookahead": 1},
            },
        },
    }


# -- files ---------------------------------------------------------------------------------------
def read_parameter_file(source: str | Path) -> dict[str, Tensor]:
    """A flat official parameter file (``.safetensors``, or ``.npz`` without pickles) -> ``{path: tensor}``.
    Errors are one line naming the file."""
    path = Path(source)
    if not path.is_file():
        raise FileNotFoundError(f"SpectroStream weights file not found: {path}")
    try:
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as data:
                return {k: torch.from_numpy(np.array(data[k])) for k in data.files}
        from safetensors.torch import load_file

        return load_file(str(path))
    except Exception as error:  # noqa: BLE001  (any unreadable content: one line naming the file)
        kind = "an .npz of arrays" if path.suffix == ".npz" else "a safetensors file"
        raise ValueError(
            f"{path} is not {kind} of SpectroStream parameters ({type(error).__name__}: {error})"
        ) from None


def _parameter_path(key: str) -> str:
    """``params/soundstream/decoder/decoder_0/conv2d_3x3/conv/kernel/value``
    -> ``decoder/decoder_0/conv2d_3x3/kernel``."""
    parts = key.split("/")
    if parts and parts[0] == "params":
        parts = parts[1:]
    if parts and parts[0] == "soundstream":
        parts = parts[1:]
    if parts and parts[-1] == "value":
        parts = parts[:-1]
    if len(parts) >= 3 and parts[-2] == "conv":
        parts = parts[:-2] + parts[-1:]
    return "/".join(parts)


_ENC_BLOCK = {"encoder_6": "joint.0", "bottleneck": "joint.1"}
_ENC_LAYER = [
    (re.compile(r"^conv2d_3x3$"), "main.1.conv"),
    (re.compile(r"^conv2d_\d+x\d+_a$"), "main.3.conv"),
    (re.compile(r"^shortcut_layer/conv1x1$"), "shortcut.1.conv"),
]
_DEC_LAYER = [
    (re.compile(r"^conv2dtranspose_\d+x\d+$"), "main.1.convtr"),
    (re.compile(r"^conv2d_3x3$"), "main.3.conv"),
    (re.compile(r"^shortcut_layer/conv1x1$"), "shortcut.0.conv"),
]
_FIXED = {
    "encoder/base_conv_first": "encoder.per_channel.0.conv",
    "encoder/output_convs/conv1x1_last": "encoder.output.main",
    "encoder/output_convs/shortcut_layer/conv1x1_b1": "encoder.output.shortcut.1",
    "encoder/output_convs/shortcut_layer/conv1x1_b2": "encoder.output.shortcut.3",
    "decoder/input_layer/conv1x1_first": "decoder.input.main",
    "decoder/input_layer/shortcut_layer/conv1x1_b1": "decoder.input.shortcut.0",
    "decoder/input_layer/shortcut_layer/conv1x1_b2": "decoder.input.shortcut.2",
    "decoder/input_layers_residual_unit/conv2d_3x3_a": "decoder.joint.0.main.1.conv",
    "decoder/input_layers_residual_unit/conv2d_3x3": "decoder.joint.0.main.3.conv",
    "decoder/output_layer/base_conv_last": "decoder.per_channel.7.conv",
}


def _module_of(layer_path: str) -> str | None:
    """``encoder/encoder_2/conv2d_3x6_a`` -> ``encoder.per_channel.3.main.3.conv``; None when unknown."""
    if layer_path in _FIXED:
        return _FIXED[layer_path]
    part, _, rest = layer_path.partition("/")
    block, _, layer = rest.partition("/")
    if part == "encoder":
        m = re.fullmatch(r"encoder_([0-5])", block)
        prefix = _ENC_BLOCK.get(block) or (f"per_channel.{int(m.group(1)) + 1}" if m else None)
        table = _ENC_LAYER
    elif part == "decoder" and (m := re.fullmatch(r"decoder_(\d+)", block)):
        index = int(m.group(1))
        prefix, table = ("joint.1" if index == 0 else f"per_channel.{index - 1}"), _DEC_LAYER
    else:
        return None
    if prefix is None:
        return None
    for pattern, module in table:
        if pattern.match(layer):
            return f"{part}.{prefix}.{module}"
    return None


def _our_key(path: str) -> str | None:
    """A normalized official path (``decoder/decoder_0/conv2d_3x3/kernel``) -> our key, None if unknown."""
    layer, _, leaf = path.rpartition("/")
    module = _module_of(layer) if leaf in ("kernel", "bias") else None
    return None if module is None else f"{module}.{'weight' if leaf == 'kernel' else 'bias'}"


def _kernel_to_torch(kernel: Tensor, module: str) -> Tensor:
    if module.startswith(("encoder.output.", "decoder.input.")):  # frame-wise 1x1: Conv1d (out, in, 1)
        return kernel[0, 0].transpose(0, 1).unsqueeze(-1).contiguous()
    if module.endswith(".convtr"):  # (kt, kf, in, out) -> (in, out, kt, kf), flipped
        return kernel.flip(0, 1).permute(2, 3, 0, 1).contiguous()
    return kernel.permute(3, 2, 0, 1).contiguous()  # (kt, kf, in, out) -> (out, in, kt, kf)


def convert_spectrostream_params(
    params: dict[str, Tensor], source: str = "the SpectroStream files"
) -> dict[str, Tensor]:
    """Flat official parameters (any of the released prefixes) -> our Codec's state dict (see the
    module docstring). Raises ValueError naming ``source`` and every path that is no SpectroStream
    encoder, decoder or quantizer parameter, and every parameter given twice."""
    out: dict[str, Tensor] = {}
    unknown: list[str] = []
    twice: list[str] = []
    for key, value in params.items():
        path = _parameter_path(key)
        value = value.float()
        if path == "quantizer/embedding":
            if value.ndim != 3:
                raise ValueError(f"{source}: {key} has shape {tuple(value.shape)}, not (codebooks, entries, dim)")
            for k, embed in enumerate(value):
                entries = {
                    "embed": embed.contiguous(),
                    "embed_avg": embed.clone(),
                    "cluster_size": torch.ones(embed.shape[0]),
                    "initialized": torch.tensor(True),
                }
                for name, tensor in entries.items():
                    if f"quantizer.layers.{k}.{name}" in out:
                        twice.append(key)
                    out[f"quantizer.layers.{k}.{name}"] = tensor
            continue
        ours = _our_key(path)
        if ours is None:
            unknown.append(key)
            continue
        module, _, leaf = ours.rpartition(".")
        if ours in out:
            twice.append(key)
        out[ours] = _kernel_to_torch(value, module) if leaf == "weight" else value.contiguous()
    if unknown:
        raise ValueError(
            f"unknown parameters in {source} ({len(unknown)}; not SpectroStream encoder/decoder/quantizer "
            f"paths): {key_list(unknown)}"
        )
    if twice:
        raise ValueError(f"parameters given twice in {source}: {key_list(twice)}")
    return out


def _official_path(key: str) -> str:
    """Our key -> the official path it comes from (for messages)."""
    if m := re.match(r"^quantizer\.layers\.(\d+)\.", key):
        return f"quantizer/embedding[{m.group(1)}]"
    module, _, leaf = key.rpartition(".")
    leaf = "kernel" if leaf == "weight" else leaf
    for path, ours in _FIXED.items():
        if ours == module:
            return f"{path}/{leaf}"
    return f"{module} ({leaf})"


def import_spectrostream(
    sources: str | Path | Sequence[str | Path],
    variant: str | None,
    out: str | Path,
    config: dict[str, Any] | None = None,
) -> Path:
    """Convert the official SpectroStream parameter files into a checkpoint for ``Codec.from_checkpoint``.

    Args:
        sources: the files holding the encoder, the decoder and the quantizer (e.g. ``encoder.safetensors``
            and ``mrt2_small.safetensors``); parts are found by their paths, other parts of a model
            checkpoint (the MagentaRT language model) are ignored.
        variant: ``48khz_stereo`` (the released model) or None (the same).
        out: where to write the checkpoint.
        config: our Codec config to build instead of the released architecture (tests: a small model).

    Raises ValueError naming the files and the first offending paths (unknown, missing parts, wrong
    shapes) before anything is written.
    """
    paths = [Path(sources)] if isinstance(sources, (str, Path)) else [Path(s) for s in sources]
    params: dict[str, Tensor] = {}
    for path in paths:
        for key, value in read_parameter_file(path).items():
            if _parameter_path(key).split("/")[0] in ("encoder", "decoder", "quantizer"):
                params[key] = value
    names = ", ".join(map(str, paths))
    absent = [
        part
        for part in ("encoder", "decoder", "quantizer")
        if not any(_parameter_path(k).startswith(part + "/") for k in params)
    ]
    if absent:
        hint = " (encoder.safetensors holds the encoder, the model checkpoint the decoder and quantizer)"
        raise ValueError(f"{names}: no SpectroStream {' or '.join(absent)} parameters found{hint}")
    converted = convert_spectrostream_params(params, names)
    n_q = sum(1 for k in converted if k.endswith(".embed"))
    variant = variant or VARIANTS[0]
    config = copy.deepcopy(config) if config is not None else spectrostream_codec_config(variant, n_q)
    codec = Codec.from_config(config)
    origin = {_our_key(_parameter_path(k)): k for k in params}
    check_converted(
        codec, converted, names, f"the SpectroStream {variant} model", lambda k: origin.get(k) or _official_path(k)
    )
    codec.load_state_dict(converted, strict=True)
    return write_codec_checkpoint(codec, config, paths[0], "spectrostream", variant, out)


class SpectroStreamImporter(CheckpointImporter):
    """Official SpectroStream weights (flax safetensors of magenta-realtime): :func:`import_spectrostream`."""

    family = "spectrostream"
    variants = VARIANTS
    variant_from_file = True  # one released architecture; the codebook count is read from the file
    multiple_sources = True

    def codec_config(self, variant: str) -> dict[str, Any]:
        return spectrostream_codec_config(variant)

    def import_file(self, source: str | Path | Sequence[str | Path], variant: str | None, out: str | Path) -> Path:
        return import_spectrostream(source, variant, out)
