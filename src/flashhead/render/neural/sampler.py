"""The distilled 4-step flow-matching sampler (no CFG) with motion-latent conditioning.

sigmas: base timesteps linspace(1, 0, steps+1) shifted by t' = s*t / (1 + (s-1)*t), s = 5:
[1.0, 0.9375, 0.8333.., 0.625, 0.0]. Each step predicts the velocity v, takes
x0 = x_t - sigma * v and re-noises x_next = (1 - sigma_next) * x0 + sigma_next * noise.
Noise: one initial draw plus one per step from each sample's own seeded generator.
Like the original, t_i and t_{i+1} are cast to the model dtype before they are used (in bf16
0.8333.. becomes 0.83203125); the DiT casts its timestep input the same way (dit.py).
"""
from __future__ import annotations

from typing import Callable

import torch

NUM_TIMESTEPS = 1000      # the DiT's timestep input is sigma * 1000


def shifted_sigmas(steps: int = 4, shift: float = 5.0) -> list[float]:
    """Effective sigmas of the distilled schedule, ending with 0."""
    if steps < 1 or shift <= 0:
        raise ValueError(f"steps/shift: need steps >= 1 and shift > 0, got {steps}, {shift}")
    base = [1.0 - i / steps for i in range(steps + 1)]
    return [shift * t / (1 + (shift - 1) * t) for t in base]


def in_dtype(value: float, dtype: torch.dtype) -> float:
    """value rounded to dtype, as a Python float (bf16: 0.8333.. -> 0.83203125)."""
    return torch.tensor(value, dtype=dtype).item()


def draw_noise(shape: tuple[int, ...], generators: list[torch.Generator], device, dtype) -> torch.Tensor:
    """One draw per batch element from its own generator: B x shape[1:]."""
    return torch.stack([torch.randn(shape[1:], generator=g, device=g.device, dtype=torch.float32)
                        for g in generators]).to(device=device, dtype=dtype)


def sample(velocity: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], shape: tuple[int, ...],
           motion: torch.Tensor, generators: list[torch.Generator], sigmas: list[float],
           dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Denoise one chunk.

    velocity:   (x: B x C x F x H x W, timestep: (B,)) -> v, same shape as x
    shape:      latent shape B x C x F x H x W
    motion:     B x C x M x H x W clean latents that overwrite the first M frames at every step
    generators: one per batch element
    returns     the final latent, motion frames written once more
    """
    if len(generators) != shape[0]:
        raise ValueError(f"generators: {len(generators)} for a batch of {shape[0]}")
    m = motion.shape[2]
    x = draw_noise(shape, generators, motion.device, dtype)
    for sigma, sigma_next in zip(sigmas[:-1], sigmas[1:]):
        sigma, sigma_next = in_dtype(sigma, dtype), in_dtype(sigma_next, dtype)
        x[:, :, :m] = motion.to(dtype)
        t = torch.full((shape[0],), sigma * NUM_TIMESTEPS, device=x.device)
        x0 = x - sigma * velocity(x, t).to(dtype)
        x = (1 - sigma_next) * x0 + sigma_next * draw_noise(shape, generators, x.device, dtype)
    x[:, :, :m] = motion.to(dtype)
    return x
