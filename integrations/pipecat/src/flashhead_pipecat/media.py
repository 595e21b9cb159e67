"""PyAV for the two media jobs: the server's fMP4 chunks to RGB frames, TTS audio to 16 kHz PCM16."""
from __future__ import annotations

import io

import av
import numpy as np

SERVER_RATE = 16_000               # the realtime protocol's PCM: 16-bit little-endian mono 16 kHz
FPS = 25
SAMPLES_PER_FRAME = SERVER_RATE // FPS


def decode_chunk(init_segment: bytes, segment: bytes) -> list[np.ndarray]:
    """Every video frame of one chunk (HxWx3 uint8 RGB). Each chunk starts with an IDR frame, so
    the init segment plus that chunk's media segment decode on their own."""
    with av.open(io.BytesIO(init_segment + segment), format="mp4") as container:
        return [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]


class Resampler:
    """PCM16 at any rate and channel count -> PCM16 mono 16 kHz, one utterance at a time (an
    utterance keeps one format: the service starts a new one when the TTS changes it)."""

    def __init__(self):
        self._resampler: av.AudioResampler | None = None

    def push(self, pcm: bytes, rate: int, channels: int) -> bytes:
        if (rate, channels) == (SERVER_RATE, 1) and self._resampler is None:
            return pcm                          # already what the server takes: bytes unchanged
        if self._resampler is None:
            self._resampler = av.AudioResampler(format="s16", layout="mono", rate=SERVER_RATE)
        samples = np.frombuffer(pcm, np.int16).reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(samples, format="s16", layout="stereo" if channels == 2 else "mono")
        frame.sample_rate = rate
        return self._out(self._resampler.resample(frame))

    def flush(self) -> bytes:
        """The resampler's tail; the next push starts a new stream."""
        if self._resampler is None:
            return b""
        tail = self._out(self._resampler.resample(None))
        self.reset()
        return tail

    def reset(self) -> None:
        self._resampler = None

    @staticmethod
    def _out(frames: list[av.AudioFrame]) -> bytes:
        return b"".join(f.to_ndarray().astype(np.int16).tobytes() for f in frames)
