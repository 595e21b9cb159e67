"""Linear blend-shape displacement fields and the remap helpers they share.

A field maps each OUTPUT pixel to the SOURCE pixel it samples (backward warp):
map(p) = p + sum_k c_k * basis_k(p). Bases are precomputed once per portrait.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class Box:
    y0: int
    y1: int
    x0: int
    x1: int

    @property
    def slices(self) -> tuple[slice, slice]:
        return slice(self.y0, self.y1), slice(self.x0, self.x1)

    @property
    def shape(self) -> tuple[int, int]:
        return self.y1 - self.y0, self.x1 - self.x0

    @classmethod
    def around(cls, pts: np.ndarray, size: tuple[int, int], pad: int = 2) -> "Box":
        h, w = size
        x0, y0 = np.floor(pts.min(0)).astype(int) - pad
        x1, y1 = np.ceil(pts.max(0)).astype(int) + pad + 1
        return cls(max(0, y0), min(h, y1), max(0, x0), min(w, x1))


def smoothstep(e0: float, e1, x):
    t = np.clip((x - e0) / (e1 - e0), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def step(x, width: float = 1.0):
    """Anti-aliased step 0 -> 1 at x == 0 over `width` pixels."""
    return np.clip(x / width + 0.5, 0.0, 1.0)


def grid(box: Box) -> tuple[np.ndarray, np.ndarray]:
    """Absolute pixel coordinates (x, y) of a box, float32."""
    ys = np.arange(box.y0, box.y1, dtype=np.float32)
    xs = np.arange(box.x0, box.x1, dtype=np.float32)
    gx, gy = np.meshgrid(xs, ys)
    return gx, gy


def local_coords(box: Box, origin, eu, ev) -> tuple[np.ndarray, np.ndarray]:
    """Face-aligned coordinates (u along eu, v along ev) of every pixel in the box."""
    gx, gy = grid(box)
    dx, dy = gx - np.float32(origin[0]), gy - np.float32(origin[1])
    return dx * eu[0] + dy * eu[1], dx * ev[0] + dy * ev[1]


def to_image(du, dv, eu, ev) -> np.ndarray:
    """Face-frame displacement -> (h, w, 2) float32 image-frame displacement."""
    return np.stack([du * eu[0] + dv * ev[0], du * eu[1] + dv * ev[1]], -1).astype(np.float32)


def blend(bases: np.ndarray, coeffs) -> np.ndarray:
    """sum_k c_k * bases[k] without BLAS (whose thread pool stalls on a busy shared machine): one
    cv2.scaleAdd pass per nonzero coefficient, half numpy's multiply-then-add instructions."""
    out = np.zeros(bases.shape[1], np.float32)
    for c, b in zip(coeffs, bases):
        if c != 0.0:
            cv2.scaleAdd(b, float(c), out, dst=out)
    return out


def box_window(h: int, w: int, ramp: float = 3.0) -> np.ndarray:
    """1 inside, easing to 0 on the outermost pixels of an (h, w) box."""
    dy = np.minimum(np.arange(h), np.arange(h)[::-1]).astype(np.float32)
    dx = np.minimum(np.arange(w), np.arange(w)[::-1]).astype(np.float32)
    return smoothstep(0.0, ramp, np.minimum(dy[:, None], dx[None, :]))


class BlendField:
    """A box with K basis displacement fields; evaluates identity + sum c_k basis_k.

    keep: a part of the box (slices relative to it) whose displacement the caller reads. Given,
    the field shrinks to the bounding box of its nonzero bases and `keep`: outside it every
    pixel samples itself, so the rest of the box needs no per-frame work."""

    def __init__(self, box: Box, bases: list[np.ndarray], keep: tuple[slice, slice] | None = None):
        h, w = box.shape
        self.k = len(bases)
        win = box_window(h, w)[..., None]       # fields end exactly at the box edge
        full = np.stack([b * win for b in bases]).astype(np.float32)
        if keep is not None:
            used = np.any(full != 0, axis=(0, 3))
            used[keep] = True
            ys, xs = np.nonzero(used.any(1))[0], np.nonzero(used.any(0))[0]
            full = full[:, ys[0]:ys[-1] + 1, xs[0]:xs[-1] + 1]
            box = Box(box.y0 + ys[0], box.y0 + ys[-1] + 1, box.x0 + xs[0], box.x0 + xs[-1] + 1)
        self.box = box
        self.bases = full.reshape(self.k, -1)
        gx, gy = grid(box)
        self.identity = np.stack([gx, gy], -1)

    def displacement(self, coeffs: np.ndarray) -> np.ndarray:
        h, w = self.box.shape
        return blend(self.bases, coeffs).reshape(h, w, 2)

    def remap_into(self, src: np.ndarray, dst: np.ndarray, disp: np.ndarray) -> None:
        """dst[box] = src sampled at box + disp (bilinear, reflected borders)."""
        ys, xs = self.box.slices
        cv2.remap(src, self.identity + disp, None, cv2.INTER_LINEAR,
                  dst=dst[ys, xs], borderMode=cv2.BORDER_REPLICATE)
