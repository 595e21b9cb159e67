"""Where the CPU pool's router pins a new session (engine/pool.py `pick`): to the render process
that already prepared its portrait while that one has room, else to the least loaded."""
from __future__ import annotations

import threading
from collections import OrderedDict
from types import SimpleNamespace

from flashhead.constants import PORTRAIT_CACHE_SIZE
from flashhead.engine.pool import RenderProcess, pick, portrait_key
from flashhead.schemas import FlashHeadRequest


def _ready() -> threading.Event:
    up = threading.Event()
    up.set()
    return up


def _procs(n: int, share: int) -> list:
    """Stand-ins with RenderProcess's placement state (no process behind them)."""
    procs = [SimpleNamespace(index=i, sessions=set(), share=share, portraits=OrderedDict(), replaced=False,
                             killed=False, ready=_ready()) for i in range(n)]
    for p in procs:
        p.took = RenderProcess.took.__get__(p)
    return procs


def _place(procs, sid: str, portrait: str) -> int:
    p = pick(procs, portrait)
    p.took(sid, portrait)
    return p.index


def test_a_repeated_portrait_goes_where_it_was_prepared_while_that_process_has_room():
    procs = _procs(2, share=2)
    assert [_place(procs, f"a{i}", "A") for i in range(2)] == [0, 0]      # a's second: prepared on 0
    assert _place(procs, "b0", "B") == 1                                  # a new portrait: least loaded
    assert _place(procs, "a2", "A") == 1                                  # 0 is at its share: [2, 2]
    procs[0].sessions -= {"a0", "a1"}
    assert _place(procs, "a3", "A") == 0                                  # room again on 0


def test_a_popular_portrait_does_not_pile_onto_one_process():
    """A share above what a core holds in real time (a configured capacity) still spreads one
    portrait's sessions: the holder takes a session only while it is at most one busier."""
    procs = _procs(2, share=8)
    assert [_place(procs, f"a{i}", "A") for i in range(6)] == [0, 0, 1, 1, 0, 1]
    assert [len(p.sessions) for p in procs] == [3, 3]


def test_the_router_remembers_as_many_portraits_per_process_as_it_caches():
    procs = _procs(2, share=100)
    for i in range(PORTRAIT_CACHE_SIZE + 1):
        procs[0].took(f"s{i}", f"P{i}")
    assert "P0" not in procs[0].portraits and f"P{PORTRAIT_CACHE_SIZE}" in procs[0].portraits
    procs[0].sessions = {"s"}                    # 0 runs one session, 1 none
    assert pick(procs, "P1").index == 0          # remembered: 0 has room
    assert pick(procs, "P0").index == 1          # forgotten (0 evicted it too): least loaded


def test_the_portrait_key_of_a_live_session_a_stream_and_a_job():
    url = "data:image/png;base64,AAAA"
    live = portrait_key("live", {"image_url": url, "seed": 1})
    assert live == portrait_key("stream", {"payload": {"image_url": url, "text": "Hi."}, "endpoint": "e"})
    assert live == portrait_key("job", {"request": FlashHeadRequest(image_url=url, text="Hi."), "output_path": "x"})
    assert live != portrait_key("live", {"image_url": url + "A"})
    assert portrait_key("stream", {"payload": {"text": "no image"}}) is None
