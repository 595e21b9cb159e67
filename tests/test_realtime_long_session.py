"""A 10-minute live session fed faster than real time: flat memory, one A/V clock, interrupts.

The renderer is the frame-ledger double (pixels are not the point here; bench/stream_latency.py
runs the CPU renderer); the streaming feature extractor is the real one.
"""
from __future__ import annotations

import time
import tracemalloc

from flashhead import constants as C
from flashhead.live import LiveSession
from live_doubles import LedgerRenderer, engines_with
from stream_server import speech_pcm

MINUTES = 10
PACKET = 1600 * 2        # 100 ms of PCM16


def test_ten_minute_session_keeps_memory_flat_and_av_locked():
    s = LiveSession(engines_with(LedgerRenderer()), object(), 1, pace=False)
    utterance = speech_pcm()                       # 10 s of real speech
    total_frames = MINUTES * 60 * C.FPS
    tracemalloc.start()
    sizes, latencies, offsets = {}, [], []
    while s.frames_out < total_frames:
        for i in range(0, len(utterance), PACKET):
            s.push_audio(utterance[i:i + PACKET])
        s.end_of_speech()
        while True:
            c = s.next_chunk(timeout=2.0)
            assert c is not None
            offsets.append(len(c.audio) / C.SAMPLE_RATE - len(c.frames) / C.FPS)
            if not c.speaking:
                break
        minute = s.frames_out // (60 * C.FPS)
        if minute in (2, MINUTES - 1):
            sizes.setdefault(minute, tracemalloc.get_traced_memory()[0])
        if s.index % 5 == 0:                        # every few utterances, cut one short
            for i in range(0, len(utterance), PACKET):
                s.push_audio(utterance[i:i + PACKET])
            assert s.next_chunk(timeout=2.0).speaking
            t = time.monotonic()
            s.interrupt()
            cut = s.next_chunk(timeout=2.0)
            latencies.append(cut.released_at - t)
            assert cut.interrupted and not cut.speaking
    tracemalloc.stop()
    # One clock: every chunk carries exactly its frames' samples, so the offset never moves.
    assert s.samples_out == s.frames_out * C.SAMPLES_PER_FRAME
    assert max(abs(o) for o in offsets) < 0.040
    assert len(latencies) >= 3 and max(latencies) <= C.LIVE_INTERRUPT_S
    # Flat memory: minute 9 holds no more than minute 2 plus a little slack.
    assert len(sizes) == 2 and sizes[MINUTES - 1] - sizes[2] < 2_000_000, sizes
