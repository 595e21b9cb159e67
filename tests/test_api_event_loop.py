"""Blocking store and key reads run in the threadpool, not on the event loop: while a status
read or a key check is stuck (a SQLite lock wait, simulated by a slow call), the server keeps
answering other requests."""
from __future__ import annotations

import threading

import httpx
import pytest

from bounds_helpers import inproc_server

SUBMIT = "/queue/fal-ai/flashhead"
WAIT_S = 10          # a bound for things that take milliseconds; no timing is measured


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with inproc_server(tmp_path_factory.mktemp("loop")) as (base, app):
        yield base, app


class Stall:
    """Replaces obj.name with a call that blocks until released: `entered` is set once a request
    is stuck in it. No fixed sleeps: the test waits for the stall, then asks for /health."""

    def __init__(self, monkeypatch, obj, name):
        self.entered, self.released = threading.Event(), threading.Event()
        real = getattr(obj, name)

        def stuck(*a, **kw):
            self.entered.set()
            self.released.wait(WAIT_S)
            return real(*a, **kw)
        monkeypatch.setattr(obj, name, stuck)


def _health_answers_while(base: str, stall: Stall, slow_request) -> None:
    """/health answers while `slow_request` is stuck in the stall (the stall is released only
    after /health answered: a server whose event loop waited on it could not answer at all)."""
    t = threading.Thread(target=slow_request)
    t.start()
    try:
        assert stall.entered.wait(WAIT_S), "the slow request never reached the stall"
        assert httpx.get(f"{base}/health", timeout=WAIT_S / 2).status_code == 200
        assert not stall.released.is_set() and t.is_alive()
    finally:
        stall.released.set()
        t.join()


@pytest.mark.parametrize("route", ["status", "stream"])
@pytest.mark.slow
def test_a_stalled_status_read_does_not_block_the_server(server, monkeypatch, route):
    base, app = server
    rid = httpx.post(f"{base}{SUBMIT}", json={"text": "hi", "image_url": "data:image/png;base64,AA"}).json()["request_id"]
    stall = Stall(monkeypatch, app.state.ctx.jobs.store, "logs")
    url = f"{base}{SUBMIT}/requests/{rid}/status" + ("/stream" if route == "stream" else "")
    _health_answers_while(base, stall, lambda: httpx.get(url, params={"logs": 1}, timeout=30))


def test_a_stalled_key_check_does_not_block_the_server(server, monkeypatch):
    base, app = server
    stall = Stall(monkeypatch, app.state.ctx.auth, "check")
    _health_answers_while(base, stall, lambda: httpx.get(f"{base}{SUBMIT}/requests/nope/status", timeout=30))
