"""The noise-prediction U-Net of Ho et al. (2020), App. B, with the options later papers added.

``UNet(config)(x, t, y=None)`` maps a noisy batch, its (N,) timesteps and optional class labels to an
output of ``out_channels``; what that output means (eps, x0, v, a variance) is the diffusion's business.

A text model (``text_encoder`` not "none", Rombach et al. 2022 §3.3) takes ``y`` as (N, L) token ids
(``ddpm.models.text.tokenize``; None is the empty caption). Its encoder's context reaches the network
through ``SpatialTransformer`` blocks (cross-attention) after each ResBlock at ``transformer_resolutions``
(empty: ``attention_resolutions``) and in the middle, where they take the plain self-attention's place; or,
with ``text_injection="pooled"`` (the ablation), as its masked mean added to the time embedding. A class
model with ``transformer_resolutions`` also gets the blocks, its label embedding as the one-token context.
"""

from __future__ import annotations

import torch
import torch.utils.checkpoint
from torch import nn

from ddpm.config import ModelConfig
from ddpm.errors import UserError
from ddpm.models.layers import (
    Attention,
    Downsample,
    ResBlock,
    Upsample,
    group_norm,
    timestep_embedding,
)
from ddpm.models.text import FROZEN, TextEncoder, load_frozen_encoder, null_tokens
from ddpm.models.transformer import SpatialTransformer


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
    for ch in _widths(cfg):
        if ch % min(cfg.norm_groups, ch):
            raise UserError(f"{ch} channels are not divisible into {cfg.norm_groups} norm groups")
    for c in cfg.channel_mult:
        ch = cfg.base_channels * c
        if cfg.attention_resolutions and ch % cfg.num_heads:
            raise UserError(f"{ch} channels are not divisible by num_heads={cfg.num_heads}")
    if cfg.resblock_conditioning not in ("scale_shift", "additive"):
        raise UserError(f"unknown resblock_conditioning {cfg.resblock_conditioning!r}")
    check_text_config(cfg)


def lone_channel_norm_widths(cfg: ModelConfig) -> list[int]:
    """The level widths whose GroupNorm would hold one channel per group (``norm_groups`` >= the width).

    Such a norm is instance normalisation: it removes every channel's spatial mean, and with it the mean
    of each image that the first convolution passed on, so the network barely sees an image's mean
    colour or brightness and cannot predict the mean of the noise. Sampling then amplifies that error
    at high t into flat, oversaturated colours. Ho et al.'s 128-channel levels hold four channels a group.
    """
    return [w for w in _widths(cfg) if cfg.norm_groups >= w]


def _widths(cfg: ModelConfig) -> list[int]:
    """Every width a GroupNorm of the U-Net sees at the start of a level: the stem's and each level's."""
    return list(dict.fromkeys([cfg.base_channels, *(cfg.base_channels * c for c in cfg.channel_mult)]))


