"""The API side of an engine connection: one reader thread, one channel per session.

A route opens a Channel (from the event loop), sends the client's messages through it and
awaits the engine's replies with `get()`. When the engine dies every open channel receives an
engine_failed error at once; when the client leaves, `close()` tells the engine to drop it.
"""
from __future__ import annotations

import asyncio
import itertools
import logging
import threading
import time
from multiprocessing.connection import Connection

from flashhead.config import Settings
from flashhead.engine.outbox import Outbox
from flashhead.errors import BackendUnavailable, FlashheadError, LimitExceeded, error_for_type

log = logging.getLogger("flashhead.engine")
FINAL = {"end", "stopped"}            # the last message of a session (and a fatal error)


def settle(receiver, kind: str, payload) -> tuple[str, object]:
    """An engine message as a route gets it: a fatal error raised (receiver.finished set), a
    non-fatal one returned as ("error", exc)."""
    if kind == "error":
        exc = payload if isinstance(payload, FlashheadError) else \
            error_for_type(payload["error_type"], payload["message"], payload.get("field"))
        if isinstance(payload, FlashheadError) or payload.get("fatal"):
            receiver.finished = True
            raise exc
        return "error", exc
    if kind in FINAL:
        receiver.finished = True
    return kind, payload


class Channel:
    def __init__(self, link: "EngineLink", sid: str, loop: asyncio.AbstractEventLoop, kind: str = "live"):
        self.link, self.sid, self.loop = link, sid, loop
        # A stream's backlog is bounded by its input's length; a live session's only by this.
        self.max_unread = link.max_pending if kind == "live" else None
        self.queue: asyncio.Queue = asyncio.Queue()
        self.finished = False
        self._unread = 0                  # delivered, not yet taken by get() (both threads)
        self._lock = threading.Lock()

    def deliver(self, kind: str, payload) -> None:
        """From the reader thread. A live client that leaves more than max_unread chunks unread
        loses its session (the engine drops it) instead of growing this queue without end."""
        with self._lock:
            self._unread += 1
            overflow = kind == "event" and self.max_unread is not None and self._unread > self.max_unread
        if overflow:
            self.link.channels.pop(self.sid, None)
            self.link.send("close", self.sid)
            kind, payload = "error", LimitExceeded(
                f"the client left more than {self.max_unread} chunks unread; the session ended")
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, (kind, payload))
        except RuntimeError:          # the event loop is closed: nobody is listening
            pass

    async def get(self) -> tuple[str, object]:
        """The next (kind, payload); an "error" payload is raised as its FlashheadError when fatal,
        returned as ("error", exc) when the session goes on."""
        kind, payload = await self.queue.get()
        with self._lock:
            self._unread -= 1
        return settle(self, kind, payload)

    def send(self, kind: str, payload=None) -> None:
        self.link.send(kind, self.sid, payload)

    def interrupt(self, exc: FlashheadError) -> None:
        """End the session from the API side: the engine drops it and get() raises `exc` (after
        what was delivered before)."""
        self.close()
        self.deliver("error", exc)

    def close(self) -> None:
        """The client is done (or gone): the engine drops the session if it still runs."""
        if self.link.channels.pop(self.sid, None) is not None and not self.finished:
            try:
                self.link.send("close", self.sid)
            except OSError:
                pass


class EngineLink:
    def __init__(self, conn: Connection, *, on_beat=None, on_ready=None, max_pending: int = 100,
                 outbox_bytes: int = Settings.model_fields["engine_outbox_bytes"].default):
        self.conn, self.max_pending = conn, max_pending
        self.outbox = Outbox(conn, outbox_bytes, "engine-writer")    # a hung engine blocks no route
        self.channels: dict[str, Channel] = {}
        self.ready = threading.Event()
        self.info: dict = {}
        self.start_error: str | None = None   # the engine's "failed": why it could not start
        self.closed = False
        self.last_beat = time.monotonic()
        self.oldest_step_s = 0.0
        self.on_beat = on_beat or (lambda beat: None)
        self.on_ready = on_ready or (lambda info: None)     # the engine's capacity, at each start
        self._ids = itertools.count()
        threading.Thread(target=self._read, name="engine-reader", daemon=True).start()

    def open(self, kind: str, spec: dict) -> Channel:
        """From the event loop: a new session of `kind` ("stream" | "live"). BackendUnavailable
        when the engine is restarting, gone or not reading (hung, its outbox full)."""
        if self.closed:
            raise BackendUnavailable("the render engine is restarting; try again in a few seconds")
        sid = f"s{next(self._ids)}"
        channel = self.channels[sid] = Channel(self, sid, asyncio.get_running_loop(), kind)
        try:
            self.send(kind, sid, spec)
        except OSError:
            self.channels.pop(sid, None)
            raise BackendUnavailable("the render engine is not answering; try again in a few seconds") from None
        return channel

    def send(self, kind: str, sid: str | None, payload=None) -> None:
        """Queued: never blocks the event loop. OSError when the engine is gone or has left
        engine_outbox_bytes unread (hung: its supervisor kills it at the step deadline)."""
        try:
            self.outbox.send((kind, sid, payload))
        except OSError as exc:
            raise OSError("the render engine is gone") from exc

    def hung(self, deadline_s: float) -> bool:
        """Silent (no heartbeat) or stuck in one step for longer than `deadline_s`."""
        return time.monotonic() - self.last_beat > deadline_s or self.oldest_step_s > deadline_s

    def drained(self, timeout_s: float) -> None:
        """Until the reader has read everything the (exited) engine sent, or `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        while not self.closed and time.monotonic() < deadline:
            time.sleep(0.02)

    def fail_all(self, exc: FlashheadError) -> None:
        self.closed = True
        for channel in list(self.channels.values()):
            channel.deliver("error", exc)
        self.channels.clear()

    def shutdown(self) -> None:
        self.closed = True
        self.outbox.close()
        self.conn.close()

    def _read(self) -> None:
        while True:
            try:
                kind, sid, payload = self.conn.recv()
            except (EOFError, OSError, ValueError, TypeError):   # TypeError: closed under us
                break
            if kind == "ready":
                self.info = payload
                self.on_ready(payload)
                self.last_beat = time.monotonic()
                self.ready.set()
            elif kind == "failed":
                self.start_error = payload
            elif kind == "beat":
                self.last_beat = time.monotonic()
                self.oldest_step_s = payload["oldest_step_s"]
                self.on_beat(payload)
            elif (channel := self.channels.get(sid)) is not None:
                channel.deliver(kind, payload)
                if kind in FINAL or (kind == "error" and payload.get("fatal")):
                    self.channels.pop(sid, None)
        self.closed = True
        self.outbox.close()                 # its writer ends: nothing holds the dead link
