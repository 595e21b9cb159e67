"""Per-frame mouth features from a phoneme timeline (TTS) or from the sound alone (uploads).

Phoneme path, in steps:
1. each phoneme -> one to three viseme segments (diphthongs glide);
2. co-articulation on a 200 Hz grid: every segment pulls the mouth towards its target with weight
   `dominance` inside it and min(dominance, 1) * exp(-(d / TAU)^2) at a distance d outside it;
3. bilabials (m b p): closure ramps up over ANTICIPATE_S before the lips meet and is forced to 1
   within the segment; opening is scaled by (1 - closure);
4. frames: mean of the grid over each 40 ms frame; a frame mostly inside a bilabial, or holding
   its midpoint, is closed (closure 1), so short stops are never averaged away;
   then a zero-phase [1 2 1]/4 smoothing of the shape columns;
5. with the audio (TTS, where the timeline and the sound come together) the two are blended:
   the sound gives the opening amount and its timing, the phonemes give the shape. openness =
   the acoustic opening of the synthesised audio (visemes.audio: RMS envelope, gated, its
   energy dips closed) times (1 - SHAPE_W + SHAPE_W * the viseme's relative opening), so the
   jaw follows loudness and an "ee" still opens less than an "ah", then the [1 2 1]/4 smoothing
   (frames the sound left closed stay closed: no spill-over); spread, rounding, f/v teeth
   and the bilabial closures come from the timeline alone. The closure column is not applied
   to the openness here (the renderer scales opening by it once), except that frames sealed
   by a bilabial stay at 0; the anticipation/release ramps around them are weighted by RAMP_W,
   because the sound already dips where the lips close (full ramps closed the mouth for too
   long around m/b/p and cost ~0.03 correlation). Frames the audio gate calls silent are
   closed (zeros).
   Without audio, openness is the timeline's own.
"""
from __future__ import annotations

import numpy as np

from flashhead import constants as C
from flashhead.speech.base import Phoneme, Speech
from flashhead.visemes.audio import StreamingFeatureExtractor, features_from_audio, n_frames
from flashhead.visemes.base import FrameFeatures
from flashhead.visemes.mapping import Viseme, visemes_for

__all__ = ["features_for", "features_from_phonemes", "features_from_audio",
           "StreamingFeatureExtractor"]

GRID_HZ = 200                 # co-articulation grid
TAU = 0.03                    # s, how far a viseme reaches into its neighbours
ANTICIPATE_S = 0.07           # s, lips start closing this long before a bilabial
RELEASE_S = 0.03              # s, and open again over this long after it
BRIDGE_FRAMES = 3             # audio-silent gaps this short inside speech keep the mouth moving
SHAPE_W = 0.2                 # share of the opening the viseme decides (the rest: loudness)
RAMP_W = 0.4                  # with audio: weight of the anticipation/release closure ramps
REL_OPEN = 0.6                # viseme opening that counts as fully open for that share
_COLS = ("open", "spread", "round", "closure", "teeth")
_PER_FRAME = GRID_HZ // C.FPS


def _segments(phonemes: list[Phoneme], phoneme_set: str) -> list[tuple[float, float, Viseme]]:
    out = []
    for p in phonemes:
        vis = visemes_for(p.symbol, phoneme_set)
        step = max(p.end - p.start, 0.0) / len(vis)
        out += [(p.start + i * step, p.start + (i + 1) * step, v) for i, v in enumerate(vis)]
    return out


def _blend(segs, n_grid: int) -> np.ndarray:
    """(n_grid, 5) co-articulated targets; far from every segment the mouth is at rest (0)."""
    t = (np.arange(n_grid) + 0.5) / GRID_HZ
    num = np.zeros((n_grid, len(_COLS)))
    den = np.full(n_grid, 1e-3)
    reach = 3 * TAU
    for start, end, v in segs:
        a, b = np.searchsorted(t, [start - reach, end + reach])
        d = np.maximum(0.0, np.maximum(start - t[a:b], t[a:b] - end))
        # inside: the viseme's dominance; outside: a tail that never outweighs a neighbour's core
        w = np.where(d > 0, min(v.dominance, 1.0) * np.exp(-((d / TAU) ** 2)), v.dominance)
        num[a:b] += w[:, None] * np.array([getattr(v, c) for c in _COLS])
        den[a:b] += w
    return num / den[:, None]


