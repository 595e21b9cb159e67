"""Per-key abuse limits, checked for every caller with a key (OPEN mode has no keys: no limits).

- Request rate: Settings.rate_limit in the `limits` package's notation, counted in fixed windows
  (a burst of up to twice a rate can straddle a window edge; in exchange a check costs ~10 us
  against ~80 us for the sliding-window counter, on the event loop of every request); in memory
  for one server, in the job store's redis when jobs live there, so that servers sharing a
  redis count one key's requests together. Retry-After is the end of the full window.
- Active jobs: Settings.max_active_jobs_per_key queued + running jobs, counted in the job store
  itself (the truth, also after a crash). Two submits racing past the count can both pass.
Both answer RateLimited (429 with Retry-After).
"""
from __future__ import annotations

import time

from limits import parse_many
from limits.storage import MemoryStorage, RedisStorage
from limits.strategies import FixedWindowRateLimiter

from flashhead.errors import InputError, RateLimited

JOBS_RETRY_AFTER_S = 5      # a hint: jobs take seconds; the client polls its own first


class AbuseLimits:
    def __init__(self, rate_limit: str, max_active_jobs: int, redis_url: str | None = None,
                 prefix: str = "flashhead:"):
        try:
            self.rates = parse_many(rate_limit) if rate_limit.strip() else []
        except ValueError:
            raise InputError(f"must look like '100/second;6000/minute', got {rate_limit!r}",
                             field="rate_limit") from None
        self.max_active_jobs = max_active_jobs
        storage = MemoryStorage() if redis_url is None else RedisStorage(redis_url, key_prefix=prefix + "limits")
        self.limiter = FixedWindowRateLimiter(storage)

    @classmethod
    def from_settings(cls, settings) -> "AbuseLimits":
        from flashhead.jobs.backends import redis_url
        return cls(settings.rate_limit, settings.max_active_jobs_per_key, redis_url(settings),
                   settings.redis_prefix)

    def hit(self, key_id: str | None) -> None:
        """Count one request of `key_id`; raises RateLimited past any of the rates. Blocking."""
        if key_id is None:
            return
        for rate in self.rates:
            if not self.limiter.hit(rate, key_id):
                reset = self.limiter.get_window_stats(rate, key_id).reset_time
                raise RateLimited(f"this API key made more than {rate} requests",
                                  retry_after_s=max(1.0, reset - time.time()), field="Authorization")

    def check_jobs(self, store, key_id: str | None) -> None:
        """Before a submit: refuse when `key_id` already has max_active_jobs queued or running."""
        if key_id is None or self.max_active_jobs <= 0:
            return
        active = store.active_count(key_id)
        if active >= self.max_active_jobs:
            raise RateLimited(f"this API key has {active} requests queued or running; the limit is "
                              f"{self.max_active_jobs}", retry_after_s=JOBS_RETRY_AFTER_S, field="Authorization")
