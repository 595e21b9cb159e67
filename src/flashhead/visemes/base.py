"""Per-frame mouth and prosody features: what every renderer consumes.

A `FrameFeatures` holds one row per video frame (C.FPS per second). All columns are float32.
"""
from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np


@dataclass
class FrameFeatures:
    open: np.ndarray      # (N,) jaw/lip opening 0..1 (0 = closed)
    spread: np.ndarray    # (N,) lip spread -1 (rounded/pursed) .. +1 (wide, "ee")
    round: np.ndarray     # (N,) lip rounding/protrusion 0..1 ("oo", "w")
    closure: np.ndarray   # (N,) bilabial press 0..1 (m, b, p): lips sealed
    teeth: np.ndarray     # (N,) lower lip under upper teeth 0..1 (f, v) / teeth showing
    energy: np.ndarray    # (N,) loudness 0..1 (drives nods and emphasis)
    voiced: np.ndarray    # (N,) 1 where there is speech, 0 in silence

    def __len__(self) -> int:
        return len(self.open)

    def slice(self, a: int, b: int) -> "FrameFeatures":
        return FrameFeatures(**{f.name: getattr(self, f.name)[a:b] for f in fields(self)})

    @classmethod
    def zeros(cls, n: int) -> "FrameFeatures":
        return cls(**{f.name: np.zeros(n, np.float32) for f in fields(cls)})

    @classmethod
    def concat(cls, parts: list["FrameFeatures"]) -> "FrameFeatures":
        return cls(**{f.name: np.concatenate([getattr(p, f.name) for p in parts]).astype(np.float32)
                      for f in fields(cls)})
