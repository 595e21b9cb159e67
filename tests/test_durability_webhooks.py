"""Webhooks are never lost and never stopped (issue 15 point 1, issue 9 "Webhooks"): real HTTP
receivers on loopback, a real SQLite outbox, real job stores (SQLite file, redis-server).
"""
from __future__ import annotations

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from api_helpers import TEXT_ENDPOINT, Server, WebhookReceiver, free_port, make_tls
from flashhead.jobs.queue import JobQueue
from flashhead.jobs.state import JobState
from flashhead.jobs.store import NewJob
from flashhead.jobs.webhooks import RetryPolicy, WebhookOutbox, WebhookSigner, verify_webhook, webhook_payload
from flashhead.media.urlguard import guard_url


def _wait(pred, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.02)
    return False


class HangingReceiver:
    """Accepts connections on loopback and never answers (a stuck webhook receiver)."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.conns: list[socket.socket] = []
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/slow"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                self.conns.append(self.sock.accept()[0])
            except OSError:
                return

    def close(self):
        self.sock.close()
        for c in self.conns:
            c.close()


class EndlessReceiver:
    """Answers 200 and then streams a body that never ends."""

    def __init__(self):
        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                self.rfile.read(int(self.headers.get("content-length", 0)))
                self.send_response(200)
                self.send_header("Content-Length", str(10 ** 12))
                self.end_headers()
                try:
                    while True:
                        self.wfile.write(b"x" * 65536)
                except OSError:
                    pass

            def log_message(self, *a):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/big"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def signer(tmp_path):
    return WebhookSigner(tmp_path / "wh.key")


def _loopback_guard(url):
    return guard_url(url, "127.0.0.1")


@pytest.mark.slow
def test_poisoned_webhooks_are_followed_by_a_good_one_that_arrives_signed(signer, tmp_path):
    """Before: a URL httpx rejects (InvalidURL) raised out of the only delivery thread, which
    died, and every later webhook stayed pending; a receiver that hangs delayed every later
    delivery by the whole timeout. Now each is a failed attempt, retried, and the good one
    arrives at once."""
    policy = RetryPolicy(max_tries=3, window_s=600.0, timeout_s=8.0)
    outbox = WebhookOutbox(tmp_path / "wh.db", signer, policy, check_url=_loopback_guard, concurrency=2)
    hanging = HangingReceiver()
    try:
        with WebhookReceiver() as good:
            bad_url = f"http://127.0.0.1:{good.port}/hook\x7f"      # urlsplit takes it, httpx does not
            outbox.enqueue(bad_url, "bad", "u", webhook_payload("bad", None, "x"))
            outbox.enqueue(hanging.url, "slow", "u", webhook_payload("slow", {"seed": 1}))
            outbox.start()
            assert _wait(lambda: outbox.deliveries("bad")[0]["attempts"] == 1, 5)
            outbox.enqueue(good.url, "good", "u", webhook_payload("good", {"seed": 2}))
            started = time.monotonic()
            assert good.event.wait(5), outbox.deliveries("good")
            assert time.monotonic() - started < policy.timeout_s / 2     # not behind the hanging one
            assert _wait(lambda: outbox.deliveries("good")[0]["state"] == "delivered", 5)
            bad = outbox.deliveries("bad")[0]
            assert bad["state"] == "pending" and "InvalidURL" in bad["last_error"]   # retried later
            assert outbox.deliveries("slow")[0]["state"] == "pending"
        headers, body = good.received[0]
        assert verify_webhook(headers, body, signer.jwks())
        assert json.loads(body) == webhook_payload("good", {"seed": 2})
        assert outbox._thread.is_alive()
    finally:
        outbox.stop()
        hanging.close()


@pytest.mark.slow
def test_receivers_that_hang_hold_their_share_of_the_senders_not_all_of_them(signer, tmp_path):
    """Probed: four deliveries to a receiver that never answers held all four senders for the
    whole timeout, so every other receiver's webhook waited behind them (and again at each
    retry). Now at most per_receiver are in flight to one receiver, and for one key's jobs."""
    policy = RetryPolicy(max_tries=3, window_s=600.0, timeout_s=6.0)
    outbox = WebhookOutbox(tmp_path / "wh.db", signer, policy, check_url=_loopback_guard, concurrency=4,
                           per_receiver=2)
    a, b = HangingReceiver(), HangingReceiver()
    try:
        with WebhookReceiver() as good:
            for i in range(6):                                  # key u: 3 to each hanging host
                outbox.enqueue((a, b)[i % 2].url, f"u{i}", "u", webhook_payload(f"u{i}", {"seed": i}))
            for i in range(3):                                  # key w: 3 more to host a
                outbox.enqueue(a.url, f"w{i}", "w", webhook_payload(f"w{i}", {"seed": i}))
            outbox.start()
            # u is at its cap (2, one per host), a at its own (u's and w's one): 3 of the 4 senders
            assert _wait(lambda: (len(a.conns), len(b.conns)) == (2, 1), 5), (len(a.conns), len(b.conns))
            outbox.enqueue(good.url, "good", "v", webhook_payload("good", {"seed": 9}))
            started = time.monotonic()
            assert good.event.wait(policy.timeout_s / 2), outbox.deliveries("good")
            assert time.monotonic() - started < policy.timeout_s / 2
            assert (len(a.conns), len(b.conns)) == (2, 1)          # never more at once
    finally:
        outbox.stop()
        a.close()
        b.close()


