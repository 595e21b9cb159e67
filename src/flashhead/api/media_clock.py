"""The API side of a WebRTC live session's media clock: the engine's raw chunks in, paced video
frames and audio blocks out, on one timeline.

Slot k of the timeline is video frame k and the audio samples [k*640, (k+1)*640) (two 20 ms
blocks); slot k is due at `base + k / FPS`. The engine paces chunks on its own media clock, so
they arrive about as their slots fall due; base is set so that the soonest-arriving chunk's first
slot falls due `jitter_s` after it arrived (render-time jitter up to that is absorbed). Both tracks (video.py / audio) read the same slots at the same due times, so the
RTP timestamps (pts = slot time) and the send times agree for both, and audio and video stay in
sync: a late chunk delays both alike.

interrupt(): every slot not yet taken by its track is dropped at once (the speech stops now, not
after the buffered media); chunks already rendered before the engine heard of it are discarded
until its first `interrupted` chunk. Slots stay the engine's frame indices: the interrupted chunk
takes the slots after the dropped ones, which become a gap (a held frame, silence: at most
jitter_s plus a frame), so the engine's later chunks still arrive as their slots fall due.
A track that finds its slot empty (a gap, a stall) repeats the last frame / sends silence.
A peer that stops taking media keeps at most `max_buffer_s` of it; older slots are dropped.
"""
from __future__ import annotations

import asyncio
import math
import time
from typing import Callable

import numpy as np

from flashhead import constants as C

BLOCK_SAMPLES = C.SAMPLE_RATE // 50            # 20 ms of audio: one Opus packet
BLOCKS_PER_FRAME = C.SAMPLES_PER_FRAME // BLOCK_SAMPLES
FRAME_BYTES = C.SIZE * C.SIZE * 3 // 2         # one I420 frame
BLOCK_BYTES = BLOCK_SAMPLES * C.PCM_BYTES_PER_SAMPLE
SILENCE = bytes(BLOCK_BYTES)
# aiortc's Opus encoder returns a block's packet when it is given the next block (20 ms later),
# plus ~2 ms of resampling: audio blocks go to it this much before their due time, so that the
# packets leave (and the RTCP sender reports map them) at the same clock as the video frames.
AUDIO_EARLY_S = 0.022


class MediaTimeline:
    def __init__(self, jitter_s: float, max_buffer_s: float, clock: Callable[[], float] = time.monotonic):
        self.jitter_s, self.clock = jitter_s, clock
        self.max_slots = max(1, int(max_buffer_s * C.FPS))
        self.base: float | None = None
        self.frames: dict[int, bytes] = {}       # slot -> I420 bytes
        self.blocks: dict[int, bytes] = {}       # 20 ms block -> PCM16 bytes
        self.write = 0                           # the slot after the last chunk's
        self.video_next = 0                      # the next slot the video track takes
        self.audio_next = 0                      # the next block the audio track takes
        self.discarding = False
        self.closed = False
        self.last_frame: bytes | None = None
        self._changed = asyncio.Event()

    # -- the engine's side -----------------------------------------------------------------
    def append(self, chunk: dict) -> bool:
        """A raw chunk (start seconds, frames, video, pcm, interrupted); False if dropped after an
        interrupt. Its slots are its frames' indices on the engine's media clock."""
        if self.discarding and not chunk.get("interrupted"):
            return False
        self.write = round(chunk["start"] * C.FPS)
        if self.base is None or not chunk.get("interrupted"):   # an interrupted chunk leaves early
            self._anchor()
        self.discarding = False
        video, pcm = chunk["video"], chunk["pcm"]
        for i in range(chunk["frames"]):
            slot = self.write + i
            self.frames[slot] = video[i * FRAME_BYTES:(i + 1) * FRAME_BYTES]
            for j in range(BLOCKS_PER_FRAME):
                b = (i * BLOCKS_PER_FRAME + j) * BLOCK_BYTES
                self.blocks[slot * BLOCKS_PER_FRAME + j] = pcm[b:b + BLOCK_BYTES]
        self.write += chunk["frames"]
        self._trim()
        self._changed.set()
        return True

    def _anchor(self) -> None:
        """Slot `write` (this chunk's first) falls due jitter_s after now, or earlier: the base only
        moves earlier, to the chunk that arrived soonest, so a slow first render (or any slow
        one) does not leave a standing buffer behind it. A late chunk waits for nothing: its
        slots leave as soon as they arrive."""
        target = self.clock() + self.jitter_s - self.write / C.FPS
        self.base = target if self.base is None else min(self.base, target)

    def interrupt(self) -> None:
        """Drop every slot no track has taken; discard chunks until the engine's interrupted one."""
        self.frames = {k: v for k, v in self.frames.items() if k < self.video_next}
        self.blocks = {k: v for k, v in self.blocks.items() if k < self.audio_next}
        self.discarding = True

    def close(self) -> None:
        self.closed = True
        self._changed.set()

    def _trim(self) -> None:
        """Keep at most max_slots of media ahead of the slowest track."""
        oldest = self.write - self.max_slots
        if min(self.video_next, self.audio_next // BLOCKS_PER_FRAME) < oldest:
            self.video_next = max(self.video_next, oldest)
            self.audio_next = max(self.audio_next, oldest * BLOCKS_PER_FRAME)
            self.frames = {k: v for k, v in self.frames.items() if k >= self.video_next}
            self.blocks = {k: v for k, v in self.blocks.items() if k >= self.audio_next}

    # -- the tracks' side ------------------------------------------------------------------
    def due(self, slot: float) -> float:
        """When slot `slot` (fractions: audio blocks) goes out."""
        return self.base + slot / C.FPS

    def _catch_up(self, slot: float) -> int:
        """On a track's first read: the slot due now (media that fell due before the peer
        connected is skipped, not sent late)."""
        return max(0, math.floor((self.clock() - self.base) * C.FPS)) if slot == 0 else 0

    async def _wait(self, ready: Callable[[], bool]) -> None:
        while not (self.closed or ready()):
            self._changed.clear()
            await self._changed.wait()
        if self.closed:
            raise EOFError("the session ended")

    async def next_frame(self) -> tuple[int, bytes]:
        """(slot, I420 bytes) of the next video frame, at its due time."""
        await self._wait(lambda: self.base is not None)
        if self.video_next == 0:
            self.video_next = self._catch_up(0)
        slot = self.video_next
        await self._wait(lambda: self.write > slot)
        await _sleep_until(self.clock, self.due(slot))
        self.video_next = max(self.video_next, slot + 1)
        frame = self.frames.pop(slot, None) or self.last_frame or bytes(FRAME_BYTES)
        self.last_frame = frame
        return slot, frame

    async def next_block(self) -> tuple[int, bytes]:
        """(block, PCM16 bytes) of the next 20 ms of audio, at its due time."""
        await self._wait(lambda: self.base is not None)
        if self.audio_next == 0:
            self.audio_next = self._catch_up(0) * BLOCKS_PER_FRAME
        block = self.audio_next
        await self._wait(lambda: self.write * BLOCKS_PER_FRAME > block)
        await _sleep_until(self.clock, self.due(block / BLOCKS_PER_FRAME) - AUDIO_EARLY_S)
        self.audio_next = max(self.audio_next, block + 1)
        return block, self.blocks.pop(block, None) or SILENCE


async def _sleep_until(clock: Callable[[], float], when: float) -> None:
    wait = when - clock()
    if wait > 0:
        await asyncio.sleep(wait)


def i420_array(frame: bytes) -> np.ndarray:
    return np.frombuffer(frame, np.uint8).reshape(C.SIZE * 3 // 2, C.SIZE)
