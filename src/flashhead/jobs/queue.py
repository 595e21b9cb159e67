"""The job service: submit, cancel, finish, deadlines, crash recovery, terminal-state hooks.

Every terminal transition goes through here, so webhooks and metrics see each job once.
Restart policy (see recover): a job found IN_PROGRESS at start-up was running when the
process died. It is re-queued once (attempts < MAX_ATTEMPTS, its start deadline dropped);
a job that was already re-run is failed with error_type "worker_crashed", so a request that
crashes the server cannot crash it forever.
"""
from __future__ import annotations

import logging
import threading
from typing import Callable

from flashhead.errors import QueueFull
from flashhead.jobs.state import JobState
from flashhead.jobs.store import CancelOutcome, Job, JobStore, NewJob

log = logging.getLogger("flashhead.jobs")
TerminalHook = Callable[[Job], None]
MAINTENANCE_INTERVAL_S = 0.25


class JobQueue:
    def __init__(self, store: JobStore):
        self.store = store
        self.wake = threading.Event()          # set on submit: idle workers look at once
        self._hooks: list[TerminalHook] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def on_terminal(self, hook: TerminalHook) -> None:
        self._hooks.append(hook)

    def _terminal(self, job: Job | None) -> Job | None:
        if job is not None:
            for hook in self._hooks:
                try:
                    hook(job)
                except Exception:  # a failing hook must not lose the job's state change
                    log.exception("terminal hook failed", extra={"job": job.id})
        return job

    def submit(self, new: NewJob, *, max_queue_length: int | None = None) -> Job:
        if max_queue_length is not None and self.store.queue_depth() >= max_queue_length:
            raise QueueFull(f"the queue holds {self.store.queue_depth()} requests; "
                            f"fal_max_queue_length is {max_queue_length}", field="fal_max_queue_length")
        job = self.store.submit(new)
        self.wake.set()
        return job

    def cancel(self, job_id: str) -> str:
        outcome, job = self.store.request_cancel(job_id)
        if outcome == CancelOutcome.CANCELLED:
            self._terminal(job)
        return outcome

    def finish(self, job_id: str, state: JobState, **kw) -> Job | None:
        return self._terminal(self.store.finish(job_id, state, **kw))

    def expire_overdue(self) -> list[Job]:
        return [self._terminal(j) for j in self.store.expire_overdue()]

    def recover(self) -> tuple[list[Job], list[Job]]:
        requeued, failed = self.store.recover()
        for j in requeued:
            self.store.append_log(j.id, "re-queued: the server restarted while this request was running",
                                  "WARN")
        for j in failed:
            self._terminal(j)
        if requeued or failed:
            log.warning("recovered jobs", extra={"requeued": [j.id for j in requeued],
                                                 "failed": [j.id for j in failed]})
        return requeued, failed

    def start(self) -> None:
        self._thread = threading.Thread(target=self._maintain, name="job-maintenance", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=5)

    def _maintain(self) -> None:
        while not self._stop.wait(MAINTENANCE_INTERVAL_S):
            try:
                self.expire_overdue()
            except Exception:
                log.exception("deadline sweep failed")
