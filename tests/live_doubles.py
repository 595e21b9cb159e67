"""Small test doubles for the live engine's collaborators (renderer, streaming extractor).

The real ones are exercised by the server tests; these make the engine's own rules
(clock, pacing, interrupt, A/V alignment) observable frame by frame.
"""
from __future__ import annotations

import threading
import time
from types import SimpleNamespace

import numpy as np

from flashhead import constants as C
from flashhead.render.base import Renderer, SpeechSpan
from flashhead.visemes.base import FrameFeatures

SIDE = 8  # tiny frames: the engine never looks at pixels


class LedgerRenderer(Renderer):
    """Paints each frame with its features' `open` value and checks spans arrive in order."""

    name = "ledger"

    def __init__(self, seconds_per_frame: float = 0.0):
        self.seconds_per_frame = seconds_per_frame
        self.lock = threading.Lock()

    def prepare(self, image, seed):
        return {"image": image}

    def new_session(self, portrait, seed):
        return SimpleNamespace(next_frame=0)

    def render(self, session, span: SpeechSpan) -> np.ndarray:
        assert span.start_frame == session.next_frame, "spans rendered out of order"
        assert len(span.audio) == span.n_frames * C.SAMPLES_PER_FRAME
        session.next_frame += span.n_frames
        if self.seconds_per_frame:
            time.sleep(self.seconds_per_frame * span.n_frames)
        level = np.clip(span.features.open * 255, 0, 255).astype(np.uint8)
        return np.broadcast_to(level[:, None, None, None], (span.n_frames, SIDE, SIDE, 3)).copy()


class EnergyExtractor:
    """Streaming features = per-frame loudness, emitted `lookahead` frames behind the audio."""

    def __init__(self, lookahead: int = 2):
        self.lookahead = lookahead
        self.audio = np.zeros(0, np.float32)   # samples not yet emitted as frames
        self.emitted = 0

    def _frames(self, audio: np.ndarray) -> FrameFeatures:
        n = len(audio) // C.SAMPLES_PER_FRAME
        rms = np.sqrt((audio[: n * C.SAMPLES_PER_FRAME].reshape(n, -1) ** 2).mean(1)) if n else np.zeros(0)
        feats = FrameFeatures.zeros(n)
        feats.open = np.clip(rms * 4, 0, 1).astype(np.float32)
        feats.voiced = (rms > 0.01).astype(np.float32)
        return feats

    def push(self, audio: np.ndarray) -> FrameFeatures:
        self.audio = np.concatenate([self.audio, audio])
        n = max(0, len(self.audio) // C.SAMPLES_PER_FRAME - self.lookahead)
        out = self._frames(self.audio[: n * C.SAMPLES_PER_FRAME])
        self.audio = self.audio[n * C.SAMPLES_PER_FRAME:]
        return out

    def flush(self) -> FrameFeatures:
        pad = -len(self.audio) % C.SAMPLES_PER_FRAME
        out = self._frames(np.concatenate([self.audio, np.zeros(pad, np.float32)]))
        self.audio = np.zeros(0, np.float32)
        return out


def engines_with(renderer: Renderer) -> SimpleNamespace:
    return SimpleNamespace(renderer=renderer)


def tone(seconds: float, level: float = 0.5, hz: float = 220.0) -> np.ndarray:
    t = np.arange(int(seconds * C.SAMPLE_RATE)) / C.SAMPLE_RATE
    return (level * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def pcm16(audio: np.ndarray) -> bytes:
    return (np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes()
