"""Teeth textures for the inner-mouth layer, built once per portrait.

The upper teeth are fixed to the skull, so their colour and coverage depend only on the
mouth-frame coordinates (u across, s below the closed-lip seam): they are precomputed here,
softened to the portrait's sharpness, and only shaded by the moving upper lip per frame.
Where the portrait shows its own teeth, their pixels (extended by inpainting) are the texture.
"""
from __future__ import annotations

import cv2
import numpy as np

from .palette import Palette
from .warp import smoothstep, step

TOOTH_EDGES = (0.0, 0.29, 0.52, 0.69, 0.83, 0.95)   # boundaries across the arch, in half-widths
TOOTH_TONE = (1.0, 0.97, 0.94, 0.96, 0.9, 0.86)     # per-tooth brightness, centre outwards
TEETH_BLUR = 0.7                                    # px: match a typical portrait's softness
CORNER_RISE = 0.10                                  # half-widths the edge rises at the corners


def _tooth_coords(au: np.ndarray):
    """(tooth index, position 0..1 within the tooth, px-free distance to the nearest boundary)."""
    edges = np.asarray(TOOTH_EDGES, np.float32)
    k = np.clip(np.searchsorted(edges, au, side="right") - 1, 0, len(edges) - 2)
    lo, hi = edges[k], edges[k + 1]
    frac = np.clip((au - lo) / (hi - lo), 0.0, 1.0)
    gap = np.minimum(au - lo, hi - au)
    return k, frac, gap


def row_pattern(au: np.ndarray, scale_px: float, lower: bool = False) -> np.ndarray:
    """Brightness across the arch: rounded teeth, soft separations, darker towards the corners."""
    k, frac, gap = _tooth_coords(au)
    tone = np.asarray(TOOTH_TONE, np.float32)[k]
    rounded = 1.0 - 0.12 * (2.0 * frac - 1.0) ** 2
    sep = 1.0 - (0.32 if lower else 0.22) * np.exp(-((gap * scale_px) / 0.8) ** 2)
    side = 1.0 - 0.75 * smoothstep(0.35, 0.95, au)
    return (tone * rounded * sep * side).astype(np.float32)


def upper_layer(u: np.ndarray, s: np.ndarray, hw: float, pal: Palette,
                own: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Premultiplied RGB (h, w, 3) and alpha (h, w) of the upper teeth in the mouth sub-window."""
    au = np.abs(u) / hw
    _, frac, _ = _tooth_coords(au)
    # incisal edge a little below the closed seam, following the arch, rounded at each tooth;
    # towards the corners it curves up behind the upper lip (and the row fades into the
    # corner's shadow), so the last teeth never end in a bright point against the dark mouth
    edge = (0.10 * hw * (1.0 - 0.35 * au ** 2) - 0.03 * hw * (2.0 * frac - 1.0) ** 2
            - CORNER_RISE * hw * smoothstep(0.55, 0.95, au))
    alpha = step(edge - s, 1.0) * (1.0 - smoothstep(0.78, 0.96, au))
    gum = edge - 0.48 * hw                                   # where the gum line would be
    vert = 0.5 + 0.5 * smoothstep(gum, gum + 0.3 * hw, s)    # shadow up towards the gum
    if own is not None:
        rgb = own * (1.0 - 0.5 * smoothstep(0.5, 0.95, au))[..., None]
        rgb = rgb * vert[..., None] + pal.inner_lip * (1.0 - vert)[..., None]
    else:
        rgb = pal.teeth * row_pattern(au, hw)[..., None]
        rgb = rgb * vert[..., None] + pal.inner_lip * (1.0 - vert)[..., None]   # warm shadow
        # the thin incisal edge lets the dark mouth through a little: greyer, slightly blue
        tip = smoothstep(0.05 * hw, 0.0, edge - s)[..., None] * 0.18
        rgb = rgb * (1.0 - tip) + (pal.teeth * 0.45 + pal.cavity * 0.55) * tip
        gum_rgb = pal.lip * 0.55
        g = (1.0 - smoothstep(gum - 1.0, gum + 1.0, s))[..., None]
        rgb = rgb * (1.0 - g) + gum_rgb * g
    pre = (rgb * alpha[..., None]).astype(np.float32)
    pre = cv2.GaussianBlur(pre, (0, 0), TEETH_BLUR)
    alpha = cv2.GaussianBlur(alpha.astype(np.float32), (0, 0), TEETH_BLUR)
    return pre, alpha


def own_texture(sub_img: np.ndarray, inner: np.ndarray, pal: Palette) -> np.ndarray | None:
    """The portrait's visible teeth (bright pixels inside the inner lips), inpainted outwards."""
    mask = np.zeros(sub_img.shape[:2], np.uint8)
    cv2.fillPoly(mask, [np.round(inner).astype(np.int32)], 1)
    mask = cv2.erode(mask, np.ones((3, 3), np.uint8))
    lum = sub_img.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    teeth_l = float(pal.teeth @ np.array([0.299, 0.587, 0.114], np.float32))
    keep = (mask > 0) & (lum > 0.6 * teeth_l)
    if keep.sum() < 12:
        return None
    holes = (~keep).astype(np.uint8)
    filled = cv2.inpaint(np.ascontiguousarray(sub_img), holes, 3, cv2.INPAINT_TELEA)
    return filled.astype(np.float32)
