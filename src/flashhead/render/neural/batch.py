"""Several sessions' chunk steps in one ChunkEngine.step: sessions at the same step share a batch.

Callers (one thread per session: the engine's render threads) announce a session's step with
`join()` before it starts (the engine's scheduler does, for every step it hands out in one tick,
before any of them runs) and `leave()` after it, and ask for a chunk with `step(state, audio)`.
A batch starts when every announced step is waiting for a chunk (at once when none is announced:
a lone caller is never held up), when `max_batch` are waiting, or `window_s` after the oldest
request, and one batch runs at a time (one model copy: GPU steps never overlap). A batch holds
requests of one kind only: sessions at their first chunk (one motion latent) and later ones
(two) cannot share it (ChunkEngine.step); the others wait for the next batch.
"""
from __future__ import annotations

import threading
import time
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from flashhead.render.neural.stream import ChunkEngine, StreamState


@dataclass(eq=False)
class _Request:
    state: StreamState
    audio: np.ndarray
    since: float
    frames: np.ndarray | None = None
    error: BaseException | None = None

    @property
    def kind(self) -> int:
        return self.state.motion.shape[2]

    def result(self) -> np.ndarray:
        if self.error is not None:
            raise self.error
        return self.frames


class StepBatcher:
    def __init__(self, max_batch: int, window_s: float):
        self.max_batch, self.window_s = max_batch, window_s
        self.sizes: deque[int] = deque(maxlen=1000)      # recent batch sizes (benchmarks, metrics)
        self._cond = threading.Condition()
        self._inside = 0
        self._pending: list[_Request] = []
        self._running = False

    def take_sizes(self) -> list[int]:
        """The sizes of the batches run since the last call (the engine's heartbeat reports them)."""
        with self._cond:
            sizes = list(self.sizes)
            self.sizes.clear()
        return sizes

    def join(self) -> None:
        """A session's step begins (before it renders): its chunk may join the next batch."""
        with self._cond:
            self._inside += 1

    def leave(self) -> None:
        with self._cond:
            self._inside -= 1
            self._cond.notify_all()

    @contextmanager
    def inside(self):
        self.join()
        try:
            yield
        finally:
            self.leave()

    def step(self, engine: ChunkEngine, state: StreamState, audio: np.ndarray) -> np.ndarray:
        """This session's next chunk: new_frames x H x W x 3 uint8."""
        req = _Request(state, audio, time.monotonic())
        with self._cond:
            self._pending.append(req)
            self._cond.notify_all()
            while True:
                if req.frames is not None or req.error is not None:
                    return req.result()
                wait = self._due_in(time.monotonic())
                if wait <= 0:
                    batch = self._take(req)
                    self._running = True
                    break
                self._cond.wait(wait)
        try:
            self._run(engine, batch)
        finally:
            with self._cond:
                self._running = False
                self._cond.notify_all()
        return req.result()

    def _due_in(self, now: float) -> float:
        """0 when a batch should start now; else how long to wait at most."""
        if self._running:
            return self.window_s or 0.05
        if len(self._pending) >= min(self.max_batch, max(self._inside, 1)):
            return 0.0
        return max(0.0, self._pending[0].since + self.window_s - now)

    def _take(self, own: _Request) -> list[_Request]:
        """`own` and the oldest requests of its kind, up to max_batch."""
        batch = [own] + [r for r in self._pending if r is not own and r.kind == own.kind]
        batch = batch[:self.max_batch]
        self._pending = [r for r in self._pending if r not in batch]
        return batch

    def _run(self, engine: ChunkEngine, batch: list[_Request]) -> None:
        try:
            frames = engine.step([r.state for r in batch], [r.audio for r in batch])
        except BaseException as exc:  # noqa: BLE001 - each waiting session gets the error
            for r in batch:
                r.error = exc
            return
        self.sizes.append(len(batch))
        for r, f in zip(batch, frames):
            r.frames = f

