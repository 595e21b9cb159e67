"""Colour correction: per-frame mean/std transfer to the reference in CIE Lab (D65, sRGB)."""
from __future__ import annotations

import torch

_RGB2XYZ = ((0.4124564, 0.3575761, 0.1804375),
            (0.2126729, 0.7151522, 0.0721750),
            (0.0193339, 0.1191920, 0.9503041))
_XYZ2RGB = ((3.2404542, -1.5371385, -0.4985314),
            (-0.9692660, 1.8760108, 0.0415560),
            (0.0556434, -0.2040259, 1.0572252))
_WHITE = (0.95047, 1.0, 1.08883)
_EPS, _KAPPA = 0.008856, 903.3


def _mat(rows, like: torch.Tensor) -> torch.Tensor:
    return torch.tensor(rows, dtype=like.dtype, device=like.device)


def rgb_to_lab(rgb: torch.Tensor) -> torch.Tensor:
    """rgb: ... x 3 in [0, 1] (channels last) -> Lab ... x 3."""
    lin = torch.where(rgb > 0.04045, ((rgb + 0.055) / 1.055) ** 2.4, rgb / 12.92)
    xyz = (lin @ _mat(_RGB2XYZ, rgb).T) / _mat(_WHITE, rgb)
    xyz = xyz.clamp(1e-8, 1.0)
    f = torch.where(xyz > _EPS, xyz ** (1 / 3), (_KAPPA * xyz + 16) / 116)
    fx, fy, fz = f.unbind(-1)
    return torch.stack([116 * fy - 16, 500 * (fx - fy), 200 * (fy - fz)], dim=-1)


def lab_to_rgb(lab: torch.Tensor) -> torch.Tensor:
    """Lab ... x 3 -> rgb ... x 3 clipped to [0, 1]."""
    lum, a, b = lab.unbind(-1)
    fy = (lum + 16) / 116
    fx, fz = fy + a / 500, fy - b / 200
    x = torch.where(fx ** 3 > _EPS, fx ** 3, (116 * fx - 16) / _KAPPA)
    y = torch.where(lum > _KAPPA * _EPS, fy ** 3, lum / _KAPPA)
    z = torch.where(fz ** 3 > _EPS, fz ** 3, (116 * fz - 16) / _KAPPA)
    lin = (torch.stack([x, y, z], dim=-1) * _mat(_WHITE, lab)) @ _mat(_XYZ2RGB, lab).T
    rgb = torch.where(lin > 0.0031308, 1.055 * lin.clamp(min=0.0031308) ** (1 / 2.4) - 0.055, 12.92 * lin)
    return rgb.clamp(0.0, 1.0)


def lab_stats(video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """video: B x 3 x T x H x W in [-1, 1] -> per-frame Lab (mean, std): B x T x 1 x 1 x 3 each."""
    lab = rgb_to_lab(((video.float() + 1) / 2).permute(0, 2, 3, 4, 1))
    return lab.mean(dim=(2, 3), keepdim=True), lab.std(dim=(2, 3), keepdim=True, unbiased=False)


def match_colors(video: torch.Tensor, ref_stats: tuple[torch.Tensor, torch.Tensor],
                 strength: float = 1.0) -> torch.Tensor:
    """Move every frame's Lab mean/std to the reference's; blend by strength. Same shape/dtype."""
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"strength: must be in [0, 1], got {strength}")
    if strength == 0.0:
        return video.clone()
    rgb = ((video.float() + 1) / 2).permute(0, 2, 3, 4, 1)
    lab = rgb_to_lab(rgb)
    mean, std = lab.mean(dim=(2, 3), keepdim=True), lab.std(dim=(2, 3), keepdim=True, unbiased=False)
    ref_mean, ref_std = ref_stats
    std = torch.where(std < 1e-8, torch.ones_like(std), std)
    corrected = lab_to_rgb((lab - mean) * (ref_std / std) + ref_mean)
    out = (1 - strength) * rgb + strength * corrected
    return (out.permute(0, 4, 1, 2, 3) * 2 - 1).to(video.dtype)
