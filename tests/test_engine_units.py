"""The engine's rules on their own: admission caps and the scheduler's deadline-first order."""
from __future__ import annotations

import threading
import time

import pytest

from flashhead.config import Settings
from flashhead.engine.admission import Admission
from flashhead.engine.process import capacity_of
from flashhead.engine.scheduler import Scheduler
from flashhead.errors import CapacityExceeded


def test_admission_caps_the_engine_and_each_key_and_frees_on_release():
    a = Admission(capacity=3, per_key=2, retry_after_s=7)
    k1 = [a.acquire("k1"), a.acquire("k1")]
    with pytest.raises(CapacityExceeded, match="this key") as e:
        a.acquire("k1")
    assert e.value.retry_after_s == 7
    other = a.acquire("k2")
    with pytest.raises(CapacityExceeded, match="all 3"):
        a.acquire("k3")
    k1[0].release()
    k1[0].release()                         # idempotent: frees one slot, not two
    assert a.in_flight == 2
    a.acquire("k1")
    with pytest.raises(CapacityExceeded):
        a.acquire(None)
    other.release()
    assert a.acquire(None) and a.refused == 3


class Task:
    """A session step that records when it ran; `due` like a live session's media clock."""

    def __init__(self, name: str, log: list, due: float | None, steps: int = 1):
        self.name, self.log, self.due, self.steps = name, log, due, steps
        self.live, self.done, self.last_step = due is not None, False, 0.0

    def key(self, now):
        return (0, self.due) if self.live else (1, self.last_step)

    def ready(self, now):
        return not self.done and (not self.live or self.due <= now)

    def step(self):
        self.log.append(self.name)
        self.last_step = time.monotonic()
        self.steps -= 1
        self.done = self.steps == 0
        return [("event", self.name)]

    def close(self):
        pass


def test_scheduler_serves_the_earliest_deadline_first_and_streams_last():
    """`future` falls due 50 ms after the stream's step, not at a fixed time: a slow machine
    cannot make it due before the stream ran (the order is set by due times, never raced), and
    the scheduler must still wake for it by itself."""
    log, sent = [], []
    s = Scheduler(1, lambda kind, sid, payload: sent.append(payload))
    now = time.monotonic()
    future, stream = Task("future", log, now + 3600), Task("stream", log, None)
    stream_step = stream.step

    def step_then_future_falls_due():
        out = stream_step()
        future.due = time.monotonic() + 0.05
        return out

    stream.step = step_then_future_falls_due
    s.add("stream", stream)
    s.add("late", Task("late", log, now - 0.5))
    s.add("later", Task("later", log, now - 0.1))
    s.add("future", future)
    threading.Thread(target=s.run, daemon=True).start()
    deadline = time.monotonic() + 5
    while len(log) < 4 and time.monotonic() < deadline:
        time.sleep(0.01)
    s.stop()
    assert log == ["late", "later", "stream", "future"] and sent == log
    assert s.active == 0


def run_job(generate, *others: Task) -> list:
    """A JobTask ("job") beside `others` on a one-thread scheduler, until everything is done;
    generate(scheduler, box, should_cancel, progress) stands in for pipeline.generate (box["task"]:
    the JobTask, there once the scheduler runs).
    -> every message sent, as (kind, sid, payload)."""
    from flashhead.engine.jobs import JobTask

    sent, box = [], {}
    s = Scheduler(1, lambda kind, sid, payload: sent.append((kind, sid, payload)))
    for t in others:
        s.add(t.name, t)
    spec = {"request": None, "output_path": "unused", "allow_paths": False}
    box["task"] = JobTask(spec, None, lambda k, p: sent.append((k, "job", p)), s.poke,
                          generate=lambda _r, _e, _o, *, should_cancel, progress, **_: generate(
                              s, box, should_cancel, progress))
    s.add("job", box["task"])
    deadline = time.monotonic() + 10
    while not box["task"].ready(time.monotonic()) and time.monotonic() < deadline:
        time.sleep(0.01)                           # at its first chunk: the order is the keys' alone
    threading.Thread(target=s.run, daemon=True).start()
    while s.active and time.monotonic() < deadline:
        time.sleep(0.01)
    s.stop()
    assert s.active == 0, "the job did not end"
    return sent


def test_a_queue_job_renders_one_chunk_per_step_behind_live_sessions_and_streams():
    log, inside = [], []

    def generate(scheduler, _box, should_cancel, progress):
        for i in range(5):
            assert not should_cancel()
            inside.append("job" in scheduler._busy)             # rendering inside the scheduler's step?
            log.append(f"job{i}")
            progress(i + 1, 5)
        return "the result"

    now = time.monotonic()
    sent = run_job(generate, Task("live", log, now - 1.0, steps=3), Task("stream", log, None, steps=2))
    assert log == ["live"] * 3 + ["stream"] * 2 + [f"job{i}" for i in range(5)], log
    assert inside == [True] * 5
    job = [(k, p) for k, sid, p in sent if sid == "job"]
    assert job == [("progress", (i, 5)) for i in range(1, 6)] + [("result", "the result")], job


