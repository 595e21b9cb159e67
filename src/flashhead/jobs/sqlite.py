"""SQLite job store: one WAL-mode file under the data dir, one connection per thread.

Several processes share the file (the API process and its render worker processes): every
write is one BEGIN IMMEDIATE transaction, connections wait up to BUSY_TIMEOUT_S for the lock,
and claim() is a single UPDATE ... WHERE id = (SELECT ...) RETURNING, so two workers never
claim the same job.

Ownership is trivial here: one server per data dir (the API process holds an exclusive
flock on data_dir/.lock for its life, see lock_data_dir), so at start-up every job a previous
instance left IN_PROGRESS is an orphan (no leases, heartbeat is a no-op); claim() still records
the owner, so the periodic sweep leaves this server's own running jobs alone.
"""
from __future__ import annotations

import fcntl
import json
import os
import sqlite3
import threading
from pathlib import Path

from flashhead.jobs.state import JobState, Priority
from flashhead.jobs.store import (MAX_ATTEMPTS, TIMEOUT_TYPE, WORKER_CRASHED, CancelOutcome, Job, LogEntry,
                                  NewJob, new_instance_id, now)

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
  seq INTEGER PRIMARY KEY AUTOINCREMENT,
  id TEXT UNIQUE NOT NULL, endpoint TEXT NOT NULL, input TEXT NOT NULL,
  state TEXT NOT NULL, priority INTEGER NOT NULL, created_at REAL NOT NULL,
  deadline REAL, started_at REAL, finished_at REAL, attempts INTEGER NOT NULL DEFAULT 0,
  cancel_requested INTEGER NOT NULL DEFAULT 0, result TEXT, error TEXT, error_type TEXT,
  webhook_url TEXT, base_url TEXT NOT NULL DEFAULT '', key_id TEXT,
  hooked INTEGER NOT NULL DEFAULT 0, owner TEXT, worker INTEGER);
