"""Webhooks: the documented payload, Ed25519 signatures, a JWKS, and a durable outbox.

Signature (fal's scheme): Ed25519 over the UTF-8 of
    request_id "\\n" user_id "\\n" timestamp "\\n" sha256_hex(raw body)
sent as X-Fal-Webhook-Request-Id / -User-Id / -Timestamp / -Signature (hex).
Deliveries live in an SQLite outbox, so a receiver that is down when the job ends still gets
the result later, also across server restarts. Retries back off exponentially; by default
10 tries spread over 2 hours. Delivery is at least once: a server killed after the receiver
answered but before the outbox recorded it sends that delivery again after its restart.
"""
from __future__ import annotations

import base64
import hashlib
import ipaddress
import json
import logging
import os
import sqlite3
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import httpx
from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey, VerifyKey

from flashhead.errors import FetchError, InputError
from flashhead.media.urlguard import check_url_length

log = logging.getLogger("flashhead.webhooks")

TIMESTAMP_TOLERANCE_S = 300
H_REQUEST_ID, H_USER_ID = "X-Fal-Webhook-Request-Id", "X-Fal-Webhook-User-Id"
H_TIMESTAMP, H_SIGNATURE = "X-Fal-Webhook-Timestamp", "X-Fal-Webhook-Signature"


def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def signed_message(request_id: str, user_id: str, timestamp: str, body: bytes) -> bytes:
    return "\n".join([request_id, user_id, timestamp, hashlib.sha256(body).hexdigest()]).encode()


class WebhookSigner:
    """An Ed25519 key pair persisted (mode 0600) in the data dir, or made from a shared seed
    (servers sharing a redis sign with one key, so any of them can serve the JWKS)."""

    def __init__(self, key_path: str | Path, seed: bytes | None = None):
        path = Path(key_path)
        if seed is not None:
            pass
        elif path.exists():
            seed = path.read_bytes()
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            seed = bytes(SigningKey.generate())
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(seed)
        self._key = SigningKey(seed)
        public = bytes(self._key.verify_key)
        self.kid = hashlib.sha256(public).hexdigest()[:16]
        self.public_key = public

    def jwks(self) -> dict:
        return {"keys": [{"kty": "OKP", "crv": "Ed25519", "x": _b64url(self.public_key),
                          "kid": self.kid, "use": "sig", "alg": "EdDSA"}]}

    def headers(self, request_id: str, user_id: str, body: bytes, timestamp: int | None = None) -> dict:
        ts = str(int(time.time()) if timestamp is None else timestamp)
        sig = self._key.sign(signed_message(request_id, user_id, ts, body)).signature
        return {H_REQUEST_ID: request_id, H_USER_ID: user_id, H_TIMESTAMP: ts,
                H_SIGNATURE: sig.hex(), "Content-Type": "application/json"}


def verify_webhook(headers: Mapping[str, str], body: bytes, jwks: dict, *,
                   tolerance_s: int = TIMESTAMP_TOLERANCE_S, now: float | None = None) -> bool:
    """For receivers: True if `body` was signed by a key in `jwks` less than 5 minutes ago."""
    h = {k.lower(): v for k, v in headers.items()}
    try:
        request_id, user_id = h[H_REQUEST_ID.lower()], h[H_USER_ID.lower()]
        timestamp, signature = h[H_TIMESTAMP.lower()], bytes.fromhex(h[H_SIGNATURE.lower()])
        if abs((time.time() if now is None else now) - int(timestamp)) > tolerance_s:
            return False
    except (KeyError, ValueError):
        return False
    message = signed_message(request_id, user_id, timestamp, body)
    for key in jwks.get("keys", []):
        if key.get("kty") != "OKP" or key.get("crv") != "Ed25519":
            continue
        try:
            VerifyKey(_unb64url(key["x"])).verify(message, signature)
            return True
        except (BadSignatureError, ValueError, KeyError):
            continue
    return False


