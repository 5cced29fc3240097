"""Transformer blocks for conditioning the U-Net on a sequence (Rombach et al. 2022, LDM §3.3).

A ``SpatialTransformer`` flattens a feature map into a sequence of pixels and runs ``depth`` layers of
self-attention, cross-attention to a context (text tokens, or one class token) and a GEGLU feed-forward
over it. The context carries a key-padding mask (True = a real token): padding never receives weight, so
whatever the context holds at padded positions changes nothing. Nothing here knows about diffusion.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ddpm.models.layers import group_norm


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """softmax(q k^T / sqrt(d) + M) v for (N, heads, L, d) tensors (Vaswani et al. 2017, Eq. 1), with
    M = -inf at the keys where the (N, Lk) ``mask`` is False.

    On CPU the einsum form of ``layers.Attention`` (faster there, see its comment); the -inf logits become
    exact zeros after the softmax, so masked keys contribute nothing, bit for bit. Elsewhere PyTorch's fused
    kernels with a boolean ``attn_mask`` (True = attend), the same function.
    """
    if q.device.type == "cpu":
        logits = torch.einsum("nhid,nhjd->nhij", q * q.shape[-1] ** -0.5, k)
        if mask is not None:
            logits = logits.masked_fill(~mask[:, None, None, :], float("-inf"))
        return torch.einsum("nhij,nhjd->nhid", torch.softmax(logits, dim=-1), v)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=None if mask is None else mask[:, None, None, :])


class MultiHeadAttention(nn.Module):
    """Multi-head attention of a (N, Lq, dim) sequence to a (N, Lk, context_dim) context, itself when the
    context is None (LDM's CrossAttention: bias-free q, k, v projections, an output projection)."""

    def __init__(self, dim: int, num_heads: int, context_dim: int | None = None):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"width {dim} not divisible by num_heads {num_heads}")
        context_dim = dim if context_dim is None else context_dim
        self.num_heads = num_heads
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_k = nn.Linear(context_dim, dim, bias=False)
        self.to_v = nn.Linear(context_dim, dim, bias=False)
        self.to_out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        context = x if context is None else context

        def heads(t: torch.Tensor) -> torch.Tensor:  # (N, L, dim) -> (N, heads, L, d)
            return t.unflatten(-1, (self.num_heads, -1)).transpose(1, 2)

        out = attention(heads(self.to_q(x)), heads(self.to_k(context)), heads(self.to_v(context)), mask)
        return self.to_out(out.transpose(1, 2).flatten(2))


class GEGLU(nn.Module):
    """The GELU-gated feed-forward of Shazeer (2020), Eq. 6: (GELU(x W) * x V) W2, inner width 4 dim."""

    def __init__(self, dim: int, mult: int = 4):
        super().__init__()
        self.proj = nn.Linear(dim, 2 * mult * dim)  # x W and x V as one matmul
        self.out = nn.Linear(mult * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, gate = self.proj(x).chunk(2, dim=-1)
        return self.out(h * F.gelu(gate))


class TransformerLayer(nn.Module):
    """Pre-LayerNorm self-attention, cross-attention to the context, GEGLU; each residual (LDM's
    BasicTransformerBlock)."""

    def __init__(self, dim: int, context_dim: int, num_heads: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.self_attn = MultiHeadAttention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim)
        self.cross_attn = MultiHeadAttention(dim, num_heads, context_dim)
        self.norm3 = nn.LayerNorm(dim)
        self.ff = GEGLU(dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        x = x + self.self_attn(self.norm1(x))
        x = x + self.cross_attn(self.norm2(x), context, mask)
        return x + self.ff(self.norm3(x))


class SpatialTransformer(nn.Module):
    """GroupNorm, 1x1 convolution in, ``depth`` ``TransformerLayer``s over the H W pixels, a zero-initialised
    1x1 convolution out, and a residual to the input (Rombach et al. 2022, §3.3 and App. E.2).

    The zero projection makes a freshly built block the identity, so adding it to a network changes
    nothing at initialisation. ``forward(x, context, mask)`` takes a (N, C, H, W) map, a (N, L,
    context_dim) context and an optional (N, L) bool mask (True = a real token; None = all real).
    """

    def __init__(self, channels: int, context_dim: int, num_heads: int, depth: int, groups: int):
        super().__init__()
        self.norm = group_norm(channels, groups)
        self.proj_in = nn.Conv2d(channels, channels, 1)
        self.layers = nn.ModuleList(TransformerLayer(channels, context_dim, num_heads) for _ in range(depth))
        self.proj_out = nn.Conv2d(channels, channels, 1)
        nn.init.zeros_(self.proj_out.weight)
        nn.init.zeros_(self.proj_out.bias)

    def forward(self, x: torch.Tensor, context: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        n, c, h, w = x.shape
        s = self.proj_in(self.norm(x)).flatten(2).transpose(1, 2)  # (N, HW, C)
        context = context.to(s.dtype)
        for layer in self.layers:
            s = layer(s, context, mask)
        return x + self.proj_out(s.transpose(1, 2).reshape(n, c, h, w))