def test_a_cancelled_queue_job_ends_with_cancelled_at_the_next_chunk():
    from flashhead.errors import Cancelled

    def generate(_scheduler, box, should_cancel, progress):
        for i in range(1000):
            if should_cancel():
                raise Cancelled("the request was cancelled")
            progress(i + 1, 1000)
            if i == 2:
                box["task"].cancel()
        return "finished anyway"

    kinds = [(k, p["error_type"] if k == "error" else p) for k, _sid, p in run_job(generate)]
    assert kinds == [("progress", (i, 1000)) for i in (1, 2, 3)] + [("error", "cancelled")], kinds


def test_a_client_that_does_not_read_loses_its_session_not_the_api_memory():
    import asyncio
    import socket
    from multiprocessing.connection import Connection

    from flashhead.engine.relay import EngineLink
    from flashhead.errors import LimitExceeded

    ours, theirs = socket.socketpair()
    engine_end = Connection(theirs.detach())
    link = EngineLink(Connection(ours.detach()), max_pending=5)

    async def run():
        channel = link.open("live", {})
        assert engine_end.recv()[0] == "live"
        for i in range(20):                        # the engine keeps producing; nobody reads
            engine_end.send(("event", channel.sid, {"index": i}))
        assert engine_end.poll(5) and engine_end.recv() == ("close", channel.sid, None)  # dropped there too
        got = []
        with pytest.raises(LimitExceeded, match="more than 5 chunks unread"):
            while True:
                got.append((await asyncio.wait_for(channel.get(), 5))[1]["index"])
        assert got == list(range(5)) and channel.sid not in link.channels

    asyncio.run(run())
    link.shutdown()


def test_input_for_an_engine_that_just_died_is_dropped_and_the_session_fails_with_engine_failed():
    """An audio message that reached a broken pipe before the supervisor had failed the sessions
    gave the client INTERNAL_ERROR, then ENGINE_FAILED (seen killing the engine mid-session)."""
    import asyncio
    import socket
    from multiprocessing.connection import Connection

    from flashhead.engine.admission import Ticket
    from flashhead.engine.relay import EngineLink
    from flashhead.engine.service import Session
    from flashhead.errors import EngineFailed

    ours, theirs = socket.socketpair()
    engine_end = Connection(theirs.detach())
    link = EngineLink(Connection(ours.detach()))

    async def run():
        session = Session(Ticket(Admission(1, 1, 5), "k"), link.open("live", {}), set())
        assert engine_end.recv()[0] == "live"
        engine_end.close()                                  # the engine dies ...
        for _ in range(50):                                 # ... the pipe breaks under the sends
            await session.send("audio", b"\0" * 1280)
        link.fail_all(EngineFailed("the render engine stopped while this session ran"))  # its supervisor
        with pytest.raises(EngineFailed):
            await asyncio.wait_for(session.get(), 5)

    asyncio.run(run())
    link.shutdown()


def test_a_session_opened_on_an_engine_that_reads_nothing_is_refused_as_unavailable():
    """An engine that stops reading (hung) while the API opens sessions: each open queues into
    the outbox until engine_outbox_bytes, then is refused with BackendUnavailable (503), not an
    OSError (500), and leaves no channel behind."""
    import asyncio
    import socket
    from multiprocessing.connection import Connection

    from flashhead.engine.relay import EngineLink
    from flashhead.errors import BackendUnavailable

    ours, theirs = socket.socketpair()
    link = EngineLink(Connection(ours.detach()), outbox_bytes=200_000)

    async def run():
        opened = 0
        with pytest.raises(BackendUnavailable, match="not answering"):
            for _ in range(10_000):
                link.open("stream", {"payload": {"image_url": "x" * 10_000}})
                opened += 1
        assert 2 <= opened < 10_000 and len(link.channels) == opened

    asyncio.run(run())
    link.shutdown()
    theirs.close()


def test_a_dead_engines_link_lets_go_of_its_writer_thread():
    """When the engine's end closes (it died), the link's reader ends and so does its outbox's
    writer thread: a server whose engine restarts many times keeps no thread (and no socket)
    per dead engine."""
    import socket
    from multiprocessing.connection import Connection

    from flashhead.engine.relay import EngineLink

    ours, theirs = socket.socketpair()
    link = EngineLink(Connection(ours.detach()))
    writer = next(t for t in threading.enumerate() if t.name == "engine-writer" and t.is_alive())
    theirs.close()                                           # the engine dies
    writer.join(5)
    assert link.closed and not writer.is_alive()