CREATE INDEX IF NOT EXISTS jobs_queue ON jobs (state, priority, seq);
CREATE TABLE IF NOT EXISTS logs (
  job_id TEXT NOT NULL, ts REAL NOT NULL, level TEXT NOT NULL, message TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS logs_job ON logs (job_id, ts);
"""
# terminal jobs whose hooks (webhook, metrics) have not run yet; created after _migrate
_HOOK_INDEX = "CREATE INDEX IF NOT EXISTS jobs_unhooked ON jobs (seq) WHERE hooked = 0"
BUSY_TIMEOUT_S = 30
_Q, _P = JobState.IN_QUEUE.value, JobState.IN_PROGRESS.value
# status polls skip the input column: it can hold megabytes of data: URIs
_NO_INPUT = ("seq, id, endpoint, '{}' AS input, state, priority, created_at, deadline, started_at,"
             " finished_at, attempts, cancel_requested, result, error, error_type, webhook_url,"
             " base_url, key_id, owner, worker")
_TERMINAL = tuple(s.value for s in JobState if s.is_terminal())


def _row_to_job(r: sqlite3.Row) -> Job:
    return Job(
        id=r["id"], endpoint=r["endpoint"], input=json.loads(r["input"]), state=JobState(r["state"]),
        priority=Priority(r["priority"]), seq=r["seq"], created_at=r["created_at"],
        deadline=r["deadline"], started_at=r["started_at"], finished_at=r["finished_at"],
        attempts=r["attempts"], cancel_requested=bool(r["cancel_requested"]),
        result=json.loads(r["result"]) if r["result"] else None, error=r["error"],
        error_type=r["error_type"], webhook_url=r["webhook_url"], base_url=r["base_url"],
        key_id=r["key_id"], owner=r["owner"], worker=r["worker"])


class SqliteJobStore:
    def __init__(self, path: str | Path, *, instance: str | None = None, worker: int | None = None,
                 lock_dir: bool = False):
        """lock_dir: the server's API process; hold the data dir's lock until release()."""
        self.path = Path(path)
        self.instance = instance or new_instance_id()
        self.worker = worker
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._dir_lock = lock_data_dir(self.path.parent) if lock_dir else None
        self._local = threading.local()
        self._db().executescript(SCHEMA)
        self._migrate()

    def _migrate(self) -> None:
        """Files made before the `hooked` column: their terminal jobs had their hooks run.
        Files made before the `owner` column: no owner (any running job is an orphan).
        Files made before the `worker` column: none (the claims of worker threads)."""
        with self._tx() as db:
            columns = {r["name"] for r in db.execute("PRAGMA table_info(jobs)")}
            if "hooked" not in columns:
                db.execute("ALTER TABLE jobs ADD COLUMN hooked INTEGER NOT NULL DEFAULT 0")
                db.execute(f"UPDATE jobs SET hooked = 1 WHERE state IN ({','.join('?' * len(_TERMINAL))})",
                           _TERMINAL)
            if "owner" not in columns:
                db.execute("ALTER TABLE jobs ADD COLUMN owner TEXT")
            if "worker" not in columns:
                db.execute("ALTER TABLE jobs ADD COLUMN worker INTEGER")
            db.execute(_HOOK_INDEX)

    def _db(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None,
                                 check_same_thread=False)
            db.row_factory = sqlite3.Row
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")   # WAL + NORMAL: durable across process kills
            self._local.db = db
        return db

    def _tx(self):
        return _Tx(self._db())

    def submit(self, new: NewJob) -> Job:
        with self._tx() as db:
            db.execute(
                "INSERT INTO jobs (id, endpoint, input, state, priority, created_at, deadline,"
                " webhook_url, base_url, key_id) VALUES (?,?,?,?,?,?,?,?,?,?)",
                (new.id, new.endpoint, json.dumps(new.input), _Q, int(new.priority), now(),
                 new.deadline, new.webhook_url, new.base_url, new.key_id))
        return self.get(new.id)

    def get(self, job_id: str, *, with_input: bool = True) -> Job | None:
        cols = "*" if with_input else _NO_INPUT
        r = self._db().execute(f"SELECT {cols} FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return _row_to_job(r) if r else None

    def queue_position(self, job_id: str) -> int:
        r = self._db().execute(
            "SELECT COUNT(*) FROM jobs a, jobs j WHERE j.id = ? AND a.state = ? AND "
            "(a.priority < j.priority OR (a.priority = j.priority AND a.seq < j.seq))",
            (job_id, _Q)).fetchone()
        return int(r[0])

    def queue_depth(self) -> int:
        return int(self._db().execute("SELECT COUNT(*) FROM jobs WHERE state = ?", (_Q,)).fetchone()[0])

    def running_count(self) -> int:
        return int(self._db().execute("SELECT COUNT(*) FROM jobs WHERE state = ?", (_P,)).fetchone()[0])

    def claim(self, now_s: float | None = None) -> Job | None:
        t = now() if now_s is None else now_s
        with self._tx() as db:
            r = db.execute(
                "UPDATE jobs SET state = ?, started_at = ?, attempts = attempts + 1, owner = ?, worker = ?"
                " WHERE id = (SELECT id FROM jobs WHERE state = ? AND cancel_requested = 0"
                " AND (deadline IS NULL OR deadline > ?) ORDER BY priority, seq LIMIT 1)"
                " RETURNING *", (_P, t, self.instance, self.worker, _Q, t)).fetchone()
        return _row_to_job(r) if r else None

    def finish(self, job_id: str, state: JobState, *, result: dict | None = None,
               error: str | None = None, error_type: str | None = None,
               attempt: int | None = None) -> Job | None:
        assert state.is_terminal(), state
        with self._tx() as db:
            r = db.execute(
                f"UPDATE jobs SET state = ?, finished_at = ?, result = ?, error = ?, error_type = ?"
                f" WHERE id = ? AND state NOT IN ({','.join('?' * len(_TERMINAL))})"
                f" AND (? IS NULL OR (attempts = ? AND state = ?)) RETURNING *",
                (state.value, now(), json.dumps(result) if result is not None else None, error,
                 error_type, job_id, *_TERMINAL, attempt, attempt, _P)).fetchone()
        return _row_to_job(r) if r else None

    def take_terminal(self, limit: int = 64) -> list[Job]:
        """Terminal jobs whose hooks have not run (one API process per data dir hands them out)."""
        rows = self._db().execute(
            f"SELECT {_NO_INPUT} FROM jobs WHERE hooked = 0 AND state IN ({','.join('?' * len(_TERMINAL))})"
            f" ORDER BY seq LIMIT ?", (*_TERMINAL, limit)).fetchall()
        return [_row_to_job(r) for r in rows]

    def mark_hooked(self, job_ids: list[str]) -> None:
        """Their hooks ran: nothing reads a finished job's input again (megabytes of data: URIs,
        kept for job_retention_s otherwise), so it goes now."""
        if job_ids:
            with self._tx() as db:
                db.execute(f"UPDATE jobs SET hooked = 1, input = '{{}}' WHERE id IN "
                           f"({','.join('?' * len(job_ids))})", tuple(job_ids))

    def request_cancel(self, job_id: str) -> tuple[str, Job | None]:
        with self._tx() as db:
            r = db.execute("SELECT state FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if r is None:
                return CancelOutcome.NOT_FOUND, None
            if r["state"] == _Q:
                r = db.execute(
                    "UPDATE jobs SET state = ?, finished_at = ?, cancel_requested = 1, error = ?,"
                    " error_type = ? WHERE id = ? RETURNING *",
                    (JobState.CANCELLED.value, now(), "the request was cancelled", "cancelled",
                     job_id)).fetchone()
                return CancelOutcome.CANCELLED, _row_to_job(r)
            if r["state"] == _P:
                db.execute("UPDATE jobs SET cancel_requested = 1 WHERE id = ?", (job_id,))
                return CancelOutcome.REQUESTED, None
        return CancelOutcome.ALREADY_COMPLETED, None

    def should_stop(self, job_id: str, attempt: int) -> bool:
        r = self._db().execute("SELECT cancel_requested, state, attempts FROM jobs WHERE id = ?",
                               (job_id,)).fetchone()
        return not r or bool(r[0]) or r[1] != JobState.IN_PROGRESS.value or r[2] != attempt

    def append_log(self, job_id: str, message: str, level: str = "INFO") -> None:
        with self._tx() as db:
            db.execute("INSERT INTO logs (job_id, ts, level, message) VALUES (?,?,?,?)",
                       (job_id, now(), level, message))

    def logs(self, job_id: str) -> list[LogEntry]:
        rows = self._db().execute(
            "SELECT message, level, ts FROM logs WHERE job_id = ? ORDER BY ts, rowid", (job_id,))
        return [LogEntry(r[0], r[1], r[2]) for r in rows]

    def expire_overdue(self, now_s: float | None = None) -> list[Job]:
        t = now() if now_s is None else now_s
        with self._tx() as db:
            rows = db.execute(
                "UPDATE jobs SET state = ?, finished_at = ?, error = ?, error_type = ?"
                " WHERE state = ? AND deadline IS NOT NULL AND deadline <= ? RETURNING *",
                (JobState.TIMED_OUT.value, t, "the request did not start before its deadline",
                 TIMEOUT_TYPE, _Q, t)).fetchall()
        return [_row_to_job(r) for r in rows]

    def heartbeat(self) -> None:
        """No leases: only one server uses a data dir."""

    def release(self) -> None:
        """No leases (only one server uses a data dir): unlock the data dir."""
        if self._dir_lock is not None:
            os.close(self._dir_lock)
            self._dir_lock = None

    def recover(self) -> tuple[list[Job], list[Job]]:
        """Every job IN_PROGRESS that another (hence dead) instance claimed is an orphan."""
        return self._take_back("state = ? AND (owner IS NULL OR owner != ?)", (_P, self.instance))

    def recover_worker(self, worker: int) -> tuple[list[Job], list[Job]]:
        return self._take_back("state = ? AND owner = ? AND worker = ?", (_P, self.instance, worker))

    def _take_back(self, orphan: str, mine: tuple) -> tuple[list[Job], list[Job]]:
        """Running jobs matching `orphan` (params `mine`) -> (re-queued, failed or cancelled)."""
        if self._db().execute(f"SELECT 1 FROM jobs WHERE {orphan} LIMIT 1", mine).fetchone() is None:
            return [], []                   # the periodic sweep: nothing to do, no write lock taken
        # A re-queued job already met its start deadline once, so the deadline is dropped.
        with self._tx() as db:
            cancelled = db.execute(
                f"UPDATE jobs SET state = ?, finished_at = ?, error = ?, error_type = ?"
                f" WHERE {orphan} AND cancel_requested = 1 RETURNING *",
                (JobState.CANCELLED.value, now(), "the request was cancelled", "cancelled", *mine)).fetchall()
            requeued = db.execute(
                f"UPDATE jobs SET state = ?, started_at = NULL, deadline = NULL, owner = NULL, worker = NULL"
                f" WHERE {orphan} AND attempts < ? AND cancel_requested = 0 RETURNING *",
                (_Q, *mine, MAX_ATTEMPTS)).fetchall()
            failed = db.execute(
                f"UPDATE jobs SET state = ?, finished_at = ?, error = ?, error_type = ? WHERE {orphan}"
                f" RETURNING *", (JobState.FAILED.value, now(),
                                  "the server stopped while this request was running", WORKER_CRASHED,
                                  *mine)).fetchall()
        return ([_row_to_job(r) for r in requeued],
                [_row_to_job(r) for r in (*cancelled, *failed)])

    def close(self) -> None:
        db = getattr(self._local, "db", None)
        if db is not None:
            db.close()
            self._local.db = None

    def active_count(self, key_id: str) -> int:
        """Queued + running jobs of one API key (the state index keeps it to active jobs)."""
        return int(self._db().execute("SELECT COUNT(*) FROM jobs WHERE state IN (?, ?) AND key_id = ?",
                                      (_Q, _P, key_id)).fetchone()[0])

    # --- bounds and retention ---
    def expired_jobs(self, before: float, limit: int = 1000) -> list[str]:
        """Terminal jobs finished before `before` whose hooks have run (oldest first)."""
        rows = self._db().execute(
            f"SELECT id FROM jobs WHERE hooked = 1 AND finished_at < ?"
            f" AND state IN ({','.join('?' * len(_TERMINAL))}) ORDER BY finished_at LIMIT ?",
            (before, *_TERMINAL, limit)).fetchall()
        return [r[0] for r in rows]

    def delete_jobs(self, job_ids: list[str]) -> int:
        """Remove terminal jobs and their logs; returns how many jobs went."""
        if not job_ids:
            return 0
        marks = ",".join("?" * len(job_ids))
        with self._tx() as db:
            n = db.execute(f"DELETE FROM jobs WHERE id IN ({marks}) AND state IN"
                           f" ({','.join('?' * len(_TERMINAL))})", (*job_ids, *_TERMINAL)).rowcount
            db.execute(f"DELETE FROM logs WHERE job_id IN ({marks})", job_ids)
        return n


class DataDirBusy(SystemExit):
    """Another server holds the data dir: a start-up error with a message, not a traceback."""


def lock_data_dir(data_dir: Path) -> int:
    """An exclusive flock on data_dir/.lock, held until the returned fd is closed (the kernel
    drops it when the process dies, also on SIGKILL). Raises DataDirBusy if another holds it."""
    fd = os.open(Path(data_dir) / ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise DataDirBusy(f"{data_dir} is in use by another flashhead server (it holds {data_dir}/.lock): "
                          f"two servers on one SQLite data dir would run each other's jobs twice. Stop the "
                          f"other server, give this one its own --data-dir, or share jobs through redis "
                          f"(FLASHHEAD_JOB_STORE=redis://...).") from None
    return fd
class _Tx:
    """BEGIN IMMEDIATE ... COMMIT: one writer at a time, readers never blocked (WAL)."""

    def __init__(self, db: sqlite3.Connection):
        self.db = db

    def __enter__(self) -> sqlite3.Connection:
        self.db.execute("BEGIN IMMEDIATE")
        return self.db

    def __exit__(self, exc_type, exc, tb) -> None:
        self.db.execute("ROLLBACK" if exc_type else "COMMIT")
