"""Bounds of streams and live sessions across machines: two API nodes (`serve --no-worker`) and
one engine node (`flashhead worker`) over a real redis-server and moto S3.

- a live client that leaves more than engine_max_pending_chunks chunks unread ends with
  limit_exceeded (as on one machine), its slots freed at once and the engine told to drop it;
- Redis calls of a session run off the API node's event loop: a Redis that stalls for 2 s
  does not stall an unrelated request to that node;
- the per-key cap on concurrent sessions holds across API nodes, and a dead API node's
  sessions stop counting within seconds;
- /health and /metrics of an API node show the remote engine: capacity, sessions in flight,
  its running sessions, step times and batch sizes.
"""
from __future__ import annotations

import asyncio
import json
import re
import time
from types import SimpleNamespace

import pytest
import redis

from api_helpers import PORTRAIT, TEXT_ENDPOINT, Server, data_uri, fal_sync_client, make_tls
from flashhead.config import Settings
from flashhead.engine.remote import Keys, RemoteEngines, unpack
from flashhead.errors import LimitExceeded
from stream_server import speech_pcm
from test_deploy_redis import _keys_cli, _wait, s3  # noqa: F401  (s3: the moto S3 fixture)
from test_deploy_workers import WorkerNode

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]
TTL_S = 4.0            # FLASHHEAD_ENGINE_REMOTE_TTL_S: above the 2 s Redis stall of the event-loop test
MAX_PENDING = 12       # FLASHHEAD_ENGINE_MAX_PENDING_CHUNKS: above the chunks a 2 s Redis stall bunches up
CAPACITY = 3           # the engine node's
PER_KEY = 1            # FLASHHEAD_ENGINE_KEY_SESSIONS


@pytest.fixture(scope="module")
def cluster(redis_url, s3, tmp_path_factory):  # noqa: F811
    tmp = tmp_path_factory.mktemp("engines-bounds")
    prefix = f"bounds{time.monotonic_ns()}:"
    env = {"FLASHHEAD_JOB_STORE": redis_url, "FLASHHEAD_REDIS_PREFIX": prefix,
           "FLASHHEAD_ENGINE_REMOTE_TTL_S": str(TTL_S), "FLASHHEAD_ENGINE_CAPACITY": str(CAPACITY),
           "FLASHHEAD_ENGINE_KEY_SESSIONS": str(PER_KEY), "FLASHHEAD_ENGINE_MAX_PENDING_CHUNKS": str(MAX_PENDING),
           **s3.server_env("shared", prefix="bounds/")}
    one, two = (_keys_cli(env, tmp / "admin", "create") for _ in range(2))
    tls = make_tls(tmp / "tls")
    apis = [Server(tmp / name, tls, env=env, workers=0) for name in ("a", "b")]
    node = WorkerNode(tmp / "node", env, redis_url)
    r = redis.Redis.from_url(redis_url)
    try:
        for api in apis:
            api.start()
        node.start()
        [eid] = _wait(lambda: r.smembers(f"{prefix}engines"), timeout=120, what="the engine node registered")
        yield SimpleNamespace(a=apis[0], b=apis[1], node=node, r=r, redis_url=redis_url, keys=Keys(prefix),
                              eid=eid.decode(), key1=one, key2=two, image=data_uri(PORTRAIT, "image/png"))
    finally:
        node.stop()
        for api in apis:
            if api.proc is not None and api.proc.poll() is None:
                api.stop()


def _engine_stats(c, eid: str) -> dict:
    raw = c.r.get(c.keys.stats(eid))
    return unpack(raw) if raw else {}


