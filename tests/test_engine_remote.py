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


def test_touch_keeps_a_slot_alive_and_reports_a_lost_engine_or_slot(r):
    keys = Keys(f"remote{time.monotonic_ns()}:")
    reserve, touch = r.register_script(RESERVE), r.register_script(TOUCH)
    r.sadd(keys.engines, "a")
    r.set(keys.engine("a"), 1)
    assert reserve(keys=[keys.engines, keys.key_sessions("k")], args=[keys.prefix, "s1", TTL_S, 4]) == [b"ok", b"a"]
    beat = lambda sid: touch(keys=[keys.engine("a"), keys.sessions("a"), keys.key_sessions("k")],  # noqa: E731
                             args=[sid, TTL_S])
    end = time.monotonic() + 5 * TTL_S                # past the slot set's own lifetime (4 TTL)
    while time.monotonic() < end:
        assert beat("s1") == 1
        time.sleep(TTL_S / 4)
    assert r.zscore(keys.sessions("a"), "s1") is not None
    assert r.zscore(keys.key_sessions("k"), "s1") > r.time()[0]      # the key's entry renewed too
    time.sleep(TTL_S * 1.5)                           # its API node fell silent: the slot expired
    assert beat("s1") == -1
    assert beat("never") == -1
    r.delete(keys.engine("a"))                        # the engine's key expired
    assert beat("s1") == 0
