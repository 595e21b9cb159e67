"""Queue jobs rendered by the engine: worker processes keep the job (claim, lease, logs, cancel,
storing the file, finishing) and hand the render to the engine, which holds the only renderer.

One machine: the engine listens on an abstract Unix socket whose name and key the API process
(EngineProcess) gives to the engine and to its worker processes (JobAddress); multiprocessing
connections, authenticated by the key, carry pickled tuples.
  worker -> engine  ("job", {request, output_path, allow_paths}) | ("cancel", None)
  engine -> worker  ("log", text) | ("progress", (done, total)) | ("result", GenerationResult)
                    | ("error", {error_type, message, field, fatal})
The engine process (or the CPU pool's router) gives each job connection a session id and treats
the job like a session: the scheduler steps it one chunk at a time (JobTask) behind the live
sessions and streams, so offline work fills the spare capacity. A worker that leaves drops its
job; an engine that goes away raises EngineFailed in the worker, which hands the job back to the
queue (re-queued once, as when a worker process dies; see flashhead.jobs.processes).
"""
from __future__ import annotations

import itertools
import json
import logging
import os
import threading
import time
from dataclasses import dataclass
from multiprocessing.connection import AuthenticationError, Client, Connection, Listener
from typing import Callable

from flashhead.errors import EngineFailed, error_for_type

log = logging.getLogger("flashhead.engine")
JOBS_ENV = "FLASHHEAD_ENGINE_JOBS_JSON"
CONNECT_RETRY_S = 0.2


@dataclass(frozen=True)
class JobAddress:
    """Where a worker process finds its engine: an abstract Unix socket name and its key."""

    name: str
    key: str                                   # hex

    @classmethod
    def new(cls) -> "JobAddress":
        return cls(f"flashhead-engine-{os.getpid()}-{os.urandom(6).hex()}", os.urandom(32).hex())

    @property
    def address(self) -> str:
        return "\0" + self.name

    def env(self) -> dict[str, str]:
        return {JOBS_ENV: json.dumps({"name": self.name, "key": self.key})}

    @classmethod
    def from_env(cls, environ) -> "JobAddress | None":
        raw = environ.get(JOBS_ENV)
        return cls(**json.loads(raw)) if raw else None


# ---- the engine side -------------------------------------------------------------------------

class JobListener:
    """Accepts worker connections; `handle(kind, sid, payload)` gets ("job" | "cancel" | "close")."""

    def __init__(self, address: JobAddress, handle: Callable[[str, str, object], None]):
        self.handle = handle
        self._listener = Listener(address.address, family="AF_UNIX", authkey=bytes.fromhex(address.key))
        self._conns: dict[str, tuple[Connection, threading.Lock]] = {}   # the job thread and a step send
        self._ids = itertools.count()
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, name="engine-jobs", daemon=True).start()

    def owns(self, sid: str | None) -> bool:
        return sid is not None and sid in self._conns

    def reply(self, sid: str, kind: str, raw: bytes) -> None:
        """The engine's message for a job (pickled bytes); the last one ends the job."""
        with self._lock:
            conn, lock = self._conns.get(sid, (None, None))
            if kind in ("result", "error"):
                self._conns.pop(sid, None)
        if conn is not None:
            try:
                with lock:
                    conn.send_bytes(raw)
            except (OSError, ValueError):      # the worker is gone; its reader says close
                pass

    def _accept(self) -> None:
        while True:
            try:
                conn = self._listener.accept()
            except (AuthenticationError, EOFError, ConnectionError):
                continue
            except OSError:
                return
            sid = f"j{next(self._ids)}"
            with self._lock:
                self._conns[sid] = (conn, threading.Lock())
            threading.Thread(target=self._read, args=(sid, conn), name=f"engine-job-{sid}", daemon=True).start()

    def _read(self, sid: str, conn: Connection) -> None:
        try:
            while True:
                kind, payload = conn.recv()
                if kind in ("job", "cancel"):
                    self.handle(kind, sid, payload)
        except (EOFError, OSError, ValueError, TypeError):
            pass
        with self._lock:
            running = self._conns.pop(sid, None) is not None
        conn.close()
        if running:                            # the worker left before the job ended
            self.handle("close", sid, None)


