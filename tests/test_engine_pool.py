"""The CPU engine's pool of render processes behind a real `flashhead serve`: sessions spread
over the processes (each pinned to one, each process rendering), a session whose portrait a
process already prepared goes there while it has room, and a render process that dies fails its
engine's sessions at once and the engine comes back."""
from __future__ import annotations

import os
import re
import signal
import time

import pytest

from api_helpers import ROOT, data_uri, fal_sync_client, tls_server, worker_processes
from test_engine_server import ENGINE, Live, _new_session_works, _wait_new_engine, engine_pid, image, wait_started

pytestmark = pytest.mark.slow      # a real server, its engine and two render processes

POOL = b"flashhead.engine.pool"
PROCESSES = 2
CAPACITY = 4                     # 2 sessions per render process


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    yield from tls_server(tmp_path_factory, "pool", {"FLASHHEAD_ENGINE_CAPACITY": str(CAPACITY),
                                                     "FLASHHEAD_ENGINE_PROCESSES": str(PROCESSES)})


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


def test_a_render_process_that_dies_fails_the_engines_sessions_and_it_restarts(server, client):
    sessions = [Live(client) for _ in range(PROCESSES)]
    for s in sessions:
        s.start()
    wait_started(sessions)
    old = engine_pid(server)
    victim = worker_processes(old, POOL)[0]
    killed_at = time.monotonic()
    os.kill(victim, signal.SIGKILL)
    for s in sessions:                                        # the other process's client too
        s.join(10)
        assert s.error is not None and s.error.error == "ENGINE_FAILED", s.error
        assert s.error_at - killed_at < 2.0
    new = _wait_new_engine(server, old)
    assert len(worker_processes(new, POOL)) == PROCESSES
    assert worker_processes(server.proc.pid, ENGINE) == [new]
    _new_session_works(client)
