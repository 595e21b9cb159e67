"""Streams and live sessions across machines: an API node (`flashhead serve --no-worker`) and an
engine node (`flashhead worker`) sharing a real redis-server and an S3-protocol server (moto),
driven by the unmodified fal-client: /stream and a realtime live session render on the worker
node; a session on an API node that is SIGKILLed gives its slot back within seconds; SIGKILL of
the worker node -> the live client gets ENGINE_FAILED promptly."""
from __future__ import annotations

import time

import pytest
import redis
from fal_client.client import RealtimeError

from api_helpers import AUDIO_ENDPOINT, PORTRAIT, ROOT, TEXT_ENDPOINT, Server, data_uri, fal_sync_client, make_tls
from flashhead.api.client_helper import configure_fal_client
from stream_server import speech_pcm, tone_pcm
from test_deploy_redis import _wait, s3  # noqa: F401  (s3: the moto S3 fixture)
from test_deploy_workers import WorkerNode

TTL_S = 2.0                   # FLASHHEAD_ENGINE_REMOTE_TTL_S: a dead engine node is noticed within this
PACKET = 1280


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_stream_and_live_session_run_on_a_worker_node_and_its_death_reaches_the_client(redis_url, s3, tmp_path):
    prefix = f"engines{time.monotonic_ns()}:"
    env = {"FLASHHEAD_JOB_STORE": redis_url, "FLASHHEAD_REDIS_PREFIX": prefix,
           "FLASHHEAD_ENGINE_REMOTE_TTL_S": str(TTL_S), "FLASHHEAD_ENGINE_CAPACITY": "1",
           **s3.server_env("shared", prefix="engines/")}
    tls = make_tls(tmp_path / "tls")
    api, api2 = (Server(tmp_path / name, tls, env=env, workers=0) for name in ("api", "api2"))
    node = WorkerNode(tmp_path / "node", env, redis_url)
    r = redis.Redis.from_url(redis_url)
    try:
        api.start()
        api2.start()
        image = data_uri(PORTRAIT, "image/png")
        with api.client() as c:                      # no engine node yet: refused at once, not hung
            t = time.monotonic()
            refused = c.post(f"/{TEXT_ENDPOINT}/stream", json={"image_url": image, "text": "Hi."})
        assert refused.status_code == 429 and refused.json()["error_type"] == "capacity_exceeded", refused.text
        assert time.monotonic() - t < 2.0
        node.start()
        _wait(lambda: r.smembers(f"{prefix}engines"), timeout=120, what="the worker node's engine registered")
        fal = fal_sync_client(api)
        _stream(fal)
        _whep(fal, api)
        _api_node_dies(fal, api, api2, image)
        _live_then_kill(fal, node, image)
        # streams deleted at the end (by the API node, in the background, once the session closed)
        _wait(lambda: not r.keys(f"{prefix}session:*"), timeout=5, what="no session stream left")
    finally:
        node.stop()
        api.stop()
        if api2.proc is not None and api2.proc.poll() is None:
            api2.stop()


def _stream(fal) -> None:
    audio = data_uri(ROOT / "examples" / "speech_excerpt_10s.wav", "audio/wav")
    events = list(fal.stream(AUDIO_ENDPOINT, {"image_url": data_uri(PORTRAIT, "image/png"),
                                              "audio_url": audio, "seed": 3}))
    chunks = [e for e in events if e.get("type") == "chunk"]
    assert len(chunks) >= 5 and chunks[0]["segment"].startswith("data:video/mp4;base64,")
    assert [c["index"] for c in chunks] == list(range(len(chunks)))
    assert events[-1]["seed"] == 3 and events[-1]["video"]["url"], events[-1]


