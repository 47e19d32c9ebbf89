"""Bundle a MuCodec (built from its stage checkpoints) into one codec checkpoint.

The file is what every codec checkpoint is (``AudioCodec.from_checkpoint``, ``codecplatform
encode/decode``): ``{"codec_config": {class_path, init_args}, "state_dict": {"codec.<key>": tensor},
"family": "mucodec"}``, tensors and plain data only (``torch.load(weights_only=True)``). Its config is
the YAML's codec config with the stage checkpoint paths removed (``require_checkpoints: false``), the
Mel-VAE's architecture written out (it came from the flow checkpoint) and the vocoder without weight
norm (folded in); the weights (tokenizer, DiT, Mel-VAE with its latent statistics, vocoder) are in the
state dict.

    python -m codecplatform.mucodec.bundle --config experiments/mucodec/codec_1x16384.yaml \
        --out checkpoints/mucodec_1x16384.ckpt
    codecplatform encode song.wav --checkpoint checkpoints/mucodec_1x16384.ckpt --out song.cpc
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path
from typing import Any

import torch

from codecplatform.mucodec.codec import MuCodec
from codecplatform.mucodec.melvae import MelVAE

CODEC_CLASS = f"{MuCodec.__module__}.{MuCodec.__qualname__}"


def codec_config_of(path: str | Path) -> dict[str, Any]:
    """``model.init_args.codec`` of an experiment YAML (``_base_`` composed)."""
    from codecplatform.config import compose_config

    config = compose_config(path)
    codec = config.get("model", {}).get("init_args", {}).get("codec")
    if not isinstance(codec, dict):
        raise ValueError(f"{path}: no model.init_args.codec (a MuCodec evaluation config, e.g. codec_1x16384.yaml)")
    return codec


def bundle_config(config: dict[str, Any], codec: MuCodec) -> dict[str, Any]:
    """The self-contained codec config of ``codec`` built from ``config`` (``{class_path, init_args}``)."""
    out = copy.deepcopy(config)
    if "class_path" not in out:
        out = {"class_path": CODEC_CLASS, "init_args": out}
    args = dict(out.get("init_args") or {})
    args.update(tokenizer_checkpoint=None, flow_checkpoint=None, vocoder_checkpoint=None, require_checkpoints=False)
    args["melvae"] = {"class_path": _class_path(MelVAE), "init_args": codec.melvae.config()}
    vocoder = dict(args.get("vocoder") or {})
    vocoder_args = {**codec.vocoder.config(), "weight_norm": False}
    args["vocoder"] = {
        "class_path": vocoder.get("class_path", _class_path(type(codec.vocoder))),
        "init_args": vocoder_args,
    }
    out["init_args"] = args
    return out


def _class_path(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def save_bundle(codec: MuCodec, config: dict[str, Any], out: str | Path) -> Path:
    """Write ``codec`` (built from ``config``) as one codec checkpoint at ``out``."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    state = {f"codec.{k}": v.detach().cpu().contiguous() for k, v in codec.state_dict().items()}
    torch.save({"codec_config": bundle_config(config, codec), "state_dict": state, "family": "mucodec"}, out)
    return out


def bundle(config_path: str | Path, out: str | Path, overrides: dict[str, Any] | None = None) -> Path:
    """Build the MuCodec of an experiment YAML (stage checkpoints loaded and checked) and bundle it."""
    from codecplatform.config import instantiate

    config = codec_config_of(config_path)
    if overrides:
        config = {**config, "init_args": {**config.get("init_args", {}), **overrides}}
    codec = instantiate(config, MuCodec)
    return save_bundle(codec, config, out)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Bundle a MuCodec's stage checkpoints into one codec checkpoint.")
    parser.add_argument("--config", required=True, help="experiments/mucodec/codec_1x16384.yaml (or 4x10000)")
    parser.add_argument("--out", required=True, help="the bundled .ckpt to write")
    parser.add_argument("--tokenizer_checkpoint")
    parser.add_argument("--flow_checkpoint")
    parser.add_argument("--vocoder_checkpoint")
    args = parser.parse_args(argv)
    overrides = {
        k: getattr(args, k)
        for k in ("tokenizer_checkpoint", "flow_checkpoint", "vocoder_checkpoint")
        if getattr(args, k) is not None
    }
    path = bundle(args.config, args.out, overrides)
    size = path.stat().st_size / 2**20
    print(f"wrote {path} ({size:.1f} MiB): load it with AudioCodec.from_checkpoint or codecplatform encode/decode")


if __name__ == "__main__":
    main()
