"""Building blocks of the FlashHead DiT (Wan2.1 layout, audio cross-attention instead of text).

Parameter names follow the official checkpoint exactly; see dit.py for the full key list.
Shapes: B batch, L tokens, D model dim, H heads, Dh head dim, F latent frames.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class RMSNorm(nn.Module):
    """RMS normalisation over the last dim, computed in float32, weight applied in input dtype."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(dim=-1, keepdim=True) + self.eps)
        return xf.to(x.dtype) * self.weight


def sinusoidal_embedding(timestep: torch.Tensor, dim: int) -> torch.Tensor:
    """timestep: (B,) in [0, 1000] -> (B, dim) = [cos | sin], computed in float64."""
    half = dim // 2
    freqs = torch.pow(10000.0, -torch.arange(half, dtype=torch.float64, device=timestep.device) / half)
    angles = torch.outer(timestep.to(torch.float64), freqs)
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=1)


def rope_split(head_dim: int) -> tuple[int, int, int]:
    """Complex frequencies per axis (time, height, width): 128 -> (22, 21, 21)."""
    c = head_dim // 2
    return c - 2 * (c // 3), c // 3, c // 3


def _axis_angles(n_freqs: int, length: int, theta: float) -> torch.Tensor:
    """(length, n_freqs) float64 angles; each axis has its own denominator (2 * n_freqs)."""
    inv = 1.0 / theta ** (torch.arange(0, 2 * n_freqs, 2, dtype=torch.float64) / (2 * n_freqs))
    return torch.outer(torch.arange(length, dtype=torch.float64), inv)


def rope_table(grid: tuple[int, int, int], head_dim: int, theta: float = 10000.0) -> torch.Tensor:
    """3D RoPE rotations for an (f, h, w) token grid, positions from 0 (they restart per chunk).

    Returns complex128 (f*h*w, 1, head_dim/2), ordered time | height | width like the tokens.
    """
    f, h, w = grid
    nt, nh, nw = rope_split(head_dim)
    at, ah, aw = _axis_angles(nt, f, theta), _axis_angles(nh, h, theta), _axis_angles(nw, w, theta)
    angles = torch.cat([
        at.view(f, 1, 1, nt).expand(f, h, w, nt),
        ah.view(1, h, 1, nh).expand(f, h, w, nh),
        aw.view(1, 1, w, nw).expand(f, h, w, nw),
    ], dim=-1).reshape(f * h * w, 1, -1)
    return torch.polar(torch.ones_like(angles), angles)


def apply_rope(x: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """x: B x L x H x Dh (adjacent channel pairs are complex numbers) -> rotated, same dtype."""
    xc = torch.view_as_complex(x.to(table.real.dtype).reshape(*x.shape[:-1], -1, 2))
    return torch.view_as_real(xc * table).flatten(3).to(x.dtype)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
    """q: B x Lq x D, k/v: B x Lk x D -> B x Lq x D through fused SDPA."""
    b, lq, d = q.shape
    q = q.view(b, lq, heads, -1).transpose(1, 2)
    k = k.view(b, k.shape[1], heads, -1).transpose(1, 2)
    v = v.view(b, v.shape[1], heads, -1).transpose(1, 2)
    out = F.scaled_dot_product_attention(q, k, v)
    return out.transpose(1, 2).reshape(b, lq, d)


class _Attention(nn.Module):
    """q, k, v, o projections with RMSNorm on q and k (the checkpoint's names)."""

    def __init__(self, dim: int, num_heads: int, eps: float = 1e-6):
        super().__init__()
        self.num_heads = num_heads
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))
        self.norm_q = RMSNorm(dim, eps)
        self.norm_k = RMSNorm(dim, eps)


