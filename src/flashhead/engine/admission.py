"""Admission control: a real-time session (a /stream request, a realtime unary request or a
live session) takes one of the engine's slots and one of its key's for as long as it runs.
Beyond either cap the session is refused at once (CapacityExceeded: HTTP 429 + Retry-After,
realtime x-fal-error CAPACITY_EXCEEDED), never accepted and then starved."""
from __future__ import annotations

import threading
from collections import Counter

from flashhead.errors import CapacityExceeded


class Ticket:
    def __init__(self, admission: "Admission", key: str):
        self._admission, self.key, self._held = admission, key, True

    def release(self) -> None:
        """Idempotent: the slot is free again."""
        if self._held:
            self._held = False
            self._admission._release(self.key)


class Admission:
    def __init__(self, capacity: int, per_key: int, retry_after_s: int = 5):
        self.capacity, self.per_key, self.retry_after_s = capacity, per_key, retry_after_s
        self._lock = threading.Lock()
        self._by_key: Counter[str] = Counter()
        self.in_flight = 0
        self.refused = 0

    def acquire(self, key_id: str | None) -> Ticket:
        key = key_id or "anonymous"
        with self._lock:
            if self.in_flight >= self.capacity:
                self.refused += 1
                raise CapacityExceeded(f"all {self.capacity} real-time sessions of this server are in use; "
                                       "try again shortly", retry_after_s=self.retry_after_s)
            if self._by_key[key] >= self.per_key:
                self.refused += 1
                raise CapacityExceeded(f"this key already runs {self.per_key} real-time sessions, its limit",
                                       retry_after_s=self.retry_after_s)
            self.in_flight += 1
            self._by_key[key] += 1
        return Ticket(self, key)

    def _release(self, key: str) -> None:
        with self._lock:
            self.in_flight -= 1
            self._by_key[key] -= 1
            if not self._by_key[key]:
                del self._by_key[key]