def test_a_live_client_that_does_not_read_ends_with_limit_exceeded_and_frees_its_slots(cluster):
    """The API side of a live session (RemoteEngines, as an API node runs it) against the real
    engine node: nobody reads its chunks."""
    c = cluster
    settings = Settings(job_store=c.redis_url, redis_prefix=c.keys.prefix, engine_remote_ttl_s=TTL_S,
                        engine_max_pending_chunks=MAX_PENDING, engine_key_sessions=PER_KEY)

    async def run():
        remote = RemoteEngines(settings)
        session = await remote.open("live", {"image_url": c.image, "base_url": "http://127.0.0.1", "seed": 1,
                                             "pace": True}, "slow-reader")
        assert (await asyncio.wait_for(session.get(), 60))[0] == "started"
        assert c.r.zscore(c.keys.sessions(session.eid), session.sid) is not None
        await _until(lambda: session.ended, "the session ended for its unread chunks")
        await asyncio.sleep(0.5)                                   # the release, in the background
        assert c.r.zscore(c.keys.sessions(session.eid), session.sid) is None          # slot free at once
        assert c.r.zscore(c.keys.key_sessions("slow-reader"), session.sid) is None
        got = [await session.get() for _ in range(MAX_PENDING)]    # what it did not read is still there,
        assert [k for k, _ in got] == ["event"] * MAX_PENDING      # in order, then the error
        assert [p["index"] for _, p in got] == list(range(MAX_PENDING))
        with pytest.raises(LimitExceeded, match=f"more than {MAX_PENDING} chunks unread"):
            await session.get()
        # the engine dropped it: it runs nothing, renders no more steps, publishes nothing more for it
        steps = lambda: sum(_engine_stats(c, session.eid)["steps"]["counts"])  # noqa: E731
        await _until(lambda: steps() >= MAX_PENDING and _engine_stats(c, session.eid)["active"] == 0,
                     "the engine's stats after the session")
        await asyncio.sleep(TTL_S / 3)          # one publishing round: a step already running at the drop lands
        before = steps()
        await asyncio.sleep(3 * TTL_S / 3)                         # three of its publishing rounds
        assert steps() == before and _engine_stats(c, session.eid)["active"] == 0
        assert not c.r.exists(c.keys.out(session.sid))
        session.close()
        await asyncio.sleep(0.2)
        await remote.aclose()

    asyncio.run(run())


def test_a_realtime_client_that_stops_reading_gets_limit_exceeded(cluster):
    """End to end through an API node: a realtime client whose socket stops reading (a small
    receive buffer, websockets' own queue of one message): the API node's relay falls behind,
    the session's slot is freed while the client still reads nothing, and once it reads again
    it gets its chunks, then LIMIT_EXCEEDED."""
    import socket

    import msgpack
    from websockets.sync.client import connect

    c = cluster
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)      # before connecting: no autotuning;
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, 1000)    # small segments keep the server's
    sock.connect(("127.0.0.1", c.b.port))                          # send buffer small (not ~4 MB)
    with connect(f"wss://127.0.0.1:{c.b.port}/{TEXT_ENDPOINT}/realtime", sock=sock, ssl=c.b.ssl_context(),
                 server_hostname="127.0.0.1", additional_headers={"Authorization": f"Key {c.key2}"},
                 max_queue=1, open_timeout=30, ping_interval=None, compression=None) as ws:
        ws.send(msgpack.packb({"type": "start", "image_url": c.image, "pace": False}))   # speech at full speed
        assert msgpack.unpackb(ws.recv(timeout=60))["type"] == "started"
        assert c.r.zcard(c.keys.sessions(c.eid)) == 1
        pcm = speech_pcm(8.0)
        for i in range(0, len(pcm), 3200):
            ws.send(msgpack.packb({"type": "audio", "pcm": pcm[i:i + 3200]}))
        ws.send(msgpack.packb({"type": "end_of_speech"}))
        t = time.monotonic()
        _wait(lambda: c.r.zcard(c.keys.sessions(c.eid)) == 0, timeout=90, what="the slow client's slot freed")
        print(f"\nthe client that stopped reading lost its session after {time.monotonic() - t:.1f} s")
        kinds = []
        while (msg := ws.recv(timeout=30)) is not None and isinstance(msg, bytes):
            kinds.append(msgpack.unpackb(msg)["type"])
        error = json.loads(msg)
    assert kinds and set(kinds) == {"chunk"}, kinds
    assert error["error"] == "LIMIT_EXCEEDED" and f"more than {MAX_PENDING} chunks" in error["reason"], error


async def _until(predicate, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.1)


