"""Messages to an engine connection, sent by a thread of their own.

A peer that stops reading (a hung process) fills its socket; a plain `send` then blocks the
sender, and with it everything the sender does for other peers: the router's loop for every
render process, the API's event loop for every client. `Outbox.send` pickles the message and
queues it; one thread writes the queue to the connection in order. Past `limit_bytes` unsent
bytes (one message is always taken: a body's own limit bounds it), or once the connection broke,
`send` raises OSError, as a broken connection does.
"""
from __future__ import annotations

import pickle
import threading
from collections import deque
from multiprocessing.connection import Connection


class Outbox:
    def __init__(self, conn: Connection, limit_bytes: int, name: str):
        self.conn, self.limit_bytes = conn, limit_bytes
        self.queued = 0                       # bytes not yet written
        self.error: Exception | None = None   # why the writer stopped
        self._queue: deque[bytes] = deque()
        self._cond = threading.Condition()
        self._closed = False
        threading.Thread(target=self._write, name=name, daemon=True).start()

    def send(self, message: tuple) -> None:
        """Pickled here (what the peer's Connection.recv() unpickles), written by the thread."""
        raw = pickle.dumps(message)
        with self._cond:
            if self.error is not None or self._closed:
                raise OSError("the connection is closed") from self.error
            if self.queued and self.queued + len(raw) > self.limit_bytes:
                raise OSError(f"the peer left more than {self.limit_bytes} bytes unread")
            self._queue.append(raw)
            self.queued += len(raw)
            self._cond.notify()

    def close(self) -> None:
        """The writer stops (what is queued is dropped); later sends raise OSError."""
        with self._cond:
            self._closed = True
            self._queue.clear()
            self.queued = 0
            self._cond.notify()

    def _write(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return
                raw = self._queue.popleft()
            try:
                self.conn.send_bytes(raw)
            except (OSError, ValueError) as exc:    # ValueError: the connection was closed
                with self._cond:
                    self.error = exc
                    self._queue.clear()
                    self.queued = 0
                return
            with self._cond:
                self.queued -= len(raw)
