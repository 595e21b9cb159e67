"""The API side of a WebRTC session's media clock (flashhead.api.media_clock), slot by slot."""
from __future__ import annotations

import asyncio

import numpy as np

from flashhead import constants as C
from flashhead.api.media_clock import BLOCK_BYTES, BLOCKS_PER_FRAME, FRAME_BYTES, MediaTimeline


class Clock:
    def __init__(self, t: float = 100.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


def chunk(start: int, frames: int, value: int, *, interrupted: bool = False) -> dict:
    """An engine chunk of frames [start, start+frames) whose pixels and samples all carry `value`."""
    pcm = np.full(frames * C.SAMPLES_PER_FRAME, value, "<i2").tobytes()
    return {"start": round(start / C.FPS, 3), "frames": frames, "video": bytes([value]) * (frames * FRAME_BYTES),
            "pcm": pcm, "interrupted": interrupted}


def take(timeline: MediaTimeline, frames: int) -> tuple[list, list]:
    """What the two tracks read next: `frames` frames and their audio blocks (values only)."""
    async def read():
        video = [(await timeline.next_frame()) for _ in range(frames)]
        audio = [(await timeline.next_block()) for _ in range(frames * BLOCKS_PER_FRAME)]
        return video, audio
    video, audio = asyncio.run(read())
    return [(slot, data[0]) for slot, data in video], [(b, np.frombuffer(d, "<i2")[0]) for b, d in audio]


def test_slots_carry_each_chunks_frames_and_exactly_their_audio():
    clock = Clock(100.0)
    t = MediaTimeline(jitter_s=0.0, max_buffer_s=10, clock=clock)
    t.append(chunk(0, 2, 1))
    clock.t = 100.08                       # the next chunk arrives as its slot falls due
    t.append(chunk(2, 1, 2))
    clock.t = 100.0
    video, audio = take(t, 3)
    assert video == [(0, 1), (1, 1), (2, 2)]
    assert audio == [(0, 1), (1, 1), (2, 1), (3, 1), (4, 2), (5, 2)]
    assert BLOCK_BYTES == 640 and not t.frames and not t.blocks        # taken slots are freed


def test_interrupt_drops_what_no_track_took_and_the_engine_clock_goes_on():
    clock = Clock(100.0)
    t = MediaTimeline(jitter_s=0.06, max_buffer_s=10, clock=clock)
    t.append(chunk(0, 4, 1))               # speech: 4 frames buffered
    clock.t = 100.06
    take(t, 1)                             # slot 0 (and its audio) went out
    t.interrupt()
    assert not t.frames and not t.blocks
    assert t.append(chunk(4, 2, 1)) is False                 # rendered before the engine heard of it
    assert t.append(chunk(6, 2, 3, interrupted=True)) is True
    assert t.base == 100.06                                  # an interrupted chunk does not move the clock
    clock.t = 101.0
    video, audio = take(t, 7)
    assert video == [(1, 1), (2, 1), (3, 1), (4, 1), (5, 1), (6, 3), (7, 3)]   # the gap holds the last frame
    assert [v for _, v in audio] == [0] * 10 + [3] * 4                        # ... in silence


def test_the_clock_anchors_to_the_soonest_chunk_only_earlier():
    clock = Clock(100.0)
    t = MediaTimeline(jitter_s=0.05, max_buffer_s=10, clock=clock)
    t.append(chunk(0, 1, 1))               # slot 0 due 50 ms after it arrived
    assert t.base == 100.05
    clock.t = 100.03                       # slot 1 arrives 10 ms sooner than the clock expected
    t.append(chunk(1, 1, 1))
    assert abs(t.due(1) - 100.08) < 1e-9 and abs(t.base - 100.04) < 1e-9
    clock.t = 100.5                        # a late chunk moves nothing
    t.append(chunk(2, 1, 1))
    assert abs(t.base - 100.04) < 1e-9


def test_a_peer_that_takes_nothing_keeps_at_most_max_buffer():
    clock = Clock(100.0)
    t = MediaTimeline(jitter_s=0.0, max_buffer_s=0.2, clock=clock)      # 5 slots
    for k in range(8):
        clock.t = 100.0 + k / C.FPS
        t.append(chunk(k, 1, k + 1))
    assert len(t.frames) == 5 and len(t.blocks) == 5 * BLOCKS_PER_FRAME
    assert t.video_next == 3 and t.audio_next == 3 * BLOCKS_PER_FRAME
    video, _ = take(t, 1)
    assert video == [(3, 4)]


def test_a_track_that_starts_late_skips_to_the_slot_due_now():
    clock = Clock(100.0)
    t = MediaTimeline(jitter_s=0.0, max_buffer_s=10, clock=clock)
    t.append(chunk(0, 5, 1))
    clock.t = 100.0 + 2.5 / C.FPS          # the peer connected 2.5 frames late
    video, audio = take(t, 1)
    assert video == [(2, 1)] and audio[0][0] == 2 * BLOCKS_PER_FRAME
