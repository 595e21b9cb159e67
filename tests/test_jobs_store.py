"""The JobStore contract, run against both backends: a real SQLite file and a real redis-server."""
from __future__ import annotations

import time

import pytest

from flashhead.jobs.sqlite import SqliteJobStore
from flashhead.jobs.state import JobState, Priority
from flashhead.jobs.store import MAX_ATTEMPTS, WORKER_CRASHED, CancelOutcome, NewJob


@pytest.fixture(params=["sqlite", "redis"])
def make_store(request, tmp_path):
    """A factory, so a test can 'restart' by opening the same store again."""
    if request.param == "sqlite":
        yield lambda: SqliteJobStore(tmp_path / "jobs.db")
    else:
        from flashhead.jobs.redis import RedisJobStore
        url = request.getfixturevalue("redis_url")
        prefix = f"t{time.monotonic_ns()}:"
        yield lambda: RedisJobStore(url, prefix=prefix)


def _new(priority=Priority.NORMAL, deadline=None, n=0):
    return NewJob(endpoint="fal-ai/flashhead", input={"text": f"job {n}", "image_url": "data:,x"},
                  priority=priority, deadline=deadline, base_url="https://h")


def test_low_priority_runs_after_normal_and_positions_follow(make_store):
    s = make_store()
    low = s.submit(_new(Priority.LOW, n=0))
    a = s.submit(_new(n=1))
    b = s.submit(_new(n=2))
    assert [s.queue_position(j.id) for j in (a, b, low)] == [0, 1, 2]
    assert s.queue_depth() == 3
    assert [s.claim().id for _ in range(3)] == [a.id, b.id, low.id]
    assert s.claim() is None
    assert s.running_count() == 3


def test_submitted_job_round_trips(make_store):
    s = make_store()
    job = s.submit(_new(n=7))
    got = s.get(job.id)
    assert got.input == {"text": "job 7", "image_url": "data:,x"}
    assert got.state is JobState.IN_QUEUE and got.attempts == 0 and got.base_url == "https://h"
    assert s.get("no-such-id") is None


def test_finish_is_once_only(make_store):
    s = make_store()
    job = s.submit(_new())
    assert s.claim().id == job.id
    done = s.finish(job.id, JobState.COMPLETED, result={"video": {"url": "u"}})
    assert done.state is JobState.COMPLETED and done.result == {"video": {"url": "u"}}
    assert done.inference_time is not None and done.inference_time >= 0
    assert s.finish(job.id, JobState.FAILED, error="late", error_type="x") is None
    assert s.get(job.id).state is JobState.COMPLETED


def test_cancel_outcomes(make_store):
    s = make_store()
    queued, running = s.submit(_new(n=1)), s.submit(_new(n=2))
    s.claim()   # claims `queued` (first in order) ...
    assert not s.should_stop(queued.id, 1)
    outcome, _ = s.request_cancel(queued.id)
    assert outcome == CancelOutcome.REQUESTED and s.should_stop(queued.id, 1)
    outcome, job = s.request_cancel(running.id)     # ... so this one was still waiting
    assert outcome == CancelOutcome.CANCELLED and job.state is JobState.CANCELLED
    assert s.claim() is None
    assert s.request_cancel(running.id)[0] == CancelOutcome.ALREADY_COMPLETED
    assert s.request_cancel("nope")[0] == CancelOutcome.NOT_FOUND


def test_overdue_jobs_time_out_instead_of_starting(make_store):
    s = make_store()
    late = s.submit(_new(deadline=time.time() - 1))
    ok = s.submit(_new(deadline=time.time() + 60))
    assert s.claim().id == ok.id
    expired = s.expire_overdue()
    assert [j.id for j in expired] == [late.id]
    assert s.get(late.id).state is JobState.TIMED_OUT and s.get(late.id).error_type == "timeout"
    assert s.expire_overdue() == []


def test_logs_keep_order_and_timestamps(make_store):
    s = make_store()
    job = s.submit(_new())
    for i in range(5):
        s.append_log(job.id, f"line {i}", "INFO" if i else "WARN")
    logs = s.logs(job.id)
    assert [e.message for e in logs] == [f"line {i}" for i in range(5)]
    assert logs[0].level == "WARN" and logs[0].wire()["timestamp"].endswith("Z")
    assert all(a.timestamp <= b.timestamp for a, b in zip(logs, logs[1:]))


