"""Autoencoders in and out of files: ours (``autoencoder.safetensors``) and diffusers' ``AutoencoderKL`` folders.

Ours is one safetensors file with the weights and, in its metadata, the full ``AutoencoderRunConfig``
(network, training, latent scale and shift) and the SHA-256 of its contents; an autoencoder run folder holds
it beside its config.json, and a latent diffusion run keeps a copy in its own folder. Loading needs
nothing else.

A diffusers folder (``config.json`` with ``"_class_name": "AutoencoderKL"`` and
``diffusion_pytorch_model.safetensors``, or a pipeline folder with them in ``vae/``) is read by renaming
tensors: the networks are the same (``ddpm.models.autoencoder``), except that diffusers keeps attention's
q, k, v as three linear layers and ours as one 1x1 convolution. Its ``scaling_factor`` and
``shift_factor`` become ``latent_scale`` and ``latent_shift``.

This sits in the models layer, below the pipeline and training, so both can load a run's autoencoder.
"""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from ddpm.checkpoint import content_hash
from ddpm.config import AutoencoderConfig, AutoencoderRunConfig
from ddpm.errors import UserError
from ddpm.io import atomic_write, read_safetensors
from ddpm.models.autoencoder import Autoencoder, FirstStage, check_autoencoder_config

AUTOENCODER = "autoencoder.safetensors"
FORMAT = "ddpm-autoencoder-1"
DIFFUSERS_WEIGHTS = "diffusion_pytorch_model.safetensors"
# What diffusers' AutoencoderKL.__init__ uses for a key its config.json leaves out.
VAE_DEFAULTS = {"in_channels": 3, "out_channels": 3, "down_block_types": ("DownEncoderBlock2D",),
                "up_block_types": ("UpDecoderBlock2D",), "block_out_channels": (64,), "layers_per_block": 1,
                "act_fn": "silu", "latent_channels": 4, "norm_num_groups": 32, "sample_size": 32,
                "scaling_factor": 0.18215, "shift_factor": None, "latents_mean": None, "latents_std": None,
                "use_quant_conv": True, "use_post_quant_conv": True, "mid_block_add_attention": True}
# diffusers' tensor names -> ours, applied in order (attention's q, k, v are stacked separately).
_RENAMES = [
    (r"^(encoder|decoder)\.(?:down|up)_blocks\.(\d+)\.resnets\.", r"\1.{level}.\2.blocks."),
    (r"^(encoder|decoder)\.(?:down|up)_blocks\.(\d+)\.(?:down|up)samplers\.0\.", r"\1.{level}.\2.resample."),
    (r"\.mid_block\.resnets\.0\.", ".mid.block1."),
    (r"\.mid_block\.resnets\.1\.", ".mid.block2."),
    (r"\.mid_block\.attentions\.0\.group_norm\.", ".mid.attn.norm."),
    (r"\.mid_block\.attentions\.0\.(?:to_out\.0|proj_attn)\.", ".mid.attn.proj."),
    (r"\.conv_shortcut\.", ".skip."),
    (r"\.conv_norm_out\.", ".norm_out."),
]
_QKV = re.compile(r"^(encoder|decoder)\.mid_block\.attentions\.0\.(to_q|to_k|to_v|query|key|value)\.(weight|bias)$")


