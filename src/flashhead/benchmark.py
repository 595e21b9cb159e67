"""Render-speed benchmark: frames per second of render + encode, real-time factor, peak RSS.

Each length runs in its own process so that peak RSS is measured per length.
Usage: python -m flashhead.benchmark 30 300   (or `flashhead bench`, or bench/render_speed.py)
"""
from __future__ import annotations

import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from flashhead import constants as C

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def speech_audio(seconds: float) -> np.ndarray:
    """Real speech of the requested length: the shipped excerpt, looped."""
    from flashhead.media.audio import decode_audio

    clip = decode_audio((EXAMPLES / "speech_excerpt_10s.wav").read_bytes())
    n = int(seconds * C.SAMPLE_RATE)
    return np.resize(clip, n).astype(np.float32)


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _thread_cpu_s(fn, *args) -> float:
    """CPU seconds of this thread in fn(*args): x264 (one thread) and AAC run in the caller's."""
    t = time.thread_time()
    fn(*args)
    return time.thread_time() - t


def run_one(seconds: float) -> dict:
    """Render + encode `seconds` of speech in this process; return the figures."""
    from flashhead.pipeline import Engines, Prepared, iter_chunks, load_portrait, rendered_ahead
    from flashhead.speech.base import Speech
    from flashhead.video.encode import Mp4Writer
    from flashhead.visemes.features import features_for

    engines = Engines.create()
    crop, _ = load_portrait(str(EXAMPLES / "portrait_girl_512.png"), engines, allow_paths=True)
    portrait = engines.portraits.get(crop)
    speech = Speech(audio=speech_audio(seconds))
    prep = Prepared(seed=1, speech=speech, features=features_for(speech), portrait=portrait)
    with tempfile.TemporaryDirectory() as tmp:
        t0, cpu0, encode = time.perf_counter(), _cpu_s(), 0.0
        with Mp4Writer(Path(tmp) / "bench.mp4") as writer:
            for chunk in rendered_ahead(iter_chunks(prep, engines), engines.settings.render_ahead_chunks):
                encode += _thread_cpu_s(writer.write, chunk.frames, chunk.audio)
            encode += _thread_cpu_s(writer.close)
        wall, cpu = time.perf_counter() - t0, _cpu_s() - cpu0
    fps = prep.n_frames / wall
    return {"seconds": seconds, "render_ahead_chunks": engines.settings.render_ahead_chunks,
            "frames": prep.n_frames, "wall_s": round(wall, 2),
            "fps": round(fps, 1), "realtime_factor": round(fps / C.FPS, 2),
            # CPU seconds of all threads: the cost, less sensitive than wall_s to a busy machine
            "cpu_s": round(cpu, 2), "cpu_ms_per_frame": round(1e3 * cpu / prep.n_frames, 2),
            # of which encoding (the I420 conversion, x264, AAC, muxing); the rest is rendering
            "encode_cpu_ms_per_frame": round(1e3 * encode / prep.n_frames, 2),
            "render_cpu_ms_per_frame": round(1e3 * (cpu - encode) / prep.n_frames, 2),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--one"]:
        print(json.dumps(run_one(float(argv[1]))))
        return 0
    results = []
    for s in argv or ["30", "300"]:
        out = subprocess.run([sys.executable, "-m", "flashhead.benchmark", "--one", s],
                             check=True, capture_output=True, text=True).stdout
        results.append(json.loads(out.strip().splitlines()[-1]))
        print(json.dumps(results[-1]), flush=True)
    if len(results) >= 2:
        growth = results[-1]["peak_rss_mb"] / results[0]["peak_rss_mb"] - 1
        print(json.dumps({"rss_growth_longest_vs_shortest": round(growth, 3)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