def test_a_lapsed_attempt_cannot_finish_the_job_its_next_attempt_holds(make_store):
    """Probed on two worker nodes: one paused past its lease; its job was re-queued and claimed
    by the other; both rendered it, and the paused node's (stale) result was the one stored."""
    first = make_store()
    job = first.submit(_new())
    assert first.claim().attempts == 1
    assert not first.should_stop(job.id, 1)
    second = make_store()                                  # the first node's claim lapsed ...
    assert [j.id for j in second.recover()[0]] == [job.id]
    assert first.should_stop(job.id, 1)                    # (its render stops at its next chunk)
    assert first.finish(job.id, JobState.CANCELLED, attempt=1) is None       # nor ends it while
    assert second.get(job.id).state is JobState.IN_QUEUE                      # it waits again
    assert second.claim().attempts == 2                    # ... and the job runs again here
    assert first.should_stop(job.id, 1) and not second.should_stop(job.id, 2)
    assert first.finish(job.id, JobState.COMPLETED, result={"seed": 1}, attempt=1) is None
    assert second.get(job.id).state is JobState.IN_PROGRESS
    done = second.finish(job.id, JobState.COMPLETED, result={"seed": 2}, attempt=2)
    assert done is not None and second.get(job.id).result == {"seed": 2}


def test_recover_requeues_once_then_fails_with_worker_crashed(make_store):
    s = make_store()
    job = s.submit(_new(deadline=time.time() + 0.5))
    waiting = s.submit(_new(n=1))
    s.claim()
    s = make_store()                      # a restart: same file / same redis keys
    requeued, failed = s.recover()
    assert [j.id for j in requeued] == [job.id] and failed == []
    assert s.get(job.id).state is JobState.IN_QUEUE and s.get(job.id).deadline is None
    assert s.queue_position(job.id) == 0 and s.queue_position(waiting.id) == 1
    later = time.time() + 60              # well past its old start deadline (given, not slept)
    assert s.expire_overdue(later) == []  # that deadline is gone: it does not time out ...
    for _ in range(MAX_ATTEMPTS - 1):
        assert s.claim(now_s=later).id == job.id     # ... and it still runs
        s = make_store()
        requeued, failed = s.recover()
    assert [j.id for j in failed] == [job.id]
    assert s.get(job.id).state is JobState.FAILED and s.get(job.id).error_type == WORKER_CRASHED
    assert s.get(waiting.id).state is JobState.IN_QUEUE


def test_recover_honours_a_cancel_requested_before_the_crash(make_store):
    s = make_store()
    job = s.submit(_new())
    s.claim()
    s.request_cancel(job.id)
    requeued, failed = make_store().recover()
    assert requeued == [] and [j.state for j in failed] == [JobState.CANCELLED]


def test_get_without_input_for_status_polls(make_store):
    s = make_store()
    job = s.submit(_new(n=3))
    light = s.get(job.id, with_input=False)
    assert light.input == {} and light.state is JobState.IN_QUEUE and light.seq == job.seq
    assert s.get("missing", with_input=False) is None


def test_terminal_jobs_are_handed_out_until_their_hooks_are_marked(make_store):
    """Hooks run at least once, whichever process (store connection) made the job terminal: a
    job is handed out again until mark_hooked (a crash before it re-runs the hooks)."""
    worker, api = make_store(), make_store()     # e.g. a worker process and the API process
    done, failed, queued = (worker.submit(_new(n=i)) for i in range(3))
    worker.claim()
    worker.finish(done.id, JobState.COMPLETED, result={"seed": 1})
    assert [j.id for j in api.take_terminal()] == [done.id]
    assert [j.id for j in api.take_terminal()] == [done.id]        # its hooks did not finish
    api.mark_hooked([done.id])
    assert api.take_terminal() == []
    api.finish(failed.id, JobState.FAILED, error="boom", error_type="x")
    outcome, _ = api.request_cancel(queued.id)
    assert outcome == CancelOutcome.CANCELLED
    first = api.take_terminal(limit=1)
    assert [(j.id, j.state) for j in first] == [(failed.id, JobState.FAILED)]
    assert first[0].error_type == "x" and first[0].input == {}
    api.mark_hooked([failed.id])
    assert [(j.id, j.state) for j in api.take_terminal()] == [(queued.id, JobState.CANCELLED)]
    api.mark_hooked([queued.id])
    assert api.take_terminal() == []


