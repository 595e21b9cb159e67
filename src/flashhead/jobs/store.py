"""The job record and the store protocol every backend (sqlite, redis) implements."""
from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Protocol

from flashhead.errors import Cancelled, Timeout
from flashhead.jobs.state import JobState, Priority

# A job left IN_PROGRESS by a server that is gone was interrupted by a crash. It is re-queued
# while attempts < MAX_ATTEMPTS, otherwise failed with this error_type (see JobStore.recover).
MAX_ATTEMPTS = 2
WORKER_CRASHED = "worker_crashed"
TIMEOUT_TYPE = Timeout.error_type          # start deadline missed
CANCELLED_TYPE = Cancelled.error_type
LOG_LEVELS = ("STDERR", "STDOUT", "ERROR", "INFO", "WARN", "DEBUG")
# Ownership (several servers sharing one redis): every claim records the claiming server's
# instance id, and every server keeps an "alive" key with this TTL, refreshed every
# LEASE_REFRESH_S by its API process. Running jobs of an instance whose key expired are orphans.
LEASE_S = 10.0
LEASE_REFRESH_S = LEASE_S / 5
ORPHAN_SWEEP_S = LEASE_S / 5       # how often a live server looks for other servers' orphans


def new_instance_id() -> str:
    """One per server start: worker processes claim jobs on behalf of their server's id."""
    return uuid.uuid4().hex


@dataclass
class NewJob:
    """What a submit knows about a job."""

    endpoint: str                       # "fal-ai/flashhead" | "fal-ai/flashhead/audio"
    input: dict
    priority: Priority = Priority.NORMAL
    deadline: float | None = None       # unix time by which it must have started
    webhook_url: str | None = None
    base_url: str = ""                  # where the client reached us: output URLs are built on it
    key_id: str | None = None           # the API key that submitted it (None: auth off)
    id: str = field(default_factory=lambda: str(uuid.uuid4()))


@dataclass
class Job:
    id: str
    endpoint: str
    input: dict
    state: JobState
    priority: Priority
    seq: int
    created_at: float
    deadline: float | None = None
    started_at: float | None = None
    finished_at: float | None = None
    attempts: int = 0
    cancel_requested: bool = False
    result: dict | None = None
    error: str | None = None
    error_type: str | None = None
    webhook_url: str | None = None
    base_url: str = ""
    key_id: str | None = None
    owner: str | None = None            # instance id of the server that claimed it last
    worker: int | None = None           # index of the render worker process that claimed it

    @property
    def inference_time(self) -> float | None:
        if self.started_at is None or self.finished_at is None:
            return None
        return self.finished_at - self.started_at


@dataclass
class LogEntry:
    message: str
    level: str
    timestamp: float

    def wire(self) -> dict:
        ts = datetime.fromtimestamp(self.timestamp, timezone.utc).isoformat().replace("+00:00", "Z")
        return {"message": self.message, "level": self.level, "source": "USER", "timestamp": ts}


class CancelOutcome:
    CANCELLED = "cancelled"              # was queued: now terminal
    REQUESTED = "requested"              # is running: stops at the next chunk
    ALREADY_COMPLETED = "already_completed"
    NOT_FOUND = "not_found"


class JobStore(Protocol):
    """Durable job storage. Every method is safe to call from many threads.

    `instance` names the server (its API process and its worker processes share one id);
    claim() records it as the job's owner, and `worker` (the render worker process's index,
    None for worker threads) as the job's worker, so that the server can take back the jobs
    of one worker process that died (recover_worker).

    Terminal hooks are at-least-once: take_terminal hands out jobs whose hooks have not run,
    the caller runs the hooks, then mark_hooked(ids). A process that dies in between (or a
    hook that raises) leaves the job unhooked, and it is handed out again."""

    instance: str
    worker: int | None

    def submit(self, new: NewJob) -> Job: ...
    def get(self, job_id: str, *, with_input: bool = True) -> Job | None:
        """with_input=False leaves Job.input empty: cheap enough for status polls."""
    def queue_position(self, job_id: str) -> int: ...
    def queue_depth(self) -> int: ...
    def running_count(self) -> int: ...
    def claim(self, now: float | None = None) -> Job | None:
        """Atomically move the next runnable job (priority, then submit order) to IN_PROGRESS,
        owned by this instance."""
    def finish(self, job_id: str, state: JobState, *, result: dict | None = None,
               error: str | None = None, error_type: str | None = None,
               attempt: int | None = None) -> Job | None:
        """Move a job to a terminal state; returns None if it was already terminal, or when
        `attempt` is given and the job is no longer that attempt's (it was re-queued after its
        claim lapsed, maybe claimed again: the stale attempt's outcome must not win)."""
    def take_terminal(self, limit: int = 64) -> list[Job]:
        """Jobs that became terminal and whose hooks (webhook, metrics) have not run yet,
        whichever process made them terminal (input left empty). Not marked: a job is handed
        out again until mark_hooked names it. With several API processes (redis) a job is
        handed to one of them; a dead one's are handed out again after its lease ran out."""
    def mark_hooked(self, job_ids: list[str]) -> None:
        """The hooks of these jobs (from take_terminal) ran: never hand them out again."""
    def request_cancel(self, job_id: str) -> tuple[str, Job | None]: ...
    def should_stop(self, job_id: str, attempt: int) -> bool:
        """Whether attempt `attempt` of a running job must stop: a cancel was asked, or the job is
        no longer this attempt's (its claim lapsed and it was re-queued, or it finished)."""
    def append_log(self, job_id: str, message: str, level: str = "INFO") -> None: ...
    def logs(self, job_id: str) -> list[LogEntry]: ...
    def expire_overdue(self, now: float | None = None) -> list[Job]:
        """Queued jobs whose start deadline passed -> TIMED_OUT; returns them."""
    def heartbeat(self) -> None:
        """Renew this instance's lease (LEASE_S); the API process calls it every LEASE_REFRESH_S."""
    def release(self) -> None:
        """Give up this instance's lease at shutdown: its leftover running jobs are orphans at once
        (sqlite: unlock the data dir)."""
    def recover(self) -> tuple[list[Job], list[Job]]:
        """Orphans -> (re-queued, failed): jobs IN_PROGRESS whose owner is another instance
        whose lease ran out (sqlite: any other instance; one server per data dir). Called at
        start-up, before any worker runs, and every ORPHAN_SWEEP_S after."""
    def recover_worker(self, worker: int) -> tuple[list[Job], list[Job]]:
        """Jobs IN_PROGRESS claimed by this instance's worker process `worker`, which died:
        (re-queued, failed or cancelled), by the same policy as recover. Call it after the
        process has exited and before a new one gets the index."""
    def close(self) -> None: ...
    def active_count(self, key_id: str) -> int:
        """Queued + running jobs submitted with this API key (per-key job limit)."""


def now() -> float:
    return time.time()
