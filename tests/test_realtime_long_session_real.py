"""A 10-minute live session with the real CPU renderer and the real fMP4 encoder, fed faster
than real time: flat process memory, A/V timestamps locked from start to end, interrupts.

The A/V offset is read from the encoded stream itself (each fragment's tfdt per track).
"""
from __future__ import annotations

import struct
import time

import numpy as np
import psutil
import pytest

from flashhead import constants as C
from flashhead.live import LiveSession
from flashhead.pipeline import load_portrait
from flashhead.video import fmp4
from flashhead.video.encode import FragmentedMp4Encoder
from stream_server import speech_pcm

MINUTES = 10
PACKET = 1600 * 2        # 100 ms of PCM16


def fragment_times(segment: bytes, timescales: dict[int, int]) -> dict[int, float]:
    """{track id: base media decode time in seconds} of every traf in a media segment."""
    out = {}
    for traf in fmp4.find_all(segment, "moof/traf"):
        tfhd = fmp4.find_all(segment, "tfhd", traf.body.start, traf.body.stop)[0]
        track = struct.unpack_from(">I", segment, tfhd.body.start + 4)[0]
        tfdt = fmp4.find_all(segment, "tfdt", traf.body.start, traf.body.stop)[0]
        version = segment[tfdt.body.start]
        fmt = ">Q" if version == 1 else ">I"
        out[track] = struct.unpack_from(fmt, segment, tfdt.body.start + 4)[0] / timescales[track]
    return out


@pytest.mark.slow
def test_ten_real_minutes_keep_memory_flat_and_av_locked(engines, portrait_path):
    crop, _ = load_portrait(str(portrait_path), engines, allow_paths=True)
    s = LiveSession(engines, engines.portraits.get(crop), 1, pace=False)
    enc = FragmentedMp4Encoder()
    tracks = fmp4.read_tracks(enc.init_segment())
    scales = {t.track_id: t.timescale for t in tracks}
    vid = next(t.track_id for t in tracks if t.handler == "vide")
    aud = next(t.track_id for t in tracks if t.handler == "soun")
    utterance = speech_pcm(8.0)
    proc, rss, offsets, latencies = psutil.Process(), {}, [], []
    while s.frames_out < MINUTES * 60 * C.FPS:
        for i in range(0, len(utterance), PACKET):
            s.push_audio(utterance[i:i + PACKET])
        s.end_of_speech()
        interrupt_now = s.index % 7 == 3
        while True:
            c = s.next_chunk(timeout=5.0)
            times = fragment_times(enc.encode_chunk(c.frames, c.audio), scales)
            if vid in times and aud in times:
                offsets.append(times[aud] - times[vid])
            if interrupt_now and c.speaking:
                t = time.monotonic()
                s.interrupt()
                cut = s.next_chunk(timeout=5.0)
                latencies.append(cut.released_at - t)
                assert cut.interrupted and not cut.speaking
                enc.encode_chunk(cut.frames, cut.audio)
                break
            if not c.speaking:
                break
        minute = s.frames_out // (60 * C.FPS)
        if minute in (2, MINUTES - 1):
            rss.setdefault(minute, proc.memory_info().rss)
    print(f"frames {s.frames_out} drift_max_ms {1000 * np.abs(np.diff(offsets[1:])).max():.2f} "
          f"interrupts_ms {[round(1000 * x) for x in latencies]} rss_mb {[r >> 20 for r in rss.values()]}")
    assert s.samples_out == s.frames_out * C.SAMPLES_PER_FRAME
    # Fragment k carries the audio the AAC encoder has released by then: a constant two AAC
    # frames (128 ms) behind its video from the second fragment on. Drift = change of that lag.
    lag = np.array(offsets[1:])
    assert len(lag) > 1000 and abs(lag[0]) <= 2 * 1024 / C.SAMPLE_RATE + 1e-3
    assert np.abs(lag - lag[0]).max() < 0.040, np.abs(lag - lag[0]).max()
    assert len(latencies) >= 3 and max(latencies) <= C.LIVE_INTERRUPT_S
    assert rss[MINUTES - 1] - rss[2] < 20 * 2**20, rss
