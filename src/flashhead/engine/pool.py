"""The CPU engine's pool of render processes, one per core, behind one router.

The CPU renderer is Python plus short C calls per frame: threads of one process share one GIL,
so the CPU engine runs `engine_processes` render processes (default: the cores), each a whole
Engine (process.py) with its own renderer, portrait cache and deadline-first scheduler
(`python -m flashhead.engine.pool`). The engine process itself only routes (`Router`): a new
session is pinned to one render process (`pick`: the one that already prepared its portrait when
that one has room, else the one with the fewest sessions), so its renderer state stays there;
client messages go to that process, and everything it sends goes to the API unchanged
(forwarded as the pickled bytes it arrived as). Queue jobs from worker processes (jobs.py) are
pinned the same way, and their messages go back to their worker. The router's heartbeat sums
the processes' ones. A render process that dies fails only the sessions and queue jobs pinned to
it (engine_failed, at once: a job goes back to the queue) and is replaced by a new one; the other
processes' sessions go on. One that hangs (silent, or in one step, past engine_step_deadline_s)
is killed by the router, which makes it one that died; the API's own hang check, at the same
deadline, covers the router.
"""
from __future__ import annotations

import hashlib
import logging
import math
import os
import pickle
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import OrderedDict
from multiprocessing.connection import Connection

from flashhead.config import Settings
from flashhead.constants import PORTRAIT_CACHE_SIZE
from flashhead.engine.jobs import JOBS_ENV, JobAddress, JobListener
from flashhead.engine.outbox import Outbox
from flashhead.engine.relay import FINAL as SESSION_FINAL
from flashhead.errors import EngineFailed

log = logging.getLogger("flashhead.engine")
FINAL = SESSION_FINAL | {"result"}          # a session's or a queue job's last message
MAX_FAILED_STARTS = 3                        # replacements in a row dying before ready: engine restart
RESPAWN_DELAY_S = 2.0                        # times the failed starts in a row, before the next


class RenderProcess:
    """One render process and the sessions pinned to it."""

    def __init__(self, index: int, settings: Settings, settings_env: str):
        ours, theirs = socket.socketpair()
        env = {**{k: v for k, v in os.environ.items() if k != JOBS_ENV}, settings_env: settings.model_dump_json()}
        self.proc = subprocess.Popen([sys.executable, "-m", "flashhead.engine.pool", "--parent-pid",
                                      str(os.getpid()), "--fd", str(theirs.fileno())],
                                     pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL, env=env)
        theirs.close()
        self.index, self.conn = index, Connection(ours.detach())
        self.outbox = Outbox(self.conn, settings.engine_outbox_bytes, f"pool-writer-{index}")
        self.started_at = time.monotonic()
        self.replaced = False                   # it died: a new process takes its place
        self.killed = False                     # hung: killed, its death not seen yet
        self.sessions: set[str] = set()
        self.share = 1                          # sessions it holds in real time (set when ready)
        self.portraits: OrderedDict[str, None] = OrderedDict()   # portrait_key()s sent to it, newest last
        self.info: dict = {}
        self.ready = threading.Event()
        self.beat: dict = {"active": 0, "oldest_step_s": 0.0}
        self.last_beat = time.monotonic()
        self.steps: list[float] = []
        self.batches: list[int] = []

    def send(self, message: tuple) -> None:
        """Queued (the API's messages and the workers' jobs): a hung process blocks no sender;
        OSError when it is gone or has left engine_outbox_bytes unread."""
        self.outbox.send(message)

    def took(self, sid: str, portrait: str | None) -> None:
        """`sid` pinned here; its portrait is now (or soon) in this process's portrait cache."""
        self.sessions.add(sid)
        if portrait is not None:
            self.portraits[portrait] = None
            self.portraits.move_to_end(portrait)
            while len(self.portraits) > PORTRAIT_CACHE_SIZE:
                self.portraits.popitem(last=False)


def portrait_key(kind: str, payload) -> str | None:
    """The portrait a new session or queue job renders, as the router knows it: a hash of its
    image_url (the same URL or data URI is the same portrait; what a URL serves is fetched in the
    render process, whose cache is keyed by the bytes: a URL whose picture changed only misses)."""
    spec = payload.get("payload", {}) if kind == "stream" else payload
    ref = getattr(spec["request"], "image_url", None) if kind == "job" else spec.get("image_url")
    return hashlib.sha256(ref.encode()).hexdigest() if isinstance(ref, str) else None


