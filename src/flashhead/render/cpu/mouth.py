"""Mouth rig: jaw/lip blend-shape fields plus the inner-mouth layer (cavity, tongue, teeth).

All geometry is in a mouth frame: u along the corner-to-corner line, v down the face,
s = v - seam(u) the signed distance below the closed-lip seam.
"""
from __future__ import annotations

import cv2
import numpy as np

from . import landmarks as L
from . import teeth
from .palette import Palette
from .warp import BlendField, Box, local_coords, smoothstep, step, to_image

# Coefficient order of the mouth fields.
JAW, LIFT, SPREAD, LIPV, TUCK, SEAL = range(6)
JAW_LINE = (132, 58, 172, 136, 150, 149, 176, 148, 152, 377, 400, 378, 379, 365, 397, 288, 361)
REST_SEAL = 0.8           # resting lips: this fraction of a bilabial press
ACTIVE_EPS = 0.05          # below this (px or fraction) a coefficient counts as zero
LIP_SHADE_TINT = 1.0       # inner-lip chroma added to the lip's shadow on the upper teeth
GAP_MARGIN = 1.5           # px beyond the landmark gap that a parted portrait's lips close over
REST_GAP_SEAL = 1.0        # resting lips of a parted portrait close this much (m/b/p close fully)
PARTED_GAP = 0.08          # half-gap (in mouth half-widths) from which a portrait's lips count as parted