def _whep(fal, api: Server) -> None:
    """A WebRTC session on an API node renders on the worker node: its raw frames and PCM come
    through Redis; speech pushed over the data channel is heard; DELETE frees the slot."""
    import asyncio

    import numpy as np

    from whep_client import WhepClient

    image_url = fal.upload_file(PORTRAIT)

    async def scenario():
        client = WhepClient(api.base_url, TEXT_ENDPOINT, {}, keep_pixels=False)
        try:
            r = await client.connect(image_url)
            assert r.status_code == 201, r.text
            await asyncio.sleep(1.0)
            await client.push_pcm(tone_pcm(1.5))                 # a steady voice: every block is loud
            await client.send({"type": "end_of_speech"})
            await asyncio.sleep(1.0)
            assert await client.delete() == 204
            return client.got
        finally:
            await client.close()

    got = asyncio.run(scenario())
    loud = [a for _, _, a in got.audio if float(np.sqrt((a ** 2).mean())) > 0.05]
    speaking = [m for m in got.messages if m.get("type") == "chunk" and m["speaking"]]
    assert len(got.video) >= 50 and len(loud) >= 50 and len(speaking) >= 35, (len(got.video), len(loud), len(speaking))
    with api.client() as c:        # the slot is free again: a stream runs
        r = _wait(lambda: (r := c.post(f"/{TEXT_ENDPOINT}/stream", json={"image_url": image_url, "text": "Hi."}))
                  .status_code != 429 and r, timeout=10, what="the WHEP session's slot freed")
    assert r.status_code == 200, r.text


def _api_node_dies(fal, api: Server, api2: Server, image: str) -> None:
    """The one slot taken by a live session on api2 counts on api too; api2 dies -> freed."""
    configure_fal_client(api2.base_url)
    held = fal.realtime(TEXT_ENDPOINT, use_jwt=False)     # kept referenced: its socket stays open
    conn = held.__enter__()
    conn.send({"type": "start", "image_url": image, "pace": True})
    assert conn.recv()["type"] == "started"
    configure_fal_client(api.base_url)
    body = {"image_url": image, "text": "Hi."}
    with api.client() as c:
        r = c.post(f"/{TEXT_ENDPOINT}/stream", json=body)
        assert r.status_code == 429 and r.json()["error_type"] == "capacity_exceeded", r.text
        api2.proc.kill()                               # the API machine dies; nobody closes the session
        api2.proc.wait(10)
        killed_at = time.monotonic()
        r = _wait(lambda: (r := c.post(f"/{TEXT_ENDPOINT}/stream", json=body)).status_code != 429 and r,
                  timeout=30, what="the dead API node's slot freed")
        freed_s = time.monotonic() - killed_at
    assert r.status_code == 200 and '"video"' in r.text, r.text
    print(f"\ndead API node's slot freed after {freed_s:.2f} s (TTL {TTL_S} s)")
    assert freed_s < TTL_S + 2.0, freed_s


def _live_then_kill(fal, node: WorkerNode, image: str) -> None:
    with fal.realtime(TEXT_ENDPOINT, use_jwt=False) as conn:
        conn.send({"type": "start", "image_url": image, "pace": True})
        assert conn.recv()["type"] == "started"
        pcm = speech_pcm(2.0)
        for i in range(0, len(pcm), PACKET):
            conn.send({"type": "audio", "pcm": pcm[i:i + PACKET]})
        conn.send({"type": "end_of_speech"})
        chunks = []
        while len(chunks) < 3:
            msg = conn.recv()
            if msg.get("type") == "chunk":
                chunks.append(msg)
        assert chunks[0]["segment"] and [c["index"] for c in chunks] == [0, 1, 2]
        conn.send({"type": "stop"})
        while (msg := conn.recv()).get("type") != "stopped":
            pass
        assert msg["frames"] >= 3 * chunks[0]["duration"] * 25 - 1

    with fal.realtime(TEXT_ENDPOINT, use_jwt=False) as conn:
        conn.send({"type": "start", "image_url": image, "pace": True})
        assert conn.recv()["type"] == "started"
        node.kill()                                    # the engine machine dies mid-session
        killed_at = time.monotonic()
        with pytest.raises(RealtimeError) as failed:
            while True:
                conn.recv()
        failed_s = time.monotonic() - killed_at
        print(f"engine node SIGKILLed: the client got {failed.value.error} after {failed_s:.2f} s")
        assert failed.value.error == "ENGINE_FAILED", failed.value
        assert failed_s < TTL_S + 2.0, failed_s
