"""The engine's message loop (`serve`) and where it runs.

EngineProcess (`flashhead serve`): a child process `python -m flashhead.engine.process` beside
the API, connected by a socketpair wrapped in a multiprocessing Connection (pickled tuples).
One supervisor thread starts it (PR_SET_PDEATHSIG: it dies with the API process), waits for
"ready", watches it and restarts it when it dies. An engine that stops sending heartbeats, or
whose oldest step has run longer than engine_step_deadline_s, is hung: it is killed, every
session on it gets an engine_failed error, and a new one starts.
The CPU renderer's engine process is a router in front of a pool of such loops, one render
process per core (pool.py).
EngineThread (tests, embedding with given Engines): the same loop in a thread of this process.

Messages are (kind, session id, payload) tuples.
  API -> engine  stream {payload, endpoint, base_url, segments}  | live {image_url, base_url,
                 seed, pace, output?, chunk_frames?, lead_s?} | audio <pcm bytes> | eos | interrupt
                 | pose <idle pose name> | stop | close (client gone)
                 (and from worker processes, through jobs.py: job {request, ...} | cancel)
  engine -> API  ready {capacity, threads[, processes]} | beat {active, oldest_step_s, steps: [s, ...], batches: [n, ...]
                 [, processes: [sessions, ...], replaced: render processes replaced since the last beat]}
                 prepared | started {...} | event {...} | stopped {...} | end
                 | error {error_type, message, field, fatal} | failed <why it could not start>
"""
from __future__ import annotations

import argparse
import logging
import os
import pickle
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from multiprocessing.connection import Connection
from pathlib import Path

from flashhead.config import Settings
from flashhead.engine.jobs import JobAddress, JobListener, JobTask
from flashhead.engine.relay import EngineLink
from flashhead.engine.scheduler import Scheduler, error_payload
from flashhead.engine.sessions import LiveTask, StreamTask
from flashhead.errors import EngineFailed

log = logging.getLogger("flashhead.engine")
SETTINGS_ENV = "FLASHHEAD_ENGINE_SETTINGS_JSON"
BEAT_S = 0.5
RESTART_DELAY_S = 1.0
PREPARE_THREADS = 4
READY_TIMEOUT_S = 300.0
READ_LAST_S = 2.0            # an engine that failed to start: its reason is read for this long at most
CPU_SESSIONS_PER_CORE = 4   # bench/sessions.py: 8 real-time sessions on 2 cores, 9 not (0.22 CPU s per media s)
NEURAL_CAPACITY = 2


def capacity_of(settings: Settings) -> int:
    """Real-time sessions the engine admits: engine_capacity, else 4 per core (CPU renderer: its
    render processes use every core) or 2 (neural). Not per render process: a pool's processes
    each get their part of it (pool.py)."""
    if settings.engine_capacity:
        return settings.engine_capacity
    return CPU_SESSIONS_PER_CORE * cores() if settings.renderer == "cpu" else NEURAL_CAPACITY


def cores() -> int:
    return max(1, len(os.sched_getaffinity(0)))


def processes_of(settings: Settings) -> int:
    """Render processes: the CPU renderer one per core (pool.py), a neural renderer one (the one
    model copy, its batches on threads)."""
    if settings.renderer != "cpu":
        return 1
    return settings.engine_processes or cores()


def threads_of(settings: Settings) -> int:
    """Render threads per render process: the CPU renderer one per process when it has a pool;
    neural renderers a thread per admitted session, so that all of them can join one batch."""
    if settings.engine_threads:
        return settings.engine_threads
    if settings.renderer == "cpu":
        return 1 if processes_of(settings) > 1 else cores()
    return max(cores(), capacity_of(settings))


# ---- the engine side -------------------------------------------------------------------------

