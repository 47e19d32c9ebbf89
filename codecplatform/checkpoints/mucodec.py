"""Import of the released MuCodec weights (Xu et al. 2024, "MuCodec: Ultra Low-Bitrate Music Codec",
arXiv:2409.13216; https://github.com/xuyaoxun/MuCodec) into one MuCodec checkpoint
(:mod:`codecplatform.mucodec.bundle` layout, read by ``AudioCodec.from_checkpoint``).

    codecplatform import-checkpoint --family mucodec --source mucodec.pt audioldm_48k.pth --out mucodec.ckpt

The official inference (``generate.py``) loads three files; two hold every weight it uses:

* ``mucodec.pt`` (or ``.safetensors``): ``PromptCondAudioDiffusion.state_dict()``: the MuEncoder
  (``muencoder.model.``: the MuQ model of ``muq.pt``, so ``muq.pt`` itself is not needed), the
  tokenizer RVQ (``rvq_muencoder_emb.``, 1 x 16384: the released 0.35 kbps model), the condition
  projection and empty embedding, the latent statistics (``normfeat.``) and the DiT (``cfm_wrapper.estimator.``).
* ``audioldm_48k.pth`` (AudioLDM 48 kHz): ``{"state_dict": {...}}`` whose ``first_stage_model.`` entries
  are the Mel-VAE (LDM ``AutoencoderKL``) and its HiFi-GAN (``first_stage_model.vocoder.``, weight
  norm removed), plus ``scale_factor``; its other entries (the AudioLDM diffusion model) are ignored.

Files are read tensors-only (``safetensors``, or ``torch.load(weights_only=True)``): a file whose pickle
needs other objects is refused with its name (``muq.pt`` is a fairseq checkpoint, never read here).

Key map (ours in brackets)::

    muencoder.model.conv.conv.i.{conv1,bn1,conv2,bn2}.* [tokenizer.encoder.subsample.i.*]
    muencoder.model.conv.conv.i.{conv3,bn3}.*           [tokenizer.encoder.subsample.i.shortcut.{0,1}.*]
    muencoder.model.conv.linear.*                       [tokenizer.encoder.proj.*]
    muencoder.model.conformer.* (not pos_conv_embed)    [tokenizer.encoder.conformer.*]
    rvq_muencoder_emb.quantizers.k.{in,out}_proj.weight_g/v, bias; codebook.weight; stale_counter
                           [tokenizer.quantizer.layers.k.*.parametrizations.weight.original0/1, ...; stale_steps]
                           (and the same under flow.quantizer.)
    cond_muencoder_emb.* [flow.condition_projection.*]; zero_cond_embedding1 [flow.empty_embedding]
    cfm_wrapper.estimator.*                              [flow.transformer.*]
    normfeat.{counts, sum_x, sum_x2}                     [melvae.normalizer.{count, sum, sum_sq}] / scale_factor^(1, 2)
    first_stage_model.{encoder,decoder}.* (LDM)          [melvae.vae.* (diffusers): down.i.block.j ->
                           down_blocks.i.resnets.j, nin_shortcut -> conv_shortcut, downsample ->
                           downsamplers.0, up.i -> up_blocks.(n-1-i), upsample -> upsamplers.0, mid.block_1/2 ->
                           mid_block.resnets.0/1, mid.attn_1.{norm,q,k,v,proj_out} -> mid_block.attentions.0
                           .{group_norm,to_q,to_k,to_v,to_out.0} (1x1 conv -> linear), norm_out -> conv_norm_out]
    first_stage_model.{quant_conv,post_quant_conv}.*     [melvae.vae.*]
    first_stage_model.vocoder.{conv_pre,ups.i,resblocks.k,conv_post}.* [vocoder.hifigan.{conv_pre,upsampler.i,...}]

Ignored by name: MuQ's training parts (``cls_token``, ``linear``, ``preprocessor_*``, ``quantizer_*``,
``conformer.pos_conv_embed``), the resamplers' kernels, ``normfeat.sum_target_x2``. The official latent
statistics are of ``scale_factor * z`` (AudioLDM's scaled latents); ours are of the VAE's ``z``, so the
sums are divided by ``scale_factor`` (and its square): the same normalized latents, the same decode.
"""

from __future__ import annotations

import copy
import re
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from codecplatform.checkpoints.base import CheckpointImporter
from codecplatform.checkpoints.io import key_list, read_checkpoint
from codecplatform.checkpoints.keymap import check_converted, write_codec_checkpoint