def test_a_finished_jobs_input_goes_once_its_hooks_ran_and_a_deleted_job_stays_deleted(make_store):
    """Inputs hold megabytes of data: URIs; a probe's 170 finished jobs made an 81 MB jobs.db,
    kept for job_retention_s. Nothing reads a finished job's input after its hooks."""
    s = make_store()
    done, gone = s.submit(_new(n=0)), s.submit(_new(n=1))
    for job in (done, gone):
        s.claim()
        s.finish(job.id, JobState.COMPLETED, result={"seed": 1})
    assert s.get(done.id).input == _new(n=0).input                     # until its hooks ran
    s.take_terminal()
    assert s.delete_jobs([gone.id]) == 1                               # retention, meanwhile
    s.mark_hooked([done.id, gone.id])
    job = s.get(done.id)
    assert job.input == {} and job.result == {"seed": 1} and job.state == JobState.COMPLETED
    assert s.get(gone.id) is None                                      # not re-created as {input}


def test_redis_hands_each_terminal_job_to_one_server_and_a_dead_ones_to_another(redis_url):
    prefix = f"hooks{time.monotonic_ns()}:"
    a, b = _redis(redis_url, prefix), _redis(redis_url, prefix)
    a.heartbeat()
    b.heartbeat()
    job = a.submit(_new())
    a.finish(job.id, JobState.FAILED, error="boom", error_type="x")
    assert [j.id for j in a.take_terminal()] == [job.id]
    assert b.take_terminal() == []                   # a runs its hooks ...
    assert b.recover() == ([], []) and b.take_terminal() == []
    a.release()                                      # ... and dies before marking them
    b.recover()
    assert [j.id for j in b.take_terminal()] == [job.id]
    b.mark_hooked([job.id])
    assert b.take_terminal() == [] and b.recover() == ([], []) and b.take_terminal() == []


def test_an_older_sqlite_file_gains_the_hook_marker_without_rerunning_hooks(tmp_path):
    import sqlite3

    s = SqliteJobStore(tmp_path / "jobs.db")
    old, pending = s.submit(_new()), s.submit(_new(n=1))
    s.claim()
    s.finish(old.id, JobState.COMPLETED, result={})
    s.close()
    db = sqlite3.connect(tmp_path / "jobs.db")   # as the file was before the `hooked` column
    db.executescript("DROP INDEX jobs_unhooked; ALTER TABLE jobs DROP COLUMN hooked;")
    db.close()
    s = SqliteJobStore(tmp_path / "jobs.db")
    assert s.take_terminal() == []                 # its hooks ran when it finished
    s.request_cancel(pending.id)
    assert [j.id for j in s.take_terminal()] == [pending.id]


