"""Refine sound-derived mouth features with recognised phones, only where the sound agrees.

Openness comes from the sound, which works for every language. Loudness cannot show lips that
seal on m/b/p, so recognised English phones add those closures. Phone recognition on arbitrary
uploads is unreliable (other languages, music, noise), so a recognised bilabial is trusted only
when the sound confirms it: the loudness dips inside the phone to at most DIP_RATIO of the
surrounding peak (a closure silences or muffles the voice). Unconfirmed phones change nothing.
"""
from __future__ import annotations

import numpy as np

from flashhead import constants as C
from flashhead.speech.base import Phoneme
from flashhead.visemes.base import FrameFeatures

BILABIALS = frozenset({"M", "B", "P"})
DIP_RATIO = 0.6        # loudness inside the phone vs the peak around it, to confirm a closure
CONTEXT_FRAMES = 4     # frames on each side where that peak is looked for
MIN_PHONE_S = 0.03     # shorter phone segments are noise


def _confirmed_dip(energy: np.ndarray, voiced: np.ndarray, f0: int, f1: int) -> int | None:
    """The frame of a confirmed closure inside frames [f0, f1], or None."""
    lo, hi = max(0, f0 - CONTEXT_FRAMES), min(len(energy), f1 + 1 + CONTEXT_FRAMES)
    if f1 < f0 or not voiced[lo:hi].any():
        return None
    dip = f0 + int(np.argmin(energy[f0:f1 + 1]))
    around = np.concatenate([energy[lo:f0], energy[f1 + 1:hi]])
    if len(around) == 0 or around.max() <= 0:
        return None
    return dip if energy[dip] <= DIP_RATIO * around.max() else None


def refine_with_phones(acoustic: FrameFeatures, phones: list[Phoneme]) -> tuple[FrameFeatures, int]:
    """-> (features with confirmed bilabial closures, number of closures confirmed)."""
    closure = acoustic.closure.copy()
    n, confirmed = len(acoustic), 0
    for ph in phones:
        if ph.symbol not in BILABIALS or ph.end - ph.start < MIN_PHONE_S:
            continue
        f0, f1 = int(ph.start * C.FPS), min(n - 1, int(ph.end * C.FPS - 1e-9))
        dip = _confirmed_dip(acoustic.energy, acoustic.voiced > 0, f0, f1)
        if dip is None:
            continue
        confirmed += 1
        closure[dip] = 1.0
        for side in (dip - 1, dip + 1):          # lips ease in and out over one frame
            if 0 <= side < n:
                closure[side] = max(closure[side], 0.5)
    if not confirmed:
        return acoustic, 0
    out = FrameFeatures(open=(acoustic.open * (1 - closure)).astype(np.float32),
                        spread=acoustic.spread, round=acoustic.round,
                        closure=closure.astype(np.float32), teeth=acoustic.teeth,
                        energy=acoustic.energy, voiced=acoustic.voiced)
    return out, confirmed
