"""The render engine behind a real `flashhead serve` (API process + engine process + worker),
driven by the official fal_client: admission at capacity, real time under load, faults."""
from __future__ import annotations

import base64
import json
import os
import signal
import threading
import time

import pytest
from fal_client.client import RealtimeError

from api_helpers import Server, fal_sync_client, is_running, make_tls, wait_terminal, worker_processes
from flashhead import constants as C
from stream_server import PORTRAIT, SPEECH, data_uri, long_speech_wav, speech_pcm

pytestmark = pytest.mark.slow      # engine fault tests: a killed, a hung and an overloaded render engine

CAPACITY = 2
STEP_DEADLINE_S = 5.0
MAX_IDLE_S = 10.0
PACKET = 1280
ENGINE = b"flashhead.engine.process"
CHUNKS = 40                        # 12.8 s of each live session in the capacity test


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("engine")
    s = Server(tmp / "data", make_tls(tmp / "tls"),
               env={"FLASHHEAD_ENGINE_CAPACITY": str(CAPACITY),
                    "FLASHHEAD_ENGINE_STEP_DEADLINE_S": str(STEP_DEADLINE_S),
                    "FLASHHEAD_REALTIME_MAX_IDLE_TIMEOUT_S": str(MAX_IDLE_S)}).start()
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture(scope="module")
def client(server):
    return fal_sync_client(server)


def image() -> str:
    return data_uri(PORTRAIT, "image/png")


def engine_pid(server) -> int:
    pids = worker_processes(server.proc.pid, ENGINE)
    assert len(pids) == 1, pids
    return pids[0]


class Live(threading.Thread):
    """One paced live session: start, 3 s of speech, then read chunks until `chunks` or an error."""

    def __init__(self, client, chunks: int = 10**6, image_url: str | None = None):
        super().__init__(daemon=True)
        self.client, self.chunks, self.image_url = client, chunks, image_url or image()
        self.started = threading.Event()
        self.arrivals: list[tuple[float, float]] = []     # (arrival clock, chunk start on media clock)
        self.error: RealtimeError | None = None
        self.failure: Exception | None = None              # anything else that ended the session
        self.error_at = 0.0

    def run(self) -> None:
        try:
            with self.client.realtime(C.TEXT_ENDPOINT, use_jwt=False) as conn:
                conn.send({"type": "start", "image_url": self.image_url, "pace": True})
                assert conn.recv()["type"] == "started"
                self.started.set()
                self.talk(conn)
        except RealtimeError as exc:
            self.error, self.error_at = exc, time.monotonic()
        except Exception as exc:                           # e.g. a handshake timeout: said by wait_started
            self.failure = exc

    def talk(self, conn) -> None:
        pcm = speech_pcm(3.0)
        for i in range(0, len(pcm), PACKET):
            conn.send({"type": "audio", "pcm": pcm[i:i + PACKET]})
        conn.send({"type": "end_of_speech"})
        sent = time.monotonic()
        while len(self.arrivals) < self.chunks:
            msg = conn.recv()
            if msg.get("type") == "chunk":
                self.arrivals.append((time.monotonic(), msg["start"]))
            if time.monotonic() - sent > 2.0:     # a client message now and then: not idle
                conn.send({"type": "end_of_speech"})
                sent = time.monotonic()

    def lateness_s(self) -> float:
        """Worst arrival behind the media clock; chunk i is due on screen at a0 + lead + start_i."""
        a0, s0 = self.arrivals[0]
        return max(a - a0 - (s - s0) - C.LIVE_LEAD_S for a, s in self.arrivals[1:])


class Flood(Live):
    """A live session whose client sends 2 s of speech every 0.1 s (and reads what comes) until
    it hears an error."""

    def talk(self, conn) -> None:
        threading.Thread(target=self._flood, args=(conn,), daemon=True).start()
        while True:
            conn.recv()

    def _flood(self, conn) -> None:
        pcm = speech_pcm(2.0)
        try:
            while self.error is None:
                conn.send({"type": "audio", "pcm": pcm})
                time.sleep(0.1)
        except Exception:                                 # noqa: BLE001 - closed at the end
            pass


