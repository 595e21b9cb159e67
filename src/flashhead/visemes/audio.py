"""Mouth features from the sound alone (uploads in any language), offline and streaming.

Per frame (hop C.SAMPLES_PER_FRAME, a Hann window over the frame's own samples, so centred on it):
- energy: RMS of the frame's samples; openness follows it linearly between a gate level and a
  loud reference (95th percentile of the clip's speech frames), so it tracks the RMS envelope;
- a hysteresis gate (on above `hi`, off below `lo`) decides voiced frames: silence is exactly 0;
- spectral centroid (100-4000 Hz) relative to the clip's median -> rounding (low) / spread (high);
- high-frequency energy share (> 3.5 kHz) in quieter frames -> fricatives (teeth on lip);
- a short dip in energy between louder frames (<= 2 frames each side) -> lip closure (stops);
- a 5-frame Savitzky-Golay filter (symmetric, so zero-phase) smooths the shape columns.
Everything except the clip statistics is frame-local, causal or uses <= 2 frames of lookahead,
so StreamingFeatureExtractor reproduces the offline result up to its running statistics.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.ndimage import convolve1d
from scipy.signal import savgol_coeffs

from flashhead import constants as C
from flashhead.visemes.base import FrameFeatures

HOP = C.SAMPLES_PER_FRAME
LOOKAHEAD = 2                  # frames: dips and the smoothing filter look 2 frames ahead (80 ms)
SMOOTH = 2 * LOOKAHEAD + 1     # Savitzky-Golay window (frames)
ABS_GATE = 1e-3                # RMS below -60 dBFS is always silence
HF_SPLIT_HZ = 3500.0
STATS_FRAMES = 30 * C.FPS      # a stream's statistics use its last 30 s
ANALYSE_BLOCK = 30 * C.FPS     # frames analysed at once (bounded memory for long audio)
QUIET = 0.1                    # frames quieter than this share of the loud reference: lips shut

_FREQS = np.fft.rfftfreq(HOP, 1.0 / C.SAMPLE_RATE)
_WINDOW = np.hanning(HOP).astype(np.float32)
_LOW_BAND = (_FREQS >= 100) & (_FREQS <= 4000)
_ALL_BAND = _FREQS >= 100
_HIGH_BAND = _FREQS >= HF_SPLIT_HZ


@dataclass
class Raw:
    """Frame measurements, one value per frame."""

    rms: np.ndarray
    centroid: np.ndarray   # Hz, 100-4000 Hz band
    hf: np.ndarray         # share of the spectrum's power above HF_SPLIT_HZ

    def __len__(self) -> int:
        return len(self.rms)


@dataclass(frozen=True)
class Stats:
    """A clip's normalisation: gate levels, loud reference, typical centroid."""

    lo: float
    hi: float
    ref: float
    centroid: float