def autoencoder_config_from_diffusers(d: dict[str, Any]) -> tuple[AutoencoderConfig, float, float]:
    """(our config, scaling_factor, shift_factor) of an ``AutoencoderKL`` config; a setting ours cannot
    express is a UserError naming it."""
    d = {**VAE_DEFAULTS, **{k: v for k, v in d.items() if k in VAE_DEFAULTS}}
    fixed = {"act_fn": ("silu", "swish"), "out_channels": (d["in_channels"],), "latents_mean": (None,),
             "latents_std": (None,), "use_post_quant_conv": (d["use_quant_conv"],)}
    for key, allowed in fixed.items():
        if d[key] not in allowed:
            raise UserError(f"AutoencoderKL setting {key}={d[key]!r} has no equivalent here (only "
                            f"{' or '.join(map(repr, allowed))})")
    chans = list(d["block_out_channels"])
    for key, kind, n in (("down_block_types", "DownEncoderBlock2D", len(chans)),
                         ("up_block_types", "UpDecoderBlock2D", len(chans))):
        if list(d[key]) != [kind] * n:
            raise UserError(f"AutoencoderKL setting {key}={list(d[key])}: only {n} x {kind} has an equivalent here")
    if any(c % chans[0] for c in chans):
        raise UserError(f"AutoencoderKL setting block_out_channels={chans}: each must be a multiple of the first")
    size = d["sample_size"]
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    cfg = AutoencoderConfig(image_size=(h, w), in_channels=d["in_channels"], base_channels=chans[0],
                            channel_mult=tuple(c // chans[0] for c in chans), num_res_blocks=d["layers_per_block"],
                            latent_channels=d["latent_channels"], mid_attention=bool(d["mid_block_add_attention"]),
                            norm_groups=d["norm_num_groups"], quant_conv=bool(d["use_quant_conv"]))
    if any(c % cfg.norm_groups for c in chans):  # diffusers uses exactly norm_num_groups groups everywhere
        raise UserError(f"AutoencoderKL setting norm_num_groups={cfg.norm_groups} does not divide {chans}")
    check_autoencoder_config(cfg)
    return cfg, float(d["scaling_factor"]), float(d["shift_factor"] or 0.0)


def autoencoder_state_from_diffusers(theirs: dict[str, torch.Tensor], cfg: AutoencoderConfig
                                     ) -> dict[str, torch.Tensor]:
    """Our state dict from an ``AutoencoderKL``'s; a missing, unused or misshapen tensor is a UserError."""
    ours, qkv = {}, {}
    for key, value in theirs.items():
        m = _QKV.match(key)
        if m:
            part = {"query": "to_q", "key": "to_k", "value": "to_v"}.get(m.group(2), m.group(2))
            qkv[(m.group(1), part, m.group(3))] = value
            continue
        new = key
        for pattern, repl in _RENAMES:
            level = "down" if key.startswith("encoder") else "up"
            new = re.sub(pattern, repl.replace("{level}", level), new)
        if new.endswith("mid.attn.proj.weight"):
            value = value.reshape(*value.shape[:2], 1, 1)  # a linear layer as a 1x1 convolution
        ours[new] = value
    for side in ("encoder", "decoder"):
        for kind in ("weight", "bias"):
            parts = [qkv.pop((side, p, kind), None) for p in ("to_q", "to_k", "to_v")]
            if all(p is not None for p in parts):
                stacked = torch.cat(parts, 0)
                ours[f"{side}.mid.attn.qkv.{kind}"] = stacked.reshape(*stacked.shape[:2], 1, 1) if kind == "weight" \
                    else stacked
    want = Autoencoder(cfg).state_dict()
    missing = sorted(set(want) - set(ours))
    unused = sorted(set(ours) - set(want)) + [".".join(k) for k in qkv]
    if missing or unused:
        raise UserError(f"the AutoencoderKL weights do not fit its config: {len(missing)} missing (e.g. "
                        f"{(missing or ['-'])[0]}), {len(unused)} unused (e.g. {(unused or ['-'])[0]})")
    for k, v in want.items():
        if ours[k].shape != v.shape:
            raise UserError(f"the AutoencoderKL tensor for {k} has shape {tuple(ours[k].shape)}, not "
                            f"{tuple(v.shape)} as its config implies")
    return {k: ours[k].float().contiguous() for k in want}


def _diffusers_folder(root: Path) -> Path | None:
    """The folder holding an AutoencoderKL's config.json: ``root`` or its ``vae/`` (a pipeline), else None."""
    for folder in (root, root / "vae"):
        path = folder / "config.json"
        if path.is_file():
            try:
                config = json.loads(path.read_text())
            except ValueError as e:
                raise UserError(f"cannot parse {path}: {e}") from None
            if isinstance(config, dict) and config.get("_class_name") == "AutoencoderKL":
                return folder
    return None


def load_diffusers_autoencoder(folder: str | Path) -> tuple[Autoencoder, AutoencoderRunConfig]:
    """Our Autoencoder and run config of a diffusers ``AutoencoderKL`` folder (safetensors weights only)."""
    root = Path(folder)
    found = _diffusers_folder(root)
    if found is None:
        raise UserError(f"no AutoencoderKL config.json in {root} or {root / 'vae'}")
    cfg, scale, shift = autoencoder_config_from_diffusers(json.loads((found / "config.json").read_text()))
    weights = found / DIFFUSERS_WEIGHTS
    if not weights.is_file():
        if (found / "diffusion_pytorch_model.bin").is_file():
            raise UserError(f"{found} has only diffusion_pytorch_model.bin, a pickle, which ddpm does not read; "
                            "save the model with safe_serialization=True (diffusion_pytorch_model.safetensors)")
        raise UserError(f"no {DIFFUSERS_WEIGHTS} in {found}")
    state = autoencoder_state_from_diffusers(read_safetensors(weights, "AutoencoderKL weights")[0], cfg)
    model = Autoencoder(cfg)
    model.load_state_dict(state)
    run = AutoencoderRunConfig(model=cfg, latent_scale=scale, latent_shift=shift)
    run.train.data = ""  # unknown
    return model, run


def save_autoencoder(folder: str | Path, autoencoder: Autoencoder | FirstStage, cfg: AutoencoderRunConfig,
                     step: int = 0) -> Path:
    """Write ``folder/autoencoder.safetensors``: the weights, the run config (with the latent scale and shift)
    and a content hash in its metadata. Atomic; returns the file's path."""
    if isinstance(autoencoder, FirstStage):
        autoencoder = autoencoder.autoencoder
    tensors = {k: v.detach().contiguous().cpu() for k, v in autoencoder.state_dict().items()}
    meta = {"format": FORMAT, "step": str(step), "config": cfg.to_json()}
    meta["sha256"] = content_hash(tensors, meta)
    path = Path(folder) / AUTOENCODER
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=meta))
    return path