def test_a_stalled_redis_does_not_stall_the_api_nodes_event_loop(cluster):
    """A live session's audio goes to Redis while Redis is paused (CLIENT PAUSE, 2 s): an
    unrelated request to the same API node answers meanwhile."""
    c = cluster
    pause_ms = 2000
    fal = fal_sync_client(c.b, key=c.key2)
    with fal.realtime(TEXT_ENDPOINT, use_jwt=False) as conn, c.b.client() as http:
        conn.send({"type": "start", "image_url": c.image, "pace": True})
        assert conn.recv()["type"] == "started"
        assert http.get("/.well-known/jwks.json").status_code == 200        # connected, warm
        c.r.client_pause(pause_ms, all=True)
        paused_at = time.monotonic()
        conn.send({"type": "audio", "pcm": speech_pcm(0.5)})
        time.sleep(0.3)
        t = time.monotonic()
        assert t - paused_at < pause_ms / 1000 - 1.0, "the request went out late in the pause (load?)"
        assert http.get("/.well-known/jwks.json").status_code == 200
        answered_s = time.monotonic() - t
        print(f"\nrequest during a {pause_ms} ms Redis pause answered in {answered_s * 1000:.0f} ms")
        assert answered_s < 1.0, answered_s
        conn.send({"type": "stop"})                                  # the session went on after
        while (msg := conn.recv()).get("type") != "stopped":
            assert msg.get("type") == "chunk", msg


def _stream_status(server: Server, key: str, image: str) -> tuple[int, str]:
    with server.client(headers={"Authorization": f"Key {key}"}) as http:
        r = http.post(f"/{TEXT_ENDPOINT}/stream", json={"image_url": image, "text": "Hi."})
        return r.status_code, r.text


def test_key_cap_holds_across_api_nodes_and_health_and_metrics_show_the_remote_engine(cluster):
    """key1 holds a live session on API node a: on b it is refused (its cap is 1) while key2 runs
    a stream there; /health and /metrics of b show the engine node, the session on a included.
    a dies (SIGKILL): key1's session stops counting within seconds."""
    c = cluster
    fal = fal_sync_client(c.a, key=c.key1)
    held = fal.realtime(TEXT_ENDPOINT, use_jwt=False)
    conn = held.__enter__()                           # kept referenced: its socket stays open
    conn.send({"type": "start", "image_url": c.image, "pace": True})
    assert conn.recv()["type"] == "started"
    code, text = _stream_status(c.b, c.key1, c.image)
    assert code == 429 and "this key already runs 1 real-time sessions" in text, text
    code, text = _stream_status(c.b, c.key2, c.image)                        # room on the engine
    assert code == 200 and '"video"' in text, text
    _wait(lambda: _engine_stats(c, c.eid).get("steps"), timeout=10, what="step times published")
    _health_and_metrics_show_the_engine(c)

    c.a.proc.kill()                                   # the API machine dies; nobody closes the session
    c.a.proc.wait(10)
    killed_at = time.monotonic()
    _wait(lambda: _stream_status(c.b, c.key1, c.image)[0] != 429, timeout=30, what="key1's session freed")
    freed_s = time.monotonic() - killed_at
    print(f"\ndead API node's session stopped counting for its key after {freed_s:.2f} s (TTL {TTL_S} s)")
    assert freed_s < TTL_S + 3.0, freed_s


def _health_and_metrics_show_the_engine(c) -> None:
    with c.b.client() as http:       # the stream that just ended may still count in the last beat
        engine = _wait(lambda: (e := http.get("/health").json()["engine"])["remote"][0]["running"] == 1 and e,
                       timeout=10, what="the engine's running sessions published")
        metrics = http.get("/metrics").text
    assert engine["up"] and engine["capacity"] == CAPACITY and engine["sessions"] == 1, engine
    [remote] = engine["remote"]
    assert remote["id"] == c.eid and remote["capacity"] == CAPACITY and remote["sessions"] == 1, remote
    assert remote["running"] == 1 and remote["steps"] > 0 and 0 < remote["step_seconds_mean"] < 5, remote
    label = f'{{engine="{c.eid}"}}'

    def sample(name: str) -> float:
        m = re.search(rf"^{re.escape(name + label)} (\S+)$", metrics, re.M)
        assert m, f"{name}{label} not in /metrics:\n{metrics}"
        return float(m.group(1))
    assert sample("flashhead_remote_engine_capacity") == CAPACITY
    assert sample("flashhead_remote_engine_sessions") == 1
    assert sample("flashhead_remote_engine_step_seconds_count") >= remote["steps"]   # a beat may come between
    assert sample("flashhead_remote_engine_step_seconds_sum") > 0
    assert re.search(r"^flashhead_engine_capacity 3\.0$", metrics, re.M), metrics