def suggested_norm_groups(cfg: ModelConfig) -> int:
    """The most groups that divide every level width and leave at least four channels in each (one group
    when the narrowest width has fewer than eight channels)."""
    widths = _widths(cfg)
    g = max(1, min(widths) // 4)
    while any(w % g for w in widths):
        g -= 1
    return g


def resolutions(cfg: ModelConfig) -> list[int]:
    """The feature-map heights of the U-Net's levels, from the input down."""
    return [cfg.image_size[0] // 2**level for level in range(len(cfg.channel_mult))]


def has_context(cfg: ModelConfig) -> bool:
    """Whether transformer blocks attend to a context: cross-attention text, or a class label as one token
    (a class model with ``transformer_resolutions``). Such a model has one in its middle block."""
    text = cfg.text_encoder != "none" and cfg.text_injection == "cross_attention"
    return bool(text or (cfg.num_classes and cfg.transformer_resolutions))


def transformer_resolutions(cfg: ModelConfig) -> tuple[int, ...]:
    """Where ``SpatialTransformer`` blocks follow the ResBlocks: nowhere without a context; else
    ``transformer_resolutions``, by default ``attention_resolutions``."""
    return (cfg.transformer_resolutions or cfg.attention_resolutions) if has_context(cfg) else ()


def check_text_config(cfg: ModelConfig) -> None:
    """One-line errors for the text and transformer options (LDM §3.3)."""
    text = cfg.text_encoder != "none"
    if text and cfg.num_classes:
        raise UserError("a model is conditioned on text (--text-encoder) or on classes (--conditional), not both")
    if cfg.transformer_resolutions and not text and not cfg.num_classes:
        raise UserError("transformer_resolutions needs a context to attend to: a text model (--text-encoder) "
                        "or a class-conditional one (--conditional)")
    missing = sorted(set(cfg.transformer_resolutions) - set(resolutions(cfg)))
    if missing:
        raise UserError(f"transformer_resolutions {', '.join(map(str, missing))} is not a resolution of the network "
                        f"(its levels are {', '.join(map(str, resolutions(cfg)))} pixels high)")
    if has_context(cfg):
        for c in cfg.channel_mult:
            if (cfg.base_channels * c) % cfg.num_heads:
                raise UserError(f"{cfg.base_channels * c} channels of a transformer block are not divisible by "
                                f"num_heads={cfg.num_heads}")
    if not text:
        return
    if cfg.max_tokens < 2:
        raise UserError(f"max_tokens={cfg.max_tokens} leaves no room for the start and end tokens; use at least 2")
    if cfg.text_encoder in FROZEN and not cfg.text_encoder_path:
        raise UserError(f"text_encoder {cfg.text_encoder!r} needs the folder of its weights (--text-encoder-path)")
    if cfg.text_encoder == "trained":
        if cfg.text_width % cfg.num_heads:
            raise UserError(f"text_width={cfg.text_width} is not divisible by num_heads={cfg.num_heads}")
        if cfg.tokenizer == "words" and not cfg.vocabulary:
            raise UserError("the words tokenizer has an empty vocabulary: build it from the training captions "
                            "(ddpm.models.text.build_vocabulary) or use --tokenizer bytes")


class _Frozen:
    """Holds a frozen module outside the U-Net's module tree, so its weights are neither parameters nor
    state_dict entries (a checkpoint holds only what training changes) and a deep copy (the EMA model)
    shares it instead of copying it. ``UNet._apply`` moves it with the network."""

    def __init__(self, module: nn.Module):
        self.module = module

    def __deepcopy__(self, memo) -> _Frozen:
        return self


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
        context_dim = self._build_text_encoder(cfg, emb_dim)
        self.conv_in = nn.Conv2d(cfg.in_channels, ch, 3, padding=1)
        with_transformer = transformer_resolutions(cfg)

        def block(cin: int, cout: int, res: int) -> nn.ModuleList:
            layers = [ResBlock(cin, cout, emb_dim, drop, groups, cond)]
            if res in with_transformer:  # its self-attention takes the plain attention's place (LDM)
                layers.append(SpatialTransformer(cout, context_dim, cfg.num_heads, cfg.transformer_depth, groups))
            elif res in cfg.attention_resolutions:
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

        middle = (SpatialTransformer(cur, context_dim, cfg.num_heads, cfg.transformer_depth, groups)
                  if has_context(cfg) else Attention(cur, cfg.num_heads, groups))
        self.mid = nn.ModuleList(
            [ResBlock(cur, cur, emb_dim, drop, groups, cond), middle, ResBlock(cur, cur, emb_dim, drop, groups, cond)]
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

    def _build_text_encoder(self, cfg: ModelConfig, emb_dim: int) -> int:
        """The text encoder (trained: a submodule, saved and EMA-averaged with the U-Net; frozen: held
        outside the module tree) and the pooled ablation's projection; returns the context's width."""
        self.text_encoder = TextEncoder(cfg) if cfg.text_encoder == "trained" else None
        self._frozen_text = _Frozen(load_frozen_encoder(cfg)) if cfg.text_encoder in FROZEN else None
        width = (self.text_encoder.width if self.text_encoder is not None else
                 self._frozen_text.module.width if self._frozen_text is not None else emb_dim)
        pooled = cfg.text_encoder != "none" and cfg.text_injection == "pooled"
        self.text_proj = nn.Linear(width, emb_dim) if pooled else None
        return width

    def _apply(self, fn, *args, **kwargs):
        """``.to``, ``.cuda``, ``.half``... also move the frozen text encoder, which is no submodule."""
        super()._apply(fn, *args, **kwargs)
        if self._frozen_text is not None:
            self._frozen_text.module._apply(fn, *args, **kwargs)
        return self

    def encode_text(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(context (N, L, width), mask (N, L), True = real token) of (N, L) token ids."""
        encoder = self.text_encoder if self.text_encoder is not None else self._frozen_text.module
        return encoder(tokens)

    def condition(self, emb: torch.Tensor, y: torch.Tensor | None, n: int, device: torch.device):
        """The time embedding with the label or pooled text added, and the transformer blocks' (context,
        mask): the label embedding as one token (mask None: all real), or the text encoder's output."""
        cfg = self.config
        if self.label_emb is not None:
            if y is None:
                y = torch.full((n,), cfg.num_classes, device=device, dtype=torch.long)
            label = self.label_emb(y)
            return emb + label, label[:, None], None
        if cfg.text_encoder == "none":
            return emb, None, None
        context, mask = self.encode_text(null_tokens(cfg, n).to(device) if y is None else y)
        if self.text_proj is None:
            return emb, context, mask
        m = mask[..., None].to(context.dtype)  # the mean of the real tokens only: PAD changes nothing
        return emb + self.text_proj((context * m).sum(1) / m.sum(1)), None, None

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """``y``: (N,) labels of a class model, (N, L) token ids of a text model; None: no label, the empty
        caption; ignored by an unconditional model."""
        emb = self.time_mlp(timestep_embedding(t, self.config.base_channels))
        emb, context, mask = self.condition(emb, y, x.shape[0], x.device)
        run = _run_checkpointed if self.checkpointing and torch.is_grad_enabled() else _run
        h = self.conv_in(x)
        skips = [h]
        for layers in self.down:
            h = run(layers, h, emb, context, mask)
            skips.append(h)
        h = run(self.mid, h, emb, context, mask)
        for layers in self.up:
            h = run(layers, torch.cat([h, skips.pop()], dim=1), emb, context, mask)
        return self.conv_out(nn.functional.silu(self.norm_out(h)))


def _run(layers: nn.ModuleList, h: torch.Tensor, emb: torch.Tensor, context: torch.Tensor | None = None,
         mask: torch.Tensor | None = None) -> torch.Tensor:
    for layer in layers:
        if isinstance(layer, ResBlock):
            h = layer(h, emb)
        elif isinstance(layer, SpatialTransformer):
            h = layer(h, context, mask)
        else:
            h = layer(h)
    return h


def _run_checkpointed(layers: nn.ModuleList, h: torch.Tensor, emb: torch.Tensor, context: torch.Tensor | None = None,
                      mask: torch.Tensor | None = None) -> torch.Tensor:
    return torch.utils.checkpoint.checkpoint(_run, layers, h, emb, context, mask, use_reentrant=False)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