def test_the_answer_is_read_only_up_to_the_cap(signer, tmp_path):
    """Before: the whole answer was read (here: endless), until the read timeout failed it."""
    endless = EndlessReceiver()
    outbox = WebhookOutbox(tmp_path / "wh.db", signer, RetryPolicy(timeout_s=8.0), max_response_bytes=1024)
    try:
        outbox.start()
        outbox.enqueue(endless.url, "big", "u", webhook_payload("big", {}))
        assert _wait(lambda: outbox.deliveries("big")[0]["state"] == "delivered", 4), outbox.deliveries("big")
    finally:
        outbox.stop()
        endless.close()


def test_the_post_goes_to_the_address_the_guard_approved(signer, tmp_path):
    """The guard's answer is what is connected to: a name that DNS does not know is delivered to
    the approved loopback address, with the original Host header (before: resolved again)."""
    with WebhookReceiver() as receiver:
        url = f"http://hooks.flashhead-test.invalid:{receiver.port}/hook"
        outbox = WebhookOutbox(tmp_path / "wh.db", signer, RetryPolicy(timeout_s=5.0),
                               check_url=lambda u: guard_url(u.replace("hooks.flashhead-test.invalid",
                                                                        "127.0.0.1"), "127.0.0.1"))
        outbox.start()
        try:
            outbox.enqueue(url, "pinned", "u", webhook_payload("pinned", {}))
            assert receiver.event.wait(5), outbox.deliveries("pinned")
        finally:
            outbox.stop()
    headers = {k.lower(): v for k, v in receiver.received[0][0].items()}
    assert headers["host"] == f"hooks.flashhead-test.invalid:{receiver.port}"


# ---- lost webhooks: hooks interrupted by a crash ------------------------------------------

class Crash(BaseException):
    """The process dies here (nothing after it runs, no except Exception catches it)."""


@pytest.fixture(params=["sqlite", "redis"])
def open_store(request, tmp_path):
    """A factory: each call is the store as a new server process opens it."""
    from flashhead.jobs.sqlite import SqliteJobStore

    if request.param == "sqlite":
        yield lambda: SqliteJobStore(tmp_path / "jobs.db")
    else:
        from flashhead.jobs.redis import RedisJobStore
        url, prefix = request.getfixturevalue("redis_url"), f"loss{time.monotonic_ns()}:"
        yield lambda: RedisJobStore(url, prefix=prefix, lease_s=1.0)


def _server(store, outbox, crash_at: str | None):
    """A JobQueue wired as the API process wires it, dying at `crash_at` in the webhook hook."""
    queue = JobQueue(store)

    def hook(job):
        if crash_at == "before":
            raise Crash()
        outbox.enqueue(job.webhook_url, job.id, "u", webhook_payload(job.id, job.result))
        if crash_at == "after":
            raise Crash()

    queue.on_terminal(hook)
    queue.recover()
    return queue


