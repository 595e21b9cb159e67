"""A 10-minute live session fed faster than real time: flat memory, every utterance's audio
delivered whole and in place, interrupts.

The renderer is the frame-ledger double (pixels are not the point here; bench/stream_latency.py
runs the CPU renderer); the streaming feature extractor is the real one. A/V drift as a client
sees it (each fragment's tfdt) is measured by test_realtime_long_session_real.py.
"""
from __future__ import annotations

import time
import tracemalloc

import numpy as np
import pytest

from flashhead import constants as C
from flashhead.live import LiveSession
from live_doubles import LedgerRenderer, engines_with
from stream_server import speech_pcm

MINUTES = 10
PACKET = 1600 * 2        # 100 ms of PCM16


@pytest.mark.slow
def test_ten_minute_session_keeps_memory_flat_and_delivers_each_utterance_in_place():
    s = LiveSession(engines_with(LedgerRenderer()), object(), 1, pace=False)
    utterance = speech_pcm()                       # 10 s of real speech
    spoken = np.frombuffer(utterance, "<i2").astype(np.float32) / 32768.0
    total_frames = MINUTES * 60 * C.FPS
    tracemalloc.start()
    sizes, latencies, checked = {}, [], 0
    while s.frames_out < total_frames:
        for i in range(0, len(utterance), PACKET):
            s.push_audio(utterance[i:i + PACKET])
        s.end_of_speech()
        audio, frames = [], 0
        while True:
            c = s.next_chunk(timeout=2.0)
            assert c is not None
            if not c.speaking:
                break
            audio.append(c.audio)
            frames += len(c.frames)
        # What the client got for this utterance: exactly its samples, from the first speaking
        # frame on (none lost, repeated or shifted), then silence to the chunk's end, and as
        # many frames as that audio lasts.
        got = np.concatenate(audio)
        assert np.array_equal(got[:len(spoken)], spoken), s.index
        assert not got[len(spoken):].any() and len(got) - len(spoken) < C.LIVE_CHUNK_FRAMES * C.SAMPLES_PER_FRAME
        assert frames * C.SAMPLES_PER_FRAME == len(got)
        checked += 1
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
    assert checked >= MINUTES * 60 // 10 // 2           # most of the session was whole utterances
    assert len(latencies) >= 3 and max(latencies) <= C.LIVE_INTERRUPT_S
    # Flat memory: minute 9 holds no more than minute 2 plus a little slack.
    assert len(sizes) == 2 and sizes[MINUTES - 1] - sizes[2] < 2_000_000, sizes
