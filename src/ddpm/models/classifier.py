"""The two classifiers: a small CNN of clean images (its penultimate layer is the feature space of the
classifier FID, ``ddpm.evaluation.classifier`` trains it) and a noise-aware one, p(y | x_t, t), for
classifier guidance (Dhariwal & Nichol 2021, §4; ``ddpm.training.noisy_classifier`` trains it). Both are
saved as PATH/classifier.safetensors + PATH/classifier.json; the format tag in the metadata tells them apart.

The noisy classifier:

``NoisyClassifier(config)(x_t, t) -> logits``: the downsampling half and the middle of the U-Net of
``ddpm.models.unet``, conditioned on the timestep the same way (sinusoidal embedding, MLP, AdaGN or
additive ResBlocks), then GroupNorm, SiLU, global average pooling and a linear head, as the "downsampling
trunk of the UNet" classifier of Dhariwal & Nichol §4 (they pool with attention; average pooling is
enough at 8x8-28x28). Its architecture is a ``ModelConfig`` with ``num_classes`` the number of outputs
(``out_channels`` is unused), so the same shape checks apply. Like the U-Net it knows no diffusion:
``t`` is only a number to embed; what x_t means is ``ddpm.training.noisy_classifier``'s business.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from ddpm.config import DiffusionConfig, ModelConfig, build, doc
from ddpm.errors import UserError
from ddpm.io import atomic_write, read_safetensors, write_text_atomic
from ddpm.models.layers import Attention, Downsample, ResBlock, group_norm, timestep_embedding
from ddpm.models.unet import _run, check_model_config

WEIGHTS = "classifier.safetensors"
INFO = "classifier.json"
CLEAN_FORMAT = "ddpm-classifier-1"
NOISY_FORMAT = "ddpm-noisy-classifier-1"


@dataclass
class ClassifierConfig:
    """Architecture: ``len(widths)`` stages of two 3x3 convs, each stage but the last halving the size
    while it is at least ``min_size`` * 2; global average pooling; a ``feature_dim`` layer (the
    features); a linear head."""

    in_channels: int = 1
    image_size: tuple[int, int] = (8, 8)
    num_classes: int = 10
    widths: tuple[int, ...] = ()  # () picks by size: (32, 64) up to 8 px (digits), (32, 64, 128) above
    feature_dim: int = doc(128, "width of the feature layer", positive=True)
    min_size: int = 4
    dropout: float = 0.1


class Classifier(nn.Module):
    def __init__(self, cfg: ClassifierConfig):
        super().__init__()
        if not cfg.widths:
            raise ValueError("ClassifierConfig.widths is empty; build configs with config_for(data)")
        self.config = cfg
        layers: list[nn.Module] = []
        c, size = cfg.in_channels, min(cfg.image_size)
        for i, w in enumerate(cfg.widths):
            layers += [nn.Conv2d(c, w, 3, padding=1), nn.GroupNorm(min(8, w), w), nn.SiLU(),
                       nn.Conv2d(w, w, 3, padding=1), nn.GroupNorm(min(8, w), w), nn.SiLU()]
            c = w
            if i < len(cfg.widths) - 1 and size >= 2 * cfg.min_size:
                layers.append(nn.MaxPool2d(2))
                size //= 2
        self.body = nn.Sequential(*layers)
        self.embed = nn.Sequential(nn.Linear(c, cfg.feature_dim), nn.SiLU())
        self.dropout = nn.Dropout(cfg.dropout)
        self.head = nn.Linear(cfg.feature_dim, cfg.num_classes)

    @property
    def num_features(self) -> int:
        return self.config.feature_dim

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate-layer features (N, feature_dim) of images (N, C, H, W) in [-1, 1]."""
        return self.embed(self.body(x).mean(dim=(2, 3)))

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits(self.features(x))


