"""Job workers as processes: `flashhead serve --workers N` (and `flashhead worker`) runs N of them
beside the API process and the render engine. Each builds its own store connection and storage
from the same Settings and runs WorkerPool.serve: claim (atomic across processes), render,
finish. A worker holds no renderer: it hands each render to the engine (flashhead.engine.jobs),
which has the device's only one, and keeps the job's claim, logs, cancel and stored file. An engine that dies under a job makes the
worker exit without failing it: the job is re-queued once (recover_worker), as after a crash.

Parent side: ProcessWorkerPool, one supervisor thread per worker. It starts the worker
(`python -m flashhead.jobs.processes`, the Settings as JSON in the environment), follows its
control lines and restarts it if it dies.

    stdin   parent -> child: a byte per submit wakes an idle worker (it also polls every POLL_S);
            end of file means the parent is gone, and the child exits at once.
    stdout  child -> parent, one line each: "ready" | "error <text>" | "claim <job id>" | "idle".
            The child points its own fd 1 at stderr, so a stray print cannot garble them.

A worker claims jobs on behalf of its server (`--instance`: the API process's instance id, see
flashhead.jobs.store), whose API process holds the lease. A worker dies with the API process
(PR_SET_PDEATHSIG, and the stdin end of file): its job stays IN_PROGRESS, and the next
start-up's recovery (or, with Redis, another server once the lease expired) re-queues it.
A worker that dies on its own (OOM-killed, a crash in native code) fails the job it reported
with error_type "worker_crashed" (it would most likely crash the next worker too) and is
restarted. A job it claimed but had not reported yet (it died between the claim and the
"claim" line) is found by the worker index every claim records (JobStore.recover_worker)
and re-queued, before the new worker gets the index.
Terminal hooks (webhook, metrics) run in the API process: see flashhead.jobs.queue.
"""
from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from flashhead.config import Settings
from flashhead.engine.jobs import EngineJobs, JobAddress
from flashhead.errors import EngineFailed
from flashhead.jobs.queue import JobQueue
from flashhead.jobs.state import JobState
from flashhead.jobs.store import WORKER_CRASHED

log = logging.getLogger("flashhead.workers")
SETTINGS_ENV = "FLASHHEAD_WORKER_SETTINGS_JSON"
POLL_S = 0.1                 # an idle worker looks at the store this often without a wake-up
STOP_GRACE_S = 10.0          # a graceful stop lets a running job finish for this long
RESTART_DELAY_S = 1.0
PR_SET_PDEATHSIG = 1
ENGINE_GONE_EXIT = 3         # a worker whose engine died exits with this, its job handed back


