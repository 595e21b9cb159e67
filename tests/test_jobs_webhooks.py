"""Webhook signing, verification, backoff and the durable outbox (real HTTP on loopback)."""
from __future__ import annotations

import json
import time

import pytest

from api_helpers import WebhookReceiver, free_port
from flashhead.jobs.webhooks import (RetryPolicy, WebhookOutbox, WebhookSigner, verify_webhook,
                                     webhook_payload)


@pytest.fixture
def signer(tmp_path):
    return WebhookSigner(tmp_path / "wh.key")


def test_signature_verifies_with_the_jwks_and_nothing_else(signer, tmp_path):
    body = json.dumps(webhook_payload("r1", {"seed": 1})).encode()
    headers = signer.headers("r1", "user-1", body)
    jwks = signer.jwks()
    assert jwks["keys"][0]["kty"] == "OKP" and jwks["keys"][0]["crv"] == "Ed25519"
    assert verify_webhook(headers, body, jwks)
    assert verify_webhook({k.lower(): v for k, v in headers.items()}, body, jwks)
    assert not verify_webhook(headers, body + b" ", jwks)
    assert not verify_webhook({**headers, "X-Fal-Webhook-Request-Id": "r2"}, body, jwks)
    assert not verify_webhook({**headers, "X-Fal-Webhook-User-Id": "someone"}, body, jwks)
    other = WebhookSigner(tmp_path / "other.key").jwks()
    assert not verify_webhook(headers, body, other)
    assert verify_webhook(headers, body, {"keys": other["keys"] + jwks["keys"]})


def test_old_or_future_timestamps_are_rejected(signer):
    body = b"{}"
    old = signer.headers("r", "u", body, timestamp=int(time.time()) - 301)
    assert not verify_webhook(old, body, signer.jwks())
    future = signer.headers("r", "u", body, timestamp=int(time.time()) + 301)
    assert not verify_webhook(future, body, signer.jwks())
    assert not verify_webhook({"X-Fal-Webhook-Signature": "zz"}, body, signer.jwks())


def test_key_pair_persists(tmp_path):
    a, b = WebhookSigner(tmp_path / "k"), WebhookSigner(tmp_path / "k")
    assert a.jwks() == b.jwks()
    assert (tmp_path / "k").stat().st_mode & 0o777 == 0o600


def test_payload_shapes():
    ok = webhook_payload("r", {"video": {"url": "u"}})
    assert ok == {"request_id": "r", "gateway_request_id": "r", "status": "OK", "payload": {"video": {"url": "u"}}}
    err = webhook_payload("r", None, "boom", "render_failed")
    assert err["status"] == "ERROR" and err["error"] == "boom" and err["payload"] is None


def test_default_retry_policy_is_10_tries_over_2_hours():
    p = RetryPolicy()
    gaps = [p.delay(i) for i in range(1, p.max_tries)]
    assert len(gaps) == 9 and sum(gaps) == pytest.approx(7200)
    assert all(b == pytest.approx(2 * a) for a, b in zip(gaps, gaps[1:]))


def _wait(pred, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.05)
    return False


def test_receiver_down_at_first_gets_it_later_even_across_a_restart(signer, tmp_path):
    port = free_port()
    url = f"http://127.0.0.1:{port}/hook"
    policy = RetryPolicy(max_tries=6, window_s=3.0)          # gaps 0.1, 0.2, 0.4, 0.8, 1.5 s
    outbox = WebhookOutbox(tmp_path / "wh.db", signer, policy)
    outbox.start()
    outbox.enqueue(url, "req-1", "anonymous", webhook_payload("req-1", {"seed": 3}))
    assert _wait(lambda: outbox.deliveries("req-1")[0]["attempts"] >= 1)
    outbox.stop()                                             # the server goes down too
    assert outbox.deliveries("req-1")[0]["state"] == "pending"
    outbox = WebhookOutbox(tmp_path / "wh.db", signer, policy)
    with WebhookReceiver(port) as receiver:
        outbox.start()
        assert receiver.event.wait(10)
        assert _wait(lambda: outbox.deliveries("req-1")[0]["state"] == "delivered")
    outbox.stop()
    headers, body = receiver.received[0]
    assert verify_webhook(headers, body, signer.jwks())
    assert json.loads(body) == webhook_payload("req-1", {"seed": 3})


def test_gives_up_after_max_tries(signer, tmp_path):
    outbox = WebhookOutbox(tmp_path / "wh.db", signer, RetryPolicy(max_tries=3, window_s=0.3))
    outbox.start()
    outbox.enqueue(f"http://127.0.0.1:{free_port()}/", "req-2", "u", webhook_payload("req-2", None, "x"))
    assert _wait(lambda: outbox.deliveries("req-2")[0]["state"] == "failed")
    outbox.stop()
    assert outbox.deliveries("req-2")[0]["attempts"] == 3


def test_refused_urls_fail_without_a_request(signer, tmp_path):
    def guard(url):
        raise ValueError("unsafe")
    outbox = WebhookOutbox(tmp_path / "wh.db", signer, RetryPolicy(), check_url=guard)
    with WebhookReceiver() as receiver:
        outbox.start()
        outbox.enqueue(receiver.url, "req-3", "u", webhook_payload("req-3", None, "x"))
        assert _wait(lambda: outbox.deliveries("req-3")[0]["state"] == "failed")
        outbox.stop()
    assert receiver.received == []