def test_a_stopping_server_ends_its_local_sessions_with_a_clear_error():
    """EngineService.interrupt_all (SIGTERM's grace running out): each open session's get()
    raises ShuttingDown after what it was sent before, its slot is free and the engine is told to
    drop it; a session already closed is not counted; later opens are refused."""
    import asyncio
    import socket
    from multiprocessing.connection import Connection
    from types import SimpleNamespace

    from flashhead.engine.relay import EngineLink
    from flashhead.engine.service import EngineService
    from flashhead.errors import ShuttingDown

    ours, theirs = socket.socketpair()
    engine_end = Connection(theirs.detach())
    link = EngineLink(Connection(ours.detach()))
    service = EngineService(Settings(renderer="cpu", engine_capacity=3))
    service.runner = SimpleNamespace(link=link)

    async def run():
        sessions = [await service.open("live", {}, "k") for _ in range(3)]
        sids = [engine_end.recv()[1] for _ in sessions]
        engine_end.send(("started", sids[0], {"type": "started"}))
        for _ in range(500):                                 # delivered by the reader thread first
            if sessions[0].channel.queue.qsize():
                break
            await asyncio.sleep(0.01)
        sessions[2].close()
        assert engine_end.recv() == ("close", sids[2], None)
        assert service.interrupt_all() == 2
        assert service.admission.in_flight == 0
        assert {engine_end.recv()[1] for _ in range(2)} == set(sids[:2])      # both dropped
        assert (await asyncio.wait_for(sessions[0].get(), 5))[0] == "started"
        for s in sessions[:2]:
            with pytest.raises(ShuttingDown):
                await asyncio.wait_for(s.get(), 5)
        assert service.interrupt_all() == 0
        with pytest.raises(ShuttingDown):                    # and nothing opens after it
            await service.open("live", {}, "k")

    asyncio.run(run())
    link.shutdown()


def test_a_new_session_goes_to_a_live_render_process_ready_ones_first():
    """pool.pick: never a dead process (replaced) or a hung one (killed), a replacement still starting only when no
    ready one can take it, None when every process is dead (the router then fails the session)."""
    import threading
    from types import SimpleNamespace

    from flashhead.engine.pool import pick

    def proc(index, *, ready=True, replaced=False, killed=False, sessions=0):
        up = threading.Event()
        if ready:
            up.set()
        return SimpleNamespace(index=index, ready=up, replaced=replaced, killed=killed,
                               sessions=set(range(sessions)), portraits={}, share=4)
    assert pick([proc(0, replaced=True), proc(1, ready=False), proc(2, sessions=3)], None).index == 2
    assert pick([proc(0, replaced=True), proc(1, ready=False)], None).index == 1
    assert pick([proc(0, replaced=True), proc(1, replaced=True)], None) is None
    assert pick([proc(0, killed=True), proc(1, sessions=3)], None).index == 1      # hung: being killed
    assert pick([proc(0, killed=True)], None) is None


def test_the_cpu_renderer_admits_four_sessions_per_core_unless_configured(monkeypatch):
    """bench/sessions.py keeps 8 live sessions real time on 2 cores, not 9: the default follows
    the cores the render processes run on (a fixed 8 starved sessions on one core and refused
    most of a big machine's)."""
    for n in (1, 2, 16):
        monkeypatch.setattr("flashhead.engine.process.cores", lambda n=n: n)
        assert capacity_of(Settings(renderer="cpu")) == 4 * n
    assert capacity_of(Settings(renderer="cpu", engine_capacity=5)) == 5
    assert capacity_of(Settings(renderer="flashhead-lite")) == 2


def test_an_outbox_never_blocks_its_sender_and_refuses_past_its_limit():
    """Outbox: a peer that does not read fills its socket, then the outbox up to limit_bytes:
    send() returns at once until then and raises OSError after; one message bigger than the
    limit is taken when nothing waits. What was taken arrives in order once the peer reads."""
    import socket
    from multiprocessing.connection import Connection

    from flashhead.engine.outbox import Outbox

    ours, theirs = socket.socketpair()
    peer = Connection(theirs.detach())
    box = Outbox(Connection(ours.detach()), limit_bytes=1_000_000, name="test-writer")
    sent, started = -1, time.monotonic()
    with pytest.raises(OSError, match="1000000 bytes unread"):
        for i in range(10_000):
            box.send(("audio", i, b"y" * 10_000))
            sent = i
    assert time.monotonic() - started < 2.0
    assert 50 <= sent <= 1000 and box.queued <= 1_000_000, (sent, box.queued)
    assert [peer.recv()[1] for _ in range(sent + 1)] == list(range(sent + 1))
    deadline = time.monotonic() + 5
    while box.queued and time.monotonic() < deadline:           # the writer catches up
        time.sleep(0.01)
    box.send(("big", 0, b"x" * 3_000_000))                      # alone: taken
    assert len(peer.recv()[2]) == 3_000_000
    peer.close()
    deadline = time.monotonic() + 5
    with pytest.raises(OSError):                                 # the peer is gone: said, not hung
        while time.monotonic() < deadline:
            box.send(("late", 0, b"z" * 100_000))
            time.sleep(0.01)
