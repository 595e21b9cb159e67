"""Job-store races (issue 15, "Job-store races"), each against real components: a real redis-server,
a real SQLite file, real `flashhead serve` processes with real render worker processes.

How each was seen to fail before the fix is in its docstring.
"""
from __future__ import annotations

import os
import signal
import sqlite3
import time
from pathlib import Path

import pytest

from api_helpers import PORTRAIT, TEXT_ENDPOINT, Server, data_uri, make_tls, wait_terminal, worker_processes
from flashhead.jobs.queue import REQUEUED_WORKER_MESSAGE, JobQueue
from flashhead.jobs.sqlite import SqliteJobStore
from flashhead.jobs.state import JobState
from flashhead.jobs.store import NewJob


def _new(n: int = 0) -> NewJob:
    return NewJob(endpoint=TEXT_ENDPOINT, input={"text": f"job {n}", "image_url": "data:,x"}, base_url="https://h")


def _eventually(check, timeout: float = 30.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := check():
            return value
        time.sleep(0.05)
    raise AssertionError(f"{what}: not after {timeout} s")


def test_redis_cancel_of_a_running_job_cannot_be_lost_to_an_orphan_requeue(redis_url):
    """Before: request_cancel read the job (IN_PROGRESS), the orphan sweep re-queued it, then a
    plain HSET set cancel_requested=1 on the queued job; the claim script skips such jobs, so it
    sat IN_QUEUE forever. The sweep is run exactly inside that window here (a store whose get
    runs it). Now the cancel is one script: the job ends CANCELLED."""
    from flashhead.jobs.redis import RedisJobStore

    prefix = f"race{time.monotonic_ns()}:"
    dead = RedisJobStore(redis_url, prefix=prefix, lease_s=0.5)
    sweeper = RedisJobStore(redis_url, prefix=prefix, lease_s=0.5)
    api = RedisJobStore(redis_url, prefix=prefix, lease_s=0.5)
    dead.heartbeat()
    job = dead.submit(_new())
    assert dead.claim().id == job.id
    dead.release()                                   # its server is gone: the job is an orphan
    real_get = api.get

    def get_then_sweep(job_id, **kw):                # the sweep lands between read and write
        found = real_get(job_id, **kw)
        sweeper.recover()
        return found

    api.get = get_then_sweep
    api.request_cancel(job.id)
    api.get = real_get
    sweeper.recover()                                # a later sweep, if the job was still running
    final = api.get(job.id)
    assert final.state is JobState.CANCELLED, (final.state, final.cancel_requested)
    assert sweeper.claim() is None and sweeper.queue_depth() == 0


class FlakyStore(SqliteJobStore):
    """A real SQLite store whose claim() and finish() fail the first `failures` times each, as
    a locked database or a lost redis connection does."""

    def __init__(self, *a, failures: int = 3, **kw):
        super().__init__(*a, **kw)
        self.left = {"claim": failures, "finish": failures}

    def _maybe_fail(self, what: str) -> None:
        if self.left[what] > 0:
            self.left[what] -= 1
            raise sqlite3.OperationalError("database is locked")

    def claim(self, now_s=None):
        self._maybe_fail("claim")
        return super().claim(now_s)

    def finish(self, job_id, state, **kw):
        self._maybe_fail("finish")
        return super().finish(job_id, state, **kw)


def test_thread_workers_survive_store_errors_in_claim_and_finish(tmp_path, monkeypatch):
    """Before: the first error from claim() ended the worker thread for good (and an error in
    finish() ended it with the job left IN_PROGRESS); jobs were never run. Now both are retried."""
    from api_helpers import fake_generate
    from flashhead.jobs import worker as worker_mod
    from flashhead.jobs.worker import WorkerPool
    from flashhead.storage.local import LocalStorage

    monkeypatch.setattr(worker_mod, "STORE_RETRY_S", 0.05, raising=False)
    monkeypatch.setattr("api_helpers.FAKE_CHUNK_S", 0.01)
    store = FlakyStore(tmp_path / "jobs.db", failures=3)
    queue = JobQueue(store)
    done = []
    queue.on_terminal(lambda job: done.append(job.id))
    pool = WorkerPool(queue, LocalStorage(tmp_path / "files"), engines=None, work_dir=tmp_path / "work",
                      threads=1, generate=fake_generate, poll_s=0.05)
    pool.start()
    try:
        jobs = [queue.submit(_new(i)) for i in range(2)]
        _eventually(lambda: len(done) == 2, 20, "both jobs finished")
        assert all(store.get(j.id).state is JobState.COMPLETED for j in jobs)
        assert all(t.is_alive() for t in pool._threads)
        assert store.left == {"claim": 0, "finish": 0}       # the errors did happen
    finally:
        pool.stop()


@pytest.mark.slow     # two attempts of a 2 s render (~3 s)
def test_an_attempt_whose_claim_lapsed_stops_rendering_at_its_next_chunk(tmp_path):
    """A worker whose claim lapsed (a paused node: the job re-queued by another server's sweep)
    rendered on to the end and only then had its outcome refused (finish(attempt=)). Now its
    should_cancel sees the job is no longer its attempt's and it stops at the next chunk; the
    job's next attempt renders it whole."""
    from flashhead.errors import Cancelled
    from flashhead.jobs.worker import WorkerPool
    from flashhead.pipeline import GenerationResult
    from flashhead.storage.local import LocalStorage

    chunks, runs = 200, []

    def generate(request, engines, output_path, *, should_cancel, **_):
        runs.append(0)
        for _ in range(chunks):
            if should_cancel():
                raise Cancelled("the request was cancelled")
            time.sleep(0.01)
            runs[-1] += 1
        Path(output_path).write_bytes(b"video")
        return GenerationResult(Path(output_path), 0, 1.0, {"total": 0.0}, 5)

    store = SqliteJobStore(tmp_path / "jobs.db")
    queue = JobQueue(store)
    pool = WorkerPool(queue, LocalStorage(tmp_path / "files"), engines=None, work_dir=tmp_path / "work",
                      threads=1, generate=generate, poll_s=0.05)
    pool.start()
    try:
        job = queue.submit(_new())
        _eventually(lambda: runs and runs[0] >= 3, 20, "the first attempt rendering")
        other_server = SqliteJobStore(tmp_path / "jobs.db")     # its sweep: the claim lapsed
        assert [j.id for j in other_server.recover()[0]] == [job.id]
        _eventually(lambda: store.get(job.id).state is JobState.COMPLETED, 30, "the job completed")
        assert len(runs) == 2 and runs[0] < 20 and runs[1] == chunks, runs
        done = store.get(job.id)
        assert done.attempts == 2 and done.result is not None
        lines = [e.message for e in store.logs(job.id)]
        assert any("outcome was not stored" in m for m in lines), lines
        assert not any(m.startswith("cancelled") for m in lines), lines     # nobody cancelled it
    finally:
        pool.stop()


@pytest.mark.slow     # starts three servers (~7 s); the lock itself is checked fast below
def test_a_second_server_on_one_data_dir_is_refused_with_a_message(tmp_path):
    """Before: two servers on one SQLite data dir both started, and each re-queued the other's
    running jobs every 2 s (rendered twice). Now the second exits at start-up with a message."""
    tls = make_tls(tmp_path / "tls")
    first = Server(tmp_path / "data", tls, fake_generate=True).start()
    try:
        second = Server(tmp_path / "data", tls, fake_generate=True)
        with pytest.raises(RuntimeError) as refused:
            second.start()
        assert second.proc.returncode not in (None, 0)
        log = second.log_path.read_text()
        assert "in use by another flashhead server" in log and "Traceback" not in log, log
        with first.client() as c:
            assert c.get("/health").status_code == 200          # the first one is untouched
        assert "exited" in str(refused.value)
    finally:
        first.stop()
    again = Server(tmp_path / "data", tls, fake_generate=True).start()   # the lock goes with its server
    again.stop()


@pytest.mark.slow     # a crash test: a worker process is SIGKILLed mid-claim (about 30 s)
def test_a_job_claimed_by_a_worker_process_that_died_before_reporting_it_is_requeued(tmp_path):
    """Before: a worker process that died between store.claim() and its "claim <id>" line left
    the job IN_PROGRESS under its (live) server for good. The claim is made here exactly as
    worker 0 makes it (same instance, worker index 0), then worker 0 is SIGKILLed; the server
    takes the unreported job back by the worker index, and a new worker renders it."""
    from test_api_fal_client import _long_wav

    portrait = data_uri(PORTRAIT, "image/png")
    server = Server(tmp_path / "data", make_tls(tmp_path / "tls")).start()
    try:
        with server.client() as c:
            long_wav = _long_wav(tmp_path, repeats=9)      # 90 s: still rendering when its worker dies
            busy = c.post(f"/queue/{TEXT_ENDPOINT}/audio", json={
                "image_url": portrait, "audio_url": data_uri(long_wav, "audio/wav")}).json()["request_id"]
            store = SqliteJobStore(tmp_path / "data" / "jobs.db")
            # "started" is logged after the worker told its server "claim <id>": the server knows
            # worker 0 runs it (a kill between the claim and that line re-queues it instead)
            _eventually(lambda: "started (attempt 1)" in [e["message"] for e in c.get(
                f"/queue/{TEXT_ENDPOINT}/requests/{busy}/status", params={"logs": 1}).json().get("logs", [])],
                60, "the long job started")
            owner = store.get(busy).owner
            unreported = c.post(f"/queue/{TEXT_ENDPOINT}", json={"image_url": portrait, "text": "Hi."}).json()
            lost = SqliteJobStore(tmp_path / "data" / "jobs.db", instance=owner, worker=0)
            assert lost.claim().id == unreported["request_id"]        # worker 0's claim ...
            [worker] = worker_processes(server.proc.pid)
            os.kill(worker, signal.SIGKILL)                           # ... and it dies unreported
            assert wait_terminal(c, busy)["error_type"] == "worker_crashed"
            after = wait_terminal(c, unreported["request_id"], timeout=60)
            assert after.get("error") is None, after
            assert REQUEUED_WORKER_MESSAGE in [e["message"] for e in after["logs"]]
    finally:
        server.stop()


def test_worker_index_is_recorded_and_only_that_workers_jobs_are_taken_back(tmp_path):
    store = SqliteJobStore(tmp_path / "jobs.db")
    w0 = SqliteJobStore(tmp_path / "jobs.db", instance=store.instance, worker=0)
    w1 = SqliteJobStore(tmp_path / "jobs.db", instance=store.instance, worker=1)
    a, b = store.submit(_new(0)), store.submit(_new(1))
    assert w0.claim().worker == 0 and w1.claim().worker == 1
    requeued, failed = JobQueue(store).recover_worker(0)
    assert [j.id for j in requeued] == [a.id] and failed == []
    assert store.get(a.id).state is JobState.IN_QUEUE and store.get(a.id).worker is None
    assert store.get(b.id).state is JobState.IN_PROGRESS
    assert store.recover() == ([], [])                      # the live server's own jobs stay


def test_claim_and_recover_worker_on_redis(redis_url):
    from flashhead.jobs.redis import RedisJobStore

    prefix = f"w{time.monotonic_ns()}:"
    api = RedisJobStore(redis_url, prefix=prefix)
    api.heartbeat()
    w0 = RedisJobStore(redis_url, prefix=prefix, instance=api.instance, worker=0)
    w1 = RedisJobStore(redis_url, prefix=prefix, instance=api.instance, worker=1)
    a, b = api.submit(_new(0)), api.submit(_new(1))
    assert w0.claim().worker == 0 and w1.claim().worker == 1
    requeued, failed = api.recover_worker(0)
    assert [j.id for j in requeued] == [a.id] and failed == []
    assert api.get(a.id).state is JobState.IN_QUEUE and api.get(a.id).worker is None
    assert api.get(b.id).state is JobState.IN_PROGRESS and api.recover() == ([], [])


def test_the_data_dir_lock_is_released_on_release_and_by_the_kernel(tmp_path):
    from flashhead.jobs.sqlite import DataDirBusy

    first = SqliteJobStore(tmp_path / "jobs.db", lock_dir=True)
    with pytest.raises(DataDirBusy, match="in use by another flashhead server"):
        SqliteJobStore(tmp_path / "jobs.db", lock_dir=True)
    SqliteJobStore(tmp_path / "jobs.db", worker=0)          # worker processes open it unlocked
    first.release()
    SqliteJobStore(tmp_path / "jobs.db", lock_dir=True).release()


def test_a_redis_that_stops_answering_raises_after_the_socket_timeout(tmp_path):
    """Before: no socket timeout, so a redis that accepted the connection and then went silent
    hung every caller (worker, status poll) for good. A silent TCP peer on loopback stands in."""
    import socket

    import redis

    from flashhead.config import Settings
    from flashhead.jobs.backends import make_store

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(4)
    url = f"redis://127.0.0.1:{silent.getsockname()[1]}/0"
    try:
        store = make_store(Settings(data_dir=tmp_path, job_store=url, redis_socket_timeout_s=0.5))
        started = time.monotonic()
        with pytest.raises(redis.TimeoutError):
            store.get("some-job")
        assert time.monotonic() - started < 2.5              # (redis-py's own default: 5 s)
    finally:
        silent.close()
