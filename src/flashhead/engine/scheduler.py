"""Deadline-first steps over every active session, on a fixed number of render threads.

Each tick hands free threads to the sessions whose next step is due, most urgent first: live
sessions by the media-clock time their next chunk is due, then streams (least recently served
first), which fill the spare capacity. A session has at most one step in flight, so its steps
stay in order. Steps' messages go to `send(kind, sid, payload)`. A renderer that batches
(NeuralRenderer.batcher) hears of every step handed out before any of them runs, so the chunk
steps of the sessions due together run as one batch.
"""
from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

from flashhead.errors import FlashheadError

log = logging.getLogger("flashhead.engine")
IDLE_WAIT_S = 0.5


class Scheduler:
    def __init__(self, threads: int, send: Callable[[str, str, object], None],
                 on_step: Callable[[float], None] = lambda s: None, batcher=None):
        self.threads, self.send, self.on_step = threads, send, on_step
        self.batcher = batcher                    # join() / leave() per step, or None
        self._announced: set[str] = set()         # sessions counted in the batcher
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="engine-step")
        self._cond = threading.Condition()
        self._tasks: dict[str, object] = {}
        self._busy: dict[str, float] = {}         # session id -> when its running step began
        self._stop = False

    # -- called from the message loop ------------------------------------------------------
    def add(self, sid: str, task) -> None:
        with self._cond:
            self._tasks[sid] = task
            self._cond.notify_all()

    def get(self, sid: str):
        with self._cond:
            return self._tasks.get(sid)

    def remove(self, sid: str):
        """Forget the session; it is closed now, or after its running step."""
        with self._cond:
            task = self._tasks.pop(sid, None)
            idle = task is not None and sid not in self._busy
            if idle:
                self._unannounce(sid)
        if idle:
            self._pool.submit(task.close)
        return task

    def poke(self) -> None:
        """A session's due time may have changed (audio arrived, an interrupt)."""
        with self._cond:
            self._cond.notify_all()

    def stop(self) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify_all()

    def oldest_step_s(self) -> float:
        """How long the longest-running step has run (0 when none runs)."""
        with self._cond:
            return time.monotonic() - min(self._busy.values()) if self._busy else 0.0

    @property
    def active(self) -> int:
        with self._cond:
            return len(self._tasks)

    # -- the loop ----------------------------------------------------------------------------
    def run(self) -> None:
        with self._cond:
            while not self._stop:
                now = time.monotonic()
                waiting = [(t.key(now), sid, t) for sid, t in self._tasks.items() if sid not in self._busy]
                waiting.sort(key=lambda w: w[0])
                free = self.threads - len(self._busy)
                due = [(sid, task) for _, sid, task in waiting if task.ready(now)][:max(free, 0)]
                self._announce(waiting, {sid for sid, _ in due})     # all of them, before any runs
                for sid, task in due:
                    self._busy[sid] = time.monotonic()
                    self._pool.submit(self._step, sid, task)
                self._cond.wait(self._wait_s(waiting, now))

    def _announce(self, waiting: list, due: set[str]) -> None:
        """Tell the batcher of the steps about to run; a session still announced from its last
        step (due again at once) is not counted twice, one no longer due is withdrawn."""
        if self.batcher is None:
            return
        for _, sid, _task in waiting:
            if sid in due and sid not in self._announced:
                self._announced.add(sid)
                self.batcher.join()
            elif sid not in due:
                self._unannounce(sid)

    def _unannounce(self, sid: str) -> None:
        if sid in self._announced:
            self._announced.discard(sid)
            self.batcher.leave()

    def _wait_s(self, waiting: list, now: float) -> float:
        dues = [key[1] for key, sid, _ in waiting if key[0] == 0 and sid not in self._busy and key[1] > now]
        return max(0.001, min([IDLE_WAIT_S] + [d - now for d in dues]))

    def _step(self, sid: str, task) -> None:
        t0 = time.perf_counter()
        try:
            messages = task.step()
        except Exception as exc:  # noqa: BLE001 - the session ends with an error message
            messages = [("error", error_payload(exc, fatal=True))]
            task.done = True
        self.on_step(time.perf_counter() - t0)
        with self._cond:
            self._busy.pop(sid, None)
            current = self._tasks.get(sid) is task
            if task.done and current:
                del self._tasks[sid]
            if not (current and task.ready(time.monotonic())):    # due again: stays announced
                self._unannounce(sid)
            self._cond.notify_all()
        if current:
            for kind, payload in messages:
                self.send(kind, sid, payload)
        if task.done or not current:
            task.close()


def error_payload(exc: BaseException, *, fatal: bool) -> dict:
    from pydantic import ValidationError

    if isinstance(exc, ValidationError):
        reason = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        return {"error_type": "invalid_input", "message": reason, "field": None, "fatal": fatal}
    if isinstance(exc, FlashheadError):
        return {"error_type": exc.error_type, "message": exc.message, "field": exc.field, "fatal": fatal}
    log.exception("engine step failed", exc_info=exc)
    return {"error_type": "internal_error", "message": "internal error while rendering", "field": None,
            "fatal": fatal}
