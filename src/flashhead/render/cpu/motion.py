"""Head motion field (fades out away from the face) and the per-session life generator.

Everything here is a deterministic function of (seed, global frame index, features seen so
far, idle-pose changes and the frames they came at): the generator advances one frame at a
time, so any split of a timeline into spans gives the same sequence.

Idle poses (set_pose), both with the mouth closed, the eyes on the viewer and a small nod now
and then: "listening" holds eye contact with the head tilted a little towards the viewer and
nods every few seconds; "thinking" tilts the head the other way, slows the sway, and glances
up and aside for a second or two at a time, coming back to the viewer with a nod. Each pose
has a weight that a critically damped spring moves towards 1 (the active pose) or 0 (others,
and any pose while the voice sounds), so entering and leaving are as smooth as the plain idle.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from flashhead import constants as C

from . import landmarks as L
from .warp import Box, blend, grid

LOW = 4                                   # head field resolution divisor
HEAD_BAND = 8                             # low-resolution rows per head remap band
TX, TY, ROLL, YAW, PITCH = range(5)
SEAL_RATE = 0.5                           # per frame: lips settle together in silence, part for speech
BLINK_SHAPE = (0.5, 1.0, 0.85, 0.45, 0.15)   # per-frame lid closure of one blink (~150 ms)
POSES = ("listening", "thinking")            # idle poses besides the plain idle
POSE_HZ = 1.2                                # pose weight spring: ~0.5 s to enter or leave
# head offsets at full weight: TX px, TY px, ROLL deg, YAW px, PITCH px (+ = chin down)
POSE_HEAD = {"listening": (0.0, 0.0, 1.6, -0.8, 1.2), "thinking": (0.8, -0.6, -2.2, 2.4, -2.0)}
POSE_GAZE = {"listening": (0.0, 0.0), "thinking": (0.34, -0.2)}   # iris radii, up is negative
LISTEN_NOD_S = (2.2, 4.5)                    # seconds between a listener's small nods
LISTEN_NOD = 52.0                            # px/s kick of the nod spring (a ~2 px nod)
THINK_AWAY_S, THINK_BACK_S = (1.2, 2.4), (1.4, 2.8)   # a thinker's glances away / back to you


class HeadRig:
    """Backward displacement bases for a small head motion, weighted by a face-oval falloff."""

    def __init__(self, image: np.ndarray, lm: np.ndarray):
        H, W = image.shape[:2]
        oval = lm[list(L.FACE_OVAL)]
        fw = float(np.ptp(oval[:, 0]))
        self.margin = margin = 0.28 * fw
        box = Box.around(oval, (H, W), pad=int(margin) + 2)
        h, w = box.shape   # trim to multiples of LOW so upsampling is exact
        self.box = Box(box.y0, box.y0 + h // LOW * LOW, box.x0, box.x0 + w // LOW * LOW)
        h, w = self.box.shape
        mask = np.ones((h, w), np.uint8)
        cv2.fillPoly(mask, [np.round(oval - (self.box.x0, self.box.y0)).astype(np.int32)], 0)
        dist = cv2.distanceTransform(mask, cv2.DIST_L2, 5)
        t = np.clip(dist / margin, 0, 1)
        weight = 1.0 - t * t * (3 - 2 * t)
        weight = cv2.resize(weight, (w // LOW, h // LOW), interpolation=cv2.INTER_AREA)
        ys = self.box.y0 + (np.arange(h // LOW) + 0.5) * LOW - 0.5
        xs = self.box.x0 + (np.arange(w // LOW) + 0.5) * LOW - 0.5
        gx, gy = np.meshgrid(xs.astype(np.float32), ys.astype(np.float32))
        px, py = lm[L.CHIN] + (lm[L.CHIN] - lm[L.FOREHEAD]) * 0.25    # pivot in the neck
        nose = lm[L.NOSE_TIP]
        depth = 0.35 + 0.65 * np.exp(-((gx - nose[0]) ** 2 + (gy - nose[1]) ** 2) / (2 * (0.45 * fw) ** 2))
        zero = np.zeros_like(weight)
        fwd = [(weight, zero), (zero, weight),
               (-(gy - py) * weight * math.pi / 180, (gx - px) * weight * math.pi / 180),
               (weight * depth, zero), (zero, weight * depth)]
        self.bases = np.stack([np.stack([-fx, -fy], -1) for fx, fy in fwd]).astype(np.float32)
        self.low_shape = weight.shape
        self.k = len(fwd)
        self.bases = self.bases.reshape(self.k, -1)
        ix, iy = grid(self.box)
        self.identity = np.stack([ix, iy], -1)
        self.bands = _bands(weight, self.box)

    def map(self, coeffs: np.ndarray) -> np.ndarray:
        h, w = self.box.shape
        low = blend(self.bases, coeffs).reshape(*self.low_shape, 2)
        return self.identity + cv2.resize(low, (w, h), interpolation=cv2.INTER_LINEAR)

    def warp_into(self, src: np.ndarray, dst: np.ndarray, coeffs: np.ndarray) -> None:
        """dst[box] = src sampled at box + the displacement (bilinear, replicated borders), only
        where the displacement can be nonzero (the rest of dst[box] is left as it is)."""
        m = self.map(coeffs)
        for box_part, image_part in self.bands:
            cv2.remap(src, m[box_part], None, cv2.INTER_LINEAR, dst=dst[image_part],
                      borderMode=cv2.BORDER_REPLICATE)


def _bands(weight: np.ndarray, box: Box, rows: int = HEAD_BAND) -> list[tuple]:
    """The head field's nonzero part as bands of `rows` low-resolution rows, each cut to the
    columns its weight reaches after the bilinear upsampling (one low sample around a nonzero
    one): (slices in the box, slices in the image) per band. About 88% of a face's box."""
    reach = cv2.dilate((weight > 0).astype(np.uint8), np.ones((3, 3), np.uint8)) > 0
    bands = []
    for r0 in range(0, reach.shape[0], rows):
        cols = np.nonzero(reach[r0:r0 + rows].any(0))[0]
        if len(cols):
            y0, y1 = r0 * LOW, min(r0 + rows, reach.shape[0]) * LOW
            x0, x1 = int(cols[0]) * LOW, (int(cols[-1]) + 1) * LOW
            bands.append(((slice(y0, y1), slice(x0, x1)),
                          (slice(box.y0 + y0, box.y0 + y1), slice(box.x0 + x0, box.x0 + x1))))
    return bands


