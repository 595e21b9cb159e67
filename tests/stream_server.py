"""A real flashhead server on 127.0.0.1 (uvicorn in a thread) for the streaming tests."""
from __future__ import annotations

import base64
import io
import socket
import threading
import time
import wave
from contextlib import contextmanager
from pathlib import Path

import av
import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
PORTRAIT = ROOT / "examples" / "portrait_girl_512.png"
SPEECH = ROOT / "examples" / "speech_excerpt_10s.wav"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def running_server(data_dir: Path, engines, *, with_key: bool = True, **overrides):
    """Yields (base_url, key or None, app). Waits until /health says the engines are loaded.
    overrides: Settings fields (e.g. engine_capacity=1)."""
    import uvicorn

    from flashhead.api.app import create_app
    from flashhead.api.server import uvicorn_config
    from flashhead.config import Settings

    settings = Settings(data_dir=data_dir, renderer="cpu", tts="espeak", **overrides)
    app = create_app(settings, engines, auth_mode="keys" if with_key else "open")
    key = app.state.ctx.auth.keys.create("tests") if with_key else None
    port = free_port()
    server = uvicorn.Server(uvicorn_config(app, settings, host="127.0.0.1", port=port, ws="websockets-sansio",
                                           lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while not app.state.ctx.ready.is_set():
        assert time.monotonic() < deadline, app.state.ctx.startup_error or "server did not start"
        time.sleep(0.05)
    while not server.started:
        time.sleep(0.02)
    try:
        yield base, key, app
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def data_uri(path: Path, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(path.read_bytes()).decode()}"


def speech_pcm(seconds: float | None = None) -> bytes:
    with wave.open(str(SPEECH)) as w:
        n = w.getnframes() if seconds is None else int(seconds * w.getframerate())
        return w.readframes(n)


def long_speech_wav(repeats: int = 6) -> bytes:
    """The speech excerpt `repeats` times over, as WAV bytes (60 s by default): a stream long
    enough that its chunks overflow every socket buffer of a client that reads nothing."""
    out = io.BytesIO()
    with wave.open(str(SPEECH)) as w, wave.open(out, "wb") as o:
        o.setparams(w.getparams())
        o.writeframes(w.readframes(w.getnframes()) * repeats)
    return out.getvalue()


def reading_nothing(base: str) -> socket.socket:
    """A TCP connection to the server with a 4 KB receive buffer, for a client that then stops
    reading: the server's sends block once its own buffers are full."""
    host, port = base.split("//")[1].rsplit(":", 1)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect((host, int(port)))
    return sock


def wait_for_no_sessions(app, timeout: float) -> float:
    """Seconds until the app's render engine has no session in flight (fails after `timeout`)."""
    t0 = time.monotonic()
    while (health := app.state.ctx.engine.health())["sessions"]:
        assert time.monotonic() - t0 < timeout, f"the session still holds its slot: {health}"
        time.sleep(0.1)
    return time.monotonic() - t0


def decode_frames(data: bytes) -> tuple[int, float]:
    """(video frames, audio seconds) decoded from MP4 / fMP4 bytes."""
    with av.open(io.BytesIO(data)) as f:
        frames = sum(1 for _ in f.decode(video=0))
    with av.open(io.BytesIO(data)) as f:
        samples = sum(fr.samples for fr in f.decode(audio=0))
        rate = f.streams.audio[0].rate
    return frames, samples / rate


def fetch(url: str, key: str | None = None) -> bytes:
    headers = {"Authorization": f"Key {key}"} if key else {}
    r = httpx.get(url, headers=headers, timeout=30)
    r.raise_for_status()
    return r.content


def segment_bytes(value) -> bytes:
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    assert value.startswith("data:video/mp4;base64,"), value[:40]
    return base64.b64decode(value.split(",", 1)[1])


def tone_pcm(seconds: float, hz: float = 200.0, level: float = 0.4) -> bytes:
    t = np.arange(int(seconds * 16000)) / 16000
    return (level * np.sin(2 * np.pi * hz * t) * 32767).astype("<i2").tobytes()


def fal_pointed_server(data_dir, engines):
    """running_server, with the official Python client pointed at it: yields (base, key, app)."""
    from flashhead.client import configure_fal_client

    with running_server(data_dir, engines) as (base, key, app):
        configure_fal_client(base)
        yield base, key, app
