"""The noise-prediction U-Net of Ho et al. (2020), App. B, with the options later papers added.

``UNet(config)(x, t, y=None)`` maps a noisy batch, its (N,) timesteps and optional class labels to an
output of ``out_channels``; what that output means (eps, x0, v, a variance) is the diffusion's business.
"""

from __future__ import annotations

import torch
import torch.utils.checkpoint
from torch import nn

from ddpm.config import ModelConfig
from ddpm.errors import UserError
from ddpm.models.layers import Attention, Downsample, ResBlock, Upsample, group_norm, timestep_embedding


def check_model_config(cfg: ModelConfig) -> None:
    """One-line errors for shapes and settings the network cannot take."""
    if len(cfg.image_size) != 2:
        raise UserError(f"image size takes height and width (e.g. 28,28), got {','.join(map(str, cfg.image_size))}")
    h, w = cfg.image_size
    factor = 2 ** (len(cfg.channel_mult) - 1)
    if h <= 0 or w <= 0:
        raise UserError(f"image size must be positive, got {h}x{w}")
    if h % factor or w % factor:
        raise UserError(
            f"image size {h}x{w} is not divisible by {factor}, the total downsampling of "
            f"channel_mult={tuple(cfg.channel_mult)}; choose another size or fewer levels"
        )
    if cfg.in_channels not in (1, 3, 4) and cfg.in_channels < 1:
        raise UserError(f"in_channels must be positive, got {cfg.in_channels}")
    for c in cfg.channel_mult:
        ch = cfg.base_channels * c
        if ch % min(cfg.norm_groups, ch):
            raise UserError(f"{ch} channels are not divisible into {cfg.norm_groups} norm groups")
        if cfg.attention_resolutions and ch % cfg.num_heads:
            raise UserError(f"{ch} channels are not divisible by num_heads={cfg.num_heads}")
    if cfg.resblock_conditioning not in ("scale_shift", "additive"):
        raise UserError(f"unknown resblock_conditioning {cfg.resblock_conditioning!r}")


class UNet(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        check_model_config(cfg)
        self.config = cfg
        ch = cfg.base_channels
        emb_dim = 4 * ch
        groups, cond, drop = cfg.norm_groups, cfg.resblock_conditioning, cfg.dropout

        self.time_mlp = nn.Sequential(nn.Linear(ch, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        # Row num_classes is the learned "no label" entry used for classifier-free guidance.
        self.label_emb = nn.Embedding(cfg.num_classes + 1, emb_dim) if cfg.num_classes else None
        self.conv_in = nn.Conv2d(cfg.in_channels, ch, 3, padding=1)

        def block(cin: int, cout: int, res: int) -> nn.ModuleList:
            layers = [ResBlock(cin, cout, emb_dim, drop, groups, cond)]
            if res in cfg.attention_resolutions:
                layers.append(Attention(cout, cfg.num_heads, groups))
            return nn.ModuleList(layers)

        res = cfg.image_size[0]
        self.down = nn.ModuleList()
        skip_channels = [ch]
        cur = ch
        for level, mult in enumerate(cfg.channel_mult):
            for _ in range(cfg.num_res_blocks):
                self.down.append(block(cur, ch * mult, res))
                cur = ch * mult
                skip_channels.append(cur)
            if level != len(cfg.channel_mult) - 1:
                self.down.append(nn.ModuleList([Downsample(cur, cfg.downsample_padding)]))
                skip_channels.append(cur)
                res //= 2

        self.mid = nn.ModuleList(
            [ResBlock(cur, cur, emb_dim, drop, groups, cond), Attention(cur, cfg.num_heads, groups),
             ResBlock(cur, cur, emb_dim, drop, groups, cond)]
        )

        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(cfg.channel_mult))):
            for i in range(cfg.num_res_blocks + 1):
                layers = block(cur + skip_channels.pop(), ch * mult, res)
                cur = ch * mult
                if level and i == cfg.num_res_blocks:
                    layers.append(Upsample(cur))
                    res *= 2
                self.up.append(layers)

        self.norm_out = group_norm(cur, groups)
        self.conv_out = nn.Conv2d(cur, cfg.out_channels, 3, padding=1)
        # Activation checkpointing: keep only each block's input and recompute the block in the backward
        # pass (the RNG state is replayed, so dropout draws the same mask). Set by the training loop.
        self.checkpointing = False

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        emb = self.time_mlp(timestep_embedding(t, self.config.base_channels))
        if self.label_emb is not None:
            if y is None:
                y = torch.full((x.shape[0],), self.config.num_classes, device=x.device, dtype=torch.long)
            emb = emb + self.label_emb(y)
        run = _run_checkpointed if self.checkpointing and torch.is_grad_enabled() else _run
        h = self.conv_in(x)
        skips = [h]
        for layers in self.down:
            h = run(layers, h, emb)
            skips.append(h)
        h = run(self.mid, h, emb)
        for layers in self.up:
            h = run(layers, torch.cat([h, skips.pop()], dim=1), emb)
        return self.conv_out(nn.functional.silu(self.norm_out(h)))


def _run(layers: nn.ModuleList, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
    for layer in layers:
        h = layer(h, emb) if isinstance(layer, ResBlock) else layer(h)
    return h


def _run_checkpointed(layers: nn.ModuleList, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
    return torch.utils.checkpoint.checkpoint(_run, layers, h, emb, use_reentrant=False)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