class Engine:
    """Serves one connection: opens sessions, routes client messages, runs the scheduler."""

    def __init__(self, conn: Connection, engines, storage, settings: Settings, jobs: JobAddress | None = None,
                 capacity: dict | None = None):
        """capacity: {capacity, source[, calibration]} for the ready message (default: configured)."""
        self.conn, self.engines, self.storage, self.settings = conn, engines, storage, settings
        self.capacity = capacity or {"capacity": capacity_of(settings), "source": "configured"}
        self.work_dir = Path(settings.data_dir) / "streams"
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self._send_lock = threading.Lock()
        self._steps: list[float] = []
        self._opening: set[str] = set()
        self._cancelled: set[str] = set()
        self._lock = threading.Lock()
        self.scheduler = Scheduler(threads_of(settings), self.send, self._steps.append,
                                   batcher=getattr(getattr(engines, "renderer", None), "batcher", None))
        self._prepare = ThreadPoolExecutor(PREPARE_THREADS, thread_name_prefix="engine-prepare")
        self.jobs = JobListener(jobs, self.handle) if jobs is not None else None

    def send(self, kind: str, sid: str | None, payload=None) -> None:
        """To the API, or to the worker process whose job `sid` is."""
        if self.jobs is not None and self.jobs.owns(sid):
            self.jobs.reply(sid, kind, pickle.dumps((kind, payload)))
            return
        with self._send_lock:
            self.conn.send((kind, sid, payload))

    def serve(self) -> None:
        threading.Thread(target=self.scheduler.run, name="engine-scheduler", daemon=True).start()
        threading.Thread(target=self._beat, name="engine-beat", daemon=True).start()
        self.send("ready", None, {**self.capacity, "threads": self.scheduler.threads})
        while True:
            try:
                kind, sid, payload = self.conn.recv()
            except (EOFError, OSError):
                break
            self.handle(kind, sid, payload)
        self.scheduler.stop()

    def handle(self, kind: str, sid: str, payload) -> None:
        if kind in ("stream", "live"):
            with self._lock:
                self._opening.add(sid)
            self._prepare.submit(self._open, kind, sid, payload)
        elif kind == "job":
            self.scheduler.add(sid, JobTask(payload, self.engines, lambda k, p: self.send(k, sid, p),
                                            self.scheduler.poke))
        elif kind == "cancel":
            task = self.scheduler.get(sid)
            if isinstance(task, JobTask):
                task.cancel()
        elif kind in ("audio", "eos", "interrupt", "pose"):
            self._live_input(kind, sid, payload)
        elif kind == "stop":
            task = self.scheduler.remove(sid)
            self.send("stopped", sid, task.stopped() if isinstance(task, LiveTask) else None)
        elif kind == "close":
            with self._lock:
                if sid in self._opening:
                    self._cancelled.add(sid)
            self.scheduler.remove(sid)

    def _open(self, kind: str, sid: str, spec: dict) -> None:
        try:
            if kind == "stream":
                task, first = StreamTask.open(spec, self.engines, self.storage, self.work_dir), ("prepared", None)
            else:
                task, started = LiveTask.open(spec, self.engines, self.storage, self.work_dir)
                first = ("started", started)
        except Exception as exc:  # noqa: BLE001 - reported to the client before any chunk
            self._forget(sid)
            self.send("error", sid, error_payload(exc, fatal=True))
            return
        if self._forget(sid):
            task.close()
            return
        with self._send_lock:          # known to the scheduler before the client hears of it,
            self.scheduler.add(sid, task)               # and no chunk overtakes `first`
            self.conn.send((first[0], sid, first[1]))

    def _forget(self, sid: str) -> bool:
        """Done opening `sid`; True if its client left meanwhile."""
        with self._lock:
            self._opening.discard(sid)
            if sid in self._cancelled:
                self._cancelled.discard(sid)
                return True
            return False

    def _live_input(self, kind: str, sid: str, payload) -> None:
        task = self.scheduler.get(sid)
        try:
            if not isinstance(task, LiveTask):
                from flashhead.errors import InputError
                raise InputError("no live session: send start first", field="type")
            {"audio": lambda: task.session.push_audio(payload), "eos": task.session.end_of_speech,
             "interrupt": task.session.interrupt, "pose": lambda: task.session.set_idle_pose(payload)}[kind]()
        except Exception as exc:  # noqa: BLE001 - the session goes on; the client hears why
            self.send("error", sid, error_payload(exc, fatal=False))
            return
        self.scheduler.poke()

    def _beat(self) -> None:
        while True:
            time.sleep(BEAT_S)
            try:
                self.send("beat", None, self.beat())
            except (OSError, ValueError):
                return

    def beat(self) -> dict:
        """Since the last beat: each step's seconds, and each batch's size (batching renderers)."""
        steps, self._steps[:] = list(self._steps), []
        batcher = self.scheduler.batcher
        return {"active": self.scheduler.active, "steps": steps, "oldest_step_s": self.scheduler.oldest_step_s(),
                "batches": batcher.take_sizes() if batcher is not None else []}


