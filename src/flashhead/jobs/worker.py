"""Workers: claim a job, run flashhead.pipeline.generate, store the video, finish.

WorkerPool runs them as threads of the calling process (thread mode, tests that inject a fake
generate); flashhead.jobs.processes runs the same loop (WorkerPool.serve) in worker processes
whose generate hands the render to the render engine (flashhead.engine.jobs.EngineJobs).

Cancellation is cooperative: generate() asks should_cancel() before every chunk (through the
engine: every poll), which reads the store (JobStore.should_stop), so a running job stops at the
next chunk when it is cancelled, and so does an attempt whose claim lapsed (the job re-queued).
EngineFailed (the engine died under the job) is not the job's outcome: it leaves run_job, and
the worker process hands the job back to the queue.

A store that fails (redis away, SQLite locked past its busy timeout) never ends a worker: a
failed claim is retried after STORE_RETRY_S, a failed finish is retried (backing off up to
STORE_RETRY_MAX_S) until it is stored or the worker stops; log lines and stop polls that fail
are skipped.
"""
from __future__ import annotations

import logging
import shutil
import threading
import time
from pathlib import Path
from typing import Callable

from pydantic import ValidationError

from flashhead.errors import Cancelled, EngineFailed, FlashheadError, InputError
from flashhead.jobs.queue import JobQueue
from flashhead.jobs.state import JobState
from flashhead.jobs.store import CANCELLED_TYPE, Job
from flashhead.storage.base import Storage
from flashhead.storage.localize import localize

log = logging.getLogger("flashhead.worker")
PROGRESS_LOG_EVERY_S = 1.0
STORE_RETRY_S = 0.5
STORE_RETRY_MAX_S = 10.0
OUTPUT_NAME = "flashhead.mp4"


def _generate(*args, **kwargs):
    from flashhead.pipeline import generate
    return generate(*args, **kwargs)


def _result_json(*args, **kwargs):
    from flashhead.pipeline import result_json
    return result_json(*args, **kwargs)


