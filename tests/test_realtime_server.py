"""/realtime against the real server: official fal_client (Python) and @fal-ai/client (Node)."""
from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import fal_client
import pytest
from fal_client.client import RealtimeError

from flashhead import constants as C
from flashhead.api.client_helper import configure_fal_client
from stream_server import (PORTRAIT, SPEECH, data_uri, decode_frames, fal_pointed_server, fetch, long_speech_wav,
                           reading_nothing, speech_pcm, wait_for_no_sessions)

JS_DIR = Path(__file__).parent / "js"
PACKET = 1280  # 40 ms of PCM16 at 16 kHz


@pytest.fixture(scope="module")
def server(tmp_path_factory, engines):
    yield from fal_pointed_server(tmp_path_factory.mktemp("rt"), engines)


@pytest.fixture(scope="module")
def client(server):
    return fal_client.SyncClient(key=server[1])


def image() -> str:
    return data_uri(PORTRAIT, "image/png")


def recv_until(conn, stop, limit=2000) -> list[dict]:
    out = []
    for _ in range(limit):
        msg = conn.recv()
        assert msg is not None, "socket closed early"
        out.append(msg)
        if stop(msg):
            return out
    raise AssertionError("condition never met")


def test_unary_request_gets_chunks_then_the_final_output(server, client):
    with client.realtime(C.TEXT_ENDPOINT) as conn:              # JWT from /rest/tokens/
        conn.send({"image_url": image(), "text": "Hello over the socket.", "seed": 4})
        msgs = recv_until(conn, lambda m: "video" in m)
    *chunks, final = msgs
    assert len(chunks) >= 2 and final["seed"] == 4
    fmp4 = chunks[0]["init_segment"] + b"".join(c["segment"] for c in chunks)
    frames, _ = decode_frames(fmp4)
    assert frames == round(final["duration"] * C.FPS) == decode_frames(fetch(final["video"]["url"], server[1]))[0]


@pytest.mark.slow
def test_live_session_idles_speaks_interrupts_and_stops(server, client):
    with client.realtime(C.TEXT_ENDPOINT, use_jwt=False) as conn:   # Key header on the upgrade
        conn.send({"type": "start", "image_url": image(), "pace": False})
        started = recv_until(conn, lambda m: m.get("type") == "started")[-1]
        assert started["mime"].startswith("video/mp4") and started["init_segment"][4:8] == b"ftyp"
        idle = recv_until(conn, lambda m: m.get("type") == "chunk")[-1]
        assert not idle["speaking"]
        pcm = speech_pcm(3.0)
        for i in range(0, len(pcm), PACKET):
            conn.send({"type": "audio", "pcm": pcm[i:i + PACKET]})
        conn.send({"type": "end_of_speech"})
        chunks = recv_until(conn, lambda m: m.get("speaking") is False and m["index"] > idle["index"] + 3)
        spoken = [c for c in chunks if c.get("speaking")]
        assert len(spoken) * C.LIVE_CHUNK_FRAMES >= 3.0 * C.FPS
        starts = [c["start"] for c in chunks if c.get("type") == "chunk"]
        assert all(b - a == pytest.approx(C.LIVE_CHUNK_FRAMES / C.FPS, abs=1e-3) for a, b in zip(starts, starts[1:]))
        frames, _ = decode_frames(started["init_segment"] + b"".join(c["segment"] for c in chunks if "segment" in c))
        assert frames == len([c for c in chunks if "segment" in c]) * C.LIVE_CHUNK_FRAMES
        # interrupt: queue 20 s of speech, then cut it
        pcm = speech_pcm(10.0) * 2
        for i in range(0, len(pcm), PACKET * 2):
            conn.send({"type": "audio", "pcm": pcm[i:i + PACKET * 2]})
        recv_until(conn, lambda m: m.get("speaking") is True)
        t = time.monotonic()
        conn.send({"type": "interrupt"})
        cut = recv_until(conn, lambda m: m.get("interrupted") is True)[-1]
        assert time.monotonic() - t < 1.0 and not cut["speaking"]
        after = recv_until(conn, lambda m: m.get("type") == "chunk" and m["index"] >= cut["index"] + 2)
        assert not any(m.get("speaking") for m in after)
        conn.send({"type": "stop"})
        stopped = recv_until(conn, lambda m: m.get("type") == "stopped")[-1]
        assert stopped["frames"] % C.LIVE_CHUNK_FRAMES == 0 and stopped["frames"] > 0