def wait_started(sessions: list[Live], timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    for s in sessions:
        while s.is_alive() and not s.started.is_set() and time.monotonic() < deadline:
            s.started.wait(0.05)
        assert s.started.is_set(), f"session did not start: {s.error or s.failure!r}"
        assert s.error is None, s.error


def overloaded() -> bool:
    """Timing needs the CPU this machine promises: with more than two runnable tasks per core
    from elsewhere (a shared CI box), timing is measured and printed but not asserted."""
    return os.getloadavg()[0] > 2 * (os.cpu_count() or 1)


def test_one_session_over_capacity_is_refused_the_rest_stay_real_time(server, client):
    busy = overloaded()
    with server.client() as c:
        job = c.post(f"/queue/{C.TEXT_ENDPOINT}", json={"image_url": image(), "text": "Hi."}).json()["request_id"]
        wait_terminal(c, job)
        # long enough to hold both slots while the other starts: with the CPU pool each render
        # process prepares its first portrait itself (seconds on a busy machine)
        sessions = [Live(client, chunks=CHUNKS) for _ in range(CAPACITY)]
        for s in sessions:
            s.start()
        wait_started(sessions)
        t = time.monotonic()                                   # session N+1: refused at once, then closed
        with client.realtime(C.TEXT_ENDPOINT, use_jwt=False) as conn:
            conn.send({"type": "start", "image_url": image()})
            with pytest.raises(RealtimeError) as refused:
                conn.recv()
            refused_s = time.monotonic() - t
            with pytest.raises(RealtimeError) as closed:       # then the server closed the socket
                conn.recv()
        assert closed.value.error == "CONNECTION_CLOSED" and "1013 (try again later)" in str(closed.value)
        assert refused.value.error == "CAPACITY_EXCEEDED" and refused_s < 1.0, refused.value
        r = c.post(f"/{C.TEXT_ENDPOINT}/stream", json={"image_url": image(), "text": "Hello."})
        assert r.status_code == 429 and r.json()["error_type"] == "capacity_exceeded"
        assert int(r.headers["retry-after"]) > 0
        polls = []
        while any(s.is_alive() for s in sessions):             # queue status while the engine is full
            t0 = time.perf_counter()
            assert c.get(f"/queue/{C.TEXT_ENDPOINT}/requests/{job}/status").status_code == 200
            polls.append(time.perf_counter() - t0)
            time.sleep(0.01)
        metrics = c.get("/metrics").text
    polls.sort()
    p99 = polls[int(0.99 * (len(polls) - 1))]
    late = [s.lateness_s() for s in sessions]
    print(f"\nrefused in {refused_s * 1000:.0f} ms; status p50 {polls[len(polls) // 2] * 1000:.1f} ms "
          f"p99 {p99 * 1000:.1f} ms over {len(polls)} polls; worst lateness vs media clock "
          f"{[round(x * 1000) for x in late]} ms (negative: ahead); load {os.getloadavg()[0]:.1f}")
    assert all(s.error is None and len(s.arrivals) == CHUNKS for s in sessions), [s.error for s in sessions]
    if busy or overloaded():
        print("machine overloaded by other work: timing not asserted")
    else:
        assert max(late) <= 0.0, "a session fell behind its media clock"
        assert p99 < 0.050
    assert f"flashhead_engine_capacity {float(CAPACITY)}" in metrics
    assert "flashhead_engine_step_seconds_count" in metrics and "flashhead_engine_refused_total 2.0" in metrics


def test_a_client_that_leaves_frees_its_slot_at_once(server, client):
    held = [client.realtime(C.TEXT_ENDPOINT, use_jwt=False) for _ in range(CAPACITY)]
    conns = [h.__enter__() for h in held]
    for conn in conns:
        conn.send({"type": "start", "image_url": image(), "pace": True})
        assert conn.recv()["type"] == "started"
    held[0].__exit__(None, None, None)                        # hang up mid-session
    deadline = time.monotonic() + 2.0
    while True:
        with client.realtime(C.TEXT_ENDPOINT, use_jwt=False) as conn:
            conn.send({"type": "start", "image_url": image()})
            try:
                assert conn.recv()["type"] == "started"
                break
            except RealtimeError as exc:
                assert exc.error == "CAPACITY_EXCEEDED" and time.monotonic() < deadline, exc
        time.sleep(0.05)
    held[1].__exit__(None, None, None)


def test_a_stream_client_that_hangs_up_frees_its_slot_at_once(server, client):
    body = {"image_url": image(), "audio_url": data_uri(SPEECH, "audio/wav")}
    with client.realtime(C.TEXT_ENDPOINT, use_jwt=False) as conn, server.client() as c:
        conn.send({"type": "start", "image_url": image()})
        assert conn.recv()["type"] == "started"
        with c.stream("POST", f"/{C.AUDIO_ENDPOINT}/stream", json=body) as r:
            assert r.status_code == 200
            lines = r.iter_lines()                            # (closing this iterator would hang up)
            assert next(line for line in lines if line.startswith("data: ")).startswith('data: {"type":"chunk"')
            full = c.post(f"/{C.TEXT_ENDPOINT}/stream", json={"image_url": image(), "text": "Hi."})
            assert full.status_code == 429
        deadline = time.monotonic() + 2.0                     # hung up after one chunk of ten seconds
        while (r := c.post(f"/{C.TEXT_ENDPOINT}/stream", json={"image_url": image(), "text": "Hi."})).status_code == 429:
            assert time.monotonic() < deadline, "the slot was not freed"
            time.sleep(0.05)
        assert r.status_code == 200 and r.text.rstrip().endswith("}")


def test_idle_timeout_a_client_asks_for_is_capped(server, client):
    with client.realtime(C.TEXT_ENDPOINT, use_jwt=False) as conn:
        conn.send({"type": "start", "image_url": image(), "idle_timeout": 3600})
        assert conn.recv()["type"] == "started"
        t = time.monotonic()
        with pytest.raises(RealtimeError) as e:
            while time.monotonic() - t < MAX_IDLE_S + 5:
                conn.recv()
    assert e.value.error == "TIMEOUT" and MAX_IDLE_S - 0.5 <= time.monotonic() - t <= MAX_IDLE_S + 3


def _sse_until_error(server, out: dict) -> None:
    body = {"image_url": image(), "audio_url": data_uri(SPEECH, "audio/wav")}
    with server.client() as c, c.stream("POST", f"/{C.AUDIO_ENDPOINT}/stream", json=body) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if line.startswith("data: "):
                event = json.loads(line[6:])
                out.setdefault("events", []).append(event)
                out["at"] = time.monotonic()


def _check_health(r) -> bool:
    """/health while the engine may be down: 200 ok exactly when it is up, else 503
    engine_restarting (a load balancer sends streams elsewhere). Returns whether it is up."""
    body = r.json()
    up = body["engine"]["up"]
    assert (r.status_code, body["status"]) == ((200, "ok") if up else (503, "engine_restarting")), body
    return up


def _wait_new_engine(server, old: int, timeout: float = 120) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pids = [p for p in worker_processes(server.proc.pid, ENGINE) if p != old]
        with server.client() as c:
            if _check_health(c.get("/health")) and pids:
                return pids[0]
        time.sleep(0.2)
    raise AssertionError("the engine was not restarted")


def _new_session_works(client) -> None:
    s = Live(client, chunks=3)
    s.start()
    s.join(120)
    assert s.error is None and len(s.arrivals) == 3, s.error


def test_engine_killed_mid_session_every_client_hears_and_it_restarts(server, client):
    sessions = [Live(client) for _ in range(CAPACITY - 1)]
    for s in sessions:
        s.start()
    wait_started(sessions)
    sse: dict = {}
    streamer = threading.Thread(target=_sse_until_error, args=(server, sse), daemon=True)
    streamer.start()
    deadline = time.monotonic() + 60
    while not sse.get("events"):
        assert time.monotonic() < deadline, "the stream never started"
        time.sleep(0.05)
    old = engine_pid(server)
    killed_at = time.monotonic()
    os.kill(old, signal.SIGKILL)
    for s in sessions:
        s.join(10)
        assert s.error is not None and s.error.error == "ENGINE_FAILED", s.error
        assert s.error_at - killed_at < 2.0
    streamer.join(10)
    assert sse["events"][-1]["error_type"] == "engine_failed" and sse["at"] - killed_at < 2.0
    with server.client() as c:
        _check_health(c.get("/health"))                        # the API itself stayed up
    _wait_new_engine(server, old)
    _new_session_works(client)


def test_a_hung_engine_is_treated_as_dead(server, client):
    """SIGSTOP of the engine: at the step deadline every client hears ENGINE_FAILED and a new
    engine starts; meanwhile the API answers at once, though a client floods the hung engine
    with speech (its messages queue up to engine_outbox_bytes instead of blocking the event loop)."""
    s, flood = Live(client), Flood(client)
    s.start()
    flood.start()
    wait_started([s, flood])
    old = engine_pid(server)
    stopped_at = time.monotonic()
    os.kill(old, signal.SIGSTOP)                              # hangs: no step, no heartbeat
    answers = []
    with server.client() as c:
        while time.monotonic() - stopped_at < STEP_DEADLINE_S - 0.5:
            t = time.monotonic()
            c.get("/health")
            answers.append(time.monotonic() - t)
            time.sleep(0.1)
    assert max(answers) < 1.0, answers
    s.join(STEP_DEADLINE_S + 10)
    flood.join(10)
    for one in (s, flood):
        assert getattr(one.error, "error", None) == "ENGINE_FAILED", (one.error, one.failure)
        assert STEP_DEADLINE_S - 0.5 <= one.error_at - stopped_at <= STEP_DEADLINE_S + 3
    _wait_new_engine(server, old)
    _new_session_works(client)


def test_a_graceful_stop_ends_a_running_stream_with_a_clear_error(tmp_path):
    """SIGTERM: a stream still running 1 s before the stop's grace ends gets an error event
    (shutting_down) and ends, instead of being cut mid-body when uvicorn's grace runs out."""
    grace_s = 3.0
    s = Server(tmp_path / "data", make_tls(tmp_path / "tls"), env={"FLASHHEAD_SHUTDOWN_GRACE_S": str(grace_s)}).start()
    try:
        body = {"image_url": image(), "audio_url": "data:audio/wav;base64," + base64.b64encode(long_speech_wav()).decode()}
        events = []
        with s.client() as c, c.stream("POST", f"/{C.AUDIO_ENDPOINT}/stream", json=body) as r:
            assert r.status_code == 200
            for line in r.iter_lines():
                if line.startswith("data: "):
                    events.append((json.loads(line[6:]), time.monotonic()))
                    if len(events) == 1:
                        s.proc.send_signal(signal.SIGTERM)
                        stopped_at = time.monotonic()
        last, at = events[-1]
        assert last.get("error_type") == "shutting_down", (len(events), str(last)[:200])
        assert grace_s - 1.5 < at - stopped_at < grace_s, at - stopped_at
        assert s.proc.wait(timeout=30) is not None
    finally:
        s.kill()


def test_the_engine_dies_with_the_api_process(server):
    engine = engine_pid(server)
    server.kill()                                             # SIGKILL: no shutdown code runs
    deadline = time.monotonic() + 10
    while is_running(engine):
        assert time.monotonic() < deadline, "the engine outlived the API process"
        time.sleep(0.05)
