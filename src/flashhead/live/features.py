"""Live audio -> frame-aligned speech: the streaming feature extractor plus its audio.

The extractor (flashhead.visemes.audio.StreamingFeatureExtractor) returns features for the
frames it has finished, a small lookahead behind the audio pushed so far; this wrapper hands out
exactly those frames' samples with them, so frame k always carries samples [k*640, (k+1)*640)
of the utterance. One utterance runs from the first push after a reset to flush().
"""
from __future__ import annotations

import math
from typing import Callable, Protocol

import numpy as np

from flashhead import constants as C
from flashhead.live.buffers import SampleFifo
from flashhead.visemes.base import FrameFeatures


class StreamingExtractor(Protocol):
    def push(self, audio: np.ndarray) -> FrameFeatures: ...   # features of newly finished frames
    def flush(self) -> FrameFeatures: ...                     # the rest, end padded to a frame


def default_extractor() -> StreamingExtractor:
    from flashhead.visemes.audio import StreamingFeatureExtractor

    return StreamingFeatureExtractor()


class FeatureStream:
    """Pushes samples through one extractor per utterance and pairs features with audio."""

    def __init__(self, make_extractor: Callable[[], StreamingExtractor] | None = None):
        self._make = make_extractor or default_extractor
        self._audio = SampleFifo()
        self._extractor: StreamingExtractor | None = None

    @property
    def active(self) -> bool:
        """True while an utterance has samples that are not yet handed out as frames."""
        return self._extractor is not None

    def push(self, samples: np.ndarray) -> tuple[FrameFeatures, np.ndarray]:
        if self._extractor is None:
            self._extractor = self._make()
        self._audio.push(samples)
        return self._pair(self._extractor.push(samples), final=False)

    def flush(self) -> tuple[FrameFeatures, np.ndarray]:
        """End the utterance: the remaining frames, the last one zero-padded."""
        if self._extractor is None:
            return FrameFeatures.zeros(0), np.zeros(0, np.float32)
        feats = self._extractor.flush()
        out = self._pair(feats, final=True)
        self.reset()
        return out

    def reset(self) -> None:
        self._extractor = None
        self._audio.clear()

    def _pair(self, feats: FrameFeatures, *, final: bool) -> tuple[FrameFeatures, np.ndarray]:
        n_audio = math.ceil(len(self._audio) / C.SAMPLES_PER_FRAME) if final \
            else len(self._audio) // C.SAMPLES_PER_FRAME
        n = len(feats)
        if final and n != n_audio:  # an extractor that rounds differently never shifts the clock
            feats = FrameFeatures.concat([feats.slice(0, n_audio), FrameFeatures.zeros(max(0, n_audio - n))])
            n = n_audio
        if n > n_audio:
            raise RuntimeError(f"feature extractor returned {n} frames for {n_audio} frames of audio")
        return feats, self._audio.take(n * C.SAMPLES_PER_FRAME)