def test_errors_arrive_as_x_fal_error_frames(server, client):
    with client.realtime(C.TEXT_ENDPOINT) as conn:
        conn.send({"type": "audio", "pcm": b"\0\0"})
        with pytest.raises(RealtimeError) as e:
            conn.recv()
        assert e.value.error == "INVALID_INPUT" and "start" in e.value.reason
        conn.send({"image_url": image()})                       # text missing: socket stays open
        with pytest.raises(RealtimeError) as e:
            conn.recv()
        assert e.value.error == "INVALID_INPUT" and "text" in e.value.reason
        for bad in ({"image_url": image(), "text": "hi", "seed": 2 ** 64 - 1},    # a uint64: msgpack
                    {"type": "start", "image_url": image(), "seed": 2 ** 64 - 1},  # packs it, not int64
                    {"type": "start", "image_url": "http://[::1/face.png"}):
            conn.send(bad)                                      # each refused before any work
            with pytest.raises(RealtimeError) as e:
                conn.recv()
            field = "image_url" if "[" in bad["image_url"] else "seed"
            assert e.value.error == "INVALID_INPUT" and field in e.value.reason, e.value.reason
        conn.send({"type": "start", "image_url": image(), "idle_timeout": 0.5})
        with pytest.raises(RealtimeError) as e:
            recv_until(conn, lambda m: False)
        assert e.value.error == "TIMEOUT"


@pytest.mark.slow       # waits out a 1.5 s lifetime
def test_a_live_session_ends_at_its_lifetime_however_busy_and_frees_its_slot(server, client, monkeypatch):
    """realtime_max_session_s bounds a live session that keeps sending (its idle timeout never
    fires): TIMEOUT naming the limit, the socket closes, the engine slot is free again."""
    app = server[2]
    monkeypatch.setattr(app.state.ctx.settings, "realtime_max_session_s", 1.5)
    engine = app.state.ctx.engine
    with client.realtime(C.TEXT_ENDPOINT) as conn:
        conn.send({"type": "start", "image_url": image(), "idle_timeout": 1.0})
        recv_until(conn, lambda m: m.get("type") == "started")
        t0 = time.monotonic()
        with pytest.raises(RealtimeError) as e:
            while time.monotonic() - t0 < 10:          # a message every 0.3 s: never idle
                conn.send({"type": "listening"})
                conn.recv()
        assert e.value.error == "TIMEOUT" and "1.5 s" in e.value.reason, e.value.reason
        assert time.monotonic() - t0 < 4
    deadline = time.monotonic() + 5
    while engine.health()["sessions"] != 0:
        assert time.monotonic() < deadline, f"the slot was not freed: {engine.health()}"
        time.sleep(0.05)


@pytest.mark.slow
def test_a_client_that_stops_reading_loses_its_live_session_and_its_engine_slot(server, monkeypatch):
    """A live client that keeps its socket open but reads nothing (its TCP window full) held its
    session and engine slot for as long as the socket lived: the chunk pump waited in a send
    while holding the send lock, so even the idle timeout's error frame never went out."""
    import msgpack
    from websockets.sync.client import connect

    base, key, app = server
    monkeypatch.setattr(app.state.ctx.settings, "client_send_timeout_s", 2.0)
    sock = reading_nothing(base)
    url = base.replace("http", "ws", 1) + f"/{C.TEXT_ENDPOINT}/realtime"
    with connect(url, sock=sock, max_queue=1, additional_headers={"Authorization": f"Key {key}"}) as ws:
        ws.send(msgpack.packb({"type": "start", "image_url": image(), "pace": False}))
        assert msgpack.unpackb(ws.recv())["type"] == "started"
        pcm = long_speech_wav()[44:]                                  # 60 s of PCM16 after the header
        for i in range(0, len(pcm), 32_000):
            ws.send(msgpack.packb({"type": "audio", "pcm": pcm[i:i + 32_000]}))
        ws.send(msgpack.packb({"type": "end_of_speech"}))             # ... and reads nothing more
        assert app.state.ctx.engine.health()["sessions"] == 1
        wait_for_no_sessions(app, timeout=30)


