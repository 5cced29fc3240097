"""U-Net building blocks: sinusoidal time embedding, ResNet block, self-attention, resampling.

Nothing here knows about diffusion; a timestep is just a number to embed.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ddpm.config import DOWNSAMPLE_PADDINGS

NORM_EPS = 1e-6  # as Ho et al.'s TensorFlow group_norm, so published weights behave identically


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Transformer sinusoidal embedding of (N,) timesteps into (N, dim): [sin | cos] (Ho et al. App. B)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / (half - 1))
    args = t.to(torch.float32)[:, None] * freqs[None]
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


def group_norm(channels: int, groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(groups, channels), channels, eps=NORM_EPS)


class Dropout(nn.Dropout):
    """``nn.Dropout`` whose CPU mask comes from 16-bit random integers: each unit is kept when its 16 random
    bits lie above ``round(p * 65536)``, so with probability 1 - round(p * 65536) / 65536 (0.9 exactly
    to 6e-6 for p = 0.1), and kept units are scaled by the inverse of that probability, so the output is
    unbiased as ``nn.Dropout``'s. One 64-bit draw of the generator gives four units their bits; PyTorch's
    CPU ``bernoulli_`` (and ``uniform_``) spend a Mersenne-Twister draw and a float conversion on each
    unit, so this mask is cheaper to draw (``benchmarks/dropout_mask.py`` times the training step with
    the three masks; ``benchmarks/README.md`` has the figures). The default generator draws the bits, so
    ``torch.manual_seed`` fixes the masks. On other devices: ``nn.Dropout``'s fused kernel."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or not 0.0 < self.p < 1.0 or x.device.type != "cpu":
            return super().forward(x)
        drop = min(round(self.p * 65536), 65535)  # of 65536 equally likely 16-bit values, so many drop
        n = x.numel()
        bits = torch.empty((n + 3) // 4, dtype=torch.int64).random_(-(2**63), None)  # all 64 bits random
        keep = bits.view(torch.int16)[:n].view(x.shape) >= drop - 32768
        return x * keep.to(x.dtype).mul_(65536 / (65536 - drop))


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv, time conditioning, GroupNorm-SiLU-dropout-conv, plus a skip.

    ``conditioning="scale_shift"`` applies the embedding as h = norm(h) * (1 + scale) + shift (AdaGN,
    Nichol & Dhariwal 2021); ``"additive"`` adds a projection of it before the second norm, exactly as
    Ho et al. (2020) do.
    """

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, dropout: float, groups: int, conditioning: str):
        super().__init__()
        self.conditioning = conditioning
        self.norm1 = group_norm(in_ch, groups)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.emb_proj = nn.Linear(emb_dim, out_ch * (2 if conditioning == "scale_shift" else 1))
        self.norm2 = group_norm(out_ch, groups)
        self.dropout = Dropout(dropout)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        e = self.emb_proj(F.silu(emb))[:, :, None, None]
        if self.conditioning == "scale_shift":
            scale, shift = e.chunk(2, dim=1)
            h = self.norm2(h) * (1 + scale) + shift
        else:
            h = self.norm2(h + e)
        h = self.conv2(self.dropout(F.silu(h)))
        return self.skip(x) + h


class Attention(nn.Module):
    """Multi-head self-attention over all pixels with a residual connection (Ho et al. App. B)."""

    def __init__(self, channels: int, num_heads: int, groups: int):
        super().__init__()
        if channels % num_heads:
            raise ValueError(f"channels {channels} not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.norm = group_norm(channels, groups)
        self.qkv = nn.Conv2d(channels, channels * 3, 1)
        self.proj = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        d = c // self.num_heads
        q, k, v = self.qkv(self.norm(x)).reshape(n, 3, self.num_heads, d, h * w).unbind(1)  # (N, heads, d, HW)
        if x.device.type == "cpu":
            # softmax(q^T k / sqrt(d)) v as two batched matmuls. PyTorch's SDPA has no fast CPU kernel for
            # these shapes: its math fallback computes bf16 in fp32 behind NaN guards, and its flash kernel's
            # backward is slow for short sequences, so this form trains faster, in bf16 most of all
            # (benchmarks/attention_cpu.py measures both); the result is the same function.
            weights = torch.softmax(torch.einsum("nhdi,nhdj->nhij", q * d**-0.5, k), dim=-1)
            out = torch.einsum("nhij,nhdj->nhdi", weights, v)
        else:  # fused flash / memory-efficient kernels
            out = F.scaled_dot_product_attention(q.transpose(-1, -2), k.transpose(-1, -2), v.transpose(-1, -2))
            out = out.transpose(-1, -2)
        return x + self.proj(out.reshape(n, c, h, w))


class Downsample(nn.Module):
    """A stride-2 3x3 convolution (Ho et al.'s resamp_with_conv).

    ``padding="symmetric"`` pads one pixel on every side; ``"bottom_right"`` pads only the bottom and
    right, which is what TensorFlow's 'SAME' does for a stride-2 3x3 convolution of an even size, so Ho
    et al.'s released weights (and diffusers' ``downsample_padding=0``) compute their published function.
    The two see the input shifted by one pixel: the same weights give different outputs.
    """

    def __init__(self, channels: int, padding: str = "symmetric"):
        super().__init__()
        if padding not in DOWNSAMPLE_PADDINGS:
            raise ValueError(f"unknown downsample padding {padding!r}")
        self.pad = (0, 1, 0, 1) if padding == "bottom_right" else None
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0 if self.pad else 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x if self.pad is None else F.pad(x, self.pad))


class Upsample(nn.Module):
    """Nearest-neighbour 2x upsampling followed by a 3x3 convolution (Ho et al.'s resamp_with_conv),
    computed by ``upsample_conv``. The weight is the 3x3 convolution's, so checkpoints are unchanged."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return upsample_conv(x, self.conv.weight, self.conv.bias)


def phase_kernels(weight: torch.Tensor) -> torch.Tensor:
    """The four 2x2 kernels of ``upsample_conv`` from a (O, I, 3, 3) kernel, as (4 O, I, 2, 2) in the phase
    order (a, b) = (0, 0), (0, 1), (1, 0), (1, 1).

    After nearest upsampling, output row 2i + a of a 3x3 convolution sees input rows i - 1, i, i (a = 0) or
    i, i, i + 1 (a = 1) through the kernel's rows 0, 1, 2, so its 2x2 kernel has rows (w0, w1 + w2) or
    (w0 + w1, w2); columns likewise.
    """
    w = weight
    rows = [torch.stack([w[:, :, 0], w[:, :, 1] + w[:, :, 2]], 2),  # a = 0
            torch.stack([w[:, :, 0] + w[:, :, 1], w[:, :, 2]], 2)]  # a = 1
    kernels = []
    for r in rows:  # a = 0, 1
        kernels.append(torch.stack([r[..., 0], r[..., 1] + r[..., 2]], -1))  # b = 0
        kernels.append(torch.stack([r[..., 0] + r[..., 1], r[..., 2]], -1))  # b = 1
    return torch.cat(kernels, 0)


def upsample_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``conv2d(interpolate(x, scale_factor=2, mode="nearest"), weight, bias, padding=1)`` for a 3x3 kernel,
    as one 2x2 convolution of the low-resolution input with four output phases (the sub-pixel form of a
    resize-convolution): 16 (H + 1)(W + 1) instead of 36 HW multiply-adds per channel pair, 0.51x at 14x14.

    The same function (equal up to floating-point summation order), with fewer multiply-adds to run;
    ``benchmarks/upsample_conv.py`` times the training and sampling steps both ways
    (``benchmarks/README.md`` has the figures).
    """
    n, _, h, w = x.shape
    o = weight.shape[0]
    out = F.conv2d(F.pad(x, (1, 1, 1, 1)), phase_kernels(weight), None if bias is None else bias.repeat(4))
    return _Interleave.apply(out.reshape(n, 2, 2, o, h + 1, w + 1))


class _Interleave(torch.autograd.Function):
    """(n, 2, 2, o, h + 1, w + 1) phases -> (n, o, 2h, 2w): output pixel (2i + a, 2j + b) is phase (a, b) at
    (i + a, j + b). Written out because autograd's own backward of the four slices would zero-fill and
    add four gradients of the phases' full size, which cost as much as the convolution saved."""

    @staticmethod
    def forward(ctx, phases: torch.Tensor) -> torch.Tensor:
        n, _, _, o, h1, w1 = phases.shape
        h, w = h1 - 1, w1 - 1
        y = phases.new_empty(n, o, h, 2, w, 2)
        for a in (0, 1):
            for b in (0, 1):
                y[:, :, :, a, :, b] = phases[:, a, b, :, a:a + h, b:b + w]
        ctx.shape = phases.shape
        return y.view(n, o, 2 * h, 2 * w)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        n, _, _, o, h1, w1 = ctx.shape
        h, w = h1 - 1, w1 - 1
        grad = grad.reshape(n, o, h, 2, w, 2)
        out = grad.new_zeros(ctx.shape)
        for a in (0, 1):
            for b in (0, 1):
                out[:, a, b, :, a:a + h, b:b + w] = grad[:, :, :, a, :, b]
        return out
