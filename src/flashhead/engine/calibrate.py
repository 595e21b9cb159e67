"""Capacity calibration at start-up (engine_capacity_mode=calibrate): each render process renders
and encodes a few chunks of a live session (the bundled sample portrait and speech) and derives
the real-time sessions it can hold: media seconds per chunk / wall seconds per chunk, times
engine_calibration_headroom (the API relay, socket and scheduling costs a lone render does not
pay, and room for the rest of the machine). Wall time on purpose: what other load takes from
this machine is not there for sessions either. A pool's capacity is its processes' sum.
"""
from __future__ import annotations

import math
import time
from pathlib import Path

from flashhead import constants as C

CALIBRATION_CHUNKS = 6                     # timed, after one warm-up chunk
MAX_CAPACITY = 256
STATIC = Path(__file__).resolve().parents[1] / "api" / "static"


def calibrate(engines, headroom: float, chunks: int = CALIBRATION_CHUNKS) -> dict:
    """-> {capacity, real_time, step_s, cpu_step_s, chunk_media_s, chunks}; chunks <= 30 (the speech's)."""
    from flashhead.engine.sessions import new_fmp4_encoder
    from flashhead.live import LiveSession
    from flashhead.media.audio import decode_audio
    from flashhead.pipeline import load_portrait

    crop, _ = load_portrait(str(STATIC / "sample_portrait.png"), engines, allow_paths=True)
    session = LiveSession(engines, engines.portraits.get(crop), 0, pace=False)
    speech = decode_audio((STATIC / "sample_speech.wav").read_bytes())      # 10 s: 31 chunks
    session.push_audio((speech[:(chunks + 1) * C.LIVE_CHUNK_FRAMES * C.SAMPLES_PER_FRAME] * 32767)
                       .astype("<i2").tobytes())
    session.end_of_speech()
    encoder = new_fmp4_encoder()
    try:
        _step(session, encoder)                                    # warm-up: caches, first IDR
        t, cpu = time.perf_counter(), time.thread_time()
        media = sum(_step(session, encoder) for _ in range(chunks))
        wall_s, cpu_s = time.perf_counter() - t, time.thread_time() - cpu
    finally:
        session.close()
        encoder.close()
    real_time = media / wall_s                       # sessions one render thread keeps in real time
    return {"capacity": max(1, min(MAX_CAPACITY, math.floor(real_time * headroom))), "real_time": real_time,
            "step_s": round(wall_s / chunks, 4), "cpu_step_s": round(cpu_s / chunks, 4),
            "chunk_media_s": round(media / chunks, 3), "chunks": chunks}


def _step(session, encoder) -> float:
    """One live chunk rendered and encoded, as an engine step does; -> its media seconds."""
    chunk = session.next_chunk(timeout=0)       # speech is queued: due at once
    encoder.encode_chunk(chunk.frames, chunk.audio)
    return chunk.duration_s
