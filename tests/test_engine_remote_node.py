"""An engine node's published capacity and the Redis connections of remote engines, on a real
redis-server: the node's EngineHost publishes the capacity of the engine it runs now (a restart
that calibrated differently is what API nodes admit against), and an API node's sessions each
close their Redis connection when they end, and all of them close at its shutdown.

The engine behind the EngineHost is a stand-in speaking the engine's side of an EngineLink
(`ready` with a capacity, `started` for a live session, `end` when told): no renderer runs."""
from __future__ import annotations

import asyncio
import os
import socket
import threading
import time
from multiprocessing.connection import Connection
from types import SimpleNamespace

import pytest
import redis

from flashhead.config import Settings
from flashhead.engine.relay import EngineLink
from flashhead.engine.remote import API_CLIENT, HOST_CLIENT, SESSION_CLIENT, EngineHost, Keys, RemoteEngines
from flashhead.engine.service import EngineService
from flashhead.errors import CapacityExceeded, ShuttingDown

TTL_S = 0.6                   # engine_remote_ttl_s: the node beats every 0.2 s
SPEC = {"image_url": "data:,", "base_url": "http://127.0.0.1", "seed": 1, "pace": True}


class StandInEngine:
    """The engine end of an EngineLink: ready with `capacity`, then answers each live session
    with `started`; `end(i)` ends the i-th session it was given."""

    def __init__(self, capacity: int):
        ours, theirs = socket.socketpair()
        self.conn = Connection(theirs.detach())
        self.link = EngineLink(Connection(ours.detach()))
        self.sids: list[str] = []
        self.dropped: list[str] = []          # sessions the API told it to drop ("close")
        self.conn.send(("ready", None, {"capacity": capacity, "source": "calibrated", "threads": 1}))
        assert self.link.ready.wait(5)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                kind, sid, _ = self.conn.recv()
            except (EOFError, OSError):
                return
            if kind == "live":
                self.sids.append(sid)
                self.conn.send(("started", sid, {"type": "started"}))
            elif kind == "close":
                self.dropped.append(sid)

    def end(self, i: int) -> None:
        self.conn.send(("end", self.sids[i], None))

    def close(self) -> None:
        """Shut the socket down first: _serve's recv() then ends with EOFError (a Connection closed
        under a blocked recv() raises TypeError in that thread instead)."""
        with socket.socket(fileno=os.dup(self.conn.fileno())) as sock:
            sock.shutdown(socket.SHUT_RDWR)
        self.thread.join(5)
        self.conn.close()


@pytest.fixture
def node(redis_url):
    """(settings, keys, runner, host): an engine node on a fresh prefix; runner.link is its engine."""
    settings = Settings(job_store=redis_url, redis_prefix=f"node{time.monotonic_ns()}:", engine_remote_ttl_s=TTL_S,
                        engine_key_sessions=100, engine_remote_redis_connections=2)
    runner = SimpleNamespace(link=None)
    host = EngineHost(settings).start(runner)
    yield settings, Keys(settings.redis_prefix), runner, host
    host.stop()


