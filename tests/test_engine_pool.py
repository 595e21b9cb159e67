"""The CPU engine's pool of render processes behind a real `flashhead serve`: sessions spread
over the processes (each pinned to one, each process rendering), a session whose portrait a
process already prepared goes there while it has room, and a render process that dies (or hangs
past the step deadline) fails its own sessions and is replaced while the other process's
sessions go on."""
from __future__ import annotations

import base64
import os
import re
import signal
import time

import pytest

from api_helpers import ROOT, data_uri, fal_sync_client, tls_server, wait_terminal, worker_processes
from flashhead import constants as C
from stream_server import long_speech_wav
from test_engine_server import (Flood, Live, _new_session_works, _wait_new_engine, engine_pid, image,
                                wait_started)

pytestmark = pytest.mark.slow      # a real server, its engine and two render processes

POOL = b"flashhead.engine.pool"
PROCESSES = 2
CAPACITY = 4                     # 2 sessions per render process
STEP_DEADLINE_S = 5.0


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    yield from tls_server(tmp_path_factory, "pool", {"FLASHHEAD_ENGINE_CAPACITY": str(CAPACITY),
                                                     "FLASHHEAD_ENGINE_PROCESSES": str(PROCESSES),
                                                     "FLASHHEAD_ENGINE_STEP_DEADLINE_S": str(STEP_DEADLINE_S)})


@pytest.fixture(scope="module")
def client(server):
    return fal_sync_client(server)


def cpu_ticks(pid: int) -> int:
    """utime + stime of a process, in clock ticks."""
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def pinned(metrics: str) -> list[int]:
    found = re.findall(r'flashhead_engine_process_sessions\{process="(\d+)"\} (\S+)', metrics)
    return [int(float(v)) for _, v in sorted(found)]


def replacements(server) -> float:
    """flashhead_engine_process_replacements_total, a beat (0.5 s) after what it counts."""
    time.sleep(1.0)
    with server.client() as c:
        return float(re.search(r"^flashhead_engine_process_replacements_total (\S+)$", c.get("/metrics").text,
                               re.M)[1])


def _pinned(server) -> list[int]:
    time.sleep(1.0)                                           # > 2 heartbeats
    with server.client() as c:
        return pinned(c.get("/metrics").text)


def test_sessions_spread_over_the_render_processes(server, client):
    renderers = worker_processes(engine_pid(server), POOL)
    assert len(renderers) == PROCESSES, renderers            # the engine process itself only routes
    before = {p: cpu_ticks(p) for p in renderers}
    engine_before = cpu_ticks(engine_pid(server))
    portraits = [image(), data_uri(ROOT / "examples" / "portrait_astronaut.jpg", "image/jpeg")]
    sessions = [Live(client, chunks=12, image_url=portraits[i]) for i in range(PROCESSES)]
    for s in sessions:
        s.start()
    wait_started(sessions)
    assert _pinned(server) == [1] * PROCESSES
    for s in sessions:
        s.join(60)
        assert s.error is None and len(s.arrivals) == 12, s.error
    used = {p: cpu_ticks(p) - before[p] for p in renderers}
    router = cpu_ticks(engine_pid(server)) - engine_before
    print(f"\nCPU ticks while 2 sessions x 12 chunks ran: render processes {used}, router {router}")
    assert all(t >= 20 for t in used.values()), used          # each rendered a session (>= 0.2 s CPU)
    assert router < min(used.values()), (router, used)        # the router does not render


def test_a_repeated_portrait_goes_to_the_process_that_prepared_it_while_it_has_room(server, client):
    """Three sessions of one portrait, one after another: the second joins the first's process
    (its portrait prepared there), the third goes to the other (the first is at its 2 sessions)."""
    sessions, seen = [], []
    for _ in range(3):
        sessions.append(Live(client, chunks=60))                  # 19 s: all three overlap
        sessions[-1].start()
        wait_started(sessions[-1:])
        seen.append(sorted(_pinned(server)))
    assert seen == [[0, 1], [0, 2], [1, 2]], seen
    for s in sessions:
        s.join(60)
        assert s.error is None and len(s.arrivals) == 60, s.error


def test_a_render_process_that_dies_fails_its_own_sessions_only_and_is_replaced(server, client):
    """Each process holds one of two sessions; SIGKILL of one process: its session's client gets
    ENGINE_FAILED at once, the other session plays on to its end, the engine (router) stays and a
    new render process takes the dead one's place. Before, one dead render process restarted the
    whole engine and failed every session."""
    fresh = [client.upload_file(ROOT / "examples" / "portrait_girl_512.png") for _ in range(PROCESSES)]
    sessions = [Live(client, chunks=40, image_url=u) for u in fresh]      # portraits no process prepared
    for s in sessions:
        s.start()
    wait_started(sessions)
    assert _pinned(server) == [1] * PROCESSES
    engine = engine_pid(server)
    replaced = replacements(server)
    victim = worker_processes(engine, POOL)[0]
    killed_at = time.monotonic()
    os.kill(victim, signal.SIGKILL)
    for s in sessions:
        s.join(60)
    failed = [s for s in sessions if s.error is not None]
    assert len(failed) == 1 and failed[0].error.error == "ENGINE_FAILED", [s.error for s in sessions]
    assert failed[0].error_at - killed_at < 2.0
    survivor = next(s for s in sessions if s.error is None)
    assert len(survivor.arrivals) == 40
    assert engine_pid(server) == engine                       # the engine did not restart
    renderers = worker_processes(engine, POOL)
    assert len(renderers) == PROCESSES and victim not in renderers, renderers
    assert replacements(server) == replaced + 1               # counted where operators look
    _new_session_works(client)


