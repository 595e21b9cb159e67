"""Audio projection: per-frame wav2vec2 windows -> 32 context tokens per latent frame.

Same grouping as MultiTalk/InfiniteTalk. A chunk of T = 1 + (F-1)*s pixel frames (s = VAE time
stride: 4 Pro, 8 Lite) has F latent frames. Latent frame 0 takes pixel frame 0's whole window
(W = 5 audio frames); latent frame f > 0 takes its s pixel frames: the first one's window[:r+1],
the middle ones' centre only, the last one's window[r:] (r = W // 2), so r+1 + (s-2) + r+1 =
W + s - 1 audio frames.
"""
from __future__ import annotations

import torch
from torch import nn


def group_audio_windows(windows: torch.Tensor, time_stride: int) -> tuple[torch.Tensor, torch.Tensor]:
    """windows: B x T x W x Ly x A -> (first: B x 1 x W x Ly x A, later: B x (F-1) x (W+s-1) x Ly x A)."""
    b, t, w, ly, a = windows.shape
    if (t - 1) % time_stride:
        raise ValueError(f"windows: {t} frames is not 1 + k*{time_stride}")
    r = w // 2
    groups = windows[:, 1:].reshape(b, (t - 1) // time_stride, time_stride, w, ly, a)
    later = torch.cat([
        groups[:, :, 0, : r + 1],        # first frame of the group: past and centre
        groups[:, :, 1:-1, r],           # middle frames: centre only
        groups[:, :, -1, r:],            # last frame: centre and future
    ], dim=2)
    return windows[:, :1], later


class AudioProjection(nn.Module):
    """`audio_proj` in the checkpoint: proj1 / proj1_vf -> ReLU -> proj2 -> ReLU -> proj3 -> LayerNorm."""

    def __init__(self, window: int = 5, time_stride: int = 4, layers: int = 12, channels: int = 768,
                 hidden: int = 512, tokens: int = 32, dim: int = 1536):
        super().__init__()
        self.tokens, self.dim = tokens, dim
        self.proj1 = nn.Linear(window * layers * channels, hidden)
        self.proj1_vf = nn.Linear((window + time_stride - 1) * layers * channels, hidden)
        self.proj2 = nn.Linear(hidden, hidden)
        self.proj3 = nn.Linear(hidden, tokens * dim)
        self.norm = nn.LayerNorm(dim)

    def forward(self, first: torch.Tensor, later: torch.Tensor) -> torch.Tensor:
        """first: B x 1 x W x Ly x A, later: B x (F-1) x W' x Ly x A -> B x F x tokens x dim."""
        h = torch.cat([torch.relu(self.proj1(first.flatten(2))),
                       torch.relu(self.proj1_vf(later.flatten(2)))], dim=1)
        tokens = self.proj3(torch.relu(self.proj2(h)))
        tokens = tokens.unflatten(-1, (self.tokens, self.dim))
        # LayerNorm in float32 like the original (autocast fp32 region).
        w = self.norm.weight.float()
        bias = self.norm.bias.float()
        out = nn.functional.layer_norm(tokens.float(), (self.dim,), w, bias, self.norm.eps)
        return out.to(tokens.dtype)
