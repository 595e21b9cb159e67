"""Eye rigs: upper-lid blink field and an iris (gaze) shift field per eye."""
from __future__ import annotations

import cv2
import numpy as np

from .warp import BlendField, Box, local_coords, smoothstep, step, to_image

BLINK, GAZE_X, GAZE_Y = range(3)
LUMA = np.array([0.299, 0.587, 0.114], np.float32)
LID_COVER = 0.85      # how much of the stretched lid skin the lid colour hides (dark strokes: all)
LASH_KEEP = 1.0       # output px of lash line kept at the closed lid's edge ...
LASH_SOFT = 2.0       # ... and the px over which it fades into the lid above (no drawn edge)
BAND_FEATHER = 0.5    # of a moving lash band's width: how much of its top fades into the lid (creases)
LID_CACHE = 8         # blink values whose lid layers an eye keeps (~50 KB each; a blink has 5)
OUTLINE = 0.35        # of the eye's opening: how far beyond the corners a drawn outline is hidden
OUTLINE_DARK = 0.8    # of the lid's luminance: darker pixels on the upper lid line are outline / lashes


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
        self.half, m = half, float(np.clip(OUTLINE * h, 3.0, fade))
        corners = [(-half - m - 2, np.min(up[1]) - fade - 3), (half + m + 2, np.min(up[1]) - fade - 3),
                   (-half - m - 2, np.max(lo[1]) + 3), (half + m + 2, np.max(lo[1]) + 3)]
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
        self._init_lid(image, u, v, vu, blink)
        self._init_lid_line(image, vu, vl, op)
        # the lower lid line, where the blink field steps from full to none: those pixels sample
        # the open eye (white or iris specks under a closed lid); closed, they take the darker of
        # the warped and the portrait's own (lower lashes) colour. The lash line around it is
        # softened a little when closed (else it reads as a pen line)
        self.seam = np.nonzero((op > 0) & (np.abs(v - vl) < 0.75))
        self.lash = np.nonzero((op > 0) & (v > vl - 3.5) & (v < vl + 1.5))
        self.seam_rgb = image[self.box.slices][self.seam]
        self.lid_cols = 1.0 - smoothstep(half, half + m, np.abs(u))   # the outline's columns
        zero = np.zeros_like(u)
        self.field = BlendField(self.box, [to_image(zero, -blink, eu, ev),
                                           to_image(-gaze, zero, eu, ev),
                                           to_image(zero, -gaze, eu, ev)])

    def _init_lid(self, image, u, v, vu, blink):
        """Lid colour map (skin above the lashes, spread smoothly) and per-pixel cover geometry."""
        region = image[self.box.slices].astype(np.float32)
        band = (v < vu - 3) & (v > vu - self.fade) & (np.abs(u) < 0.6 * self.half + 2)
        self.lid_rgb = (np.median(region[band], 0) if band.sum() > 8
                        else region.reshape(-1, 3).mean(0)).astype(np.float32)
        # long lashes reach into the band: only skin-bright pixels make the lid colour map, taken
        # out to the corners and spread little, so it follows shading and eye shadow (else the
        # closed lid shows as a lighter patch)
        lum = region @ LUMA
        self.lid_l = lid_l = float(self.lid_rgb @ LUMA)
        wide = (v < vu - 2) & (v > vu - self.fade) & (np.abs(u) < self.half + 3)
        skin = (wide & (lum > 0.8 * lid_l)).astype(np.float32)
        if skin.sum() > 8:
            sig = max(0.5 * self.fade, 3.0)
            num = cv2.GaussianBlur(region * skin[..., None], (0, 0), sig)
            den = cv2.GaussianBlur(skin, (0, 0), sig)[..., None]
            w = np.clip(den / 0.05, 0, 1)
            self.lid_map = (num / np.maximum(den, 1e-6) * w + self.lid_rgb * (1 - w)).astype(np.float32)
        else:
            self.lid_map = np.broadcast_to(self.lid_rgb, region.shape).astype(np.float32)
        self.lid_v, self.lid_vu = v, vu
        self.outline_top = self._outline_top(lum < OUTLINE_DARK * lid_l, u, v, vu)
        # how fast the blink displacement grows down the face: at coefficient c the lid skin is
        # sampled 1 - c * grow rows per row, i.e. stretched where that falls well below 1
        gy, gx = np.gradient(blink.astype(np.float32))
        self.lid_grow = (gx * self.ev[0] + gy * self.ev[1]).astype(np.float32)

    def _init_lid_line(self, image, vu, vl, op) -> None:
        """What a moving lid line needs: the blink profile along v in each column (to find where
        the lid line lands), the portrait's own pixels (the lash band moves with the line, whole)
        and the pixel grid."""
        self.lid_lo, self.lid_hi = vu - self.fade, np.maximum(vl, vu + 0.5)
        self.lid_vl, self.lid_op = vl, op
        self.lid_src = image[self.box.slices].copy()
        ys, xs = np.mgrid[0:self.box.shape[0], 0:self.box.shape[1]]
        self.lid_xy = (xs.astype(np.float32), ys.astype(np.float32))
        self._layers: dict[float, tuple | None] = {}

    def _lid_shift(self, c: float) -> np.ndarray:
        """Per pixel: how far (px along ev) its column's upper-lid line has moved at blink c: the
        root of D = c * op * S(vu + D), S the blink profile's smoothstep (the field is a backward
        map; c * op * S' stays under 0.8, so Newton from c * op converges in a few steps), no
        lower than the lower lid."""
        span = self.lid_hi - self.lid_lo
        d = c * self.lid_op
        for _ in range(4):
            t = np.clip((self.lid_vu + d - self.lid_lo) / span, 0.0, 1.0)
            f = d - c * self.lid_op * t * t * (3.0 - 2.0 * t)
            d = d - f / (1.0 - c * self.lid_op * 6.0 * t * (1.0 - t) / span)
        return np.clip(d, 0, np.maximum(self.lid_vl - self.lid_vu, 0))

    def _outline_top(self, dark, u, v, vu) -> np.ndarray:
        """Per pixel: the top (v) of the dark outline / lashes resting on the upper lid line in
        its column. Drawn faces outline the eye in strokes a few px outside the landmark contour,
        thickest at the corners; a closing lid takes all of it down (the rest would stay behind
        as dark strokes), leaving the lash line."""
        near = dark & (v > vu - self.fade) & (v < vu + 2)
        _, label = cv2.connectedComponents(near.astype(np.uint8), connectivity=8)
        touching = np.unique(label[near & (v > vu - 2)])
        above = np.where(np.isin(label, touching[touching > 0]), vu - v, 0.0)
        bins = np.round(u).astype(int)
        lo = bins.min()
        rise = np.zeros(bins.max() - lo + 1, np.float32)
        np.maximum.at(rise, (bins - lo).ravel(), above.ravel())
        rise = np.maximum(cv2.dilate(rise[None], np.ones((1, 5), np.uint8))[0] + 1.0, 2.0)
        return (vu - np.minimum(rise[bins - lo], self.fade)).astype(np.float32)

    def composite(self, region: np.ndarray, c: np.ndarray) -> None:
        """Cover the stretched lid skin (lash streaks) over the closed part of the eye with lid colour."""
        if c[BLINK] < 0.05:
            return
        self._cover_lid(region, c)
        if c[BLINK] > 0.9:
            region[self.lash] = cv2.GaussianBlur(region, (3, 3), 0.8)[self.lash]   # soft, not drawn
            region[self.seam] = np.minimum(region[self.seam], self.seam_rgb)

    def _cover_lid(self, region: np.ndarray, c: np.ndarray) -> None:
        """The upper lid at blink c, column by column: the lash band (the drawn outline, lashes)
        moves down whole with the lid line; between where that band began and its new top the lid
        is skin (the warp alone stretches the band over those rows: dark, mottled on drawn faces);
        stretched skin further up is covered too, letting a little of its texture through."""
        layers = self._layers_at(round(float(c[BLINK]), 2))
        if layers is None:
            return
        win, skin, own, band, moved = layers
        reg = region[win].astype(np.float32)
        dark = np.clip((0.8 * self.lid_l - reg @ LUMA) / (0.3 * self.lid_l), 0, 1)
        # over the band's old rows the source is the band: all of it goes; stretched skin shows a little
        a = (skin * np.maximum(own, LID_COVER + (1 - LID_COVER) * dark))[..., None]
        out = reg * (1 - a) + self.lid_map[win] * a
        region[win] = np.clip(out * (1 - band) + moved * band + 0.5, 0, 255).astype(np.uint8)

    def _layers_at(self, cb: float):
        """_lid_layers, kept for the last LID_CACHE blink values (a blink repeats the same few)."""
        got = self._layers.get(cb, self)           # (self: not there; sessions share the rig)
        if got is self:
            got = self._lid_layers(cb)
            if len(self._layers) >= LID_CACHE:
                self._layers.clear()
            self._layers[cb] = got
        return got

    def _lid_layers(self, cb: float):
        """At blink cb, over the window the lid changes (None: none): the skin cover, the band's
        old rows, the moved band's weight and pixels. Closing, the band thins to the lash line."""
        closing = smoothstep(0.6, 0.95, cb)
        shift = self._lid_shift(cb).astype(np.float32)
        above = self.lid_vu + shift - self.lid_v           # output px above the moved lid line
        width = (self.lid_vu - self.outline_top) * (1 - closing) + LASH_KEEP * closing
        soft = np.maximum(LASH_SOFT, BAND_FEATHER * width)        # the band top fades into the lid
        top = np.clip((above - width - 0.5 * LASH_SOFT) / soft + 1.0, 0, 1)
        cols = self.lid_cols * smoothstep(0.05, 0.3, cb)
        stretched = np.clip((cb * self.lid_grow - 0.25) / 0.35, 0, 1)
        own = smoothstep(self.outline_top - 2.0, self.outline_top + 2.0, self.lid_v)
        skin, band = cols * top * np.maximum(own, stretched), cols * step(above, 1.0) * (1 - top)
        ys, xs = np.nonzero((skin + band).max(1) > 0.01)[0], np.nonzero((skin + band).max(0) > 0.01)[0]
        if not len(ys):
            return None
        win = (slice(ys[0], ys[-1] + 1), slice(xs[0], xs[-1] + 1))
        gx, gy = self.lid_xy[0][win], self.lid_xy[1][win]
        moved = cv2.remap(self.lid_src, gx - shift[win] * self.ev[0], gy - shift[win] * self.ev[1],
                          cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE).astype(np.float32)
        return win, skin[win], own[win], band[win][..., None], moved

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