def _wait(predicate, what: str, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while not (got := predicate()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)
    return got


def _admitted(settings: Settings) -> int:
    """Live sessions an API node (RemoteEngines) admits before its first refusal; all closed after."""
    async def run() -> int:
        remote, sessions = RemoteEngines(settings), []
        try:
            while len(sessions) < 50:
                sessions.append(await remote.open("live", SPEC, "k"))
        except CapacityExceeded as exc:
            assert "every real-time session" in str(exc)
        await remote.aclose()
        return len(sessions)
    return asyncio.run(run())


def test_an_engine_node_publishes_the_capacity_of_the_engine_it_runs_now(node, redis_url):
    settings, keys, runner, host = node
    r = redis.Redis.from_url(redis_url)
    published = lambda: r.get(keys.engine(host.eid))  # noqa: E731
    first = StandInEngine(2)
    runner.link = first.link
    assert _wait(published, "the engine node's capacity") == b"2"
    assert _admitted(settings) == 2
    first.close()                                    # the engine died; its supervisor restarts it:
    runner.link = None                               # no engine, nothing renewed ...
    _wait(lambda: published() is None, "the dead engine's capacity to lapse", timeout=3 * TTL_S + 2)
    assert _admitted(settings) == 0                  # ... and nothing admitted meanwhile
    second = StandInEngine(5)                        # the new engine calibrated to 5
    runner.link = second.link
    assert _wait(published, "the restarted engine's capacity") == b"5"
    assert _admitted(settings) == 5
    second.close()
    r.close()


def _connections(r: redis.Redis, name: str) -> int:
    return sum(1 for c in r.client_list() if c["name"] == name)


def _running_engine(node, redis_url) -> tuple[StandInEngine, redis.Redis]:
    """A stand-in engine (8 slots) run by the node, once the node has published it."""
    _, keys, runner, host = node
    engine = StandInEngine(8)
    runner.link = engine.link
    r = redis.Redis.from_url(redis_url)
    _wait(lambda: r.get(keys.engine(host.eid)), "the engine node's capacity")
    return engine, r


@pytest.mark.timeout(30)      # a reader that reads on also hangs the event loop's shutdown
def test_remote_sessions_close_their_connection_when_they_end_and_all_close_at_shutdown(node, redis_url):
    settings, keys, runner, host = node
    engine, r = _running_engine(node, redis_url)

    async def run() -> None:
        remote = RemoteEngines(settings)
        sessions = [await remote.open("live", SPEC, "k") for _ in range(5)]
        for s in sessions:
            assert (await asyncio.wait_for(s.get(), 10))[0] == "started"
        assert _connections(r, SESSION_CLIENT) == 5          # one reading connection each
        assert 1 <= _connections(r, API_CLIENT) <= 2          # the pool for short calls, bounded
        engine.end(0)                                         # the engine ends session 0:
        assert (await asyncio.wait_for(sessions[0].get(), 10))[0] == "end"
        await _until(lambda: _connections(r, SESSION_CLIENT) == 4, "session 0's connection closed")
        for s in sessions[:3]:                                # its client closes it, and two more
            s.close()
        await _until(lambda: _connections(r, SESSION_CLIENT) == 2, "closed sessions' connections closed")
        quick = [await remote.open("live", SPEC, "k") for _ in range(3)]
        for s in quick:                                       # closed at once, as by a client that
            s.close()                                         # leaves while its session starts
        _, reading = await asyncio.wait([s.reading for s in quick], timeout=3)
        assert not reading, f"{len(reading)} of 3 readers read on after their session closed"
        await _until(lambda: _connections(r, SESSION_CLIENT) == 2, "the quick sessions' connections closed")
        await remote.aclose()                                 # shutdown, sessions 3 and 4 still open
        await _until(lambda: _connections(r, SESSION_CLIENT) + _connections(r, API_CLIENT) == 0,
                     "every connection closed at shutdown")
        assert r.zcard(keys.sessions(host.eid)) == 0          # and their slots released

    asyncio.run(run())
    assert 0 < r.ttl(keys.inbox(host.eid)) <= settings.engine_remote_stream_ttl_s   # if it died now
    assert _connections(r, HOST_CLIENT) >= 1
    host.stop()                                               # the engine node stops: its own too
    _wait(lambda: _connections(r, HOST_CLIENT) == 0, "the engine node's connections closed", timeout=5)
    assert not r.exists(keys.inbox(host.eid))                 # and its inbox goes with it
    engine.close()
    r.close()


def test_a_stopping_api_node_ends_its_remote_sessions_with_a_clear_error(node, redis_url):
    """EngineService.interrupt_all (SIGTERM's grace running out) on an API node whose engines are
    remote: each session's get() raises ShuttingDown, its slot is free and the engine drops it."""
    settings, keys, runner, host = node
    engine, r = _running_engine(node, redis_url)

    async def run() -> None:
        service = EngineService(settings)
        service.remote = RemoteEngines(settings)
        sessions = [await service.open("live", SPEC, "k") for _ in range(2)]
        for s in sessions:
            assert (await asyncio.wait_for(s.get(), 10))[0] == "started"
        assert service.interrupt_all() == 2
        for s in sessions:
            with pytest.raises(ShuttingDown):
                await asyncio.wait_for(s.get(), 10)
            s.close()
        await _until(lambda: r.zcard(keys.sessions(host.eid)) == 0, "the slots released")
        await _until(lambda: len(engine.dropped) == 2, "the engine told to drop both")
        await service.remote.aclose()

    asyncio.run(run())
    engine.close()
    r.close()


@pytest.mark.slow       # ~1.4 s: a node's beats and a swallowed cancel
def test_a_session_dropped_while_its_pump_publishes_ends_its_pump_even_if_redis_py_swallows_the_cancel(
        node, redis_url):
    """redis-py can swallow a task's cancellation that lands as a command starts (seen here: a
    client that closed its session while the engine's `started` was being published). The
    pump then went back to waiting on its closed channel, held by nothing, until the garbage
    collector closed it mid-`finally` ("coroutine ignored GeneratorExit", 1 run in ~15). The
    stand-in for redis-py's behaviour is a publish that swallows the cancel for 0.5 s."""
    settings, keys, runner, host = node
    engine = StandInEngine(4)
    runner.link = engine.link
    r = redis.Redis.from_url(redis_url)
    _wait(lambda: r.get(keys.engine(host.eid)), "the engine node's capacity")
    publish, pumps = host._publish, []

    async def publish_swallowing_the_cancel(sid, kind, payload):
        pumps.append(asyncio.current_task())
        try:
            await asyncio.sleep(0.5)
        except asyncio.CancelledError:
            pass
        await publish(sid, kind, payload)

    host._publish = publish_swallowing_the_cancel

    async def run() -> None:
        remote = RemoteEngines(settings)
        session = await remote.open("live", SPEC, "k")
        await _until(lambda: pumps, "the pump publishing `started`")
        session.close()                                 # the engine node drops it mid-publish
        await remote.aclose()

    asyncio.run(run())
    _wait(lambda: all(p.done() for p in pumps), "the dropped session's pump to end", timeout=3)
    assert not r.keys(keys.out("*")), "its late publish left the session's stream behind"
    host.stop()
    engine.close()
    r.close()


async def _until(predicate, what: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


@pytest.mark.slow            # a whole app (~2.4 s on 2 cores)
def test_an_api_node_closes_its_remote_engine_connections_at_shutdown(redis_url, tmp_path):
    """A real app (`serve --no-worker` on the Redis job store): /health reads the engine nodes
    (the threadpool's client), /stream asks for a slot (the event loop's): both connected; once the
    app has shut down, none is left."""
    from fastapi.testclient import TestClient

    from api_helpers import PORTRAIT, TEXT_ENDPOINT, data_uri

    from flashhead.api.app import create_app
    from flashhead.api.auth import OPEN

    settings = Settings(data_dir=tmp_path, job_store=redis_url, redis_prefix=f"api{time.monotonic_ns()}:")
    r = redis.Redis.from_url(redis_url)
    with TestClient(create_app(settings, workers=0, auth_mode=OPEN)) as http:
        assert http.get("/health").json()["engine"]["up"] is False            # no engine node
        got = http.post(f"/{TEXT_ENDPOINT}/stream", json={"image_url": data_uri(PORTRAIT, "image/png"),
                                                          "text": "Hi."})
        assert got.status_code == 429, got.text
        assert _connections(r, API_CLIENT) >= 2
    _wait(lambda: _connections(r, API_CLIENT) == 0, "the API node's connections closed", timeout=5)
    r.close()