def _bilabials(grid: np.ndarray, segs) -> np.ndarray:
    """Anticipatory closure before m/b/p, full closure during, quick release after (in place).

    The lips start closing ANTICIPATE_S before the bilabial (at most 70% into the previous
    segment, so a short vowel between two m's still opens) along an ease-in curve.
    """
    t = (np.arange(len(grid)) + 0.5) / GRID_HZ
    ramp = np.zeros(len(grid))
    core = np.zeros(len(grid))
    for i, (start, end, v) in enumerate(segs):
        if v.closure < 1.0:
            continue
        a, b = np.searchsorted(t, [start, end])
        core[a:max(b, a + 1)] = 1.0
        mid = min(int((start + end) / 2 * GRID_HZ), len(core) - 1)
        core[mid] = 2.0                     # marks the frame that must close fully
        prev = segs[i - 1][1] - segs[i - 1][0] if i > 0 else ANTICIPATE_S
        lead = max(min(ANTICIPATE_S, 0.7 * prev), 1.0 / GRID_HZ)
        up = np.clip((t - (start - lead)) / lead, 0.0, 1.0)
        down = np.clip(1.0 - (t - end) / RELEASE_S, 0.0, 1.0)
        ramp = np.maximum(ramp, np.minimum(up * up, down * (2 - down)))
    grid[:, 3] = np.maximum(grid[:, 3], ramp)
    grid[:, 0] *= 1.0 - grid[:, 3]
    return core


def _to_frames(grid: np.ndarray, core: np.ndarray, n: int) -> np.ndarray:
    """Grid -> frame means; frames mostly inside a bilabial, or holding its middle, close fully."""
    g = grid[:n * _PER_FRAME].reshape(n, _PER_FRAME, -1)
    frames = g.mean(axis=1)
    c = core[:n * _PER_FRAME].reshape(n, -1)
    closed = ((c > 0).mean(axis=1) >= 0.5) | (c.max(axis=1) > 1)
    frames[:, 3] = np.where(closed, 1.0, frames[:, 3])
    frames[:, 0] = np.where(closed, 0.0, frames[:, 0])
    return frames


def _smooth(x: np.ndarray) -> np.ndarray:
    if len(x) < 3:
        return x
    p = np.pad(x, 1, mode="edge")
    return 0.25 * p[:-2] + 0.5 * p[1:-1] + 0.25 * p[2:]


def _bridge(voiced: np.ndarray, gap: int) -> np.ndarray:
    """Fill runs of silence no longer than `gap` frames that lie between voiced frames."""
    out = voiced.astype(bool).copy()
    idx = np.flatnonzero(out)
    for a, b in zip(idx[:-1], idx[1:]):
        if 1 < b - a <= gap + 1:
            out[a:b] = True
    return out


def _frame_means(x: np.ndarray, n: int) -> np.ndarray:
    return x[:n * _PER_FRAME].reshape(n, _PER_FRAME).mean(axis=1)


def blend_opening(acoustic: np.ndarray, shape_open: np.ndarray) -> np.ndarray:
    """Loudness gives the amount and timing, the viseme (before bilabial closure) the shape."""
    rel = np.clip(_smooth(shape_open) / REL_OPEN, 0.0, 1.0)
    smooth = _smooth(acoustic * (1.0 - SHAPE_W + SHAPE_W * rel))
    return np.clip(np.where(acoustic > 0, smooth, 0.0), 0.0, 1.0)   # no spill into the quiet


def features_from_phonemes(phonemes: list[Phoneme], n_frames: int,
                           audio: np.ndarray | None = None,
                           phoneme_set: str = "espeak") -> FrameFeatures:
    """Phoneme timeline (+ the audio it came with) -> FrameFeatures with n_frames rows."""
    segs = _segments(phonemes, phoneme_set)
    grid = _blend(segs, n_frames * _PER_FRAME)
    grid[:, 3] = 0.0          # lip closure comes from the bilabial timing alone
    shape_open = grid[:, 0].copy()
    core = _bilabials(grid, segs)
    f = _to_frames(grid, core, n_frames)
    open_, spread, rnd, closure, teeth = (f[:, i] for i in range(len(_COLS)))
    open_, spread, rnd, teeth = (_smooth(c) for c in (open_, spread, rnd, teeth))
    if audio is None:
        voiced = (open_ + closure + teeth + rnd) > 0.05
        energy = open_.copy()
    else:
        snd = features_from_audio(audio)
        snd = snd.slice(0, n_frames) if len(snd) >= n_frames else FrameFeatures.concat(
            [snd, FrameFeatures.zeros(n_frames - len(snd))])
        voiced = _bridge(snd.voiced > 0, BRIDGE_FRAMES)
        energy = snd.energy
        open_ = blend_opening(snd.open, _frame_means(shape_open, n_frames))
        # the sound already dips where the lips close: the ramps only hint at it (lip press)
        closure = np.where(closure >= 1.0, 1.0, RAMP_W * closure)
    open_ = np.where(closure >= 1.0, 0.0, open_)      # smoothing must not reopen sealed lips
    cols = [np.where(voiced, c, 0.0) for c in (open_, spread, rnd, closure, teeth)]
    return FrameFeatures(*(np.asarray(c, np.float32) for c in cols),
                         energy=np.asarray(energy, np.float32),
                         voiced=np.asarray(voiced, np.float32))


def features_for(speech: Speech) -> FrameFeatures:
    """Phonemes when the speech has them (still gated by its audio), the sound alone otherwise."""
    n = n_frames(len(speech.audio))
    if speech.phonemes:
        return features_from_phonemes(speech.phonemes, n, speech.audio,
                                      speech.meta.get("phoneme_set", "espeak"))
    return features_from_audio(speech.audio)
