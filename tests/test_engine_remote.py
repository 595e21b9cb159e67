"""The Redis scripts behind remote engines (flashhead.engine.remote) on a real redis-server:
a slot is reserved atomically on the live engine with the most room, renewed while its API
node lives, and reported lost when the engine or the slot is gone."""
from __future__ import annotations

import time

import pytest
import redis

from flashhead.engine.remote import RESERVE, TOUCH, Keys

TTL_S = 30.0


@pytest.fixture
def r(redis_url):
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


def test_reserve_takes_the_freest_live_engine_and_refuses_when_full(r):
    keys = Keys(f"remote{time.monotonic_ns()}:")
    reserve = r.register_script(RESERVE)
    take = lambda sid: reserve(keys=[keys.engines], args=[keys.prefix, sid, 30])  # noqa: E731
    assert take("s0") is None                                       # no engine at all
    r.sadd(keys.engines, "a", "b", "dead")
    r.set(keys.engine("a"), 1, px=30_000)
    r.set(keys.engine("b"), 2, px=30_000)
    got = [take(f"s{i}") for i in range(1, 4)]
    assert sorted(got) == [b"a", b"b", b"b"] and got[0] == b"b"     # most free slots first
    assert take("s4") is None                                       # 3 slots, 3 taken
    assert r.smembers(keys.engines) == {b"a", b"b"}                 # the dead engine forgotten
    r.zrem(keys.sessions("a"), "s1", "s2", "s3")                    # a session ends: its slot is free
    assert take("s5") == b"a"


def _redis_now(r) -> float:
    sec, usec = r.time()
    return sec + usec / 1e6


def test_touch_keeps_a_slot_alive_and_reports_a_lost_engine_or_slot(r):
    """Time passing is played by moving the stored deadlines (the scripts read redis's clock):
    no sleeps, so a stalled test process can neither expire a slot nor keep one alive."""
    keys = Keys(f"remote{time.monotonic_ns()}:")
    slots = keys.sessions("a")
    reserve, touch = r.register_script(RESERVE), r.register_script(TOUCH)
    r.sadd(keys.engines, "a")
    r.set(keys.engine("a"), 1)
    assert reserve(keys=[keys.engines], args=[keys.prefix, "s1", TTL_S]) == b"a"
    beat = lambda sid: touch(keys=[keys.engine("a"), slots], args=[sid, TTL_S])  # noqa: E731
    r.zadd(slots, {"s1": _redis_now(r) + 0.5})         # nearly TTL_S later: the slot is about to lapse
    r.pexpire(slots, 100)                              # ... and so is the slot set itself (4 TTL)
    assert beat("s1") == 1                             # a beat renews both
    assert _redis_now(r) + TTL_S - 5 < r.zscore(slots, "s1") <= _redis_now(r) + TTL_S
    assert 4 * TTL_S * 1000 - 5000 < r.pttl(slots) <= 4 * TTL_S * 1000
    r.zadd(slots, {"s1": _redis_now(r) - 0.001})       # its API node fell silent: the slot expired
    assert beat("s1") == -1
    assert r.zscore(slots, "s1") < _redis_now(r)       # ... and stays expired (not renewed)
    assert beat("never") == -1
    r.delete(keys.engine("a"))                        # the engine's key expired
    assert beat("s1") == 0
