"""Streaming latency and live-session capacity on this machine; prints JSON.

    .venv/bin/python bench/stream_latency.py [--runs 20] [--seconds 10] [--max-sessions 8]

1. time to first chunk for a 12-word text over SSE (POST /fal-ai/flashhead/stream) and over the
   realtime WebSocket (unary message), p50/p95 over --runs runs, against a real server on loopback;
2. how many concurrent paced live sessions (real-time PCM16 audio in, CPU renderer + fMP4 out)
   run with every chunk ready before its media time.
"""
from __future__ import annotations

import argparse
import base64
import json
import socket
import sys
import tempfile
import threading
import time
import wave
from pathlib import Path

import httpx
import msgpack
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
TEXT = "Good morning, here is a quick update about the weather for today."   # 12 words


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(engines, data_dir: Path) -> str:
    import uvicorn

    from flashhead.api.app import create_app
    from flashhead.api.server import uvicorn_config

    settings = engines.settings.model_copy(update={"data_dir": data_dir})
    app = create_app(settings, engines, auth_mode="open")
    port = free_port()
    server = uvicorn.Server(uvicorn_config(app, settings, host="127.0.0.1", port=port, log_level="error",
                                           ws="websockets-sansio"))
    threading.Thread(target=server.run, daemon=True).start()
    while not (server.started and app.state.ctx.ready.is_set()):
        time.sleep(0.05)
    return f"http://127.0.0.1:{port}"


def pct(values: list[float]) -> dict:
    a = np.array(values) * 1000
    return {"p50_ms": round(float(np.percentile(a, 50)), 1), "p95_ms": round(float(np.percentile(a, 95)), 1),
            "min_ms": round(float(a.min()), 1), "runs": len(values)}


def ttfc_sse(base: str, image: str) -> float:
    t = time.perf_counter()
    with httpx.stream("POST", f"{base}/fal-ai/flashhead/stream", json={"image_url": image, "text": TEXT},
                      headers={"Accept": "text/event-stream"}, timeout=120) as r:
        first = None
        for line in r.iter_lines():   # read to the end so runs do not overlap
            if first is None and line.startswith("data:"):
                first = time.perf_counter() - t
    return first


def ttfc_ws(base: str, image: str) -> float:
    from websockets.sync.client import connect

    with connect(base.replace("http", "ws", 1) + "/fal-ai/flashhead/realtime", max_size=None) as ws:
        t = time.perf_counter()
        ws.send(msgpack.packb({"image_url": image, "text": TEXT}, use_bin_type=True))
        first = None
        while True:
            msg = msgpack.unpackb(ws.recv(), raw=False)
            first = first or time.perf_counter() - t
            if "video" in msg:
                return first


def live_capacity(engines, portrait, n: int, seconds: float) -> dict:
    """n paced sessions fed real-time speech; lateness = ready time - media time, per chunk."""
    from flashhead.errors import InputError
    from flashhead.live import LiveSession
    from flashhead.video.encode import FragmentedMp4Encoder

    with wave.open(str(ROOT / "examples" / "speech_excerpt_10s.wav")) as w:
        pcm = w.readframes(w.getnframes())
    late, stop = [], threading.Event()

    def feed(s: LiveSession):
        t0, packet = time.monotonic(), 1280
        for k, i in enumerate(range(0, len(pcm), packet)):
            if stop.is_set():
                return
            time.sleep(max(0.0, t0 + k * 0.04 - time.monotonic()))
            try:
                s.push_audio(pcm[i:i + packet])
            except InputError:      # closed at the end of the run
                return
        s.end_of_speech()

    def consume(s: LiveSession):
        with FragmentedMp4Encoder() as enc:
            while not stop.is_set():
                c = s.next_chunk(timeout=0.5)
                if c is not None:
                    enc.encode_chunk(c.frames, c.audio)
                    late.append(time.monotonic() - c.media_time)

    sessions = [LiveSession(engines, portrait, i, pace=True) for i in range(n)]
    threads = [threading.Thread(target=f, args=(s,)) for s in sessions for f in (feed, consume)]
    for t in threads:
        t.start()
    time.sleep(seconds)
    stop.set()
    for s in sessions:
        s.close()
    for t in threads:
        t.join()
    return {"sessions": n, "chunks": len(late), "max_lateness_ms": round(max(late) * 1000, 1),
            "all_ahead": max(late) <= 0}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--max-sessions", type=int, default=8)
    args = ap.parse_args()
    from flashhead.config import Settings
    from flashhead.pipeline import Engines, load_portrait

    data_dir = Path(tempfile.mkdtemp(prefix="flashhead-bench-"))
    engines = Engines.create(Settings(data_dir=data_dir, renderer="cpu", tts="espeak"))
    image = "data:image/png;base64," + base64.b64encode((ROOT / "examples/portrait_girl_512.png").read_bytes()).decode()
    base = start_server(engines, data_dir)
    ttfc_sse(base, image)   # warm-up: portrait cache, TTS
    out = {"text_words": len(TEXT.split()),
           "ttfc_sse": pct([ttfc_sse(base, image) for _ in range(args.runs)]),
           "ttfc_websocket": pct([ttfc_ws(base, image) for _ in range(args.runs)])}
    portrait = engines.portraits.get(load_portrait(str(ROOT / "examples/portrait_girl_512.png"), engines,
                                                   allow_paths=True)[0])
    runs, sustained = [], 0
    for n in range(1, args.max_sessions + 1):
        r = live_capacity(engines, portrait, n, args.seconds)
        runs.append(r)
        if not r["all_ahead"]:
            break
        sustained = n
    out["live_sessions"] = {"sustained": sustained, "runs": runs, "seconds_each": args.seconds}
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