@dataclass
class Life:
    """Per-frame animation values besides the mouth."""
    blink: float
    gaze_x: float
    gaze_y: float
    head: np.ndarray    # (5,) TX px, TY px, ROLL deg, YAW px, PITCH px
    seal: float = 0.0   # 0..1 lips resting together (eases in during silence)


class MotionState:
    """Blinks, gaze, head sway, nods and breathing for one session."""

    def __init__(self, seed: int, amount: float = 1.0, blinks: bool = True, gaze: bool = True):
        self.amount, self.blinks_on, self.gaze_on = amount, blinks, gaze
        seq = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, 0x5EED])
        self._blink_rng, self._gaze_rng, sway_rng, self._pose_rng = (
            np.random.default_rng(s) for s in seq.spawn(4))
        self.sway = [(sway_rng.uniform(0.05, 0.32, 3), sway_rng.uniform(0, 2 * np.pi, 3))
                     for _ in range(5)]
        self.breath_phase = float(sway_rng.uniform(0, 2 * np.pi))
        self.breath_hz = float(sway_rng.uniform(0.22, 0.28))
        self.frame = 0
        self.next_blink = int(self._blink_rng.uniform(0.6, 2.5) * C.FPS)
        self.blink_start = -100
        self.next_gaze = int(self._gaze_rng.uniform(0.8, 2.5) * C.FPS)
        self.gaze_target = np.zeros(2)
        self.gaze = np.zeros(2)
        self.activity = 0.0
        self.e_fast = self.e_slow = 0.0
        self.nod = self.nod_v = 0.0
        self.seal = 1.0
        self.pose = "idle"
        self.pose_w = {p: 0.0 for p in POSES}
        self.pose_v = {p: 0.0 for p in POSES}
        self.next_nod = 0
        self.away = False                  # a thinker glancing away (else: eyes on the viewer)
        self.look = self.look_v = 0.0      # eased glance

    def set_pose(self, pose: str) -> None:
        """"idle", "listening" or "thinking" from the next frame on (blended in and out)."""
        if pose != "idle" and pose not in POSES:
            raise ValueError(f"unknown idle pose {pose!r}")
        if pose != self.pose and pose != "idle":
            self.next_nod = self.frame + int(self._pose_rng.uniform(0.8, 1.6) * C.FPS)
            self.away = False
        self.pose = pose

    @staticmethod
    def _spring(x: float, v: float, target: float) -> tuple[float, float]:
        """One frame of a critically damped spring at POSE_HZ, x kept within 0..1."""
        w, dt = 2 * math.pi * POSE_HZ, C.FRAME_SECONDS
        v += (w * w * (target - x) - 2 * w * v) * dt
        return min(max(x + v * dt, 0.0), 1.0), v

    def _poses(self, f: int, voiced: float) -> None:
        """Advance the pose weights, the thinker's glance and the poses' nods by one frame."""
        for p in POSES:
            target = 1.0 if (p == self.pose and voiced <= 0.0) else 0.0
            self.pose_w[p], self.pose_v[p] = self._spring(self.pose_w[p], self.pose_v[p], target)
        self.look, self.look_v = self._spring(self.look, self.look_v, float(self.away))
        if self.pose == "idle" or f < self.next_nod:
            return
        if self.pose == "listening":
            self.nod_v += LISTEN_NOD * self.pose_w["listening"]
            self.next_nod = f + int(self._pose_rng.uniform(*LISTEN_NOD_S) * C.FPS)
        else:                                    # thinking: glance away, or back with a nod
            if self.away:
                self.nod_v += 0.7 * LISTEN_NOD * self.pose_w["thinking"]
            self.away = not self.away
            span = THINK_BACK_S if not self.away else THINK_AWAY_S
            self.next_nod = f + int(self._pose_rng.uniform(*span) * C.FPS)

    def _posed(self, gaze: np.ndarray, head: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Blend the plain idle gaze and head towards the active poses (thinking: half the sway)."""
        w = self.pose_w
        gaze = gaze * max(1.0 - sum(w.values()), 0.0)
        head = head * np.float32(1.0 - 0.5 * w["thinking"])
        for p in POSES:
            if self.gaze_on:
                glance = self.look if p == "thinking" else 1.0
                gaze = gaze + w[p] * glance * np.asarray(POSE_GAZE[p])
        return gaze, head + self._pose_tilt()

    def _pose_tilt(self) -> np.ndarray:
        """The head offsets of the poses at their current weights."""
        tilt = np.zeros(5, np.float32)
        for p in POSES:
            tilt += np.float32(self.pose_w[p] * self.amount) * np.asarray(POSE_HEAD[p], np.float32)
        return tilt

    def pose_head(self) -> np.ndarray:
        """The poses' share of the head offsets: their tilt and nods (the nods of stressed speech
        too, when step() is given its energy), without the plain idle's sway and breath. For a
        renderer whose frames already have their own idle motion."""
        head = self._pose_tilt()
        head[PITCH] += np.float32(self.nod * self.amount)
        return head

    def _blink(self, f: int) -> float:
        if f >= self.next_blink:
            self.blink_start = f
            gap = self._blink_rng.uniform(2.0, 6.0)
            if self._blink_rng.random() < 0.12:
                gap = 0.45                   # occasional double blink
            self.next_blink = f + int(gap * C.FPS)
        k = f - self.blink_start
        return BLINK_SHAPE[k] if 0 <= k < len(BLINK_SHAPE) else 0.0

    def _gaze(self, f: int) -> None:
        if f >= self.next_gaze:
            r = self._gaze_rng
            if r.random() < 0.45:
                self.gaze_target = np.zeros(2)
            else:
                self.gaze_target = np.clip(r.normal(0, [0.28, 0.12]), [-0.45, -0.2], [0.45, 0.2])
            self.next_gaze = f + int(r.uniform(1.0, 4.0) * C.FPS)
        self.gaze += (self.gaze_target - self.gaze) * 0.55

    def _sway(self, i: int, t: float) -> float:
        freqs, phases = self.sway[i]
        return float(np.sin(2 * np.pi * freqs * t + phases).sum() / 1.8)

    def step(self, f: int, energy: float, voiced: float) -> Life:
        """Advance to global frame f (must be called for every frame in order)."""
        if f != self.frame:
            raise ValueError(f"spans must be rendered in order: expected frame {self.frame}, got {f}")
        self.frame += 1
        blink = self._blink(f) if self.blinks_on else 0.0
        if self.gaze_on:
            self._gaze(f)
        rate = 0.12 if voiced > self.activity else 0.035
        self.activity += (voiced - self.activity) * rate
        self.seal += ((voiced <= 0.0) - self.seal) * SEAL_RATE
        self._poses(f, voiced)
        self.e_fast += (energy - self.e_fast) * 0.5
        self.e_slow += (energy - self.e_slow) * 0.06
        onset = max(0.0, self.e_fast - self.e_slow - 0.06)
        w, zeta, dt = 2 * np.pi * 1.4, 0.55, C.FRAME_SECONDS   # damped spring: nods on stresses
        self.nod_v += (-w * w * self.nod - 2 * zeta * w * self.nod_v + 900.0 * onset) * dt
        self.nod += self.nod_v * dt
        t = f * C.FRAME_SECONDS
        live = 0.25 + 0.75 * self.activity
        breath = math.sin(2 * math.pi * self.breath_hz * t + self.breath_phase)
        head = np.array([
            0.9 * live * self._sway(0, t),
            0.6 * breath - 0.4 * live * self._sway(1, t),
            1.3 * live * self._sway(2, t),
            2.2 * live * self._sway(3, t),
            1.0 * live * self._sway(4, t) + self.nod + 1.2 * self.e_slow,
        ], np.float32) * self.amount
        gaze, head = self._posed(self.gaze, head)
        return Life(blink, float(gaze[0]), float(gaze[1]), head, self.seal)