def webhook_payload(request_id: str, result: dict | None, error: str | None = None,
                    error_type: str | None = None) -> dict:
    """The documented body: status OK with the output, or ERROR with the error text."""
    if error is None:
        return {"request_id": request_id, "gateway_request_id": request_id, "status": "OK",
                "payload": result}
    body = {"request_id": request_id, "gateway_request_id": request_id, "status": "ERROR",
            "payload": result, "error": error}
    if error_type:
        body["error_type"] = error_type
    return body


@dataclass(frozen=True)
class RetryPolicy:
    """`max_tries` attempts; the gaps double and add up to `window_s`."""

    max_tries: int = 10
    window_s: float = 2 * 3600.0
    timeout_s: float = 10.0

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number `attempt` (1-based)."""
        gaps = max(1, self.max_tries - 1)
        first = self.window_s / (2 ** gaps - 1)
        return first * 2 ** (attempt - 1)


_OUTBOX = """
CREATE TABLE IF NOT EXISTS deliveries (
  id INTEGER PRIMARY KEY AUTOINCREMENT, request_id TEXT NOT NULL, user_id TEXT NOT NULL,
  url TEXT NOT NULL, body BLOB NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,
  next_at REAL NOT NULL, state TEXT NOT NULL DEFAULT 'pending', last_error TEXT,
  created_at REAL NOT NULL, UNIQUE (request_id, url));
CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries (state, next_at);
"""


class WebhookOutbox:
    """Persisted deliveries; one thread hands the due ones to a pool of `concurrency` sender
    threads, at most `per_receiver` of them to one receiver, and for one API key's jobs, at a
    time: receivers that hang hold their share of the senders for at most policy.timeout_s each,
    and never all of them. A delivery in flight is leased in the table (its next_at moved past its
    timeout), so after a crash it is sent again once the lease ran out.

    check_url(url) is the SSRF guard: it returns the addresses that may be connected to (the
    POST goes to those, not to a second DNS answer) or None for "resolve normally", and raises
    to refuse: UnsafeURLError (or any error but FetchError) fails the delivery for good, a
    FetchError (the name does not resolve now) is retried. Any other error of any kind marks
    the attempt failed and retries it with backoff; nothing stops the deliverer."""

    def __init__(self, db_path: str | Path, signer: WebhookSigner, policy: RetryPolicy = RetryPolicy(),
                 on_result=None, check_url=None, *, concurrency: int = 8, per_receiver: int = 4,
                 max_response_bytes: int = 64 * 1024):
        self.path, self.signer, self.policy = Path(db_path), signer, policy
        self.concurrency, self.max_response_bytes = concurrency, max_response_bytes
        self.per_receiver = per_receiver
        self._on_result = on_result or (lambda ok: None)
        self._check_url = check_url or (lambda url: None)
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._in_flight: dict[int, tuple[str, str]] = {}      # delivery id -> (its receiver, user id)
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(_OUTBOX)

    def enqueue(self, url: str, request_id: str, user_id: str, payload: dict) -> None:
        """Idempotent: a second enqueue of one request and URL is ignored (hooks re-run after a
        crash must not send twice)."""
        body = json.dumps(payload).encode()
        with self._lock:
            self._db.execute(
                "INSERT OR IGNORE INTO deliveries (request_id, user_id, url, body, next_at, created_at)"
                " VALUES (?,?,?,?,?,?)", (request_id, user_id, url, body, time.time(), time.time()))
        self._wake.set()

    def deliveries(self, request_id: str) -> list[dict]:
        with self._lock:
            cur = self._db.execute("SELECT url, attempts, state, last_error FROM deliveries"
                                   " WHERE request_id = ?", (request_id,))
            return [dict(zip(("url", "attempts", "state", "last_error"), r)) for r in cur]

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="webhooks", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread:
            self._thread.join(timeout=5)

    def _run(self) -> None:
        with httpx.Client(trust_env=False, follow_redirects=False) as client, \
                ThreadPoolExecutor(self.concurrency, thread_name_prefix="webhook-send") as pool:
            while not self._stop.is_set():
                try:
                    rows, blocked = self._take_due()
                    for row in rows:
                        pool.submit(self._attempt, client, *row)
                    sleep_s = self._sleep_s(blocked)
                except Exception:   # the outbox file is busy or broken: try again in a moment
                    log.exception("webhook outbox failed; retrying")
                    sleep_s = 1.0
                self._wake.wait(sleep_s)
                self._wake.clear()
            pool.shutdown(wait=False, cancel_futures=True)

    def _take_due(self) -> tuple[list[tuple], bool]:
        """(due deliveries for the free senders, leased for the length of one attempt; whether
        due ones were left: no sender free, or their receiver or API key at its cap). At most
        per_receiver deliveries are in flight to one receiver (scheme, host and port) and for one
        key's jobs, so receivers that hang hold their share of the senders, never all of them.
        The due rows are read lazily, oldest first, without their bodies, until the free senders
        are filled: capped ones cost a row each, however many there are."""
        with self._lock:
            free = self.concurrency - len(self._in_flight)
            receivers = Counter(receiver for receiver, _ in self._in_flight.values())
            users = Counter(user for _, user in self._in_flight.values())
            chosen, blocked = {}, False
            due = self._db.execute("SELECT id, user_id, url FROM deliveries WHERE state = 'pending'"
                                   " AND next_at <= ? ORDER BY next_at", (time.time(),))
            for row_id, user, url in due:
                if row_id in self._in_flight:        # its lease ran out while it is still being sent
                    continue
                receiver = _receiver(url)
                if len(chosen) == free or receivers[receiver] >= self.per_receiver \
                        or users[user] >= self.per_receiver:
                    blocked = True
                    if len(chosen) == free:
                        break
                    continue
                receivers[receiver] += 1
                users[user] += 1
                chosen[row_id] = (receiver, user)
            due.close()
            if not chosen:
                return [], blocked
            marks = ",".join("?" * len(chosen))
            rows = self._db.execute(f"SELECT id, request_id, user_id, url, body, attempts FROM deliveries"
                                    f" WHERE id IN ({marks})", tuple(chosen)).fetchall()
            self._db.execute(f"UPDATE deliveries SET next_at = ? WHERE id IN ({marks})",
                             (time.time() + self.policy.timeout_s + 1.0, *chosen))
            self._in_flight.update(chosen)          # only once leased: a failed read leaks nothing
            return sorted(rows, key=lambda r: list(chosen).index(r[0])), blocked

    def _sleep_s(self, blocked: bool) -> float:
        """Until the next delivery falls due; when due ones wait for a sender or a cap (blocked),
        only the not yet due count: a sender that finishes wakes the loop (_attempt)."""
        now = time.time()
        with self._lock:
            r = self._db.execute("SELECT MIN(next_at) FROM deliveries WHERE state = 'pending'"
                                 + (" AND next_at > ?" if blocked else ""), (now,) if blocked else ()).fetchone()
        return 5.0 if r[0] is None else min(5.0, max(0.05, r[0] - now))

    def _attempt(self, client: httpx.Client, row_id, request_id, user_id, url, body, attempts) -> None:
        """One try of one delivery, on a sender thread. Never raises."""
        try:
            try:
                ips = self._check_url(url)
            except FetchError as exc:          # e.g. the name does not resolve right now
                error, final = f"{type(exc).__name__}: {exc}", False
            except Exception as exc:           # refused for good: no retry can make it safe
                error, final = f"refused: {exc}", True
            else:
                headers = self.signer.headers(request_id, user_id, body)
                error, final = self._post(client, url, ips, body, headers), False
                self._result(error is None)
            self._done(row_id, request_id, attempts + 1, error, final)
        except Exception:
            log.exception("webhook delivery failed", extra={"request_id": request_id})
            self._done(row_id, request_id, attempts + 1, "internal error", False)
        finally:
            with self._lock:
                self._in_flight.pop(row_id, None)
            self._wake.set()

    def _post(self, client: httpx.Client, url: str, ips, body: bytes, headers: dict) -> str | None:
        """POST `body` to `url` (pinned to `ips` when given); None, or why it failed."""
        deadline = time.monotonic() + self.policy.timeout_s
        try:
            targets = [None] if ips is None else list(ips)
            error = "no address to connect to"
            for ip in targets:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return "timed out"
                request = (client.build_request("POST", url, content=body, headers=headers,
                                                extensions={"timeout": httpx.Timeout(remaining).as_dict()})
                           if ip is None else pinned_post(client, url, ip, body, headers, remaining))
                try:
                    response = client.send(request, stream=True)
                except httpx.ConnectError as exc:     # try the host's next address
                    error = f"ConnectError: {exc}"
                    continue
                try:
                    return self._read_answer(response, deadline)
                finally:
                    response.close()
            return error
        except Exception as exc:    # any kind: InvalidURL, an IDNA error, a timeout, a reset ...
            return f"{type(exc).__name__}: {exc}"

    def _read_answer(self, response: httpx.Response, deadline: float) -> str | None:
        """Read at most max_response_bytes of the answer, within the deadline."""
        read = 0
        for piece in response.iter_raw():
            read += len(piece)
            if read >= self.max_response_bytes or time.monotonic() > deadline:
                break
        return None if 200 <= response.status_code < 300 else f"HTTP {response.status_code}"

    def _done(self, row_id, request_id, attempts, error, final) -> None:
        if error is None:
            state, next_at = "delivered", time.time()
        elif final or attempts >= self.policy.max_tries:
            state, next_at = "failed", time.time()
        else:
            state, next_at = "pending", time.time() + self.policy.delay(attempts)
        log.info("webhook", extra={"request_id": request_id, "attempt": attempts, "state": state,
                                   "error": error})
        with self._lock:
            self._db.execute("UPDATE deliveries SET attempts = ?, state = ?, next_at = ?, last_error = ?"
                             " WHERE id = ?", (attempts, state, next_at, error, row_id))

    def _result(self, ok: bool) -> None:
        try:
            self._on_result(ok)
        except Exception:
            log.exception("webhook result callback failed")


USER_AGENT = "flashhead-webhook/1.0"


def _receiver(url: str) -> str:
    """Who answers a delivery: scheme, host and port of its URL (the URL itself if unparsable)."""
    try:
        parts = urlsplit(url)
        return f"{parts.scheme}://{parts.netloc}".lower()
    except ValueError:
        return url


def pinned_post(client: httpx.Client, url: str, ip, body: bytes, headers: dict,
                timeout: float) -> httpx.Request:
    """The POST of a delivery: built by flashhead.media.fetch's pinning (connect to `ip`, keep
    the Host header and the TLS name), so what the SSRF guard checked is what is connected to."""
    from flashhead.media.fetch import _pinned_request

    get = _pinned_request(client, url, ip, timeout)
    merged = {k: v for k, v in get.headers.items() if k.lower() != "content-length"}
    return client.build_request("POST", get.url, headers={**merged, "User-Agent": USER_AGENT, **headers},
                                content=body, extensions=get.extensions)


_SUBMIT_CHECK_CLIENT: httpx.Client | None = None


def check_webhook_url(url: str, *, field: str = "fal_webhook") -> None:
    """Refuse at submit a URL the deliverer could not send to: parsed and built exactly as a
    delivery is (httpx, pinned to a stand-in address). Raises InputError naming `field`."""
    global _SUBMIT_CHECK_CLIENT
    check_url_length(url, field)
    try:
        parsed = httpx.URL(url)
        if parsed.scheme not in ("http", "https") or not parsed.host:
            raise InputError("must be an absolute http(s) URL", field=field)
        if _SUBMIT_CHECK_CLIENT is None:
            _SUBMIT_CHECK_CLIENT = httpx.Client(trust_env=False)
        pinned_post(_SUBMIT_CHECK_CLIENT, url, ipaddress.ip_address("192.0.2.1"), b"{}", {}, 1.0)
    except InputError:
        raise
    except (httpx.InvalidURL, httpx.UnsupportedProtocol, UnicodeError, ValueError) as exc:   # not a fault
        raise InputError(f"is not a valid URL: {exc}", field=field) from None              # of ours