def pick(procs: list, portrait: str | None):
    """The render process for a new session: of those that prepared `portrait`, the least loaded
    if it has room (fewer sessions than its share, and at most one more than the least loaded
    process: a popular portrait does not pile onto one core while another idles), else the
    least loaded of all. Only live processes (not dead, not killed as hung), ready ones first (a
    replacement still starting takes sessions only when no other can); None when every process
    is dead."""
    procs = [p for p in procs if not (p.replaced or p.killed)]
    procs = [p for p in procs if p.ready.is_set()] or procs
    if not procs:
        return None
    least = min(procs, key=lambda p: (len(p.sessions), p.index))
    holders = [p for p in procs if portrait in p.portraits and len(p.sessions) < p.share
               and len(p.sessions) <= len(least.sessions) + 1]
    return min(holders, key=lambda p: (len(p.sessions), p.index)) if holders else least


class Router:
    """Serves the API connection for a pool of render processes."""

    def __init__(self, conn: Connection, settings: Settings, processes: int, settings_env: str,
                 jobs: JobAddress | None = None):
        self.conn, self.settings_env = conn, settings_env
        self.child = settings.model_copy(update={"engine_processes": 1, "engine_threads": settings.engine_threads or 1})
        self.procs = [RenderProcess(i, self.child, settings_env) for i in range(processes)]
        self.owner: dict[str, RenderProcess] = {}
        self.announced = False                  # the engine told the API it is ready
        self.failed_starts = 0                  # replacements in a row that died before ready
        self.replacements = 0                   # processes that died (or were killed) since the last beat
        self._dead: queue.SimpleQueue[RenderProcess] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._send_lock = threading.Lock()
        self.jobs = JobListener(jobs, self._route) if jobs is not None else None

    def serve(self, ready_payload) -> None:
        """`ready_payload(infos)`: the ready message, from the processes' ready messages."""
        for p in self.procs:
            self._start_reader(p)
        for p in self.procs:
            p.ready.wait()
        self._send_raw(pickle.dumps(("ready", None, ready_payload([p.info for p in self.procs]))))
        self.announced = True
        threading.Thread(target=self._beat, name="pool-beat", daemon=True).start()
        threading.Thread(target=self._replace_dead, name="pool-respawn", daemon=True).start()
        while True:
            try:
                kind, sid, payload = self.conn.recv()
            except (EOFError, OSError):
                break
            self._route(kind, sid, payload)
        self.stop()

    def stop(self) -> None:
        for p in self.procs:
            if p.proc.poll() is None:
                p.proc.kill()

    def _route(self, kind: str, sid: str, payload) -> None:
        with self._lock:
            if kind in ("stream", "live", "job"):
                portrait = portrait_key(kind, payload)
                proc = pick(self.procs, portrait)
                if proc is not None:
                    proc.took(sid, portrait)
                    self.owner[sid] = proc
            else:                                             # unknown: any process says so
                proc = self.owner.get(sid) or next((p for p in self.procs if not p.replaced), None)
                if kind == "close":
                    self._forget(sid)
        if proc is None:
            if kind in ("stream", "live", "job"):
                self._fail(sid)
            return
        try:
            proc.send((kind, sid, payload))
        except (OSError, ValueError):
            self._died(proc)

    def _forget(self, sid: str) -> None:
        proc = self.owner.pop(sid, None)
        if proc is not None:
            proc.sessions.discard(sid)

    def _read(self, proc: RenderProcess) -> None:
        while True:
            try:
                raw = proc.conn.recv_bytes()
            except (EOFError, OSError):
                self._died(proc)
                proc.conn.close()
                return
            kind, sid, payload = pickle.loads(raw)
            if kind == "ready":
                proc.info = payload
                # calibrated: what it measured; configured: its part of the engine's capacity
                proc.share = payload["capacity"] if payload.get("source") == "calibrated" else \
                    math.ceil(payload["capacity"] / len(self.procs))
                proc.last_beat = time.monotonic()
                proc.ready.set()
                continue
            if kind == "failed" and self.announced:       # a replacement that cannot start: it
                log.error("a render process could not start: %s", payload)   # exits next (_died)
                continue
            if kind == "beat":
                with self._lock:
                    proc.beat, proc.last_beat = payload, time.monotonic()
                    proc.steps += payload["steps"]
                    proc.batches += payload["batches"]
                continue
            if kind in FINAL or (kind == "error" and payload.get("fatal")):
                with self._lock:
                    self._forget(sid)
            if self.jobs is not None and self.jobs.owns(sid):
                self.jobs.reply(sid, kind, pickle.dumps((kind, payload)))
            else:
                self._send_raw(raw)

    def _send_raw(self, raw: bytes) -> None:
        with self._send_lock:
            try:
                self.conn.send_bytes(raw)
            except (OSError, ValueError):
                os._exit(0)                  # the API is gone: so is this engine

    def _start_reader(self, proc: RenderProcess) -> None:
        threading.Thread(target=self._read, args=(proc,), name=f"pool-reader-{proc.index}", daemon=True).start()

    def _died(self, proc: RenderProcess) -> None:
        """Its sessions and jobs fail at once (engine_failed) and the respawn thread replaces
        it. Before the engine is ready, or after MAX_FAILED_STARTS replacements in a row died
        before they were ready, the engine exits instead: the API's supervisor restarts it (and
        /health says why it cannot start)."""
        with self._lock:
            if proc.replaced:                   # its reader and a send both saw it
                return
            proc.replaced = True
            proc.outbox.close()
            self.replacements += 1
            lost = [sid for sid, owner in self.owner.items() if owner is proc]
            for sid in lost:
                self._forget(sid)
            self.failed_starts = 0 if proc.ready.is_set() else self.failed_starts + 1
        log.error("render process died: its sessions failed",
                  extra={"render_process": proc.index, "returncode": proc.proc.poll(), "sessions": len(lost)})
        if not self.announced or self.failed_starts >= MAX_FAILED_STARTS:
            self.stop()
            os._exit(1)
        for sid in lost:
            self._fail(sid)
        self._dead.put(proc)

    def _fail(self, sid: str) -> None:
        failed = {"error_type": EngineFailed.error_type, "message": "the render process of this session "
                  "stopped; start it again", "field": None, "fatal": True}
        if self.jobs is not None and self.jobs.owns(sid):
            self.jobs.reply(sid, "error", pickle.dumps(("error", failed)))
        else:
            self._send_raw(pickle.dumps(("error", sid, failed)))

    def _replace_dead(self) -> None:
        """One long-lived thread spawns the replacements: a render process dies with the thread
        that started it (PR_SET_PDEATHSIG), so not a reader's or a job's, which end."""
        while True:
            dead = self._dead.get()
            if dead.proc.poll() is None:
                dead.proc.kill()
            try:
                dead.proc.wait(timeout=10)      # reaped (its reader closes its connection)
            except subprocess.TimeoutExpired:
                log.error("a dead render process could not be reaped", extra={"render_process": dead.index})
            time.sleep(RESPAWN_DELAY_S * self.failed_starts)
            fresh = RenderProcess(dead.index, self.child, self.settings_env)
            with self._lock:
                self.procs[self.procs.index(dead)] = fresh
            self._start_reader(fresh)

    def _beat(self) -> None:
        from flashhead.engine.process import BEAT_S

        while True:
            time.sleep(BEAT_S)
            self.kill_hung()
            self._send_raw(pickle.dumps(("beat", None, self.beat())))

    def kill_hung(self) -> None:
        """Kills the render processes silent for longer than the step deadline: their reader
        sees them die (_died), their sessions fail and they are replaced, before the API's own
        check of the beats (the same deadline) would restart the whole engine."""
        now = time.monotonic()
        with self._lock:
            deadline_s = self.child.engine_step_deadline_s
            hung = [p for p in self.procs if not p.killed and self._silent(p, now) > deadline_s]
            for p in hung:
                p.killed = True
        for p in hung:
            log.error("render process hung: killing it", extra={"render_process": p.index,
                                                                 "deadline_s": deadline_s})
            p.proc.kill()

    @staticmethod
    def _silent(p: RenderProcess, now: float) -> float:
        """How long a process has been stuck: a step running since its last beat (less one beat
        interval); a replacement still starting, only once it is later than READY_TIMEOUT_S; 0
        for a dead or killed one (its sessions fail: it is not hung)."""
        from flashhead.engine.process import BEAT_S, READY_TIMEOUT_S

        if p.replaced or p.killed:
            return 0.0
        if not p.ready.is_set():
            return max(0.0, now - p.started_at - READY_TIMEOUT_S)
        return max(p.beat["oldest_step_s"], now - p.last_beat - BEAT_S)

    def beat(self) -> dict:
        """The processes' beats summed; the oldest step is the longest a process has been stuck
        (_silent), so the API's step deadline also covers a process kill_hung has not killed."""
        now = time.monotonic()
        with self._lock:
            steps = [s for p in self.procs for s in p.steps]
            batches = [b for p in self.procs for b in p.batches]
            for p in self.procs:
                p.steps, p.batches = [], []
            replaced, self.replacements = self.replacements, 0
            return {"active": sum(p.beat["active"] for p in self.procs), "steps": steps, "batches": batches,
                    "oldest_step_s": max(self._silent(p, now) for p in self.procs),
                    "processes": [len(p.sessions) for p in self.procs], "replaced": replaced}


def main(argv: list[str] | None = None) -> int:
    """A render process: the engine loop (process.py) on its own renderer."""
    from flashhead.engine.process import main as engine_main

    return engine_main(argv)


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sys.exit(main())
