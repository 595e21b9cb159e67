"""Colours sampled from the portrait so the inner mouth and teeth match its light and tone."""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from . import landmarks as L


@dataclass(frozen=True)
class Palette:
    skin: np.ndarray        # (3,) float32 RGB 0..255
    lip: np.ndarray
    teeth: np.ndarray
    cavity: np.ndarray
    inner_lip: np.ndarray
    tongue: np.ndarray
    shows_teeth: bool


def _poly_mask(shape, pts, erode=0):
    m = np.zeros(shape[:2], np.uint8)
    cv2.fillPoly(m, [np.round(pts).astype(np.int32)], 1)
    if erode:
        m = cv2.erode(m, np.ones((erode, erode), np.uint8))
    return m.astype(bool)


def _median(image, mask, fallback):
    px = image[mask]
    return np.median(px, 0).astype(np.float32) if len(px) >= 8 else np.asarray(fallback, np.float32)


def _bright(image, mask, q=0.6):
    px = image[mask].astype(np.float32)
    if len(px) < 8:
        return None
    lum = px @ np.array([0.299, 0.587, 0.114], np.float32)
    return px[lum >= np.quantile(lum, q)].mean(0)


def sample_palette(image: np.ndarray, lm: np.ndarray) -> Palette:
    img = image.astype(np.float32)
    cheeks = _poly_mask(image.shape, lm[[50, 101, 118, 117, 123, 187, 205, 36]], 3) | \
        _poly_mask(image.shape, lm[[280, 330, 347, 346, 352, 411, 425, 266]], 3)
    skin = _median(img, cheeks, (200, 160, 140))
    outer = np.concatenate([lm[list(L.OUTER_UPPER)], lm[list(L.OUTER_LOWER)][::-1]])
    inner = np.concatenate([lm[list(L.INNER_UPPER)], lm[list(L.INNER_LOWER)][::-1]])
    lips_m = _poly_mask(image.shape, outer, 3) & ~_poly_mask(image.shape, inner)
    lip = _median(img, lips_m, skin * np.array([0.9, 0.6, 0.6], np.float32))
    sclera = None
    for eye in L.EYES:
        poly = np.concatenate([lm[list(eye["upper"])], lm[list(eye["lower"])][::-1]])
        m = _poly_mask(image.shape, poly)
        ring = lm[list(eye["ring"])]
        r = np.linalg.norm(ring - lm[eye["iris"]], axis=1).mean()
        cv2.circle(m.view(np.uint8), tuple(np.round(lm[eye["iris"]]).astype(int)), int(r * 1.15) + 1, 0, -1)
        b = _bright(image, m.astype(bool), 0.6)
        if b is not None:
            sclera = b if sclera is None else (sclera + b) / 2
    gray = lambda c: np.full(3, float(c @ np.array([0.299, 0.587, 0.114])), np.float32)  # noqa: E731
    skin_l = gray(skin)[0]
    if sclera is None or gray(sclera)[0] < 0.8 * skin_l:
        sclera = np.minimum(skin * 1.1 + 15, 250)
    teeth = 0.45 * sclera + 0.55 * gray(sclera)
    teeth = teeth * np.array([1.0, 0.98, 0.93], np.float32)
    teeth = teeth * min(1.0, (skin_l * 1.08 + 12) / max(gray(teeth)[0], 1.0))
    shows = False
    inner_m = _poly_mask(image.shape, inner, 0)
    if inner_m.sum() > 25:
        own = _bright(image, inner_m, 0.7)
        if own is not None and gray(own)[0] > 0.75 * skin_l and gray(own)[0] > gray(lip)[0] * 1.15:
            teeth, shows = own.astype(np.float32), True
    cavity = lip * np.array([0.22, 0.13, 0.13], np.float32) + 6.0
    tongue = lip * np.array([0.78, 0.5, 0.5], np.float32) + 8
    # the red tints above suit a colour photo; a grayscale or faded portrait gets as much
    # colour inside the mouth as its own skin and lips have
    k = saturation_share(skin, lip)
    return Palette(skin=skin, lip=lip, teeth=_desaturate(np.clip(teeth, 0, 255), k),
                   cavity=_desaturate(cavity, k), inner_lip=_desaturate(lip * 0.62, k),
                   tongue=_desaturate(tongue, k), shows_teeth=shows)


FULL_CHROMA = 40.0   # skin/lip chroma (max - min channel, 0..255) that counts as a colour portrait


def saturation_share(skin: np.ndarray, lip: np.ndarray) -> float:
    """0 for a grayscale portrait, 1 for a normally coloured one."""
    chroma = max(float(np.ptp(skin)), float(np.ptp(lip)))
    return float(np.clip(chroma / FULL_CHROMA, 0.0, 1.0))


def _desaturate(rgb: np.ndarray, k: float) -> np.ndarray:
    """Keep the luminance; scale the colour away from gray by k."""
    lum = float(np.asarray(rgb, np.float32) @ np.array([0.299, 0.587, 0.114], np.float32))
    return (lum + (np.asarray(rgb, np.float32) - lum) * k).astype(np.float32)