class EngineThread:
    """The engine loop in a thread of this process, on engines the caller built."""

    def __init__(self, engines, storage, settings: Settings, on_beat=None, on_ready=None):
        ours, theirs = socket.socketpair()
        self.link = EngineLink(Connection(ours.detach()), on_beat=on_beat, on_ready=on_ready,
                               max_pending=settings.engine_max_pending_chunks,
                               outbox_bytes=settings.engine_outbox_bytes)
        engine = Engine(Connection(theirs.detach()), engines, storage, settings)
        threading.Thread(target=engine.serve, name="engine", daemon=True).start()
        self.error: str | None = None

    def wait_ready(self, timeout_s: float = READY_TIMEOUT_S) -> None:
        if not self.link.ready.wait(timeout_s):
            raise RuntimeError("the render engine did not start")

    def stop(self) -> None:
        self.link.shutdown()

    @property
    def pid(self) -> int | None:
        return None


class EngineProcess:
    """Supervises `python -m flashhead.engine.process`: start, watch, restart."""

    def __init__(self, settings: Settings, on_beat=None, on_ready=None):
        self.settings, self.on_beat, self.on_ready = settings, on_beat, on_ready
        self.jobs = JobAddress.new()              # where worker processes hand their renders
        self.link: EngineLink | None = None
        self.error: str | None = None
        self.restarts = 0
        self._proc: subprocess.Popen | None = None
        self._ready = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._supervise, name="engine-supervisor", daemon=True)

    def start(self) -> "EngineProcess":
        self._thread.start()
        return self

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None and self._proc.poll() is None else None

    def wait_ready(self, timeout_s: float = READY_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout_s
        while not self._ready.wait(0.1):
            if self.error:
                raise RuntimeError(self.error)
            if time.monotonic() > deadline:
                raise RuntimeError(f"the render engine is not ready after {timeout_s} s")

    def stop(self) -> None:
        self._stop.set()
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._thread.join(timeout=5)

    def _spawn(self) -> tuple[subprocess.Popen, EngineLink]:
        ours, theirs = socket.socketpair()
        env = {**os.environ, SETTINGS_ENV: self.settings.model_dump_json(), **self.jobs.env()}
        proc = subprocess.Popen([sys.executable, "-m", "flashhead.engine.process", "--parent-pid",
                                 str(os.getpid()), "--fd", str(theirs.fileno())],
                                pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL, env=env)
        theirs.close()
        return proc, EngineLink(Connection(ours.detach()), on_beat=self.on_beat, on_ready=self.on_ready,
                                max_pending=self.settings.engine_max_pending_chunks,
                                outbox_bytes=self.settings.engine_outbox_bytes)

    def _supervise(self) -> None:
        """Spawned from this long-lived thread: PDEATHSIG follows the spawning thread."""
        while not self._stop.is_set():
            self._proc, link = self._spawn()
            started = self._watch(self._proc, link)
            rc = self._proc.wait()
            if not started:
                link.drained(READ_LAST_S)          # its last message may say why
            self._ready.clear()
            self.link = None
            link.fail_all(EngineFailed("the render engine stopped while this session ran; it is restarting"))
            if self._stop.is_set():
                return
            log.error("render engine died", extra={"returncode": rc, "restarts": self.restarts})
            if not started:
                self.error = f"the render engine exited with status {rc} while starting" + \
                    (f": {link.start_error}" if link.start_error else "")
                return
            self.restarts += 1
            self._stop.wait(RESTART_DELAY_S)

    def _watch(self, proc: subprocess.Popen, link: EngineLink) -> bool:
        """Until the process exits; kills it when it hangs. True if it got ready."""
        deadline_s = self.settings.engine_step_deadline_s
        started = False
        while proc.poll() is None and not self._stop.is_set():
            if not started and link.ready.wait(0.1):
                started = True
                self.link = link
                self._ready.set()
            elif started:
                time.sleep(0.1)
                if link.hung(deadline_s):
                    log.error("render engine hung: killing it", extra={"deadline_s": deadline_s})
                    proc.kill()
            if link.closed:
                break
        return started


# ---- the engine process ----------------------------------------------------------------------

def measured_capacity(engines, settings: Settings) -> dict | None:
    """engine_capacity_mode=calibrate: this process's calibrated capacity (None: configured)."""
    if settings.engine_capacity_mode != "calibrate":
        return None
    from flashhead.engine.calibrate import calibrate

    found = calibrate(engines, settings.engine_calibration_headroom)
    log.info("render engine calibrated", extra=found)
    return {"capacity": found["capacity"], "source": "calibrated", "calibration": [found]}


def pool_ready(settings: Settings, infos: list[dict]) -> dict:
    """The CPU pool's ready message: calibrated, the sum of its processes' capacities."""
    calibrated = settings.engine_capacity_mode == "calibrate"
    out = {"capacity": sum(i["capacity"] for i in infos) if calibrated else capacity_of(settings),
           "source": "calibrated" if calibrated else "configured", "processes": len(infos),
           "threads": sum(i["threads"] for i in infos)}
    if calibrated:
        out["calibration"] = [c for i in infos for c in i["calibration"]]
    return out


def main(argv: list[str] | None = None) -> int:
    from flashhead.jobs.processes import _die_with_parent

    p = argparse.ArgumentParser(prog="python -m flashhead.engine.process")
    p.add_argument("--parent-pid", type=int, required=True)
    p.add_argument("--fd", type=int, required=True)
    a = p.parse_args(argv)
    _die_with_parent(a.parent_pid)
    signal.signal(signal.SIGINT, signal.SIG_IGN)              # Ctrl-C: the parent stops us
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    from flashhead.api.observability import setup_logging
    from flashhead.jobs.backends import make_storage
    from flashhead.jobs.memory import heap_trimmer
    from flashhead.pipeline import Engines

    setup_logging()
    conn = Connection(a.fd)
    settings = Settings.model_validate_json(os.environ[SETTINGS_ENV])
    jobs = JobAddress.from_env(os.environ)
    if processes_of(settings) > 1:
        from flashhead.engine.pool import Router

        router = Router(conn, settings, processes_of(settings), SETTINGS_ENV, jobs)
        router.serve(lambda infos: pool_ready(settings, infos))
        return 0
    try:
        engines = Engines.create(settings)
        capacity = measured_capacity(engines, settings)
    except Exception as exc:
        log.exception("render engine start-up failed")
        conn.send(("failed", None, f"{type(exc).__name__}: {exc}"))     # why, for /health
        return 1
    heap_trimmer(settings.heap_trim_s).start()       # sessions' freed frames and encoders go back
    Engine(conn, engines, make_storage(settings), settings, jobs, capacity).serve()
    return 0


if __name__ == "__main__":
    sys.exit(main())
