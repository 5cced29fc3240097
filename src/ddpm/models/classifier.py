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

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ddpm.config import ModelConfig, doc
from ddpm.errors import UserError
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
                self.down.append(nn.ModuleList([Downsample(cur)]))
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