class NoisyClassifier(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        check_model_config(cfg)
        if not cfg.num_classes or cfg.num_classes < 2:
            raise UserError(f"a classifier needs at least 2 classes, got num_classes={cfg.num_classes}")
        self.config = cfg
        ch = cfg.base_channels
        emb_dim = 4 * ch
        groups, cond, drop = cfg.norm_groups, cfg.resblock_conditioning, cfg.dropout

        self.time_mlp = nn.Sequential(nn.Linear(ch, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.conv_in = nn.Conv2d(cfg.in_channels, ch, 3, padding=1)
        # The U-Net's encoder, level by level (same blocks, same attention resolutions).
        res, cur = cfg.image_size[0], ch
        self.down = nn.ModuleList()
        for level, mult in enumerate(cfg.channel_mult):
            for _ in range(cfg.num_res_blocks):
                layers = [ResBlock(cur, ch * mult, emb_dim, drop, groups, cond)]
                cur = ch * mult
                if res in cfg.attention_resolutions:
                    layers.append(Attention(cur, cfg.num_heads, groups))
                self.down.append(nn.ModuleList(layers))
            if level != len(cfg.channel_mult) - 1:
                self.down.append(nn.ModuleList([Downsample(cur, cfg.downsample_padding)]))
                res //= 2
        self.mid = nn.ModuleList(
            [ResBlock(cur, cur, emb_dim, drop, groups, cond), Attention(cur, cfg.num_heads, groups),
             ResBlock(cur, cur, emb_dim, drop, groups, cond)]
        )
        self.norm_out = group_norm(cur, groups)
        self.head = nn.Linear(cur, cfg.num_classes)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Logits (N, num_classes) of a noisy batch (N, C, H, W) at its (N,) 0-based timesteps."""
        emb = self.time_mlp(timestep_embedding(t, self.config.base_channels))
        h = self.conv_in(x)
        for layers in self.down:
            h = _run(layers, h, emb)
        h = _run(self.mid, h, emb)
        return self.head(F.silu(self.norm_out(h)).mean(dim=(2, 3)))


# --- files: PATH/classifier.safetensors (weights; config and info in its metadata) + PATH/classifier.json ---


def _write(model: nn.Module, path: str | Path, meta: dict[str, str], readable: dict[str, Any]) -> Path:
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    atomic_write(folder / WEIGHTS, lambda tmp: save_file(tensors, tmp, metadata=meta))
    write_text_atomic(folder / INFO, json.dumps(readable, indent=2) + "\n")
    return folder


def _read(path: str | Path, fmt: str, train_hint: str) -> tuple[dict[str, torch.Tensor], dict[str, str], Path]:
    """(tensors, metadata, file) of a classifier file of format ``fmt``; anything else is a UserError."""
    p = Path(path)
    if p.is_dir():
        p = p / WEIGHTS
    if not p.is_file():
        raise UserError(f"classifier not found: {path} (train one with: {train_hint})")
    tensors, meta = read_safetensors(p, "classifier")
    if fmt == NOISY_FORMAT and meta.get("format") == CLEAN_FORMAT:
        raise UserError(f"{p} is a clean-image classifier; guidance needs one trained on noisy images "
                        "(ddpm train-classifier --noisy)")
    if meta.get("format") != fmt:
        kind = "noisy classifier" if fmt == NOISY_FORMAT else "classifier"
        raise UserError(f"{p} is not a ddpm {kind} (format {meta.get('format')!r})")
    return tensors, meta, p


def save_classifier(model: Classifier, path: str | Path, info: dict[str, Any] | None = None) -> Path:
    """Write PATH/classifier.safetensors (+ PATH/classifier.json); returns the folder."""
    config = asdict(model.config)
    meta = {"format": CLEAN_FORMAT, "config": json.dumps(config), "info": json.dumps(info or {})}
    return _write(model, path, meta, {"config": config, **(info or {})})


def load_classifier(path: str | Path, device: str | torch.device = "cpu") -> tuple[Classifier, dict[str, Any]]:
    """(model in eval mode, info) from a folder written by ``save_classifier`` or its .safetensors file."""
    tensors, meta, _ = _read(path, CLEAN_FORMAT, "ddpm train-classifier --data NAME --out PATH")
    model = Classifier(build(ClassifierConfig, json.loads(meta["config"]), "classifier config"))
    model.load_state_dict(tensors)
    return model.to(device).eval(), json.loads(meta.get("info", "{}"))


def save_noisy_classifier(model: NoisyClassifier, path: str | Path, diffusion: dict[str, Any],
                          info: dict[str, Any] | None = None) -> Path:
    """Write PATH/classifier.safetensors (+ PATH/classifier.json); ``diffusion`` = {"schedule", "timesteps"}."""
    config = asdict(model.config)
    meta = {"format": NOISY_FORMAT, "config": json.dumps(config), "diffusion": json.dumps(diffusion),
            "info": json.dumps(info or {})}
    return _write(model, path, meta, {"format": NOISY_FORMAT, "config": config, "diffusion": diffusion, **(info or {})})


def load_noisy_classifier(path: str | Path, device: str | torch.device = "cpu", *,
                          diffusion: DiffusionConfig | None = None) -> tuple[NoisyClassifier, dict[str, Any]]:
    """(model in eval mode, info with "schedule" and "timesteps") from ``save_noisy_classifier``'s folder or file.

    With ``diffusion``, a classifier trained on another schedule or T is a ``UserError``: its t would
    mean a different noise level than the sampler's.
    """
    tensors, meta, _ = _read(path, NOISY_FORMAT, "ddpm train-classifier --noisy --out PATH")
    model = NoisyClassifier(build(ModelConfig, json.loads(meta["config"]), "classifier config"))
    model.load_state_dict(tensors)
    info = {**json.loads(meta.get("info", "{}")), **json.loads(meta["diffusion"])}
    if diffusion is not None and (info["schedule"], info["timesteps"]) != (diffusion.schedule, diffusion.timesteps):
        raise UserError(f"the classifier {path} was trained for a {info['schedule']} schedule with T = "
                        f"{info['timesteps']}, the model uses {diffusion.schedule} with T = {diffusion.timesteps}; "
                        "train one with matching --schedule/--timesteps")
    return model.to(device).eval(), info