class ProcessWorkerPool:
    def __init__(self, queue: JobQueue, settings: Settings, processes: int, engine: JobAddress):
        """engine: where the workers hand their renders (the engine process's JobAddress)."""
        self.queue, self.settings, self.n, self.engine = queue, settings, processes, engine
        self.error: str | None = None          # set when a worker cannot start
        self._procs: list[subprocess.Popen | None] = [None] * processes
        self._ready = [threading.Event() for _ in range(processes)]
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        for i in range(self.n):
            self._thread(self._supervise, f"worker-proc-{i}", i)
        self._thread(self._wake_loop, "worker-wake")

    def _thread(self, target, name: str, *args) -> None:
        t = threading.Thread(target=target, args=args, name=name, daemon=True)
        t.start()
        self._threads.append(t)

    def wait_ready(self, timeout_s: float | None = None) -> None:
        """Until every worker has loaded its engines; raises RuntimeError if one cannot."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        for ready in self._ready:
            while not ready.wait(0.1):
                if self.error:
                    raise RuntimeError(self.error)
                if deadline is not None and time.monotonic() > deadline:
                    raise RuntimeError(f"render workers not ready after {timeout_s} s")

    def pids(self) -> list[int]:
        return [p.pid for p in self._procs if p is not None and p.poll() is None]

    def stop(self) -> None:
        self._stop.set()
        self.queue.wake.set()
        procs = [p for p in self._procs if p is not None and p.poll() is None]
        for p in procs:
            p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_S
        for p in procs:
            try:
                p.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        for t in self._threads:
            t.join(timeout=2)

    def _spawn(self, i: int) -> subprocess.Popen:
        env = {**os.environ, SETTINGS_ENV: self.settings.model_dump_json(), **self.engine.env()}
        proc = subprocess.Popen([sys.executable, "-m", "flashhead.jobs.processes", "--parent-pid",
                                 str(os.getpid()), "--index", str(i), "--instance", self.queue.store.instance],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
        os.set_blocking(proc.stdin.fileno(), False)   # a wake-up never blocks the API process
        return proc

    def _supervise(self, i: int) -> None:
        """Start worker i (spawned from this long-lived thread: PDEATHSIG follows the spawning
        thread), follow it, restart it when it dies."""
        while not self._stop.is_set():
            proc = self._procs[i] = self._spawn(i)
            started, job_id = self._follow(i, proc)
            rc = proc.wait()
            if self._stop.is_set():
                return
            log.error("render worker died", extra={"worker": i, "returncode": rc, "job": job_id})
            self._take_back(i, job_id, rc)
            if not started:              # it could not load its engines: restarting will not help
                self.error = self.error or f"render worker {i} exited with status {rc} while starting"
                return
            self._stop.wait(RESTART_DELAY_S)

    def _follow(self, i: int, proc: subprocess.Popen) -> tuple[bool, str | None]:
        started, job_id = False, None
        for raw in proc.stdout:
            word, _, arg = raw.decode(errors="replace").strip().partition(" ")
            if word == "ready":
                started = True
                self._ready[i].set()
            elif word == "error":
                self.error = f"render worker {i}: {arg}"
            elif word == "claim":
                job_id = arg
            elif word == "idle":
                job_id = None
        return started, job_id

    def _take_back(self, i: int, job_id: str | None, rc: int) -> None:
        """Worker i died: fail the job it reported, re-queue any other it had claimed. A store
        error is retried (the supervisor restarts no worker until this is done)."""
        while not self._stop.is_set():
            try:
                if job_id:
                    self._fail(job_id, rc)
                self.queue.recover_worker(i)
                return
            except Exception:
                log.exception("taking back a dead worker's jobs failed; retrying", extra={"worker": i})
                self._stop.wait(RESTART_DELAY_S)

    def _fail(self, job_id: str, rc: int) -> None:
        self.queue.store.append_log(job_id, f"the render worker process died (exit status {rc})", "ERROR")
        self.queue.finish(job_id, JobState.FAILED, error_type=WORKER_CRASHED,
                          error="the render worker stopped while this request was running")

    def _wake_loop(self) -> None:
        while not self._stop.is_set():
            if not self.queue.wake.wait(1.0):
                continue
            self.queue.wake.clear()
            for p in list(self._procs):
                if p is not None and p.poll() is None:
                    try:
                        os.write(p.stdin.fileno(), b"w")
                    except OSError:      # full (it is awake anyway) or gone (its supervisor sees)
                        pass


# ---- the worker process --------------------------------------------------------------------

def _die_with_parent(parent_pid: int) -> None:
    if sys.platform.startswith("linux"):
        import ctypes
        try:
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent_pid:       # it died before prctl took effect
        os._exit(1)


def _watch_parent(wake: threading.Event) -> None:
    """Bytes on stdin wake the worker; end of file: the parent is gone, so is this process."""
    while True:
        try:
            data = os.read(0, 4096)
        except OSError:
            data = b""
        if not data:
            os._exit(1)
        wake.set()


def _tell(ctl, line: str) -> None:
    try:
        ctl.write(line.replace("\n", " ") + "\n")
    except OSError:                      # the parent is gone
        os._exit(1)


def _build_pool(settings: Settings, instance: str, index: int, engine: JobAddress):
    """No renderer here: renders go to the engine (one renderer per device)."""
    from flashhead.jobs.backends import make_storage, make_store
    from flashhead.jobs.worker import WorkerPool

    # the API process runs the hooks; claims record this worker's index (see recover_worker)
    queue = JobQueue(make_store(settings, instance, worker=index), dispatch=False)
    return WorkerPool(queue, make_storage(settings), None, Path(settings.data_dir) / "work", threads=1,
                      poll_s=POLL_S, generate=EngineJobs(engine, connect_timeout_s=settings.engine_step_deadline_s))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m flashhead.jobs.processes")
    p.add_argument("--parent-pid", type=int, required=True)
    p.add_argument("--index", type=int, default=0)
    p.add_argument("--instance", required=True, help="the server's instance id: claims belong to it")
    a = p.parse_args(argv)
    ctl = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    _die_with_parent(a.parent_pid)
    stop, wake = threading.Event(), threading.Event()
    signal.signal(signal.SIGINT, signal.SIG_IGN)              # Ctrl-C: the parent stops us
    signal.signal(signal.SIGTERM, lambda *_: (stop.set(), wake.set()))
    threading.Thread(target=_watch_parent, args=(wake,), name="parent-watch", daemon=True).start()

    from flashhead.api.observability import setup_logging
    setup_logging()
    try:
        settings = Settings.model_validate_json(os.environ[SETTINGS_ENV])
        # a lower CPU priority (FLASHHEAD_WORKER_NICE; 0: off): fetching and storing a job's files
        # is batch work, while API requests are short and latency-bound
        os.nice(settings.worker_nice)
        pool = _build_pool(settings, a.instance, a.index, JobAddress.from_env(os.environ))
    except Exception as exc:
        log.exception("render worker start-up failed", extra={"worker": a.index})
        _tell(ctl, f"error {type(exc).__name__}: {exc}")
        return 1
    _tell(ctl, "ready")
    try:
        pool.serve(stop, wake, on_claim=lambda job_id: _tell(ctl, f"claim {job_id}" if job_id else "idle"))
    except EngineFailed:
        # The engine died under the job: not this job's fault (as far as anyone knows), so it is
        # not failed but handed back; the parent re-queues it once (recover_worker), as after a crash.
        log.exception("the render engine went away during a job", extra={"worker": a.index})
        _tell(ctl, "idle")
        return ENGINE_GONE_EXIT
    return 0


if __name__ == "__main__":
    sys.exit(main())
