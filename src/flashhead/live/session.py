"""A live talking-head session: PCM16 audio pushed as it is spoken -> video chunks on one clock.

Threads: any thread may call push_audio / end_of_speech / interrupt / close (each is O(1) and
never renders); one consumer at a time calls next_chunk(), which decides what the next chunk
is, waits for its release time and renders it. A scheduler that serves many sessions (the
render engine) asks due() instead of waiting, and calls next_chunk(timeout=0) when it passed.

The clock: chunk i covers frames [i*N, (i+1)*N) and exactly the samples
[i*N*640, (i+1)*N*640) of the session's audio track (speech where there was speech, silence
elsewhere), so the frame count and the sample count advance together and can never drift.
Frame k's media time is `t0 + k / FPS`, where t0 is the first next_chunk() call plus `lead_s`.

What the next chunk is:
- speech, when at least N frames of speech are ready (audio arrived and the extractor's small
  lookahead passed), or when end_of_speech() flushed a shorter tail (padded with idle frames);
- idle otherwise (zero features: the renderer keeps blinking and breathing, mouth closed),
  so a starved session never freezes;
- idle right away after interrupt(), which drops every queued sample.

When it leaves:
- pace=True: never earlier than `lead_s` before its media time (real time, plus a small
  constant buffer for the client); after an interrupt the idle chunk leaves at once.
- pace=False: speech as soon as it is rendered; idle chunks at the real-time rate after the
  previous chunk (a starved unpaced session does not spin).
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from flashhead import constants as C
from flashhead.errors import InputError, LimitExceeded
from flashhead.live.buffers import SpeechFifo, pcm16_to_float
from flashhead.live.features import FeatureStream, StreamingExtractor
from flashhead.pipeline import Chunk
from flashhead.render.base import SpeechSpan, check_idle_pose
from flashhead.visemes.base import FrameFeatures


@dataclass
class LiveChunk(Chunk):
    """A pipeline Chunk plus what the live session knows about it."""

    speaking: bool = False          # at least one frame carries speech
    speech_frames: int = 0          # frames [0, speech_frames) carry the next pushed speech, in order
    interrupted: bool = False       # first chunk after an interrupt (always idle)
    features: FrameFeatures | None = None   # what drove the renderer, frame by frame
    media_time: float = 0.0         # clock time at which frames[0] is due on screen
    released_at: float = 0.0        # clock time next_chunk() returned it


class LiveSession:
    def __init__(self, engines, portrait: object, seed: int, *,
                 chunk_frames: int = C.LIVE_CHUNK_FRAMES, pace: bool = True,
                 lead_s: float = C.LIVE_LEAD_S, max_queue_s: float = C.LIVE_MAX_QUEUE_S,
                 make_extractor: Callable[[], StreamingExtractor] | None = None,
                 clock: Callable[[], float] = time.monotonic):
        if chunk_frames < 1:
            raise InputError("must be at least 1", field="chunk_frames")
        self.renderer = engines.renderer
        self.seed, self.chunk_frames, self.pace, self.lead_s = seed, chunk_frames, pace, lead_s
        self._state = self.renderer.new_session(portrait, seed)
        self._clock = clock
        self._max_queue = int(max_queue_s * C.SAMPLE_RATE)
        # Shared with producer threads (guarded by _cond).
        self._cond = threading.Condition()
        self._pending = bytearray()
        self._ends: list[int] = []  # offsets in _pending where an utterance ended (end_of_speech)
        self._interrupts = 0
        self._pose: str | None = None       # an idle pose asked for, not yet handed to the renderer
        self._closed = False
        # Owned by the consumer thread.
        self._stream = FeatureStream(make_extractor)
        self._ready = SpeechFifo()
        self._seen_interrupts = 0
        self._tail = False          # a flushed tail may leave as a short speech chunk
        self._cut = False           # an interrupt happened: next chunk is idle, at once
        self._t0: float | None = None
        self._last_release = 0.0
        self.index = 0
        self.frames_out = 0
        self.samples_out = 0

    # -- producer side ----------------------------------------------------------------------
    def push_audio(self, pcm: bytes) -> None:
        """Queue PCM16 LE mono 16 kHz audio (any length; an odd byte waits for its pair)."""
        if not isinstance(pcm, (bytes, bytearray, memoryview)):
            raise InputError("must be PCM16 bytes", field="pcm")
        with self._cond:
            self._check_open()
            queued = len(self._pending) // C.PCM_BYTES_PER_SAMPLE + self.queued_samples
            if queued + len(pcm) // C.PCM_BYTES_PER_SAMPLE > self._max_queue:
                raise LimitExceeded(f"more than {self._max_queue / C.SAMPLE_RATE:.0f} s of audio "
                                    "queued ahead of the video", field="pcm")
            self._pending += pcm
            self._cond.notify_all()

    def end_of_speech(self) -> None:
        """The utterance is complete: render its tail without waiting for more audio."""
        with self._cond:
            self._check_open()
            self._ends.append(len(self._pending))
            self._cond.notify_all()

    def interrupt(self) -> None:
        """Drop all queued audio; the next chunk is idle and leaves at once."""
        with self._cond:
            self._check_open()
            self._pending.clear()
            self._ends.clear()
            self._interrupts += 1
            self._cond.notify_all()

    def set_idle_pose(self, pose: str) -> None:
        """Idle frames from the next chunk on hold `pose` ("idle" | "listening" | "thinking"; see
        Renderer.set_idle_pose). Applied by the consumer, between renders."""
        with self._cond:
            self._check_open()
            self._pose = check_idle_pose(pose)
            self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def queued_samples(self) -> int:
        """Decoded speech samples waiting to be rendered (consumer side)."""
        return len(self._ready) * C.SAMPLES_PER_FRAME

    def _check_open(self) -> None:
        if self._closed:
            raise InputError("the live session is closed", field="session")

    # -- consumer side ----------------------------------------------------------------------
    def next_chunk(self, timeout: float | None = None) -> LiveChunk | None:
        """Block until the next chunk is due, render it and return it.

        Returns None when the session is closed or `timeout` seconds pass first.
        """
        now = self._clock()
        end = None if timeout is None else now + timeout
        if self._t0 is None:
            self._t0 = now + self.lead_s
        while True:
            self._absorb()
            speech = self._speech_ready()
            now = self._clock()
            wait = self._due(speech) - now
            if self._closed or (end is not None and now >= end and wait > 0):
                return None
            if wait <= 0:
                return self._render(speech)
            if end is not None:
                wait = min(wait, end - now)
            with self._cond:
                if not (self._pending or self._ends or self._closed
                        or self._interrupts != self._seen_interrupts):
                    self._cond.wait(wait)

    def due(self) -> float:
        """Consumer side, cheap and non-blocking: the clock time at which the next chunk is due
        (-inf: now). A scheduler calls next_chunk(timeout=0) once this has passed.

        Only next_chunk absorbs queued input, so input that can change the next chunk's time
        makes it due at once: an interrupt, an utterance's end, or (unpaced) audio that may
        complete a speech chunk. Other audio waits for the chunk's own time and is absorbed
        then, in one piece: feature extraction per 40 ms packet costs six times the CPU of
        one run per chunk (its running statistics are recomputed on every call)."""
        with self._cond:
            urgent = bool(self._ends or self._interrupts != self._seen_interrupts)
            pending = len(self._pending) // C.PCM_BYTES_PER_SAMPLE
        if self._t0 is None or self._closed or urgent:
            return float("-inf")
        if not self.pace and pending and \
                pending + self.queued_samples >= self.chunk_frames * C.SAMPLES_PER_FRAME:
            return float("-inf")
        return self._due(self._speech_ready())

    def _absorb(self) -> None:
        """Move what producers queued into the consumer's state. Each utterance's tail is
        flushed where its end_of_speech came, also when the next utterance's audio followed."""
        with self._cond:
            n = len(self._pending) - len(self._pending) % C.PCM_BYTES_PER_SAMPLE
            pcm = bytes(self._pending[:n])
            del self._pending[:n]
            ends, self._ends = [min(e, n) for e in self._ends], []
            interrupts = self._interrupts
            pose, self._pose = self._pose, None
        if pose is not None:
            self.renderer.set_idle_pose(self._state, pose)
        if interrupts != self._seen_interrupts:
            self._seen_interrupts = interrupts
            self._stream.reset()
            self._ready.clear()
            self._tail, self._cut = False, True
        start = 0
        for end in ends:
            self._push_pcm(pcm[start:end])
            self._ready.push(*self._stream.flush())
            self._tail, start = len(self._ready) > 0, end
        self._push_pcm(pcm[start:])

    def _push_pcm(self, pcm: bytes) -> None:
        if pcm:
            self._ready.push(*self._stream.push(pcm16_to_float(pcm)))

    def _speech_ready(self) -> bool:
        if self._cut:
            return False
        return len(self._ready) >= self.chunk_frames or (self._tail and len(self._ready) > 0)

    def _due(self, speech: bool) -> float:
        if self._cut or self.index == 0:
            return float("-inf")
        if self.pace:
            return self._media_time(self.frames_out) - self.lead_s
        if speech:
            return float("-inf")
        return self._last_release + self.chunk_frames * C.FRAME_SECONDS

    def _media_time(self, frame: int) -> float:
        return self._t0 + frame * C.FRAME_SECONDS

    def _take(self, speech: bool) -> tuple[FrameFeatures, np.ndarray, int]:
        """The next N frames of features and audio, speech padded with idle to N frames, and
        the number of speech frames among them."""
        n = self.chunk_frames
        feats, audio = self._ready.take(n) if speech else (FrameFeatures.zeros(0), np.zeros(0, np.float32))
        spoken = len(feats)
        if len(feats) < n:
            feats = FrameFeatures.concat([feats, FrameFeatures.zeros(n - len(feats))])
            audio = np.concatenate([audio, np.zeros((n * C.SAMPLES_PER_FRAME) - len(audio), np.float32)])
        if self._tail and len(self._ready) == 0:
            self._tail = False
        return feats, audio, spoken

    def _render(self, speech: bool) -> LiveChunk:
        feats, audio, spoken = self._take(speech)
        start = self.frames_out
        frames = self.renderer.render(self._state, SpeechSpan(start, feats, audio))
        chunk = LiveChunk(self.index, start, frames, audio, speaking=spoken > 0, speech_frames=spoken,
                          interrupted=self._cut, features=feats, media_time=self._media_time(start))
        self.index += 1
        self.frames_out += len(feats)
        self.samples_out += len(audio)
        self._cut = False
        chunk.released_at = self._last_release = self._clock()
        return chunk