class SelfAttention(_Attention):
    """Bidirectional self-attention over all tokens of a chunk, RMSNorm on q/k, 3D RoPE."""

    def forward(self, x: torch.Tensor, rope: torch.Tensor) -> torch.Tensor:
        """x: B x L x D, rope: L x 1 x Dh/2 complex -> B x L x D."""
        b, n, d = x.shape
        shape = (b, n, self.num_heads, d // self.num_heads)
        q = apply_rope(self.norm_q(self.q(x)).view(shape), rope).flatten(2)
        k = apply_rope(self.norm_k(self.k(x)).view(shape), rope).flatten(2)
        return self.o(attention(q, k, self.v(x), self.num_heads))


class CrossAttention(_Attention):
    """Attention from video tokens to audio tokens (no RoPE); RMSNorm on q and k."""

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """x: N x Lq x D, context: N x Lk x D -> N x Lq x D."""
        q = self.norm_q(self.q(x))
        k = self.norm_k(self.k(context))
        return self.o(attention(q, k, self.v(context), self.num_heads))


class DiTBlock(nn.Module):
    """Wan block: adaLN self-attention -> per-frame audio cross-attention -> adaLN FFN."""

    def __init__(self, dim: int, ffn_dim: int, num_heads: int, eps: float = 1e-6):
        super().__init__()
        self.self_attn = SelfAttention(dim, num_heads, eps)
        self.cross_attn = CrossAttention(dim, num_heads, eps)
        self.norm1 = nn.LayerNorm(dim, eps=eps, elementwise_affine=False)
        self.norm2 = nn.LayerNorm(dim, eps=eps, elementwise_affine=False)
        self.norm3 = nn.LayerNorm(dim, eps=eps)
        self.ffn = nn.Sequential(nn.Linear(dim, ffn_dim), nn.GELU(approximate="tanh"), nn.Linear(ffn_dim, dim))
        self.modulation = nn.Parameter(torch.randn(1, 6, dim) / dim**0.5)

    def forward(self, x: torch.Tensor, audio: torch.Tensor, t_mod: torch.Tensor,
                rope: torch.Tensor) -> torch.Tensor:
        """x: B x L x D (L = F*tokens_per_frame), audio: B x F x A x D, t_mod: B x 6 x D."""
        shift1, scale1, gate1, shift2, scale2, gate2 = (self.modulation + t_mod).chunk(6, dim=1)
        # 1. self-attention with adaLN
        x = x + self.self_attn(self.norm1(x) * (1 + scale1) + shift1, rope) * gate1
        # 2. block-diagonal audio cross-attention: frame f's tokens see only frame f's audio tokens
        b, n, d = x.shape
        frames = audio.shape[1]
        per_frame = self.norm3(x).reshape(b * frames, n // frames, d)
        x = x + self.cross_attn(per_frame, audio.flatten(0, 1)).reshape(b, n, d)
        # 3. feed-forward with adaLN
        return x + self.ffn(self.norm2(x) * (1 + scale2) + shift2) * gate2


class Head(nn.Module):
    """Final LayerNorm + (shift, scale) modulation + projection to patch pixels."""

    def __init__(self, dim: int, out_dim: int, patch_size: tuple[int, int, int], eps: float = 1e-6):
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=eps, elementwise_affine=False)
        self.head = nn.Linear(dim, out_dim * math.prod(patch_size))
        self.modulation = nn.Parameter(torch.randn(1, 2, dim) / dim**0.5)

    def forward(self, x: torch.Tensor, t_emb: torch.Tensor) -> torch.Tensor:
        """x: B x L x D, t_emb: B x D -> B x L x out_dim*prod(patch)."""
        shift, scale = (self.modulation + t_emb.unsqueeze(1)).chunk(2, dim=1)
        return self.head(self.norm(x) * (1 + scale) + shift)


class MLPProj(nn.Module):
    """LayerNorm, Linear, GELU, Linear, LayerNorm: `audio_emb` in the checkpoint (kept, unused)."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.proj = nn.Sequential(nn.LayerNorm(in_dim), nn.Linear(in_dim, in_dim), nn.GELU(),
                                  nn.Linear(in_dim, out_dim), nn.LayerNorm(out_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)
