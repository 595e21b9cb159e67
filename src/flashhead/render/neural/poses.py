"""Idle poses over the neural renderer's frames.

The model draws its own idle (silence in, mouth closed, its own small head motion and blinks);
it has no input for a pose. A session's pose is shown on the model's frames with the CPU
renderer's motion code: MotionState's pose weights and nods (the same springs, so entering and
leaving are as smooth as on the CPU renderer) and HeadRig's head warp, fitted to the reference's
landmarks. Only the poses' share of the head offsets is applied (tilt and nods), never the CPU
idle's sway, which the model's frames already have. Eye contact is not shown: the model draws
the eyes.
"""
from __future__ import annotations

import numpy as np

from flashhead.errors import NoFaceError
from flashhead.render.cpu import landmarks as L
from flashhead.render.cpu.motion import HeadRig, MotionState
from flashhead.render.cpu.renderer import HEAD_EPS


def head_rig(reference: np.ndarray) -> HeadRig | None:
    """The head warp for frames framed like `reference` (C.SIZE square, RGB uint8); None when
    the landmark model finds no face there (a session then shows no poses)."""
    try:
        lm = L.detect_landmarks(reference)
    except NoFaceError:
        return None
    return HeadRig(reference, lm)


class PoseWarp:
    """One session's idle pose, stepped once per output frame."""

    def __init__(self, head: HeadRig, seed: int):
        self.head = head
        self.motion = MotionState(seed)
        self.frame = 0

    def set_pose(self, pose: str) -> None:
        self.motion.set_pose(pose)

    def apply(self, frames: list[np.ndarray], voiced: list[float]) -> list[np.ndarray]:
        """frames: output frames in order, voiced: the voicing of the audio each one shows (a
        pose fades out while the voice sounds). Frames the pose moves are replaced by copies."""
        out = []
        for frame, v in zip(frames, voiced):
            self.motion.step(self.frame, 0.0, v)
            self.frame += 1
            head = self.motion.pose_head()
            if np.any(np.abs(head) > HEAD_EPS):
                moved = frame.copy()
                self.head.warp_into(frame, moved, head)
                frame = moved
            out.append(frame)
        return out

