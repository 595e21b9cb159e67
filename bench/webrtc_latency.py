"""WebRTC speech latency: first PCM16 chunk in (over the data channel) -> first decoded video frame
that shows that speech, at an aiortc client, on loopback, with the CPU renderer; prints JSON.

    .venv/bin/python bench/webrtc_latency.py [--trials 20] [--sessions 1] [--burst-ms 0]

The server runs in a child process (API + render engine thread, CPU renderer, as `create_app`
with worker_mode="thread") so that the client's decoding does not share its interpreter. To see
which decoded frame first shows the speech, the renderer runs in the tests' marker mode: the real
CPU renderer draws every frame, then a white square is painted in the corner of each frame whose
audio is speech (the renderer's work is unchanged). Each trial waits in idle, then pushes a 1 s
utterance that starts on a loud frame, in 40 ms messages at the speed it plays (--burst-ms: that
much of it at once first, as a TTS that runs ahead does), then end_of_speech; the next trial
starts once 0.5 s of received frames show no speech.
--sessions N: N-1 more WHEP sessions idle beside the measured one (load on the same engine).
The machine's load average is printed with the figures: on a shared machine they move with it.
"""
from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
import wave
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "tests")]
from whep_client import MarkerRenderer, WhepClient, shows_marker  # noqa: E402  (tests/ on the path first)
SPEECH = ROOT / "examples" / "speech_excerpt_10s.wav"
PORTRAIT = ROOT / "examples" / "portrait_girl_512.png"
EP = "fal-ai/flashhead"
UTTERANCE_S = 1.0
PACKET = 1280                     # 40 ms of PCM16 at 16 kHz


def speech(audio):
    """Frames whose audio is speech (RMS > 0.02)."""
    return np.sqrt((audio ** 2).mean(1)) > 0.02


def serve(port: int, data_dir: str) -> None:
    """The child: a keyless loopback server with the marked CPU renderer."""
    import uvicorn

    from flashhead.api.app import create_app
    from flashhead.api.server import uvicorn_config
    from flashhead.config import Settings
    from flashhead.pipeline import Engines

    settings = Settings(data_dir=data_dir, renderer="cpu", tts="espeak")
    engines = Engines.create(settings)
    marked = dataclasses.replace(engines, renderer=MarkerRenderer(engines.renderer, speech))
    app = create_app(settings, marked, worker_mode="thread", auth_mode="open")
    stored = app.state.ctx.storage.put_bytes(PORTRAIT.read_bytes(), "image/png", PORTRAIT.name)
    Path(data_dir, "portrait_url").write_text(app.state.ctx.storage.url(stored.key, f"http://127.0.0.1:{port}"))
    uvicorn.Server(uvicorn_config(app, settings, host="127.0.0.1", port=port, ws="websockets-sansio")).run()


def utterances(n: int) -> list[bytes]:
    """n 1-s pieces of the speech excerpt, each starting on a loud 40 ms frame."""
    with wave.open(str(SPEECH)) as w:
        pcm = np.frombuffer(w.readframes(w.getnframes()), "<i2")
    frame = 640
    rms = np.sqrt((pcm[: len(pcm) // frame * frame].reshape(-1, frame).astype(np.float64) / 32768) ** 2).mean(1)
    onsets = [i for i in range(1, len(rms) - 30) if rms[i] > 0.05 and rms[i - 1] < 0.05] or [0]
    size = int(UTTERANCE_S * 16000)
    return [pcm[onsets[k % len(onsets)] * frame:][:size].tobytes() for k in range(n)]


async def quiet(client) -> None:
    """Until the last 0.5 s of received frames show no speech (the previous utterance is over)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        recent = client.got.video[-12:]
        if len(recent) == 12 and not any(shows_marker(y) for _, _, y in recent):
            return
        await asyncio.sleep(0.05)
    raise RuntimeError("the previous utterance still shows after 30 s")


async def trial(client, pcm: bytes, burst_ms: int) -> float:
    await quiet(client)
    seen = len(client.got.video)
    burst = burst_ms * 32
    t0 = time.monotonic()
    if burst:
        await client.send({"type": "audio", "pcm": pcm[:burst]})
    await client.push_pcm(pcm[burst:])
    await client.send({"type": "end_of_speech"})
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        for arrival, _, y in client.got.video[seen:]:
            if arrival >= t0 and shows_marker(y):
                return arrival - t0
        await asyncio.sleep(0.01)
    raise RuntimeError("no speech frame within 5 s")


async def measure(base: str, image_url: str, args) -> list[float]:

    extra = [WhepClient(base, EP, {}, keep_pixels=False) for _ in range(args.sessions - 1)]
    client = WhepClient(base, EP, {})
    try:
        for c in extra + [client]:
            r = await c.connect(image_url)
            if r.status_code != 201:
                raise RuntimeError(f"WHEP POST: HTTP {r.status_code} {r.text}")
        await asyncio.sleep(2.0)
        out = []
        for pcm in utterances(args.trials):
            out.append(await trial(client, pcm, args.burst_ms))
            del client.got.video[:-12]
        return out
    finally:
        for c in extra + [client]:
            await c.close()


def wait_up(base: str, data_dir: str, proc) -> str:
    import httpx

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("the server exited")
        try:
            if httpx.get(base + "/health", timeout=2).status_code == 200 and Path(data_dir, "portrait_url").exists():
                return Path(data_dir, "portrait_url").read_text()
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError("the server did not start")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=20)
    p.add_argument("--sessions", type=int, default=1)
    p.add_argument("--burst-ms", type=int, default=0)
    p.add_argument("--serve", nargs=2, metavar=("PORT", "DATA_DIR"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.serve:
        serve(int(args.serve[0]), args.serve[1])
        return
    from stream_server import free_port

    port, data_dir = free_port(), tempfile.mkdtemp(prefix="webrtc-bench-")
    proc = subprocess.Popen([sys.executable, __file__, "--serve", str(port), data_dir],
                            env={**os.environ, "FLASHHEAD_FETCH_ALLOW": "127.0.0.1"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        base = f"http://127.0.0.1:{port}"
        lat = asyncio.run(measure(base, wait_up(base, data_dir, proc), args))
    finally:
        proc.terminate()
        proc.wait(30)
    ms = np.asarray(lat) * 1000
    print(json.dumps({"trials": len(ms), "sessions": args.sessions, "burst_ms": args.burst_ms,
                      "first_speech_frame_ms": {"p50": round(float(np.percentile(ms, 50)), 1),
                                                "p95": round(float(np.percentile(ms, 95)), 1),
                                                "min": round(float(ms.min()), 1), "max": round(float(ms.max()), 1)},
                      "load_average": [round(x, 2) for x in os.getloadavg()]}))


if __name__ == "__main__":
    main()
