"""The Redis scripts behind remote engines (flashhead.engine.remote) on a real redis-server:
a slot is reserved atomically on the live engine with the most room (and within the key's cap,
counted over every API node), renewed while its API node lives, and reported lost when the
engine or the slot is gone."""
from __future__ import annotations

import time

import pytest
import redis

from flashhead.engine.remote import RESERVE, TOUCH, Keys

TTL_S = 0.5


@pytest.fixture
def r(redis_url):
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


def test_reserve_takes_the_freest_live_engine_and_refuses_when_full(r):
    keys = Keys(f"remote{time.monotonic_ns()}:")
    reserve = r.register_script(RESERVE)

    def take(sid):
        got = reserve(keys=[keys.engines, keys.key_sessions("k")], args=[keys.prefix, sid, 30, 10])
        return got[1] if got[0] == b"ok" else got[0]
    assert take("s0") == b"full"                                    # no engine at all
    r.sadd(keys.engines, "a", "b", "dead")
    r.set(keys.engine("a"), 1, px=30_000)
    r.set(keys.engine("b"), 2, px=30_000)
    got = [take(f"s{i}") for i in range(1, 4)]
    assert sorted(got) == [b"a", b"b", b"b"] and got[0] == b"b"     # most free slots first
    assert take("s4") == b"full"                                    # 3 slots, 3 taken
    assert r.smembers(keys.engines) == {b"a", b"b"}                 # the dead engine forgotten
    r.zrem(keys.sessions("a"), "s1", "s2", "s3")                    # a session ends: its slot is free
    assert take("s5") == b"a"


def test_reserve_caps_a_key_over_every_node_until_its_sessions_expire(r):
    keys = Keys(f"remote{time.monotonic_ns()}:")
    reserve = r.register_script(RESERVE)
    r.sadd(keys.engines, "a")
    r.set(keys.engine("a"), 10, px=30_000)
    take = lambda key, sid: reserve(keys=[keys.engines, keys.key_sessions(key)],  # noqa: E731
                                    args=[keys.prefix, sid, TTL_S, 2])[0]
    assert [take("k", "s1"), take("k", "s2"), take("k", "s3")] == [b"ok", b"ok", b"key"]
    assert take("other", "s4") == b"ok"                             # the engine still has room
    r.zrem(keys.key_sessions("k"), "s1")                            # a session of k ends
    assert take("k", "s5") == b"ok" and take("k", "s6") == b"key"
    time.sleep(TTL_S * 1.5)                                         # their API node stopped renewing
    assert take("k", "s7") == b"ok"


def _redis_now(r) -> float:
    sec, usec = r.time()
    return sec + usec / 1e6


def test_touch_keeps_a_slot_alive_and_reports_a_lost_engine_or_slot(r):
    """Time passing is played by moving the stored deadlines (the scripts read redis's clock):
    no sleeps, so a stalled test process can neither expire a slot nor keep one alive."""
    ttl = 30.0
    keys = Keys(f"remote{time.monotonic_ns()}:")
    slots, of_key = keys.sessions("a"), keys.key_sessions("k")
    reserve, touch = r.register_script(RESERVE), r.register_script(TOUCH)
    r.sadd(keys.engines, "a")
    r.set(keys.engine("a"), 1)
    assert reserve(keys=[keys.engines, of_key], args=[keys.prefix, "s1", ttl, 4]) == [b"ok", b"a"]
    beat = lambda sid: touch(keys=[keys.engine("a"), slots, of_key], args=[sid, ttl])  # noqa: E731
    for zset in (slots, of_key):
        r.zadd(zset, {"s1": _redis_now(r) + 0.5})     # nearly ttl later: the entry is about to lapse
        r.pexpire(zset, 100)                          # ... and so is the set itself (4 ttl)
    assert beat("s1") == 1                            # a beat renews all four
    for zset in (slots, of_key):
        assert _redis_now(r) + ttl - 5 < r.zscore(zset, "s1") <= _redis_now(r) + ttl
        assert 4 * ttl * 1000 - 5000 < r.pttl(zset) <= 4 * ttl * 1000
    r.zadd(slots, {"s1": _redis_now(r) - 0.001})      # its API node fell silent: the slot expired
    assert beat("s1") == -1
    assert r.zscore(slots, "s1") < _redis_now(r)      # ... and stays expired (not renewed)
    assert beat("never") == -1
    r.delete(keys.engine("a"))                        # the engine's key expired
    assert beat("s1") == 0