def test_a_hung_render_process_blocks_nobody_and_is_killed_alone(server, client):
    """One session per render process; one process stops (SIGSTOP) while its client floods it
    with speech. The other session's chunks keep coming, a new session starts on the other
    process and the API answers at once meanwhile (nothing waits on the hung process); at the
    step deadline the router kills the hung process:
    its client gets ENGINE_FAILED, the engine (router) stays, a new render process takes the
    hung one's place. Before, the router and then the API's event loop blocked on the hung
    process's full pipe, and the API restarted the whole engine, failing both sessions."""
    engine = engine_pid(server)
    replaced = replacements(server)
    renderers = worker_processes(engine, POOL)
    fresh = [client.upload_file(ROOT / "examples" / "portrait_girl_512.png") for _ in range(PROCESSES)]
    before = {p: cpu_ticks(p) for p in renderers}
    flood = Flood(client, image_url=fresh[0])                   # a portrait no process prepared: CPU where it goes
    flood.start()
    wait_started([flood])
    victim = max(renderers, key=lambda p: cpu_ticks(p) - before[p])
    survivor = Live(client, chunks=40, image_url=fresh[1])           # the least loaded: the other process
    survivor.start()
    wait_started([survivor])
    assert _pinned(server) == [1] * PROCESSES
    stopped_at = time.monotonic()
    os.kill(victim, signal.SIGSTOP)
    answers, newcomer, newcomer_wait = [], None, None
    with server.client() as c:
        while time.monotonic() - stopped_at < STEP_DEADLINE_S + 2:
            if newcomer is None and time.monotonic() - stopped_at > 1.5:   # the hung pipe is full
                newcomer, opened_at = Live(client, chunks=3, image_url=fresh[1]), time.monotonic()
                newcomer.start()                  # its portrait's process has room: it goes there
            if newcomer_wait is None and newcomer is not None and newcomer.started.is_set():
                newcomer_wait = time.monotonic() - opened_at
            t = time.monotonic()
            assert c.get("/health").status_code == 200
            answers.append(time.monotonic() - t)
            time.sleep(0.1)
    flood.join(10)
    survivor.join(60)
    newcomer.join(30)
    assert newcomer_wait is not None and newcomer_wait < 2.5, newcomer_wait
    assert newcomer.error is None and len(newcomer.arrivals) == 3, newcomer.error
    assert getattr(flood.error, "error", None) == "ENGINE_FAILED", (flood.error, flood.failure)
    assert STEP_DEADLINE_S - 0.5 <= flood.error_at - stopped_at <= STEP_DEADLINE_S + 3
    assert survivor.error is None and len(survivor.arrivals) == 40, survivor.error
    gaps = [b[0] - a[0] for a, b in zip(survivor.arrivals, survivor.arrivals[1:]) if b[0] > stopped_at]
    assert max(gaps) < 1.5 and max(answers) < 1.0, (max(gaps), max(answers))
    assert engine_pid(server) == engine                       # the engine did not restart
    renderers = worker_processes(engine, POOL)
    assert len(renderers) == PROCESSES and victim not in renderers, renderers
    assert replacements(server) == replaced + 1               # counted where operators look
    _new_session_works(client)


def test_a_queue_job_whose_render_processes_die_goes_back_to_the_queue_and_completes(server):
    """Every render process killed under a running queue job: the job's worker hears
    engine_failed at once (the router answers for the dead process), the job is re-queued and
    its next attempt, on the new processes, completes. The engine itself stays."""
    engine = engine_pid(server)
    body = {"image_url": image(), "audio_url": "data:audio/wav;base64," + base64.b64encode(long_speech_wav(2)).decode()}
    with server.client() as c:
        rid = c.post(f"/queue/{C.AUDIO_ENDPOINT}", json=body).json()["request_id"]
        deadline = time.monotonic() + 60
        while not any("rendered" in line["message"] for line in
                      c.get(f"/queue/{C.TEXT_ENDPOINT}/requests/{rid}/status", params={"logs": 1}).json().get("logs", [])):
            assert time.monotonic() < deadline, "the job never started rendering"
            time.sleep(0.1)
        for pid in worker_processes(engine, POOL):
            os.kill(pid, signal.SIGKILL)
        done = wait_terminal(c, rid, timeout=180)
        assert done["status"] == "COMPLETED" and "error" not in done, done
        assert any("attempt 2" in line["message"] for line in done["logs"]), done["logs"]
        assert c.get(f"/queue/{C.TEXT_ENDPOINT}/requests/{rid}").json()["video"]["file_size"] > 0
    assert engine_pid(server) == engine


def test_replacements_that_die_before_ready_three_times_in_a_row_restart_the_engine(server, client):
    """A render process dies; so do its next three replacements, each before it is ready (killed
    as it appears): the first two are replaced again by the same engine (router), the third makes
    the engine exit (MAX_FAILED_STARTS), and the API starts a new engine that works. Before a
    crash loop stops, the router keeps trying, RESPAWN_DELAY_S longer each time."""
    engine = engine_pid(server)
    known = set(worker_processes(engine, POOL))
    os.kill(next(iter(known)), signal.SIGKILL)
    for attempt in range(3):
        deadline = time.monotonic() + 30
        while not (fresh := set(worker_processes(engine, POOL)) - known):
            assert time.monotonic() < deadline, f"no replacement {attempt + 1}"
            time.sleep(0.02)
        assert engine_pid(server) == engine, attempt                  # the same router replaces
        known |= fresh
        for pid in fresh:
            os.kill(pid, signal.SIGKILL)                              # long before its ready
    new = _wait_new_engine(server, engine, timeout=60)
    assert new != engine
    _new_session_works(client)