@pytest.mark.parametrize("crash_at", ["before", "after"])
def test_hooks_interrupted_by_a_crash_still_deliver_each_webhook_exactly_once(open_store, crash_at, signer,
                                                                              tmp_path):
    """Before: take_terminal marked jobs hooked before their hooks ran, so a crash before the
    outbox row was written lost the webhook for good. Now the mark comes after the hooks: a crash
    anywhere in them re-runs them after the restart, and the outbox keeps one row per request."""
    with WebhookReceiver() as receiver:
        outbox = WebhookOutbox(tmp_path / "wh.db", signer, RetryPolicy(timeout_s=5.0))
        first = open_store()
        queue = _server(first, outbox, crash_at)
        jobs = [first.submit(NewJob(endpoint=TEXT_ENDPOINT, input={}, webhook_url=receiver.url)) for _ in range(3)]
        for job in jobs:                      # finished by a worker process: hooks are the API's
            first.claim()
            first.finish(job.id, JobState.COMPLETED, result={"seed": 7})
        with pytest.raises(Crash):
            queue.dispatch_terminal()
        first.release()                       # the server is gone (redis: its lease ends)

        second = open_store()                 # restart
        _server(second, outbox, None).dispatch_terminal()

        def rows():
            return [outbox.deliveries(j.id) for j in jobs]

        outbox.start()
        try:
            assert _wait(lambda: all(len(r) == 1 and r[0]["state"] == "delivered" for r in rows()), 10), rows()
        finally:
            outbox.stop()
        delivered = rows()
        third = open_store()                  # and one more restart: nothing is queued to be sent again
        _server(third, outbox, None).dispatch_terminal()
        assert rows() == delivered            # still one delivered row per request, none pending
    ids = sorted(json.loads(b)["request_id"] for _, b in receiver.received)
    assert ids == sorted(j.id for j in jobs)
    assert all(verify_webhook(h, b, signer.jwks()) for h, b in receiver.received)


def test_a_hook_that_raises_is_retried(tmp_path):
    from flashhead.jobs.sqlite import SqliteJobStore

    store = SqliteJobStore(tmp_path / "jobs.db")
    queue = JobQueue(store)
    calls = []

    def flaky(job):
        calls.append(job.id)
        if len(calls) == 1:
            raise OSError("disk full")

    queue.on_terminal(flaky)
    job = store.submit(NewJob(endpoint=TEXT_ENDPOINT, input={}))
    queue.cancel(job.id)                      # terminal: the hook runs at once, and fails
    assert calls == [job.id] and queue.dispatch_terminal() == 1
    assert calls == [job.id, job.id] and queue.dispatch_terminal() == 0


# ---- at submit ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("webhook-submit")
    s = Server(tmp / "data", make_tls(tmp / "tls"), fake_generate=True,
               env={"FLASHHEAD_TEST_FAKE_CHUNK_S": "0.01"}).start()
    try:
        yield s
    finally:
        s.stop()


@pytest.mark.parametrize("url", ["http://127.0.0.1:{port}/hook\x7f", "http://127.0.0.1:{port}/\x00",
                                 "http://[::1/hook", "ftp://127.0.0.1:{port}/"])
def test_a_webhook_url_the_sender_cannot_use_is_refused_at_submit(server, url):
    """Before: accepted (or a 500), then it broke the delivery thread when the job finished."""
    with server.client() as c:
        r = c.post(f"/queue/{TEXT_ENDPOINT}", json={"image_url": "data:,x", "text": "hi"},
                   params={"fal_webhook": url.format(port=free_port())})
    assert r.status_code == 422, r.text
    assert "fal_webhook" in r.text and "Traceback" not in r.text


def test_a_good_webhook_url_is_accepted_and_delivered(server):
    with WebhookReceiver() as receiver, server.client() as c:
        r = c.post(f"/queue/{TEXT_ENDPOINT}", json={"image_url": "data:,x", "text": "hi"},
                   params={"fal_webhook": receiver.url})
        assert r.status_code == 200, r.text
        assert receiver.event.wait(30)
        jwks = c.get("/.well-known/jwks.json").json()
    headers, body = receiver.received[0]
    assert verify_webhook(headers, body, jwks) and json.loads(body)["request_id"] == r.json()["request_id"]
