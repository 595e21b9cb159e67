"""Streams and live sessions across machines: an API node (`flashhead serve --no-worker`) and an
engine node (`flashhead worker`) sharing a real redis-server and an S3-protocol server (moto),
driven by the unmodified fal-client: /stream and a realtime live session render on the worker
node; SIGKILL of the worker node -> the live client gets ENGINE_FAILED promptly."""
from __future__ import annotations

import time

import pytest
import redis
from fal_client.client import RealtimeError

from api_helpers import AUDIO_ENDPOINT, PORTRAIT, ROOT, TEXT_ENDPOINT, Server, data_uri, fal_sync_client, make_tls
from stream_server import speech_pcm
from test_deploy_redis import _wait, s3  # noqa: F401  (s3: the moto S3 fixture)
from test_deploy_workers import WorkerNode

TTL_S = 2.0                   # FLASHHEAD_ENGINE_REMOTE_TTL_S: a dead engine node is noticed within this
PACKET = 1280


@pytest.mark.slow
def test_stream_and_live_session_run_on_a_worker_node_and_its_death_reaches_the_client(redis_url, s3, tmp_path):
    prefix = f"engines{time.monotonic_ns()}:"
    env = {"FLASHHEAD_JOB_STORE": redis_url, "FLASHHEAD_REDIS_PREFIX": prefix,
           "FLASHHEAD_ENGINE_REMOTE_TTL_S": str(TTL_S), "FLASHHEAD_ENGINE_CAPACITY": "2",
           **s3.server_env("shared", prefix="engines/")}
    api = Server(tmp_path / "api", make_tls(tmp_path / "tls"), env=env, workers=0)
    node = WorkerNode(tmp_path / "node", env, redis_url)
    r = redis.Redis.from_url(redis_url)
    try:
        api.start()
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
        _live_then_kill(fal, node, image)
        assert not r.keys(f"{prefix}session:*"), r.keys(f"{prefix}session:*")   # streams deleted at the end
    finally:
        node.stop()
        api.stop()


def _stream(fal) -> None:
    audio = data_uri(ROOT / "examples" / "speech_excerpt_10s.wav", "audio/wav")
    events = list(fal.stream(AUDIO_ENDPOINT, {"image_url": data_uri(PORTRAIT, "image/png"),
                                              "audio_url": audio, "seed": 3}))
    chunks = [e for e in events if e.get("type") == "chunk"]
    assert len(chunks) >= 5 and chunks[0]["segment"].startswith("data:video/mp4;base64,")
    assert [c["index"] for c in chunks] == list(range(len(chunks)))
    assert events[-1]["seed"] == 3 and events[-1]["video"]["url"], events[-1]


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
        assert failed.value.error == "ENGINE_FAILED", failed.value
        assert time.monotonic() - killed_at < TTL_S + 2.0