class MouthRig:
    def __init__(self, image: np.ndarray, lm: np.ndarray, palette: Palette):
        self.palette = palette
        a, b = lm[78], lm[308]
        if a[0] > b[0]:
            a, b = b, a
        self.hw = hw = float(np.linalg.norm(b - a) / 2)
        self.eu = eu = ((b - a) / (2 * hw)).astype(np.float32)
        self.ev = ev = np.array([-eu[1], eu[0]], np.float32)
        self.origin = o = ((a + b) / 2).astype(np.float32)
        proj = lambda i: ((lm[i] - o) @ eu, (lm[i] - o) @ ev)   # noqa: E731
        mids = [((lm[i] + lm[j]) / 2 - o) for i, j in zip(L.INNER_UPPER, L.INNER_LOWER)]
        su = np.array([m @ eu for m in mids]); sv = np.array([m @ ev for m in mids])
        order = np.argsort(su)
        self.seam_u, self.seam_v = su[order], sv[order]
        gaps = [np.linalg.norm(lm[i] - lm[j]) / 2 for i, j in zip(L.INNER_UPPER, L.INNER_LOWER)]
        self.gap_half = np.minimum(np.asarray(gaps, np.float32)[order], 0.12 * self.hw_guess(lm))
        self.parted = bool(self.gap_half.max() >= PARTED_GAP * hw)   # else landmark noise
        self.lip_up = max(proj(13)[1] - proj(0)[1], 0.15 * hw)
        self.lip_lo = max(proj(17)[1] - proj(14)[1], 0.15 * hw)
        v_nose = proj(L.NOSE_BOTTOM)[1]
        v_chin = proj(L.CHIN)[1]
        seam0 = float(np.interp(0.0, self.seam_u, self.seam_v))
        self.up_room = max(seam0 - v_nose - 2.0, 0.3 * hw)
        jaw_pts = np.array([proj(i) for i in JAW_LINE])
        order = np.argsort(jaw_pts[:, 0])
        self.jaw_u, self.jaw_v = jaw_pts[order, 0], jaw_pts[order, 1]
        self.side = side = float(np.clip(np.abs(self.jaw_u).max(), 2.2 * hw, 3.0 * hw))
        corners = [(-side - 0.1 * hw, v_nose - 2), (side + 0.1 * hw, v_nose - 2),
                   (-side - 0.1 * hw, v_chin + 0.9 * hw), (side + 0.1 * hw, v_chin + 0.9 * hw)]
        pts = np.array([o + cu * eu + cv * ev for cu, cv in corners])
        self.box = Box.around(pts, image.shape[:2])
        u, v = local_coords(self.box, o, eu, ev)
        self._init_layer(image, u, v, lm)
        self.field = BlendField(self.box, self._bases(u, v, v_chin), keep=self.sub)
        dy, dx = self.field.box.y0 - self.box.y0, self.field.box.x0 - self.box.x0
        self.sub_in_field = tuple(slice(a.start - d, a.stop - d) for a, d in zip(self.sub, (dy, dx)))

    @staticmethod
    def hw_guess(lm) -> float:
        return float(np.linalg.norm(lm[308] - lm[78]) / 2)

    # ---------------------------------------------------------------- fields
    def seam(self, u):
        return np.interp(u, self.seam_u, self.seam_v).astype(np.float32)

    def _taper(self, t, power=0.6):
        return np.clip(1.0 - t * t, 0.0, 1.0) ** power

    def _bases(self, u, v, v_chin):
        hw, eu, ev = self.hw, self.eu, self.ev
        t, s = u / hw, v - self.seam(u)
        below = step(s)
        # the jaw hinges near the ears: the drop eases out along the jaw line to the face's sides,
        # and fades below the jaw contour (not a fixed row), so the outline bends without shoulders
        lat = 1.0 - smoothstep(0.9 * hw, self.side, np.abs(u))
        v_jaw = np.interp(u, self.jaw_u, self.jaw_v).astype(np.float32)
        chin = 1.0 - smoothstep(v_jaw, v_jaw + 0.85 * hw, v)
        T = self._taper(t)
        jaw = below * (T + (1 - T) * smoothstep(0.0, 1.3 * hw, s)) * lat * chin
        up_fade = 1.0 - smoothstep(0.0, self.up_room, -s)
        lift = (1 - below) * T * up_fade
        env_v = np.where(s < 0, up_fade, 1.0 - smoothstep(0.0, 1.2 * hw, s))
        spread = (-t * np.exp(-t * t / (2 * 1.4 ** 2)) / 0.775 * env_v
                  * (1.0 - smoothstep(1.6 * hw, 2.25 * hw, np.abs(u))))
        thick = np.where(s < 0, self.lip_up, self.lip_lo)
        lips = np.clip(1 - (t / 1.15) ** 2, 0, 1) * (1 - smoothstep(thick, thick + 0.4 * hw, np.abs(s)))
        lipv = -s * lips * env_v
        tuck = below * np.sqrt(np.clip(1 - t * t, 0, 1)) * (1 - smoothstep(0, self.lip_lo + 0.3 * hw, s))
        zero = np.zeros_like(u)
        return [to_image(zero, -jaw, eu, ev), to_image(zero, lift, eu, ev),
                to_image(spread, zero, eu, ev), to_image(zero, lipv, eu, ev),
                to_image(zero, tuck, eu, ev), to_image(zero, self._seal_basis(u, s), eu, ev)]

    def _seal_basis(self, u, s):
        """Closes a parted portrait's own gap: at 1, pixels near the seam sample the lips beyond
        the gap (plus GAP_MARGIN, which takes the dark edge lines too), so sealed and resting lips
        meet without the faint line of the gap left between them. Zero for closed-lip portraits."""
        if not self.parted:
            return np.zeros_like(u)
        g = np.interp(u, self.seam_u, self.gap_half).astype(np.float32)
        g = np.where(g > 0.5, g + GAP_MARGIN, 0.0)
        reach = np.maximum(np.where(s < 0, self.lip_up, self.lip_lo), 2.0 * g + 1.0)
        side = np.where(s < 0, -1.0, 1.0)          # never sample the middle of the gap
        return side * g * (1.0 - smoothstep(0.0, reach, np.abs(s)))

    def coefficients(self, open_, spread, round_, closure, teeth, seal=0.0) -> np.ndarray:
        """Feature values -> field coefficients; seal (0..1) presses resting lips lightly together."""
        hw = self.hw
        o = max(open_ * (1.0 - 0.85 * closure) - 0.05, 0.0) / 0.95   # tiny openings stay closed
        shape = min(1.0, 0.15 + 3.0 * o)          # lip shaping needs some opening to show
        spread, round_ = spread * shape, round_ * shape
        gap_seal = max(closure, REST_GAP_SEAL * seal) if self.parted else 0.0
        return np.array([
            hw * 0.62 * o,
            hw * (0.10 * o + 0.16 * teeth),
            hw * (0.10 * max(spread, 0.0) - 0.08 * max(-spread, 0.0) - 0.12 * round_),
            0.14 * round_ - 0.25 * max(closure, REST_SEAL * seal) - 0.08 * max(spread, 0.0) - 0.08 * teeth,
            hw * 0.12 * teeth,
            gap_seal if gap_seal > 1e-3 else 0.0,      # 0 skips the field's work
        ], np.float32)

    # ----------------------------------------------------------------- layer
    def _init_layer(self, image, u, v, lm):
        hw = self.hw
        s = v - self.seam(u)
        inside = (np.abs(u) < 1.35 * hw) & (s > -0.45 * hw) & (s < 0.85 * hw)
        ys, xs = np.nonzero(inside)
        y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
        self.sub = (slice(y0, y1), slice(x0, x1))
        self.sub_u, self.sub_s = u[self.sub], s[self.sub]
        ds = np.gradient(self.seam_v) / np.maximum(np.gradient(self.seam_u), 1e-3)
        self.sub_slope = np.interp(self.sub_u, self.seam_u, ds).astype(np.float32)
        self.sub_below = step(self.sub_s)
        self.sub_above = 1 - self.sub_below
        self.sub_abs_u = np.abs(self.sub_u)
        # a source offset (dx, dy) moves a pixel's signed distance below the seam by this per px
        self.sub_ds_dx = (self.ev[0] - self.sub_slope * self.eu[0]).astype(np.float32)
        self.sub_ds_dy = (self.ev[1] - self.sub_slope * self.eu[1]).astype(np.float32)
        # the portrait's own parted-lip gap counts as inside the mouth (no stretched seam line)
        self.sub_gap = np.interp(self.sub_u, self.seam_u, self.gap_half).astype(np.float32)
        au = np.abs(self.sub_u) / hw
        self.lower_pattern = teeth.row_pattern(au / 0.8, hw * 0.8, lower=True)
        self.sub_lower_reach = np.clip(1 - (self.sub_u / (0.62 * hw)) ** 2, 0, 1).astype(np.float32)
        own = None
        if self.palette.shows_teeth:
            ys_, xs_ = self.box.slices
            sub_img = image[ys_, xs_][self.sub]
            inner = np.concatenate([lm[list(L.INNER_UPPER)], lm[list(L.INNER_LOWER)][::-1]])
            own = teeth.own_texture(sub_img, inner - (xs_.start + x0, ys_.start + y0), self.palette)
        upper_rgb, self.upper_alpha = teeth.upper_layer(self.sub_u, self.sub_s, hw, self.palette, own)
        self.upper_planes = np.ascontiguousarray(np.moveaxis(upper_rgb, -1, 0), np.float32)

    def composite(self, region: np.ndarray, disp: np.ndarray, c: np.ndarray) -> None:
        """Blend cavity/tongue/teeth into `region` (the warped mouth box, uint8, in place)."""
        alpha = self._opening(disp, c)
        rows, cols = np.nonzero(alpha.max(1) > 0.004)[0], np.nonzero(alpha.max(0) > 0.004)[0]
        if len(rows) == 0:
            return
        win = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
        layer = cv2.merge(list(self._layer(win, c)))     # planar -> (h, w, 3)
        reg = region[self.sub][win]
        a = alpha[win]
        layer -= reg
        layer *= cv2.merge([a, a, a])     # same shapes: numpy's (h, w, 1) broadcast is 10x slower
        layer += reg
        layer += 0.5
        reg[...] = _clamp(layer, 0.0, 255.0)          # uint8 cast truncates: +0.5 rounds

    def _opening(self, disp: np.ndarray, c: np.ndarray) -> np.ndarray:
        """Per pixel of the layer's box: how much of the opened mouth shows (0..1)."""
        hw = self.hw
        d = disp[self.sub_in_field]
        s_src = d[..., 0] * self.sub_ds_dx        # the source's signed distance below the seam
        s_src += d[..., 1] * self.sub_ds_dy
        s_src += self.sub_s
        g = self.sub_gap * np.float32(np.clip((c[JAW] + c[LIFT]) / (0.12 * hw), 0.0, 1.0) / 1.2)
        lower = _clamp(g - s_src * np.float32(1 / 1.2), 0.0, 1.0)   # below the seam: under the gap
        upper = _clamp(g + s_src * np.float32(1 / 1.2), 0.0, 1.0)   # above it
        lower *= self.sub_below
        upper *= self.sub_above
        lower += upper
        corners = _clamp((np.float32(hw + c[SPREAD]) - self.sub_abs_u) * np.float32(1 / 1.5), 0.0, 1.0)
        lower *= corners                                   # only between the corners
        return lower

    def _layer(self, win, c: np.ndarray) -> np.ndarray:
        """The inside of the mouth over `win`, (3, h, w) float32 RGB planes: cavity, tongue, lower
        and upper teeth. Planar, so that colours broadcast along rows, not along 3 channels."""
        hw, p = self.hw, self.palette
        u, s = self.sub_u[win], self.sub_s[win]
        te = u / np.float32(hw + c[SPREAD])
        te2 = _clamp(1 - te * te, 0.0, 1.0)
        taper = te2 ** np.float32(0.6)
        d_up = s + c[LIFT] * taper
        d_lo = c[JAW] * taper - c[TUCK] * np.sqrt(te2) - s
        gap = np.maximum(d_up + d_lo, np.float32(1e-3))
        # cavity: darkest high up in the shadow of the upper teeth, warmer towards the lower lip
        low = _clamp(1 - d_lo / np.maximum(0.5 * gap, np.float32(1.0)), 0.0, 1.0)
        side = np.minimum(np.abs(te), np.float32(1.0))
        r = _clamp(0.55 * low * low + 0.35 * side * side, 0.0, 1.0)
        layer = _planes(p.inner_lip - p.cavity) * r
        layer += _planes(p.cavity)
        # tongue, low in the opening
        front = _clamp(1 - te * te * np.float32(1 / 0.85 ** 2), 0.0, 1.0)
        tongue_h = np.minimum(0.38 * gap, np.float32(0.22 * hw)) * front
        t_alpha = step(tongue_h - d_lo, 1.5) * front
        t_shade = 0.55 + 0.45 * _clamp(1 - d_lo / np.maximum(tongue_h, np.float32(1e-3)), 0.0, 1.0)
        _towards(layer, _planes(p.tongue) * t_shade, t_alpha)
        lt_h = np.float32(0.10 * hw * np.clip((c[JAW] - 0.2 * hw) / (0.3 * hw), 0, 1))
        if lt_h > 0.3:   # lower teeth ride on the jaw, darker, mostly hidden behind the lower lip
            lt_h = lt_h * self.sub_lower_reach[win]
            lt_alpha = step(lt_h - d_lo, 1.6) * step(d_lo, 1.2) * (lt_h > 0.3)
            lt_shade = self.lower_pattern[win] * (0.42 + 0.2 * _clamp(d_lo / np.maximum(lt_h, np.float32(1.0)), 0.0, 1.0))
            _towards(layer, _planes(p.teeth) * lt_shade, lt_alpha)
        # upper teeth are fixed to the skull (texture precomputed); the upper lip shades their top
        # (tinted with the inner lip's chroma: a neutral darkening reads as a grey band)
        ua = self.upper_alpha[win]
        shade = 1.0 - smoothstep(0.0, 0.12 * hw + 1.5, d_up)
        warm = (p.inner_lip - p.inner_lip.mean()) * LIP_SHADE_TINT
        layer *= 1 - ua
        layer += self.upper_planes[(slice(None), *win)] * (1.0 - 0.38 * shade)
        layer += _planes(warm) * (ua * shade)
        return layer

    def is_active(self, c: np.ndarray) -> bool:
        return bool(np.any(np.abs(c) > ACTIVE_EPS))


def _clamp(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """np.clip in place, without its Python-level argument handling (many small arrays a frame)."""
    return np.minimum(np.maximum(x, np.float32(lo), out=x), np.float32(hi), out=x)


def _towards(layer: np.ndarray, colour: np.ndarray, alpha: np.ndarray) -> None:
    """layer += (colour - layer) * alpha, in place ((3, h, w) planes, alpha per pixel)."""
    colour -= layer
    colour *= alpha
    layer += colour


def _planes(rgb: np.ndarray) -> np.ndarray:
    """An RGB colour as (3, 1, 1): it broadcasts over (3, h, w) planes."""
    return np.asarray(rgb, np.float32).reshape(3, 1, 1)
