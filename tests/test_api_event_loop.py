"""Blocking store and key reads run in the threadpool, not on the event loop: while a status
read or a key check is stuck (a SQLite lock wait, simulated by a slow call), the server keeps
answering other requests."""
from __future__ import annotations

import threading
import time

import httpx
import pytest

from bounds_helpers import inproc_server

SUBMIT = "/queue/fal-ai/flashhead"
STALL_S = 1.5


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with inproc_server(tmp_path_factory.mktemp("loop")) as (base, app):
        yield base, app


def _health_while(base: str, slow_request) -> float:
    """Seconds /health takes while `slow_request` (a stalled call) is in flight."""
    t = threading.Thread(target=slow_request)
    t.start()
    time.sleep(0.3)                     # the slow request has reached the stall
    t0 = time.monotonic()
    assert httpx.get(f"{base}/health", timeout=10).status_code == 200
    took = time.monotonic() - t0
    t.join()
    return took


def _stall(monkeypatch, obj, name):
    real = getattr(obj, name)

    def slow(*a, **kw):
        time.sleep(STALL_S)
        return real(*a, **kw)
    monkeypatch.setattr(obj, name, slow)


@pytest.mark.parametrize("route", ["status", "stream"])
def test_a_stalled_status_read_does_not_block_the_server(server, monkeypatch, route):
    base, app = server
    rid = httpx.post(f"{base}{SUBMIT}", json={"text": "hi", "image_url": "data:image/png;base64,AA"}).json()["request_id"]
    _stall(monkeypatch, app.state.ctx.jobs.store, "logs")
    url = f"{base}{SUBMIT}/requests/{rid}/status" + ("/stream" if route == "stream" else "")
    took = _health_while(base, lambda: httpx.get(url, params={"logs": 1}, timeout=30))
    assert took < STALL_S / 2


def test_a_stalled_key_check_does_not_block_the_server(server, monkeypatch):
    base, app = server
    _stall(monkeypatch, app.state.ctx.auth, "check")
    took = _health_while(base, lambda: httpx.get(f"{base}{SUBMIT}/requests/nope/status", timeout=30))
    assert took < STALL_S / 2
