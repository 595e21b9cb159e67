"""Bounded FIFO buffers for live audio: PCM16 bytes in, frame-aligned speech out.

Everything here is consumed from the front as it is produced at the back, so a session that
runs for hours holds only what is queued now, never its history.
"""
from __future__ import annotations

from collections import deque

import numpy as np

from flashhead import constants as C
from flashhead.visemes.base import FrameFeatures


def pcm16_to_float(pcm: bytes) -> np.ndarray:
    """PCM16 little-endian mono bytes (even length) -> float32 in [-1, 1)."""
    return np.frombuffer(pcm, "<i2").astype(np.float32) / 32768.0


class SampleFifo:
    """float32 samples, appended at the back and taken from the front."""

    def __init__(self) -> None:
        self._parts: deque[np.ndarray] = deque()
        self._len = 0

    def __len__(self) -> int:
        return self._len

    def push(self, samples: np.ndarray) -> None:
        if len(samples):
            self._parts.append(np.asarray(samples, np.float32))
            self._len += len(samples)

    def take(self, n: int) -> np.ndarray:
        """The first `n` samples (zero-padded if fewer are queued)."""
        out = np.zeros(n, np.float32)
        filled = 0
        while filled < n and self._parts:
            head = self._parts[0]
            k = min(n - filled, len(head))
            out[filled:filled + k] = head[:k]
            filled += k
            if k == len(head):
                self._parts.popleft()
            else:
                self._parts[0] = head[k:]
        self._len -= filled
        return out

    def clear(self) -> None:
        self._parts.clear()
        self._len = 0


class SpeechFifo:
    """Speech ready to render: per-frame features with exactly their audio samples."""

    def __init__(self) -> None:
        self._features: deque[FrameFeatures] = deque()
        self._audio = SampleFifo()
        self._frames = 0

    def __len__(self) -> int:
        return self._frames

    def push(self, features: FrameFeatures, audio: np.ndarray) -> None:
        assert len(audio) == len(features) * C.SAMPLES_PER_FRAME
        if len(features):
            self._features.append(features)
            self._audio.push(audio)
            self._frames += len(features)

    def take(self, n: int) -> tuple[FrameFeatures, np.ndarray]:
        """Up to `n` frames -> (features, audio), both possibly shorter than n."""
        n = min(n, self._frames)
        parts, got = [], 0
        while got < n:
            head = self._features[0]
            k = min(n - got, len(head))
            parts.append(head.slice(0, k))
            if k == len(head):
                self._features.popleft()
            else:
                self._features[0] = head.slice(k, len(head))
            got += k
        self._frames -= n
        feats = FrameFeatures.concat(parts) if parts else FrameFeatures.zeros(0)
        return feats, self._audio.take(n * C.SAMPLES_PER_FRAME)

    def clear(self) -> None:
        self._features.clear()
        self._audio.clear()
        self._frames = 0
