"""The KL-regularised autoencoder of latent diffusion (Rombach et al. 2022, LDM §3, App. G).

``Encoder``: conv_in, L levels of ResNet blocks (a stride-2 convolution between levels), a middle block
(ResNet, self-attention, ResNet), GroupNorm-SiLU-conv to 2 * latent channels (mean and log-variance).
``Decoder``: the mirror image, with one more ResNet block per level and nearest-neighbour upsampling.
The layout is that of LDM's ``AutoencoderKL`` and diffusers' ``AutoencoderKL`` (GroupNorm epsilon 1e-6,
bottom-right padding before the stride-2 convolutions, one attention head as wide as the layer), so their
weights load unchanged (``ddpm.models.autoencoder_io``).

``FirstStage`` is all latent diffusion sees: images -> normalised latents -> images.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ddpm.config import AUTOENCODER_FACTORS, AutoencoderConfig
from ddpm.errors import UserError
from ddpm.models.layers import Attention, Downsample, Upsample, group_norm


def check_autoencoder_config(cfg: AutoencoderConfig) -> None:
    """One-line errors for settings the network cannot be built with."""
    if cfg.factor not in AUTOENCODER_FACTORS:
        raise UserError(f"channel_mult {','.join(map(str, cfg.channel_mult))} gives f = {cfg.factor}; use 1 to 4 "
                        f"levels (f in {', '.join(map(str, AUTOENCODER_FACTORS))}, --factor)")
    h, w = cfg.image_size
    if h % cfg.factor or w % cfg.factor:
        raise UserError(f"image size {h}x{w} is not divisible by the autoencoder's factor f = {cfg.factor}")
    for c in {cfg.base_channels * m for m in cfg.channel_mult}:
        if c % min(cfg.norm_groups, c):
            raise UserError(f"norm_groups {cfg.norm_groups} does not divide the {c} channels of a level "
                            "(--norm-groups, --base-channels)")
    if not cfg.logvar_min < cfg.logvar_max:
        raise UserError(f"logvar_min {cfg.logvar_min} must be below logvar_max {cfg.logvar_max}")


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice plus a skip (a 1x1 convolution when the width changes): the U-Net's ResNet
    block without time conditioning or dropout, as LDM's and diffusers' VAE blocks."""

    def __init__(self, in_ch: int, out_ch: int, groups: int):
        super().__init__()
        self.norm1 = group_norm(in_ch, groups)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.norm2 = group_norm(out_ch, groups)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return self.skip(x) + h