VARIANTS: tuple[str, ...] = ("1x16384",)
_WN = {"weight_g": "parametrizations.weight.original0", "weight_v": "parametrizations.weight.original1"}
_IGNORED = re.compile(
    r"^(?:muencoder\.model\.(?:cls_token|linear\.|preprocessor_|quantizer_|conformer\.pos_conv_embed\.)"
    r"|rs[pq]48to\w+\.kernel$|normfeat\.sum_target_x2$)"
)


def mucodec_codec_config(variant: str = "1x16384") -> dict[str, Any]:
    """Our MuCodec config of the released model: ``experiments/mucodec/codec_1x16384.yaml``'s architecture
    (MuEncoder feature layer 7, 1 x 16384 RVQ, the 24-layer DiT, HiFi-GAN without weight norm), the
    AudioLDM 48 kHz Mel-VAE (``MelVAE`` defaults), no stage checkpoints (the weights come in the file)."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown MuCodec variant {variant!r}: choose one of {', '.join(VARIANTS)}")
    quantizer = {
        "class_path": "codecplatform.quantizers.factorized.FactorizedResidualVectorQuantizer",
        "init_args": {"dimension": 1024, "n_q": 1, "codebook_size": 16384, "codebook_dim": 32, "stale_tolerance": 200},
    }
    transformer = dict(
        num_attention_heads=22, attention_head_dim=72, in_channels=96, out_channels=32, num_layers=24, dropout=0.0,
        norm_num_groups=32, cross_attention_dim=None, attention_bias=True, sample_size=384, num_vector_embeds=None,
        patch_size=2, activation_fn="gelu-approximate", num_embeds_ada_norm=1000, use_linear_projection=False,
        only_cross_attention=False, double_self_attention=False, upcast_attention=False, norm_type="ada_norm_single",
        norm_elementwise_affine=False, norm_eps=1.0e-6, attention_type="default",
    )  # fmt: skip
    muencoder = dict(
        sample_rate=24000, n_fft=2048, hop_length=240, n_mels=128, conv_dim=512, hidden_size=1024, num_layers=12,
        num_heads=16, ffn_dim=4096, conv_kernel=31, dropout=0.1, feature_layer=7, peak_limit=0.9,
    )  # fmt: skip
    vocoder = dict(
        sample_rate=48000, n_fft=2048, win_length=2048, hop_length=480, n_mels=256, f_min=20.0, f_max=24000.0,
        clamp_eps=1.0e-5, upsample_initial_channel=1536, upsample_rates=[6, 5, 4, 2, 2],
        upsample_kernel_sizes=[12, 10, 8, 4, 4], resblock_kernel_sizes=[3, 7, 11, 15],
        resblock_dilation_sizes=[[1, 3, 5], [1, 3, 5], [1, 3, 5], [1, 3, 5]], leaky_relu_slope=0.1, weight_norm=False,
    )  # fmt: skip
    return {
        "class_path": "codecplatform.mucodec.codec.MuCodec",
        "init_args": {
            "tokenizer": {
                "class_path": "codecplatform.mucodec.tokenizer.MuCodecTokenizer",
                "init_args": {
                    "encoder": {"class_path": "codecplatform.mucodec.muencoder.MuEncoder", "init_args": muencoder},
                    "quantizer": copy.deepcopy(quantizer),
                },
            },
            "flow": {
                "class_path": "codecplatform.mucodec.flow.FlowMatchingDiT",
                "init_args": {
                    "transformer": transformer,
                    "quantizer": copy.deepcopy(quantizer),
                    "latent_channels": 32,
                    "latent_bins": 32,
                    "codes_per_frame": 2,
                    "sigma_min": 1.0e-4,
                    "timestep_scale": 1000.0,
                    "condition_dropout": 0.1,
                },
            },
            "vocoder": {"class_path": "codecplatform.mucodec.vocoder.HifiGanVocoder", "init_args": vocoder},
            "melvae": {"class_path": "codecplatform.mucodec.melvae.MelVAE", "init_args": {}},
            "tokenizer_checkpoint": None,
            "flow_checkpoint": None,
            "vocoder_checkpoint": None,
            "require_checkpoints": False,
            "num_steps": 50,
            "guidance_scale": 1.5,
            "window_codes": 1024,
            "hop_codes": 768,
            "seed": 0,
        },
    }


# -- reading -------------------------------------------------------------------------------------
def read_state_file(source: str | Path, what: str) -> dict[str, Any]:
    """``{name: tensor}`` (and plain data) of an official file: safetensors, or a torch pickle read with
    ``weights_only=True``; a ``{"state_dict": ...}`` wrapper is opened. One-line errors naming the file."""
    path = Path(source)
    if path.suffix == ".safetensors":
        if not path.is_file():
            raise FileNotFoundError(f"{what} not found: {path}")
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as error:  # noqa: BLE001
            raise ValueError(f"{path} is not a safetensors {what} ({type(error).__name__}: {error})") from None
    content = read_checkpoint(path, what, missing=f"{what} not found: {path}")
    state = content.get("state_dict", content)
    if not isinstance(state, dict):
        raise ValueError(f"{path} is not a {what}: its 'state_dict' is a {type(state).__name__}")
    return state


# -- mucodec.pt ----------------------------------------------------------------------------------
def _muencoder_key(rest: str) -> str | None:
    if m := re.match(r"^conv\.conv\.(\d+)\.(.+)$", rest):
        i, tail = m.groups()
        tail = re.sub(r"^conv3\.", "shortcut.0.", re.sub(r"^bn3\.", "shortcut.1.", tail))
        return f"subsample.{i}.{tail}"
    if rest.startswith("conv.linear."):
        return "proj." + rest[len("conv.linear.") :]
    return rest if rest.startswith("conformer.") else None


def _quantizer_key(rest: str) -> str | None:
    if m := re.match(r"^quantizers\.(\d+)\.(in_proj|out_proj)\.(weight_g|weight_v|bias)$", rest):
        k, proj, param = m.groups()
        return f"layers.{k}.{proj}.{_WN.get(param, param)}"
    if m := re.match(r"^quantizers\.(\d+)\.(in_proj|out_proj)\.parametrizations\.weight\.original[01]$", rest):
        return f"layers.{m.group(1)}.{rest.split('.', 2)[2]}"
    if m := re.match(r"^quantizers\.(\d+)\.codebook\.weight$", rest):
        return f"layers.{m.group(1)}.codebook.weight"
    if m := re.match(r"^quantizers\.(\d+)\.stale_counter$", rest):
        return f"layers.{m.group(1)}.stale_steps"
    return None


_NORMFEAT = {"counts": "count", "sum_x": "sum", "sum_x2": "sum_sq"}


def convert_mucodec_state(official: dict[str, Tensor], source: str = "mucodec.pt") -> dict[str, Tensor]:
    """``PromptCondAudioDiffusion.state_dict()`` -> our ``tokenizer.*``, ``flow.*`` and the raw official
    latent statistics as ``melvae.normalizer.*`` (still of scaled latents: :func:`scale_statistics`).
    Raises ValueError naming ``source`` and every key that is none of these (nor ignored by name)."""
    out: dict[str, Tensor] = {}
    unknown: list[str] = []
    for key, value in official.items():
        if not isinstance(value, Tensor) or _IGNORED.match(key):
            continue
        targets: list[str] = []
        if key.startswith("muencoder.model.") and (ours := _muencoder_key(key[len("muencoder.model.") :])):
            targets = [f"tokenizer.encoder.{ours}"]
        elif key.startswith("rvq_muencoder_emb.") and (ours := _quantizer_key(key[len("rvq_muencoder_emb.") :])):
            targets = [f"tokenizer.quantizer.{ours}", f"flow.quantizer.{ours}"]
        elif key.startswith("cond_muencoder_emb."):
            targets = ["flow.condition_projection." + key[len("cond_muencoder_emb.") :]]
        elif key == "zero_cond_embedding1":
            targets = ["flow.empty_embedding"]
        elif key.startswith("cfm_wrapper.estimator."):
            targets = ["flow.transformer." + key[len("cfm_wrapper.estimator.") :]]
        elif key.startswith("normfeat.") and key[len("normfeat.") :] in _NORMFEAT:
            targets = [f"melvae.normalizer.{_NORMFEAT[key[len('normfeat.') :]]}"]
        if not targets:
            unknown.append(key)
        for target in targets:
            out[target] = value
    if unknown:
        raise ValueError(f"unknown keys in the MuCodec state dict {source} ({len(unknown)}): {key_list(unknown)}")
    if "melvae.normalizer.count" in out:
        out["melvae.normalizer.count"] = out["melvae.normalizer.count"].reshape(()).round().long()
    return out


def scale_statistics(state: dict[str, Tensor], scale_factor: float) -> dict[str, Tensor]:
    """Official statistics of ``scale_factor * z`` -> ours of ``z`` (sums / s, sums of squares / s^2)."""
    out = dict(state)
    if "melvae.normalizer.sum" in out:
        out["melvae.normalizer.sum"] = out["melvae.normalizer.sum"].float() / scale_factor
        out["melvae.normalizer.sum_sq"] = out["melvae.normalizer.sum_sq"].float() / scale_factor**2
    return out


# -- audioldm_48k.pth ----------------------------------------------------------------------------
_RESNET = r"(?:norm1|conv1|norm2|conv2|nin_shortcut)"
_ATTN = {"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0"}


def _vae_key(rest: str, levels: int) -> str | None:
    """LDM ``AutoencoderKL`` key (after ``first_stage_model.``) -> diffusers ``AutoencoderKL`` key."""
    if re.match(r"^(?:quant_conv|post_quant_conv)\.(?:weight|bias)$", rest):
        return rest
    m = re.match(r"^(encoder|decoder)\.(.+)$", rest)
    if not m:
        return None
    part, tail = m.groups()
    if re.match(r"^(?:conv_in|conv_out)\.(?:weight|bias)$", tail):
        return rest
    if m := re.match(r"^norm_out\.(weight|bias)$", tail):
        return f"{part}.conv_norm_out.{m.group(1)}"
    if m := re.match(rf"^mid\.block_([12])\.({_RESNET})\.(weight|bias)$", tail):
        layer = "conv_shortcut" if m.group(2) == "nin_shortcut" else m.group(2)
        return f"{part}.mid_block.resnets.{int(m.group(1)) - 1}.{layer}.{m.group(3)}"
    if m := re.match(r"^mid\.attn_1\.(norm|q|k|v|proj_out)\.(weight|bias)$", tail):
        return f"{part}.mid_block.attentions.0.{_ATTN[m.group(1)]}.{m.group(2)}"
    block = "down" if part == "encoder" else "up"
    if m := re.match(rf"^{block}\.(\d+)\.block\.(\d+)\.({_RESNET})\.(weight|bias)$", tail):
        i, j, layer, param = m.groups()
        i = int(i) if part == "encoder" else levels - 1 - int(i)
        layer = "conv_shortcut" if layer == "nin_shortcut" else layer
        return f"{part}.{block}_blocks.{i}.resnets.{j}.{layer}.{param}"
    sampler = "downsample" if part == "encoder" else "upsample"
    if m := re.match(rf"^{block}\.(\d+)\.{sampler}\.conv\.(weight|bias)$", tail):
        i = int(m.group(1)) if part == "encoder" else levels - 1 - int(m.group(1))
        return f"{part}.{block}_blocks.{i}.{sampler}rs.0.conv.{m.group(2)}"
    return None


def _vocoder_key(rest: str) -> str | None:
    if re.match(r"^(?:conv_pre|conv_post)\.(?:weight|bias)$", rest):
        return rest
    if m := re.match(r"^ups\.(\d+)\.(weight|bias)$", rest):
        return f"upsampler.{m.group(1)}.{m.group(2)}"
    if re.match(r"^resblocks\.\d+\.convs[12]\.\d+\.(?:weight|bias)$", rest):
        return rest
    return None


def convert_audioldm_state(
    official: dict[str, Any], source: str = "audioldm_48k.pth"
) -> tuple[dict[str, Tensor], float]:
    """AudioLDM's ``state_dict`` -> (our ``melvae.vae.*`` and ``vocoder.hifigan.*``, ``scale_factor``).
    Raises ValueError naming ``source`` when ``scale_factor`` or the first stage is absent, or a
    ``first_stage_model.`` key is neither VAE nor vocoder (weight-normed vocoder keys included)."""
    if "scale_factor" not in official:
        raise ValueError(
            f"{source} is not an AudioLDM checkpoint: no 'scale_factor' (keys: {key_list(list(official), 8)})"
        )
    first = {k[len("first_stage_model.") :]: v for k, v in official.items() if k.startswith("first_stage_model.")}
    if not first:
        raise ValueError(f"{source} is not an AudioLDM checkpoint: no 'first_stage_model.' (the Mel-VAE) entries")
    levels = 1 + max((int(m.group(1)) for k in first if (m := re.match(r"^decoder\.up\.(\d+)\.", k))), default=0)
    out: dict[str, Tensor] = {}
    unknown: list[str] = []
    for key, value in first.items():
        if key.startswith("vocoder."):
            ours = _vocoder_key(key[len("vocoder.") :])
            target = f"vocoder.hifigan.{ours}" if ours else None
        else:
            ours = _vae_key(key, levels)
            target = f"melvae.vae.{ours}" if ours else None
            if ours and ".mid_block.attentions." in ours and ours.endswith("weight") and value.ndim == 4:
                value = value[:, :, 0, 0]  # LDM's 1x1 conv q/k/v/proj_out -> diffusers' linear
        if target is None:
            unknown.append(f"first_stage_model.{key}")
        else:
            out[target] = value
    if unknown:
        raise ValueError(f"unknown first-stage keys in {source} ({len(unknown)}): {key_list(unknown)}")
    return out, float(torch.as_tensor(official["scale_factor"]).reshape(()))


# -- import --------------------------------------------------------------------------------------
def _official_name(key: str) -> str:
    """Our key -> where it comes from, for messages (the file's names where they are one rename away)."""
    for ours, theirs in (
        ("tokenizer.encoder.", "muencoder.model."),
        ("tokenizer.quantizer.layers.", "rvq_muencoder_emb.quantizers."),
        ("flow.quantizer.layers.", "rvq_muencoder_emb.quantizers."),
        ("flow.transformer.", "cfm_wrapper.estimator."),
        ("flow.condition_projection.", "cond_muencoder_emb."),
        ("melvae.normalizer.", "normfeat."),
        ("vocoder.hifigan.", "first_stage_model.vocoder."),
        ("melvae.vae.", "first_stage_model. (diffusers name) "),
    ):
        if key.startswith(ours):
            return theirs + key[len(ours) :]
    return "zero_cond_embedding1" if key == "flow.empty_embedding" else key


def import_mucodec(
    sources: Sequence[str | Path], variant: str | None, out: str | Path, config: dict[str, Any] | None = None
) -> Path:
    """Convert the released ``mucodec.pt`` and ``audioldm_48k.pth`` into one MuCodec checkpoint.

    Args:
        sources: the two files, in either order (told apart by their keys: ``scale_factor`` marks AudioLDM).
        variant: ``1x16384`` (the released model) or None (the same).
        out: where to write the bundle (``AudioCodec.from_checkpoint``, ``codecplatform encode/decode``).
        config: our MuCodec config to build instead of the released one (tests: a small model).

    Raises ValueError naming the files and the first offending keys (unknown, missing, wrong shapes)
    before anything is written.
    """
    from codecplatform.mucodec.bundle import bundle_config
    from codecplatform.mucodec.codec import MuCodec

    paths = [Path(s) for s in ([sources] if isinstance(sources, (str, Path)) else sources)]
    if len(paths) != 2:
        raise ValueError(f"MuCodec needs two files, mucodec.pt and audioldm_48k.pth; got {len(paths)}: {paths}")
    states = {path: read_state_file(path, "MuCodec weights file") for path in paths}
    ldm = [path for path, state in states.items() if "scale_factor" in state]
    if len(ldm) != 1:
        raise ValueError(
            f"{', '.join(map(str, paths))}: exactly one must be AudioLDM's audioldm_48k.pth (with 'scale_factor'), "
            f"found {len(ldm)}"
        )
    (codec_path,) = [p for p in paths if p != ldm[0]]
    flow_state = convert_mucodec_state(states[codec_path], str(codec_path))
    ldm_state, scale_factor = convert_audioldm_state(states[ldm[0]], str(ldm[0]))
    converted = {**scale_statistics(flow_state, scale_factor), **ldm_state}
    variant = variant or VARIANTS[0]
    config = copy.deepcopy(config) if config is not None else mucodec_codec_config(variant)
    from codecplatform.config import instantiate

    with warnings.catch_warnings():  # "untrained MuCodec": the weights are loaded right below
        warnings.simplefilter("ignore")
        codec = instantiate(config, MuCodec)
    own = codec.state_dict()
    # normalize_before=False: transformers' unused input statistics
    converted["vocoder.hifigan.mean"] = torch.zeros_like(own["vocoder.hifigan.mean"])
    converted["vocoder.hifigan.scale"] = torch.ones_like(own["vocoder.hifigan.scale"])
    for key in [k for k in own if k.endswith("stale_steps") and k not in converted]:
        converted[key] = torch.zeros_like(own[key])  # training state only; absent from a file without it
    names = f"{codec_path} + {ldm[0]}"
    check_converted(codec, converted, names, f"the MuCodec {variant} model", _official_name)
    codec.load_state_dict(converted, strict=True)
    return write_codec_checkpoint(codec, bundle_config(config, codec), codec_path, "mucodec", variant, out)


class MuCodecImporter(CheckpointImporter):
    """The released MuCodec (``mucodec.pt`` + ``audioldm_48k.pth``): :func:`import_mucodec`."""

    family = "mucodec"
    variants = VARIANTS
    variant_from_file = True  # one released model
    multiple_sources = True

    def codec_config(self, variant: str) -> dict[str, Any]:
        return mucodec_codec_config(variant)

    def import_file(self, source: str | Path | Sequence[str | Path], variant: str | None, out: str | Path) -> Path:
        return import_mucodec(source if isinstance(source, (list, tuple)) else [source], variant, out)