def n_frames(n_samples: int) -> int:
    return -(-n_samples // HOP)


def analyse(audio: np.ndarray) -> Raw:
    """audio: (S,) float -> Raw with ceil(S / HOP) frames (the last one zero-padded).

    Works in blocks of ANALYSE_BLOCK frames so memory stays flat for long recordings.
    """
    n = n_frames(len(audio))
    parts = [_analyse_block(audio[i * HOP:(i + ANALYSE_BLOCK) * HOP], min(ANALYSE_BLOCK, n - i))
             for i in range(0, n, ANALYSE_BLOCK)]
    if not parts:
        return Raw(np.zeros(0), np.zeros(0), np.zeros(0))
    return Raw(*(np.concatenate(cols) for cols in zip(*((p.rms, p.centroid, p.hf) for p in parts))))


def _analyse_block(audio: np.ndarray, n: int) -> Raw:
    x = np.zeros(n * HOP, np.float32)
    x[:len(audio)] = audio
    frames = x.reshape(n, HOP)
    rms = np.sqrt(np.mean(frames.astype(np.float64) ** 2, axis=1))
    power = np.abs(np.fft.rfft(frames * _WINDOW, axis=1)) ** 2 + 1e-12
    low = power[:, _LOW_BAND]
    centroid = (low * _FREQS[_LOW_BAND]).sum(1) / low.sum(1)
    hf = power[:, _HIGH_BAND].sum(1) / power[:, _ALL_BAND].sum(1)
    return Raw(rms, centroid, hf)


def clip_stats(raw: Raw) -> Stats:
    """Robust levels: a noise floor from the quiet frames, the loud reference from speech frames."""
    rms = raw.rms
    if len(rms) == 0 or rms.max() < ABS_GATE:
        return Stats(ABS_GATE, 2 * ABS_GATE, 4 * ABS_GATE, 1000.0)
    floor = float(np.percentile(rms, 10))
    speech = rms[rms > max(2 * floor, ABS_GATE)]
    ref = float(np.percentile(speech, 95)) if len(speech) else float(rms.max())
    if floor > 0.15 * ref:         # no silence in the clip: the quiet frames are speech too
        floor = 0.0
    lo = max(2.0 * floor, 0.03 * ref, ABS_GATE)
    hi = max(1.6 * lo, 0.06 * ref)
    ref = max(ref, 2.0 * hi)
    voiced = raw.centroid[rms > hi]
    centroid = float(np.median(voiced)) if len(voiced) else 1000.0
    return Stats(lo, hi, ref, centroid)


def gate(rms: np.ndarray, stats: Stats, state: bool = False) -> tuple[np.ndarray, bool]:
    """Hysteresis: on above stats.hi, off below stats.lo. Returns (on per frame, final state)."""
    on = np.zeros(len(rms), bool)
    for i, r in enumerate(rms):
        state = r > stats.lo if state else r > stats.hi
        on[i] = state
    return on, state


def closures(rms: np.ndarray) -> np.ndarray:
    """Closure strength at short energy dips: lower than 30% of the louder frames on both sides."""
    n = len(rms)
    out = np.zeros(n, np.float32)
    for i in range(1, n - 1):
        left = rms[max(0, i - LOOKAHEAD):i].max()
        right = rms[i + 1:i + 1 + LOOKAHEAD].max()
        side = min(left, right)
        if side > 0 and rms[i] < 0.3 * side:
            out[i] = np.clip(1.0 - rms[i] / (0.3 * side), 0.0, 1.0) ** 0.5
    return out


def shape(raw: Raw, on: np.ndarray, stats: Stats) -> FrameFeatures:
    """Frame-local mapping to mouth columns, then smoothing. Uses <= LOOKAHEAD frames each side."""
    quiet_level = max(stats.lo, QUIET * stats.ref)
    quiet = raw.rms < quiet_level      # murmurs between words: the mouth rests closed
    level = np.clip((raw.rms - quiet_level) / (stats.ref - quiet_level), 0.0, 1.0) * on
    z = np.log2(np.maximum(raw.centroid, 1.0) / stats.centroid)
    rounding = np.clip(-1.5 * z, 0.0, 1.0) * on
    spread = np.clip(1.5 * z, -1.0, 1.0) * on
    teeth = np.clip((raw.hf - 0.3) / 0.35, 0.0, 1.0) * (1.0 - level) * on
    closure = closures(raw.rms) * _near(on)
    smooth = [_smooth(c) for c in (level, spread, rounding, teeth)]
    level, spread, rounding, teeth = (np.where(on, c, 0.0) for c in smooth)
    open_ = np.clip(level, 0.0, 1.0) * (1.0 - closure) * ~quiet   # after smoothing: no spill-over
    energy = np.clip(raw.rms / stats.ref, 0.0, 1.0) * on
    cols = dict(open=open_, spread=np.clip(spread, -1, 1), round=np.clip(rounding, 0, 1),
                closure=closure, teeth=np.clip(teeth, 0, 1), energy=energy, voiced=on)
    return FrameFeatures(**{k: np.asarray(v, np.float32) for k, v in cols.items()})


def _near(on: np.ndarray) -> np.ndarray:
    """1 where a voiced frame lies within LOOKAHEAD frames on both sides."""
    n = len(on)
    idx = np.flatnonzero(on)
    out = np.zeros(n, np.float32)
    for i in range(n):
        left = idx[(idx < i) & (idx >= i - LOOKAHEAD)]
        right = idx[(idx > i) & (idx <= i + LOOKAHEAD)]
        out[i] = float(len(left) > 0 and len(right) > 0)
    return out


_SAVGOL = savgol_coeffs(SMOOTH, 2)       # computed once: a least-squares solve per call cost more


def _smooth(x: np.ndarray) -> np.ndarray:
    """scipy's savgol_filter(x, SMOOTH, 2, mode="nearest"), with its coefficients computed once
    (the same dtype rule: float32 stays float32, anything else becomes float64)."""
    if len(x) < 2:
        return x
    x = np.asarray(x)
    if x.dtype not in (np.float32, np.float64):
        x = x.astype(np.float64)
    return convolve1d(x, _SAVGOL, mode="nearest")


def features_from_audio(audio: np.ndarray) -> FrameFeatures:
    """audio: (S,) float32 16 kHz -> FrameFeatures with ceil(S / 640) frames."""
    audio = np.asarray(audio, np.float32)
    raw = analyse(audio)
    stats = clip_stats(raw)
    on, _ = gate(raw.rms, stats)
    return shape(raw, on, stats)


class StreamingFeatureExtractor:
    """Incremental features_from_audio for live audio.

    push(chunk) returns the frames that became final: a frame is final once LOOKAHEAD (2) more
    frames of audio have arrived, so the output lags the input by 80 ms plus the partial frame.
    flush() returns the rest. Normalisation uses running statistics over the last 30 s instead of
    the whole clip, so the first second or two may differ slightly from the offline result.
    """

    def __init__(self) -> None:
        self._pending = np.zeros(0, np.float32)
        self._raw = Raw(np.zeros(0), np.zeros(0), np.zeros(0))
        self._on = np.zeros(0, bool)   # voiced gate for the same frames as _raw (bounded)
        self._total = 0                # frames analysed so far
        self._state = False
        self._stats_raw = np.zeros((0, 3))      # (rms, centroid, hf) of the last STATS_FRAMES frames
        self._emitted = 0

    def push(self, chunk: np.ndarray) -> FrameFeatures:
        self._pending = np.concatenate([self._pending, np.asarray(chunk, np.float32).ravel()])
        n_new = len(self._pending) // HOP
        if n_new:
            self._add(analyse(self._pending[:n_new * HOP]))
            self._pending = self._pending[n_new * HOP:]
        return self._emit(self._total - LOOKAHEAD, final=False)

    def flush(self) -> FrameFeatures:
        if len(self._pending):
            self._add(analyse(self._pending))
            self._pending = np.zeros(0, np.float32)
        return self._emit(self._total, final=True)

    def _add(self, raw: Raw) -> None:
        hist = np.concatenate([self._stats_raw, np.stack([raw.rms, raw.centroid, raw.hf], 1)])[-STATS_FRAMES:]
        self._stats_raw = hist
        self.stats = clip_stats(Raw(hist[:, 0], hist[:, 1], hist[:, 2]))
        on, self._state = gate(raw.rms, self.stats, self._state)
        self._raw = Raw(*(np.concatenate([a[-2 * SMOOTH:], b]) for a, b in
                          ((self._raw.rms, raw.rms), (self._raw.centroid, raw.centroid),
                           (self._raw.hf, raw.hf))))
        self._total += len(on)
        self._on = np.concatenate([self._on, on])[-len(self._raw.rms):]   # memory stays flat

    def _emit(self, upto: int, final: bool) -> FrameFeatures:
        """Frames [emitted, upto) computed with LOOKAHEAD frames of context on each side."""
        if upto <= self._emitted:
            return FrameFeatures.zeros(0)
        total = self._total
        kept = len(self._on)           # the raw and gate buffers hold the last `kept` frames
        first = max(0, self._emitted - LOOKAHEAD)
        end = total if final else min(total, upto + LOOKAHEAD)
        sl = slice(first - (total - kept), end - (total - kept))
        raw = Raw(self._raw.rms[sl], self._raw.centroid[sl], self._raw.hf[sl])
        feats = shape(raw, self._on[sl], self.stats)
        out = feats.slice(self._emitted - first, upto - first)
        self._emitted = upto
        return out