class MidBlock(nn.Module):
    """ResNet, single-head self-attention over all positions (optional), ResNet."""

    def __init__(self, ch: int, groups: int, attention: bool):
        super().__init__()
        self.block1 = ResBlock(ch, ch, groups)
        self.attn = Attention(ch, 1, groups) if attention else nn.Identity()
        self.block2 = ResBlock(ch, ch, groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block2(self.attn(self.block1(x)))


class Level(nn.Module):
    """ResNet blocks, then an optional resampling (a module named ``resample``, or Identity)."""

    def __init__(self, chans: list[int], groups: int, resample: nn.Module | None):
        super().__init__()
        self.blocks = nn.ModuleList(ResBlock(a, b, groups) for a, b in zip(chans[:-1], chans[1:]))
        self.resample = resample if resample is not None else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return self.resample(x)


class Encoder(nn.Module):
    """x (N, C, H, W) -> the posterior's parameters (N, 2 * latent, H / f, W / f), before ``quant_conv``."""

    def __init__(self, cfg: AutoencoderConfig):
        super().__init__()
        chans = [cfg.base_channels * m for m in cfg.channel_mult]
        g = cfg.norm_groups
        self.conv_in = nn.Conv2d(cfg.in_channels, chans[0], 3, padding=1)
        levels, prev = [], chans[0]
        for i, c in enumerate(chans):
            # diffusers' VAE pads bottom-right then convolves with stride 2 (downsample_padding=0), as LDM.
            down = Downsample(c, "bottom_right") if i < len(chans) - 1 else None
            levels.append(Level([prev] + [c] * cfg.num_res_blocks, g, down))
            prev = c
        self.down = nn.ModuleList(levels)
        self.mid = MidBlock(chans[-1], g, cfg.mid_attention)
        self.norm_out = group_norm(chans[-1], g)
        self.conv_out = nn.Conv2d(chans[-1], 2 * cfg.latent_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for level in self.down:
            h = level(h)
        h = self.mid(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    """z (N, latent, h, w) -> x (N, C, f h, f w); ``up[0]`` is the deepest level (diffusers' order)."""

    def __init__(self, cfg: AutoencoderConfig):
        super().__init__()
        chans = [cfg.base_channels * m for m in cfg.channel_mult][::-1]
        g = cfg.norm_groups
        self.conv_in = nn.Conv2d(cfg.latent_channels, chans[0], 3, padding=1)
        self.mid = MidBlock(chans[0], g, cfg.mid_attention)
        levels, prev = [], chans[0]
        for i, c in enumerate(chans):
            up = Upsample(c) if i < len(chans) - 1 else None
            levels.append(Level([prev] + [c] * (cfg.num_res_blocks + 1), g, up))
            prev = c
        self.up = nn.ModuleList(levels)
        self.norm_out = group_norm(chans[-1], g)
        self.conv_out = nn.Conv2d(chans[-1], cfg.in_channels, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.conv_in(z))
        for level in self.up:
            h = level(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class DiagonalGaussian:
    """q(z | x) = N(mean, diag(exp(logvar))), the encoder's posterior (LDM's DiagonalGaussianDistribution).

    The log-variance is clamped (LDM: [-30, 20]) so that exp() neither underflows to a zero std nor
    overflows."""

    def __init__(self, mean: torch.Tensor, logvar: torch.Tensor, logvar_range: tuple[float, float] = (-30.0, 20.0)):
        self.mean = mean
        self.logvar = logvar.clamp(*logvar_range)

    @classmethod
    def from_moments(cls, moments: torch.Tensor, logvar_range: tuple[float, float] = (-30.0, 20.0)):
        """From (N, 2 latent, h, w): the mean's channels, then the log-variance's."""
        mean, logvar = moments.chunk(2, dim=1)
        return cls(mean, logvar, logvar_range)

    @property
    def std(self) -> torch.Tensor:
        return torch.exp(0.5 * self.logvar)

    @property
    def var(self) -> torch.Tensor:
        return torch.exp(self.logvar)

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """z = mean + std * eps, eps ~ N(0, I) from ``generator`` (the reparametrisation trick)."""
        eps = torch.randn(self.mean.shape, generator=generator, device=self.mean.device, dtype=self.mean.dtype)
        return self.mean + self.std * eps

    def mode(self) -> torch.Tensor:
        return self.mean

    def kl(self) -> torch.Tensor:
        """KL(q || N(0, I)) per example, (N,): 1/2 sum(mean^2 + var - 1 - logvar) over every latent element
        (Kingma & Welling 2014, App. B)."""
        return 0.5 * (self.mean.pow(2) + self.var - 1.0 - self.logvar).flatten(1).sum(1)


class Autoencoder(nn.Module):
    """``encode(x) -> DiagonalGaussian`` and ``decode(z) -> x``, images in [-1, 1] (LDM's AutoencoderKL)."""

    def __init__(self, cfg: AutoencoderConfig):
        super().__init__()
        check_autoencoder_config(cfg)
        self.config = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        k = cfg.latent_channels
        # LDM's "quant_conv" names are from VQGAN, where a codebook lookup sat between these two convolutions.
        self.quant_conv = nn.Conv2d(2 * k, 2 * k, 1) if cfg.quant_conv else nn.Identity()
        self.post_quant_conv = nn.Conv2d(k, k, 1) if cfg.quant_conv else nn.Identity()

    def encode(self, x: torch.Tensor) -> DiagonalGaussian:
        return DiagonalGaussian.from_moments(self.quant_conv(self.encoder(x)),
                                             (self.config.logvar_min, self.config.logvar_max))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.post_quant_conv(z))

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None
                ) -> tuple[torch.Tensor, DiagonalGaussian]:
        """(reconstruction of a posterior sample, the posterior): one training pass."""
        posterior = self.encode(x)
        return self.decode(posterior.sample(generator)), posterior

    def last_layer(self) -> torch.Tensor:
        """The decoder's last weight, where LDM's adaptive GAN weight compares gradient norms."""
        return self.decoder.conv_out.weight


class FirstStage(nn.Module):
    """The autoencoder as latent diffusion sees it: z = (sample - shift) * scale and back.

    LDM §4.3.2 / App. G rescales the latents by 1 / their std (``scale``) so the diffusion's signal has
    unit variance, as images in [-1, 1] roughly do; some models also subtract a ``shift``."""

    def __init__(self, autoencoder: Autoencoder, scale: float = 1.0, shift: float = 0.0):
        super().__init__()
        self.autoencoder = autoencoder
        self.scale, self.shift = float(scale), float(shift)

    @property
    def config(self) -> AutoencoderConfig:
        return self.autoencoder.config

    def encode(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Normalised latents of images ``x``: a posterior sample drawn from ``generator``, or the posterior's
        mode (its mean) when no generator is given, so encoding is deterministic unless asked otherwise."""
        posterior = self.autoencoder.encode(x)
        z = posterior.mode() if generator is None else posterior.sample(generator)
        return (z - self.shift) * self.scale

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.autoencoder.decode(z / self.scale + self.shift)

    def latent_shape(self, image_shape: tuple[int, ...]) -> tuple[int, int, int]:
        """(latent channels, H / f, W / f) of images of shape ([C,] H, W)."""
        h, w = image_shape[-2:]
        f = self.config.factor
        if h % f or w % f:
            raise UserError(f"image size {h}x{w} is not divisible by the autoencoder's factor f = {f}")
        return self.config.latent_channels, h // f, w // f
