"""`listening` / `thinking` / `speaking` realtime messages switch a live session's idle pose.

End to end over the realtime WebSocket: two live sessions of one portrait and seed render the
same idle frames until one of them hears `listening`; from then on its idle frames differ (eyes
on the viewer, nods). The data channel of a WebRTC session feeds the same messages to the engine.
"""
from __future__ import annotations

import io

import av
import msgpack
import numpy as np
import pytest

from flashhead import constants as C
from stream_server import PORTRAIT, data_uri, running_server

POSE_AT = 2           # the chunk after which one session hears `listening`
CHUNKS = 12           # 3.8 s of idle video


@pytest.fixture(scope="module")
def server(tmp_path_factory, engines):
    with running_server(tmp_path_factory.mktemp("poses"), engines) as s:
        yield s


def next_message(ws) -> dict:
    return msgpack.unpackb(ws.recv(timeout=60), raw=False)


def decode(data: bytes) -> list[np.ndarray]:
    with av.open(io.BytesIO(data)) as f:
        return [fr.to_ndarray(format="gray").astype(np.int16) for fr in f.decode(video=0)]


def side_by_side(plain, posed) -> tuple[list, list]:
    """Idle chunks 0..CHUNKS-1 of both started sessions, read in step, decoded; `posed` hears
    `listening` once its chunk POSE_AT arrived."""
    data = []
    for ws in (plain, posed):
        started = next_message(ws)
        assert started["type"] == "started", started
        data.append(bytearray(started["init_segment"]))
    for index in range(CHUNKS):
        for k, ws in enumerate((plain, posed)):
            msg = next_message(ws)
            assert msg["type"] == "chunk" and msg["index"] == index and not msg["speaking"], msg
            data[k] += msg["segment"]
        if index == POSE_AT:
            posed.send(msgpack.packb({"type": "listening"}))
    return decode(bytes(data[0])), decode(bytes(data[1]))


@pytest.mark.slow
def test_listening_changes_the_idle_frames_over_the_websocket(server):
    from websockets.sync.client import connect

    base, key, _ = server
    url = base.replace("http", "ws") + f"/{C.TEXT_ENDPOINT}/realtime"
    start = msgpack.packb({"type": "start", "image_url": data_uri(PORTRAIT, "image/png"), "seed": 11})
    with connect(url, additional_headers={"Authorization": f"Key {key}"}, max_size=None) as plain, \
            connect(url, additional_headers={"Authorization": f"Key {key}"}, max_size=None) as posed:
        plain.send(start)
        posed.send(start)
        a, b = side_by_side(plain, posed)
    n = C.LIVE_CHUNK_FRAMES
    diff = [float(np.abs(x - y).mean()) for x, y in zip(a, b)]
    before = max(diff[: (POSE_AT + 1) * n])
    after = max(diff[(POSE_AT + 3) * n:])
    print(f"mean |plain - listening| per frame: before {before:.3f}, after {after:.3f}")
    assert before < 0.5, "the two sessions differ before the pose: the comparison is meaningless"
    assert after > 2.0, "listening did not change the idle frames"


def test_the_data_channel_feeds_poses_and_inputs_to_the_engine():
    """WhepSession.on_message (the data channel's handler) reaches the engine with the same
    messages as the WebSocket; an unknown message comes back as an x-fal-error map."""
    import asyncio
    from types import SimpleNamespace

    from flashhead.api.webrtc import WhepSession
    from flashhead.config import Settings

    sent, emitted = [], []
    async def send(kind, payload=None):
        sent.append((kind, payload))
    engine_session = SimpleNamespace(send=send)
    service = SimpleNamespace(settings=Settings(), sessions={})
    whep = WhepSession(service, "s", None, engine_session, pc=None)
    whep.emit = emitted.append

    async def feed():
        for msg in ({"type": "listening"}, {"type": "thinking"}, {"type": "speaking"},
                    {"type": "audio", "pcm": b"\x00\x01" * 320}, {"type": "end_of_speech"}, {"type": "bogus"}):
            await whep.on_message(msgpack.packb(msg))
    asyncio.run(feed())
    assert sent == [("pose", "listening"), ("pose", "thinking"), ("pose", "idle"),
                    ("audio", b"\x00\x01" * 320), ("eos", None)]
    assert emitted == [{"type": "x-fal-error", "error": "INVALID_INPUT", "reason": "type: unknown message type 'bogus'"}]
