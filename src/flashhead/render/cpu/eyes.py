"""Eye rigs: upper-lid blink field and an iris (gaze) shift field per eye."""
from __future__ import annotations

import numpy as np

from .warp import BlendField, Box, local_coords, smoothstep, step, to_image

BLINK, GAZE_X, GAZE_Y = range(3)


class EyeRig:
    def __init__(self, image: np.ndarray, lm: np.ndarray, eye: dict):
        a, b = lm[eye["corners"][0]], lm[eye["corners"][1]]
        if a[0] > b[0]:
            a, b = b, a
        half = float(np.linalg.norm(b - a) / 2)
        self.eu = eu = ((b - a) / (2 * half)).astype(np.float32)
        self.ev = ev = np.array([-eu[1], eu[0]], np.float32)
        o = ((a + b) / 2).astype(np.float32)
        up, lo = self._curve(lm, eye["upper"], o), self._curve(lm, eye["lower"], o)
        self.iris = lm[eye["iris"]]
        ring = lm[list(eye["ring"])]
        self.iris_r = float(np.linalg.norm(ring - self.iris, axis=1).mean())
        su = np.linspace(-half, half, 64)
        opening = np.clip(np.interp(su, *lo) - np.interp(su, *up), 0, None)
        self.height = float(max(opening.max(), 1.0))
        h = self.height
        brow = np.interp(su, *self._curve(lm, eye["brow"], o))
        room = float(np.median(np.interp(su, *up) - brow))
        self.fade = fade = float(np.clip(0.75 * room, 0.5 * h, 1.2 * h))   # lid band stretched
        corners = [(-half - 3, np.min(up[1]) - fade - 3), (half + 3, np.min(up[1]) - fade - 3),
                   (-half - 3, np.max(lo[1]) + 3), (half + 3, np.max(lo[1]) + 3)]
        self.box = Box.around(np.array([o + cu * eu + cv * ev for cu, cv in corners]), image.shape[:2])
        u, v = local_coords(self.box, o, eu, ev)
        vu, vl = np.interp(u, *up), np.interp(u, *lo)
        op = np.clip(vl - vu, 0, None) * (np.abs(u) < half)
        cover = smoothstep(vu - fade, np.maximum(vl, vu + 0.5), v)   # 0 at band top, 1 at lower lid
        blink = step(vl - v, 1.0) * op * cover
        aperture = step(v - vu, 1.5) * step(vl - v, 1.5)
        iu, iv = (self.iris - o) @ eu, (self.iris - o) @ ev
        dist2 = (u - iu) ** 2 + (v - iv) ** 2
        gaze = aperture * np.exp(-dist2 / (2 * (1.3 * self.iris_r) ** 2))
        zero = np.zeros_like(u)
        self.field = BlendField(self.box, [to_image(zero, -blink, eu, ev),
                                           to_image(-gaze, zero, eu, ev),
                                           to_image(zero, -gaze, eu, ev)])

    def _curve(self, lm, idx, o):
        pts = lm[list(idx)] - o
        uu, vv = pts @ self.eu, pts @ self.ev
        order = np.argsort(uu)
        return uu[order], vv[order]

    def coefficients(self, blink: float, gaze_x: float, gaze_y: float) -> np.ndarray:
        """blink 0..1 (1 = closed); gaze in iris radii (right/down positive)."""
        gy = gaze_y * self.iris_r * 0.5
        lid = min(1.0, blink + 0.35 * max(gaze_y, 0.0) * self.iris_r / self.height)
        return np.array([lid, gaze_x * self.iris_r, gy], np.float32)
