"""CpuRenderer: landmark-driven blend-shape warping, no weights, a few ms per frame."""
from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

from flashhead import constants as C
from flashhead.errors import InputError
from flashhead.render.base import Renderer, SpeechSpan, check_idle_pose

from . import landmarks as L
from .eyes import EyeRig
from .motion import HeadRig, MotionState
from .mouth import MouthRig
from .palette import Palette, sample_palette

HEAD_EPS = 0.02


@dataclass(frozen=True)
class Portrait:
    """Everything precomputed for one portrait; read-only, shared between sessions."""
    image: np.ndarray
    landmarks: np.ndarray
    palette: Palette
    mouth: MouthRig
    eyes: tuple[EyeRig, ...]
    head: HeadRig
    seed: int


@dataclass
class Session:
    portrait: Portrait
    motion: MotionState
    work: np.ndarray                       # portrait with this frame's mouth/eye edits
    dirty: dict = field(default_factory=dict)


class CpuRenderer(Renderer):
    name = "cpu"

    def __init__(self, head_motion: float = 1.0, blinks: bool = True, gaze: bool = True,
                 threads: int | None = 1):
        self.head_motion, self.blinks, self.gaze, self.threads = head_motion, blinks, gaze, threads

    def setup(self) -> None:
        if self.threads is not None:
            cv2.setNumThreads(self.threads)

    def prepare(self, image: np.ndarray, seed: int) -> Portrait:
        if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or \
                image.shape != (C.SIZE, C.SIZE, 3):
            raise InputError(f"expected a ({C.SIZE}, {C.SIZE}, 3) uint8 RGB array", field="image")
        img = np.ascontiguousarray(image).copy()
        lm = L.detect_landmarks(img)
        pal = sample_palette(img, lm)
        img.setflags(write=False)
        return Portrait(image=img, landmarks=lm, palette=pal, mouth=MouthRig(img, lm, pal),
                        eyes=tuple(EyeRig(img, lm, e) for e in L.EYES), head=HeadRig(img, lm),
                        seed=int(seed))

    def new_session(self, portrait: Portrait, seed: int) -> Session:
        motion = MotionState(seed, self.head_motion, self.blinks, self.gaze)
        return Session(portrait, motion, portrait.image.copy())

    def render(self, session: Session, span: SpeechSpan) -> np.ndarray:
        n = span.n_frames
        out = np.empty((n, C.SIZE, C.SIZE, 3), np.uint8)
        f = span.features
        cols = [np.nan_to_num(np.asarray(getattr(f, k), np.float64)) for k in
                ("open", "spread", "round", "closure", "teeth", "energy", "voiced")]
        lo = (0, -1, 0, 0, 0, 0, 0)
        cols = [np.clip(c, lo[i], 1.0) for i, c in enumerate(cols)]
        for i in range(n):
            self._frame(session, span.start_frame + i, [c[i] for c in cols], out[i])
        return out

    def _frame(self, s: Session, f: int, feat, dst: np.ndarray) -> None:
        p = s.portrait
        life = s.motion.step(f, feat[5], feat[6])
        self._local(s, "mouth", p.mouth, p.mouth.coefficients(*feat[:5], life.seal), p.mouth.is_active)
        for k, eye in enumerate(p.eyes):
            c = eye.coefficients(life.blink, life.gaze_x, life.gaze_y)
            self._local(s, f"eye{k}", eye, c, lambda c: bool(np.any(np.abs(c) > 0.01)))
        dst[...] = s.work
        if np.any(np.abs(life.head) > HEAD_EPS):
            p.head.warp_into(s.work, dst, life.head)

    @staticmethod
    def _local(s: Session, key: str, rig, c: np.ndarray, active) -> None:
        ys, xs = rig.box.slices       # the field's box, or a part of it with all the field's work
        if not active(c):
            if s.dirty.get(key):
                s.work[ys, xs] = s.portrait.image[ys, xs]
                s.dirty[key] = False
            return
        disp = rig.field.displacement(c)
        rig.field.remap_into(s.portrait.image, s.work, disp)
        if key == "mouth":
            rig.composite(s.work[ys, xs], disp, c)
        else:
            rig.composite(s.work[ys, xs], c)
        s.dirty[key] = True

    def set_idle_pose(self, session: Session, pose: str) -> None:
        """Listening / thinking / plain idle poses (see motion.MotionState.set_pose)."""
        session.motion.set_pose(check_idle_pose(pose))