def _eventually(produce, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := produce():
            return value
        time.sleep(0.02)
    raise AssertionError(f"nothing after {timeout} s")


def test_claims_record_the_owner_whose_own_sweep_leaves_them_alone(make_store):
    s = make_store()
    job = s.submit(_new())
    s.heartbeat()
    claimed = s.claim()
    assert claimed.owner == s.instance and s.get(job.id).owner == s.instance
    assert s.recover() == ([], [])                   # the periodic sweep of the server running it
    assert s.get(job.id).state is JobState.IN_PROGRESS
    s.release()                                      # it stops (or its redis lease runs out) ...
    other = make_store()                             # ... and the next start-up takes the job back
    assert other.instance != s.instance
    requeued, _ = other.recover()
    assert [j.id for j in requeued] == [job.id] and requeued[0].owner is None


def _redis(url, prefix, lease_s=30.0):
    """A long lease: it never runs out by itself during a test; the tests make it run out."""
    from flashhead.jobs.redis import RedisJobStore
    return RedisJobStore(url, prefix=prefix, lease_s=lease_s)


def _lease_key(store) -> str:
    return store._k("alive", store.instance)


def test_redis_leases_protect_a_live_servers_jobs_until_they_expire(redis_url):
    prefix = f"lease{time.monotonic_ns()}:"
    a, b = _redis(redis_url, prefix), _redis(redis_url, prefix)
    a.heartbeat()
    assert 25_000 < a.r.pttl(_lease_key(a)) <= 30_000                # a lease of lease_s, in redis
    job, waiting = a.submit(_new()), a.submit(_new(n=1))
    assert a.claim().id == job.id
    assert b.recover() == ([], [])                   # b starts while a renders: a's job stays a's
    a.r.pexpire(_lease_key(a), 300)                  # a's lease almost ran out ...
    a.heartbeat()                                    # ... a renews it: the whole lease again
    assert a.r.pttl(_lease_key(a)) > 25_000
    assert b.recover() == ([], []) and b.get(job.id).owner == a.instance
    a.r.pexpire(_lease_key(a), 1)                    # a falls silent: redis lets its lease expire
    requeued = _eventually(lambda: b.recover()[0])   # and b takes its job back
    assert [j.id for j in requeued] == [job.id]
    assert b.get(job.id).state is JobState.IN_QUEUE and b.queue_position(job.id) == 0
    assert b.queue_position(waiting.id) == 1 and b.get(job.id).attempts == 1
    b.heartbeat()
    assert b.claim().owner == b.instance and b.recover() == ([], [])
    c = _redis(redis_url, prefix)
    b.release()                                      # b shuts down with it running: an orphan at once
    requeued, failed = c.recover()
    assert requeued == [] and [j.id for j in failed] == [job.id]
    assert failed[0].state is JobState.FAILED and failed[0].error_type == WORKER_CRASHED
    assert [j.id for j in c.take_terminal()] == [job.id]
    assert c.get(waiting.id).state is JobState.IN_QUEUE


@pytest.mark.slow
def test_the_maintenance_thread_renews_the_lease_and_sweeps_orphans(redis_url):
    from flashhead.jobs.queue import REQUEUED_MESSAGE, JobQueue

    prefix = f"sweep{time.monotonic_ns()}:"
    lease = 2.0                                      # renewed and swept every lease / 5 (0.4 s)
    a, b = JobQueue(_redis(redis_url, prefix, lease)), JobQueue(_redis(redis_url, prefix, lease))
    a.recover()
    a.start()
    b.start()
    try:
        job = a.submit(_new())
        assert a.store.claim().id == job.id
        key, seen, t0 = _lease_key(a.store), set(), time.monotonic()
        # Watch a's thread renew its lease (each renewal writes a new timestamp) for longer than
        # the lease itself, while b sweeps: the job stays a's.
        _eventually(lambda: seen.add(a.store.r.get(key)) or (len(seen) >= 5 and time.monotonic() - t0 > lease))
        assert None not in seen                      # the lease never lapsed
        assert b.store.get(job.id).state is JobState.IN_PROGRESS and b.store.get(job.id).owner == a.store.instance
        a.stop()                                     # a's server stops: releases its lease
        # b's sweep re-queues the job, then logs why (a second write): wait for both.
        _eventually(lambda: b.store.get(job.id).state is JobState.IN_QUEUE
                    and [e.message for e in b.store.logs(job.id)] == [REQUEUED_MESSAGE])
    finally:
        a.stop()
        b.stop()


def test_an_older_sqlite_file_gains_the_owner_column(tmp_path):
    import sqlite3

    s = SqliteJobStore(tmp_path / "jobs.db")
    job = s.submit(_new())
    s.claim()
    s.close()
    db = sqlite3.connect(tmp_path / "jobs.db")       # as the file was before the `owner` column
    db.executescript("ALTER TABLE jobs DROP COLUMN owner;")
    db.close()
    s = SqliteJobStore(tmp_path / "jobs.db")
    assert s.get(job.id).owner is None
    requeued, _ = s.recover()
    assert [j.id for j in requeued] == [job.id]
    assert s.claim().owner == s.instance