def read_autoencoder(path: str | Path) -> tuple[Autoencoder, AutoencoderRunConfig, int]:
    """(autoencoder, run config, step) of one of our autoencoder.safetensors files, checked against its hash."""
    tensors, meta = read_safetensors(path, "autoencoder")
    if meta.get("format") != FORMAT or "config" not in meta:
        raise UserError(f"{path} is not a ddpm autoencoder (format {meta.get('format')!r})")
    if content_hash(tensors, meta) != meta.get("sha256"):
        raise UserError(f"{path} is damaged: its contents do not match the hash they were saved with")
    try:
        cfg = AutoencoderRunConfig.from_dict(json.loads(meta["config"]))
    except ValueError:
        raise UserError(f"{path} is damaged: its config cannot be read") from None
    model = Autoencoder(cfg.model)
    model.load_state_dict(tensors)
    return model, cfg, int(meta.get("step", 0))


def load_autoencoder(path: str | Path, device: str | torch.device = "cpu") -> tuple[FirstStage, AutoencoderRunConfig]:
    """(FirstStage in eval mode on ``device``, its run config) from our run folder (or its
    autoencoder.safetensors, or a folder holding a copy) or a diffusers AutoencoderKL folder."""
    p = Path(path)
    if not p.exists():
        raise UserError(f"autoencoder not found: {p}")
    if p.is_file():
        model, cfg, _ = read_autoencoder(p)
    elif (p / AUTOENCODER).is_file():
        model, cfg, _ = read_autoencoder(p / AUTOENCODER)
    elif _diffusers_folder(p) is not None:
        model, cfg = load_diffusers_autoencoder(p)
    else:
        raise UserError(f"no {AUTOENCODER} (ddpm train-autoencoder) nor a diffusers AutoencoderKL config.json in {p}")
    if cfg.latent_scale is None:
        warnings.warn(f"the autoencoder in {p} has no latent scale yet (its training did not finish); using 1",
                      stacklevel=2)
    stage = FirstStage(model, cfg.latent_scale or 1.0, cfg.latent_shift).to(torch.device(device)).eval()
    stage.requires_grad_(False)  # a frozen first stage (LDM trains the diffusion model on fixed latents)
    return stage, cfg