class JobTask:
    """A queue job in the scheduler: generate() runs on its own thread, and every chunk waits at
    a gate (generate's should_cancel) for the scheduler's step, so a job renders one chunk per
    step, when nothing more urgent is due."""

    live = False

    def __init__(self, spec: dict, engines, send: Callable[[str, object], None], wake: Callable[[], None],
                 generate: Callable | None = None):
        """generate: flashhead.pipeline.generate unless given (tests)."""
        self.spec, self.engines, self.send, self.wake = spec, engines, send, wake
        self._generate = generate
        self.done = False
        self.last_step = 0.0
        self._cond = threading.Condition()
        self._at_gate = self._granted = self._cancelled = False
        self._final: tuple[str, object] | None = None
        threading.Thread(target=self._run, name="engine-job", daemon=True).start()

    def key(self, now: float) -> tuple[int, float]:
        """After live sessions (0) and streams (1): offline work fills the spare time."""
        return (2, self.last_step)

    def ready(self, now: float) -> bool:
        with self._cond:
            return not self.done and (self._at_gate or self._final is not None)

    def step(self) -> list[tuple[str, object]]:
        """Let the job render its next chunk; back when it waits at the gate again or ended."""
        self.last_step = time.monotonic()
        with self._cond:
            if self._final is None:
                self._granted, self._at_gate = True, False
                self._cond.notify_all()
                while self._final is None and not self._at_gate:
                    self._cond.wait()
            if self._final is None:
                return []
            self.done = True
            return [self._final]

    def cancel(self) -> None:
        with self._cond:
            self._cancelled = True
            self._cond.notify_all()

    def close(self) -> None:
        self.cancel()

    def _gate(self) -> bool:
        """generate()'s should_cancel, asked before every chunk: wait for a step; True: cancelled."""
        with self._cond:
            self._at_gate = True
            self._cond.notify_all()
        self.wake()
        with self._cond:
            while not self._granted and not self._cancelled:
                self._cond.wait()
            self._granted = False
            return self._cancelled

    def _run(self) -> None:
        from flashhead.engine.scheduler import error_payload
        from flashhead.pipeline import generate

        try:
            result = (self._generate or generate)(self.spec["request"], self.engines, self.spec["output_path"],
                              allow_paths=self.spec["allow_paths"], should_cancel=self._gate,
                              log=lambda m: self.send("log", m),
                              progress=lambda done, total: self.send("progress", (done, total)))
            final = ("result", result)
        except Exception as exc:  # noqa: BLE001 - the worker fails the job with this error
            final = ("error", error_payload(exc, fatal=True))
        with self._cond:
            self._final = final
            self._cond.notify_all()
        self.wake()


# ---- the worker side -------------------------------------------------------------------------

class EngineJobs:
    """A worker process's `generate`: the render runs in the engine at `address`. Cancellation
    is asked every poll_s and passed on; an engine that goes away (or cannot be reached for
    connect_timeout_s) raises EngineFailed."""

    def __init__(self, address: JobAddress, connect_timeout_s: float, poll_s: float = 0.5):
        self.address, self.connect_timeout_s, self.poll_s = address, connect_timeout_s, poll_s

    def __call__(self, request, engines, output_path, *, allow_paths: bool = False, should_cancel=None,
                 log=None, progress=None):
        conn = self._connect()
        try:
            conn.send(("job", {"request": request, "output_path": str(output_path), "allow_paths": allow_paths}))
            return self._follow(conn, should_cancel, log or (lambda _m: None), progress or (lambda _d, _t: None))
        except (EOFError, OSError) as exc:
            raise EngineFailed("the render engine stopped while this request was running") from exc
        finally:
            conn.close()

    def _follow(self, conn: Connection, should_cancel, log, progress):
        cancel_sent, asked = False, time.monotonic()
        while True:
            if not cancel_sent and should_cancel is not None and time.monotonic() - asked >= self.poll_s:
                asked = time.monotonic()
                if should_cancel():
                    conn.send(("cancel", None))
                    cancel_sent = True
            if not conn.poll(self.poll_s):
                continue
            kind, payload = conn.recv()
            if kind == "log":
                log(payload)
            elif kind == "progress":
                progress(*payload)
            elif kind == "result":
                return payload
            elif kind == "error":
                raise error_for_type(payload["error_type"], payload["message"], payload.get("field"))

    def _connect(self) -> Connection:
        deadline = time.monotonic() + self.connect_timeout_s
        while True:
            try:
                return Client(self.address.address, family="AF_UNIX", authkey=bytes.fromhex(self.address.key))
            except (OSError, EOFError, AuthenticationError) as exc:
                if time.monotonic() > deadline:
                    raise EngineFailed(f"the render engine is not reachable after {self.connect_timeout_s:.0f} s; "
                                       "it is restarting") from exc
            time.sleep(CONNECT_RETRY_S)