@pytest.mark.slow       # waits out a 1 s lifetime
def test_a_stopped_sessions_lifetime_does_not_end_the_socket(server, client, monkeypatch):
    app = server[2]
    monkeypatch.setattr(app.state.ctx.settings, "realtime_max_session_s", 1.0)
    with client.realtime(C.TEXT_ENDPOINT) as conn:
        conn.send({"type": "start", "image_url": image()})
        recv_until(conn, lambda m: m.get("type") == "started")
        conn.send({"type": "stop"})
        recv_until(conn, lambda m: m.get("type") == "stopped")
        time.sleep(1.5)                                     # past the stopped session's lifetime
        conn.send({"type": "audio", "pcm": b"\0\0"})         # no session: an input error, and
        with pytest.raises(RealtimeError) as e:             # the socket is still there to say so
            conn.recv()
        assert e.value.error == "INVALID_INPUT" and "start" in e.value.reason, e.value.reason


def test_a_deeply_nested_json_message_is_an_input_error_and_the_socket_stays(server, client):
    with client.realtime(C.TEXT_ENDPOINT) as conn:
        conn._ws.send("[" * 100_000 + "]" * 100_000)
        with pytest.raises(RealtimeError) as e:
            conn.recv()
        assert e.value.error == "INVALID_INPUT", e.value.reason
        conn.send({"image_url": image()})                   # still open: the next message is read
        with pytest.raises(RealtimeError) as e:
            conn.recv()
        assert e.value.error == "INVALID_INPUT" and "text" in e.value.reason


def test_a_message_as_big_as_an_http_body_may_be_is_read(server, client):
    """A realtime message is bounded like an HTTP body (max_body_bytes, 64 MiB), not by uvicorn's
    16 MiB WebSocket default, which closed the socket (1009) on a portrait of 13 MB as a data URI
    that /queue takes: here it is read and refused for what it is."""
    import base64
    import os

    big = "data:image/png;base64," + base64.b64encode(os.urandom(13 * 2**20)).decode()    # 17.3 MB
    with client.realtime(C.TEXT_ENDPOINT) as conn:
        conn.send({"image_url": big, "text": "hi"})
        with pytest.raises(RealtimeError) as e:
            conn.recv()
        assert e.value.error == "INVALID_INPUT" and "image_url" in e.value.reason, e.value.reason
        conn.send({"image_url": image()})                   # still open
        with pytest.raises(RealtimeError) as e:
            conn.recv()
        assert "text" in e.value.reason


def test_bad_token_is_refused(server):
    configure_fal_client(server[0])
    import fal_client.client as fc
    from websockets.sync.client import connect

    url = f"{fc.REALTIME_URL_FORMAT}{C.TEXT_ENDPOINT}/realtime?fal_jwt_token=not-a-token"
    with connect(url) as ws:
        err = json.loads(ws.recv())
    assert err["type"] == "x-fal-error" and err["error"] == "UNAUTHORIZED"


@pytest.mark.slow
def test_js_realtime_connect_with_global_websocket_override(server, js_client):
    base, key, _ = server
    out = subprocess.run(["node", "--experimental-websocket", str(JS_DIR / "realtime_connect.mjs")],
                         cwd=JS_DIR, capture_output=True, text=True, timeout=240,
                         env={"PATH": "/usr/bin:/usr/local/bin", "FLASHHEAD_URL": base, "FAL_KEY": key,
                              "PORTRAIT": str(PORTRAIT), "SPEECH": str(SPEECH)})
    assert out.returncode == 0, out.stderr + out.stdout
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert seen["unary_chunks"] >= 2 and seen["final"]["video"]["content_type"] == "video/mp4"
    assert seen["started"]["mime"].startswith("video/mp4") and seen["started"]["init"] > 0
    assert seen["speaking"] * C.LIVE_CHUNK_FRAMES >= 2 * C.FPS and seen["stopped"]["frames"] > 0
    assert seen["errors"] == []