class WorkerPool:
    def __init__(self, queue: JobQueue, storage: Storage, engines, work_dir: Path, *,
                 threads: int = 1, own_hosts: Callable[[], set[str]] = set,
                 generate: Callable | None = None, poll_s: float = 0.5):
        self.queue, self.store, self.storage, self.engines = queue, queue.store, storage, engines
        self.work_dir = Path(work_dir)
        self.n_threads, self.poll_s = threads, poll_s
        self.own_hosts = own_hosts
        self.generate = generate or _generate
        self._stop = threading.Event()          # serve() replaces it with the one it is given
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        for i in range(self.n_threads):
            t = threading.Thread(target=self._loop, name=f"worker-{i}", daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self) -> None:
        self._stop.set()
        self.queue.wake.set()
        for t in self._threads:
            t.join(timeout=10)

    def _loop(self) -> None:
        self.serve(self._stop, self.queue.wake)

    def serve(self, stop: threading.Event, wake: threading.Event,
              on_claim: Callable[[str | None], None] = lambda job_id: None) -> None:
        """Claim and run jobs until `stop`; idle, wait for `wake` or poll_s. on_claim(job id) before
        each job and on_claim(None) after it (a worker process tells its parent)."""
        self._stop = stop
        while not stop.is_set():
            try:
                job = self.store.claim()
            except Exception:
                log.exception("claiming a job failed; retrying")
                stop.wait(STORE_RETRY_S)
                continue
            if job is None:
                wake.wait(self.poll_s)
                wake.clear()
                continue
            on_claim(job.id)
            self.run_job(job)
            on_claim(None)

    def run_job(self, job: Job) -> None:
        job_dir = self.work_dir / job.id
        say = lambda msg, level="INFO": self._log(job.id, msg, level)  # noqa: E731
        say(f"started (attempt {job.attempts})")
        try:
            state, fields = JobState.COMPLETED, {"result": self._render(job, job_dir, say)}
            say("completed")
        except EngineFailed:         # not the job's fault: the caller hands it back to the queue
            raise
        except Cancelled as exc:
            state, fields = JobState.CANCELLED, {"error": str(exc), "error_type": CANCELLED_TYPE}
        except ValidationError as exc:
            state, fields = JobState.FAILED, {"error": _validation_text(exc), "error_type": InputError.error_type,
                                              "result": {"detail": _validation_detail(exc)}}
        except FlashheadError as exc:
            state, fields = JobState.FAILED, _error_fields(exc)
        except Exception as exc:  # a bug: the job fails with a clear type, the worker lives on
            log.exception("job crashed", extra={"job": job.id})
            state, fields = JobState.FAILED, {"error": f"internal error: {type(exc).__name__}: {exc}",
                                              "error_type": "internal_error"}
        finally:
            shutil.rmtree(job_dir, ignore_errors=True)
        superseded = state is JobState.CANCELLED and self._superseded(job)
        if state is not JobState.COMPLETED and not superseded:     # (the job's log is its next attempt's too)
            say(f"{state.value.lower()}: {fields.get('error')}", "ERROR")
        if not self._finish(job.id, state, fields, job.attempts):
            say(f"attempt {job.attempts}'s outcome was not stored: the job is no longer this attempt's "
                "(its claim lapsed), or the worker is stopping", "WARNING")

    def _finish(self, job_id: str, state: JobState, fields: dict, attempt: int) -> bool:
        """Store the outcome, retrying a failing store until it takes it or the worker stops
        (then the job stays IN_PROGRESS, and recovery re-queues it). Only while the job is
        still this attempt's: one whose claim lapsed (a paused node) and that was re-queued
        belongs to its new attempt, whose outcome is the one stored. True: stored."""
        delay = STORE_RETRY_S
        while True:
            try:
                if self.queue.finish(job_id, state, attempt=attempt, **fields) is None:
                    log.warning("the job was finished or re-queued while this attempt ran (its claim "
                                "lapsed?): this attempt's outcome is dropped",
                                extra={"job": job_id, "attempt": attempt})
                    return False
                return True
            except Exception:
                log.exception("storing a job's outcome failed; retrying", extra={"job": job_id})
            if self._stop.wait(delay):
                return False
            delay = min(2 * delay, STORE_RETRY_MAX_S)

    def _log(self, job_id: str, message: str, level: str = "INFO") -> None:
        try:
            self.store.append_log(job_id, message, level)
        except Exception:     # a job's log line is not worth failing or killing the job for
            log.warning("could not store a job log line", extra={"job": job_id}, exc_info=True)

    def _should_stop(self, job: Job) -> bool:
        """Asked before every chunk: a cancel, or a claim that lapsed (the job re-queued or run
        by another attempt), stops this attempt's render instead of letting it run to the end."""
        try:
            return self.store.should_stop(job.id, job.attempts)
        except Exception:     # asked again at the next chunk
            log.warning("could not read a job's state", extra={"job": job.id}, exc_info=True)
            return False

    def _superseded(self, job: Job) -> bool:
        """This attempt stopped because the job is no longer its (not because it was cancelled)."""
        try:
            now = self.store.get(job.id, with_input=False)
        except Exception:  # noqa: BLE001 - a log line's wording is not worth more
            return False
        return now is None or not (now.state is JobState.IN_PROGRESS and now.attempts == job.attempts) \
            and not now.cancel_requested

    def _render(self, job: Job, job_dir: Path, say) -> dict:
        from flashhead.pipeline import request_from_input

        job_dir.mkdir(parents=True, exist_ok=True)
        payload, local = self._localize(job, job_dir)
        request = request_from_input(payload, job.endpoint)
        last = [0.0]

        def progress(done: int, total: int) -> None:
            if time.monotonic() - last[0] >= PROGRESS_LOG_EVERY_S or done == total:
                last[0] = time.monotonic()
                say(f"rendered {done}/{total} frames")

        out = job_dir / OUTPUT_NAME
        result = self.generate(request, self.engines, out, allow_paths=local,
                               should_cancel=lambda: self._should_stop(job),
                               log=say, progress=progress)
        stored = self.storage.put_file(out, "video/mp4", OUTPUT_NAME)
        return _result_json(result, self.storage.url(stored.key, job.base_url), stored.file_name)

    def _localize(self, job: Job, job_dir: Path) -> tuple[dict, bool]:
        hosts = self.own_hosts() | self.storage.own_hosts(job.base_url)
        return localize(job.input, self.storage, hosts, job_dir)


def _error_fields(exc: FlashheadError) -> dict:
    fields = {"error": str(exc), "error_type": exc.error_type}
    if isinstance(exc, InputError):
        loc = ["body", exc.field] if exc.field else ["body"]
        fields["result"] = {"detail": [{"loc": loc, "msg": exc.message, "type": exc.error_type}]}
    return fields


def _validation_detail(exc: ValidationError) -> list[dict]:
    return [{"loc": ["body", *e["loc"]], "msg": e["msg"], "type": e["type"]} for e in exc.errors()]


def _validation_text(exc: ValidationError) -> str:
    return "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
