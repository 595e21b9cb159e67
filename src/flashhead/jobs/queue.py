"""The job service: submit, cancel, finish, deadlines, crash recovery, terminal-state hooks.

Terminal hooks (webhook, metrics) run in the API process only, at least once per job: the store
hands out terminal jobs whose hooks have not run (JobStore.take_terminal), and each is marked
(JobStore.mark_hooked) only after all its hooks returned, so a crash in between or a hook that
raises leaves it to the next round; hooks must be idempotent (the webhook outbox keeps one
delivery per request and URL). It does not matter which process made the job terminal (a
render worker process, the deadline sweep, a cancel). Transitions made in this process
dispatch at once; the maintenance thread picks up the rest (worker processes) every
DISPATCH_INTERVAL_S, and so does every /metrics scrape.
Restart policy (see recover): a job left IN_PROGRESS by a server that is gone (with SQLite:
a previous run on this data dir; with Redis: a server whose lease expired, see
flashhead.jobs.redis) was running when that server died. It is re-queued once (attempts <
MAX_ATTEMPTS, its start deadline dropped); a job that was already re-run is failed with
error_type "worker_crashed", so a request that crashes the server cannot crash it forever.
The maintenance thread renews this server's lease every LEASE_REFRESH_S and sweeps for
orphans every ORPHAN_SWEEP_S, so a surviving server takes over a dead one's jobs.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Callable

from flashhead.errors import QueueFull
from flashhead.jobs.state import JobState
from flashhead.jobs.store import LEASE_S, CancelOutcome, Job, JobStore, NewJob

log = logging.getLogger("flashhead.jobs")
TerminalHook = Callable[[Job], None]
MAINTENANCE_INTERVAL_S = 0.25      # deadline sweep
DISPATCH_INTERVAL_S = 0.1          # terminal hooks of jobs finished by other processes
REQUEUED_MESSAGE = "re-queued: the server running this request stopped"
REQUEUED_WORKER_MESSAGE = "re-queued: the render worker process that took this request stopped"


class JobQueue:
    def __init__(self, store: JobStore, *, dispatch: bool = True):
        """dispatch=False in render worker processes: the API process runs the hooks."""
        self.store = store
        self.dispatch = dispatch
        self.wake = threading.Event()          # set on submit: idle workers look at once
        self._hooks: list[TerminalHook] = []
        self._dispatching = threading.Lock()     # one dispatcher at a time in this process
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def on_terminal(self, hook: TerminalHook) -> None:
        self._hooks.append(hook)

    def _terminal(self, job: Job | None) -> Job | None:
        if job is not None and self.dispatch:
            try:
                self.dispatch_terminal()
            except Exception:     # the transition is stored: the maintenance thread runs its hooks
                log.exception("terminal hooks failed; retried by the maintenance thread")
        return job

    def dispatch_terminal(self) -> int:
        """Run the hooks of every job that became terminal and whose hooks have not run yet;
        returns how many jobs had all their hooks run. A job whose hook raised stays unhooked
        and is tried again on the next call (the maintenance thread's next round)."""
        done = 0
        with self._dispatching:
            while batch := self.store.take_terminal():
                ok = [job.id for job in batch if self._run_hooks(job)]
                self.store.mark_hooked(ok)
                done += len(ok)
                if len(ok) < len(batch):
                    break
        return done

    def _run_hooks(self, job: Job) -> bool:
        good = True
        for hook in self._hooks:
            try:
                hook(job)
            except Exception:  # a failing hook must not stop the others
                log.exception("terminal hook failed; it will be retried", extra={"job": job.id})
                good = False
        return good

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
        """Take back orphans (see the module doc). At start-up: call it before any worker runs."""
        self.store.heartbeat()              # our own claims are never anybody's orphans
        return self._took_back(*self.store.recover(), REQUEUED_MESSAGE)

    def recover_worker(self, worker: int) -> tuple[list[Job], list[Job]]:
        """The jobs a dead worker process had claimed (see JobStore.recover_worker)."""
        return self._took_back(*self.store.recover_worker(worker), REQUEUED_WORKER_MESSAGE)

    def _took_back(self, requeued: list[Job], failed: list[Job], message: str) -> tuple[list[Job], list[Job]]:
        for j in requeued:
            self.store.append_log(j.id, message, "WARN")
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
        """After the workers have stopped: a job they left running is an orphan at once."""
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=5)
        try:
            self.store.release()
        except Exception:
            log.exception("could not release the lease")

    def _maintain(self) -> None:
        lease_every = getattr(self.store, "lease_s", LEASE_S) / 5     # LEASE_REFRESH_S, ORPHAN_SWEEP_S
        last = {"deadlines": 0.0, "lease": time.monotonic(), "orphans": time.monotonic()}
        due = lambda what, every: time.monotonic() - last[what] >= every  # noqa: E731
        while not self._stop.wait(DISPATCH_INTERVAL_S):
            try:
                if due("lease", lease_every):
                    last["lease"] = time.monotonic()
                    self.store.heartbeat()
                if due("deadlines", MAINTENANCE_INTERVAL_S):
                    last["deadlines"] = time.monotonic()
                    self.expire_overdue()
                if due("orphans", lease_every):
                    last["orphans"] = time.monotonic()
                    self.recover()
                if self.dispatch:            # worker nodes leave the hooks to the API nodes
                    self.dispatch_terminal()
            except Exception:
                log.exception("job maintenance failed")
