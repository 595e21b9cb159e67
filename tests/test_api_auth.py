"""API keys (CLI create/list/revoke, hashed storage), Key auth on every endpoint class,
realtime JWTs, CDN/upload tokens, the two auth modes (keys / open) and the refusal to serve
openly beyond loopback, tokens dying with their key, the last revocation closing the server,
and the per-key abuse limits (429 + Retry-After)."""
from __future__ import annotations

import json
import socket
import sqlite3
import ssl
import subprocess
import sys
import time

import pytest

from api_helpers import AUDIO_ENDPOINT, PORTRAIT, TEXT_ENDPOINT, Server, make_tls
from flashhead.api.auth import Auth, SqliteKeyStore
from flashhead.api.server import auth_mode
from flashhead.errors import Unauthorized
from flashhead.jobs.sqlite import SqliteJobStore
from flashhead.jobs.store import NewJob

INPUT = {"image_url": "data:image/png;base64,AAAA", "text": "hi"}


def keys_cli(data_dir, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "flashhead", "keys", *args, "--data-dir", str(data_dir)],
                          capture_output=True, text=True, timeout=60)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("auth")
    data = tmp / "data"
    key = keys_cli(data, "create").stdout.strip()
    s = Server(data, make_tls(tmp / "tls"), fake_generate=True, env={"FLASHHEAD_TEST_FAKE_CHUNK_S": "0.01"}).start()
    yield s, key
    s.stop()


@pytest.mark.slow
def test_cli_create_list_revoke_and_hashed_storage(tmp_path):
    created = keys_cli(tmp_path, "create")
    key_id, secret = created.stdout.strip().split(":")
    listed = keys_cli(tmp_path, "list").stdout
    assert key_id in listed and "active" in listed and secret not in listed
    raw = (tmp_path / "keys.db").read_bytes()
    assert secret.encode() not in raw
    row = sqlite3.connect(tmp_path / "keys.db").execute("SELECT hash FROM keys").fetchone()
    assert len(row[0]) == 32                                        # a digest, not the secret
    auth = Auth(tmp_path)
    assert auth.check(f"Key {key_id}:{secret}") == key_id
    assert keys_cli(tmp_path, "revoke", key_id).returncode == 0
    assert "revoked" in keys_cli(tmp_path, "list").stdout
    assert keys_cli(tmp_path, "revoke", key_id).returncode == 1
    with pytest.raises(Unauthorized, match="keys create"):          # no active key left: closed
        auth.check(f"Key {key_id}:{secret}")
    with pytest.raises(Unauthorized, match="keys create"):
        auth.check(None)


ENDPOINTS = [("POST", f"/{TEXT_ENDPOINT}", INPUT), ("POST", f"/queue/{TEXT_ENDPOINT}", INPUT),
             ("GET", f"/queue/{TEXT_ENDPOINT}/requests/x/status", None),
             ("GET", f"/queue/{TEXT_ENDPOINT}/requests/x", None),
             ("PUT", f"/queue/{TEXT_ENDPOINT}/requests/x/cancel", None),
             ("POST", "/rest/tokens/", {"allowed_apps": ["flashhead"]}),
             ("POST", "/rest/storage/auth/token", {}),
             ("POST", "/rest/storage/upload/initiate", {"content_type": "image/png", "file_name": "a.png"}),
             ("POST", "/cdn/files/upload", None)]


# Routes anyone may call: the service's own docs and playground page, health/metrics, the token
# verification keys, and stored files (capability URLs: the unguessable key is the credential).
PUBLIC = {("GET", "/"), ("GET", "/playground/config.json"), ("GET", "/playground/{name}"),
          ("GET", "/openapi.json"), ("GET", "/docs"), ("GET", "/docs/oauth2-redirect"), ("GET", "/redoc"),
          ("GET", "/health"), ("GET", "/metrics"), ("GET", "/.well-known/jwks.json"),
          ("GET", "/files/{key}"), ("HEAD", "/files/{key}")}
# Signed-URL routes: the token in the URL, not an API key, is the credential (checked in every mode).
SIGNED_URL = {"/cdn/uploads/{key}", "/cdn/uploads/{key}/multipart/{upload_id}/{number}",
              "/cdn/uploads/{key}/multipart/{upload_id}/complete"}


def _app_routes() -> list[tuple[str, str]]:
    """(method, path template) of every route the real app serves, WebSockets as ("WS", path),
    walked from create_app itself so that a new route is covered the day it is added."""
    import tempfile

    from flashhead.api.app import create_app
    from flashhead.config import Settings

    def walk(routes):
        for r in routes:
            if hasattr(r, "original_router"):               # an included router (FastAPI >= 0.165)
                assert r.include_context.prefix == "", r.include_context.prefix
                yield from walk(r.original_router.routes)
            elif hasattr(r, "methods"):
                yield from ((m, r.path) for m in sorted(r.methods))
            else:
                yield "WS", r.path

    with tempfile.TemporaryDirectory() as d:
        return sorted(set(walk(create_app(Settings(data_dir=d), worker_mode="thread").routes)))


ROUTES = _app_routes()
PROTECTED = [(m, p) for m, p in ROUTES if (m, p) not in PUBLIC and not (m == "HEAD" and ("GET", p) in PUBLIC)]


def _concrete(path: str) -> str:
    from flashhead.storage.base import new_key      # a well-formed key: refused for auth, not shape
    return path.replace("{number}", "1").replace("{key}", new_key(".png")).replace("{upload_id}", "u") \
               .replace("{request_id}", "x").replace("{name}", "x")


def test_the_route_list_is_the_apps_own():
    """The walk finds the routes every client uses (a guard against an empty or partial walk)."""
    paths = {p for _, p in PROTECTED}
    for p in (f"/{TEXT_ENDPOINT}/stream", f"/{TEXT_ENDPOINT}/realtime", f"/{AUDIO_ENDPOINT}/realtime",
              "/cdn/files/upload/multipart", f"/queue/{TEXT_ENDPOINT}/requests/{{request_id}}/status/stream"):
        assert p in paths, p
    assert len(PROTECTED) >= 20, PROTECTED


@pytest.mark.parametrize("method,path", [r for r in PROTECTED if r[0] != "WS"], ids=lambda v: v)
def test_every_http_route_refuses_a_caller_without_a_valid_key(setup, method, path):
    server, key = setup
    key_id = key.split(":")[0]
    url = _concrete(path)
    with server.client() as c:
        for header in (None, "Key nope:nope", f"Key {key_id}:wrong", f"Bearer {key}", key):
            r = c.request(method, url, json={}, headers={"Authorization": header} if header else {})
            assert r.status_code == 401, (header, r.status_code, r.text)
            if method != "HEAD":
                assert r.json()["error_type"] == "unauthorized", r.text
        if path in SIGNED_URL:
            return                      # a key is not this route's credential (the signed URL is)
        r = c.request(method, url, json={}, headers={"Authorization": f"Key {key}"})
        assert r.status_code not in (401, 403), (r.status_code, r.text)     # past auth: 404/422/...
        if method != "HEAD" and r.headers.get("content-type", "").startswith("application/json"):
            assert r.json().get("error_type") not in ("unauthorized", "forbidden"), r.text


@pytest.mark.parametrize("path", [p for m, p in PROTECTED if m == "WS"])
def test_every_websocket_refuses_a_caller_without_a_valid_token(setup, path):
    from websockets.exceptions import ConnectionClosed, InvalidStatus
    from websockets.sync.client import connect

    server, key = setup
    ctx = ssl.create_default_context(cafile=str(server.tls.ca_pem))
    for query in ("", "?fal_jwt_token=forged", f"?fal_jwt_token={key}"):
        try:
            with connect(f"wss://127.0.0.1:{server.port}{path}{query}", ssl=ctx) as ws:
                frames, deadline = [], time.monotonic() + 30
                with pytest.raises(ConnectionClosed) as closed:
                    while True:        # an error frame may come first; the connection must close
                        assert time.monotonic() < deadline, f"{path}{query[:16]} still open: {frames[:3]}"
                        frames.append(ws.recv(timeout=10))
                assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008, closed.value
        except InvalidStatus as exc:   # or the handshake itself is refused
            assert exc.response.status_code in (401, 403), exc


def test_the_tls_server_sends_no_session_tickets(setup):
    """No TLS 1.3 session ticket after the handshake (server.run_uvicorn). A client that reads its
    TLS socket in one thread while it writes its first request in another (the websockets sync
    client: fal-client's realtime, and the tests above) can lose that request to the ticket's
    arrival: a few of every thousand WebSocket connects from 6 threads timed out with tickets on."""
    server, _ = setup
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as raw, \
            server.ssl_context().wrap_socket(raw, server_hostname="127.0.0.1") as tls:
        assert tls.version() == "TLSv1.3", tls.version()     # tickets are a TLS 1.3 message
        tls.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        response = b""
        while chunk := tls.recv(65536):      # reading the answer reads any ticket sent before it
            response += chunk
        assert response.startswith(b"HTTP/1.1 200"), response[:80]
        assert tls.session is None or not tls.session.has_ticket, "the server sent a session ticket"


def _raw_tls(server: Server, head: str, body_parts: tuple[bytes, ...] = (), wait_s: float = 5.0) -> bytes:
    """Send a request's head (and body parts) by hand; what came back within wait_s."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=wait_s) as raw, \
            server.ssl_context().wrap_socket(raw, server_hostname="127.0.0.1") as tls:
        tls.sendall(head.encode())
        try:
            for part in body_parts:
                tls.sendall(part)
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError):      # it stopped reading: fine
            pass
        answer = b""
        try:
            while not _whole(answer) and (chunk := tls.recv(65536)):
                answer += chunk
        except (socket.timeout, ssl.SSLError, ConnectionResetError):
            pass
        return answer


def _whole(answer: bytes) -> bool:
    head, sep, body = answer.partition(b"\r\n\r\n")
    length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                   if line.lower().startswith(b"content-length:")), 0)
    return bool(sep) and len(body) >= length


def test_a_stranger_cannot_make_the_server_read_a_big_body(setup):
    """With keys, a request without a valid key or token may send at most
    anonymous_max_body_bytes (64 KiB): a bigger declared body is 401 before a byte of it is read,
    a chunked one is cut there; a caller with a valid key is read as before, and one with a token
    only on the routes that take its type."""
    server, key = setup
    head = ("POST /queue/fal-ai/flashhead HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            "{auth}Content-Length: 10000000\r\n\r\n")
    for auth in ("", "Authorization: Key bogus:secret\r\n", "Authorization: Bearer not.a.token\r\n"):
        answer = _raw_tls(server, head.format(auth=auth))           # the head only: nothing to read
        assert answer.startswith(b"HTTP/1.1 401"), (auth, answer[:200])
    assert _raw_tls(server, head.format(auth=f"Authorization: Key {key}\r\n"), wait_s=1.0) == b""  # reading
    at_limit = head.format(auth="").replace("10000000", "65536")                   # the edge: read
    assert _raw_tls(server, at_limit, wait_s=1.0) == b""
    past = _raw_tls(server, head.format(auth="").replace("10000000", "65537"))     # one byte past: not
    assert past.startswith(b"HTTP/1.1 401") and b"at most 65536 bytes" in past, past[:300]
    chunked = ("POST /queue/fal-ai/flashhead HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
               "Transfer-Encoding: chunked\r\n\r\n")
    part = b"%x\r\n%s\r\n" % (32768, b" " * 32768)
    answer = _raw_tls(server, chunked, (part,) * 3)                  # 96 KiB, no end: cut at 64
    assert answer.startswith(b"HTTP/1.1 401") and b"at most 65536 bytes" in answer, answer[:400]
    with server.client() as c:                                       # small bodies: the route's own 401
        r = c.post(f"/queue/{TEXT_ENDPOINT}", json={"image_url": "x", "text": "y" * 1000})
        assert r.status_code == 401 and r.json()["error_type"] == "unauthorized"
        init = c.post("/rest/storage/upload/initiate", json={"content_type": "image/png", "file_name": "a.png"},
                      headers={"Authorization": f"Key {key}"}).json()
        big = c.put(init["upload_url"], content=b"z" * 200_000)      # a signed URL's token vouches
        assert big.status_code == 200 and big.json()["file_size"] == 200_000, big.text
        forged = c.put(init["upload_url"].split("?")[0] + "?token=x.y.z", content=b"z" * 200_000)
        assert forged.status_code == 401 and "at most" in forged.text, forged.text
        token = c.post("/rest/tokens/", json={"allowed_apps": ["flashhead"]},
                       headers={"Authorization": f"Key {key}"}).json()
        for jwt, vouched in ((token, True), ("x.y.z", False)):      # WHEP's fal_jwt_token vouches too
            r = c.post(f"/{TEXT_ENDPOINT}/whep", params={"fal_jwt_token": jwt, "image_url": "x"},
                       content=b"v=0\r\n" * 20_000, headers={"Content-Type": "application/sdp"})
            assert (r.status_code != 401) == vouched and ("at most" in r.text) != vouched, (vouched, r.text)
        upload_token = init["upload_url"].split("token=")[1]         # a token vouches only where it works
        for path, params, auth in ((f"/queue/{TEXT_ENDPOINT}", {}, f"Bearer {token}"),
                                   (f"/queue/{TEXT_ENDPOINT}", {"fal_jwt_token": token}, None),
                                   (f"/{TEXT_ENDPOINT}/whep", {"token": upload_token, "image_url": "x"}, None)):
            r = c.post(path, params=params, content=b" " * 200_000,
                       headers={"Content-Type": "application/json", **({"Authorization": auth} if auth else {})})
            assert r.status_code == 401 and "at most" in r.text, (path, r.text)


def test_jobs_are_visible_to_their_own_key_only(setup, tmp_path):
    server, key = setup
    other = keys_cli(server.data_dir, "create").stdout.strip()
    with server.client() as c:
        rid = c.post(f"/queue/{TEXT_ENDPOINT}", json=INPUT, headers={"Authorization": f"Key {key}"}).json()["request_id"]
        assert c.get(f"/queue/{TEXT_ENDPOINT}/requests/{rid}/status",
                     headers={"Authorization": f"Key {other}"}).status_code == 404
        assert c.get(f"/queue/{TEXT_ENDPOINT}/requests/{rid}/status",
                     headers={"Authorization": f"Key {key}"}).status_code in (200, 202)
        # a job of the same data dir served in open mode (--no-auth) before: no key's
        ownerless = SqliteJobStore(server.data_dir / "jobs.db").submit(NewJob(TEXT_ENDPOINT, INPUT)).id
        for path in ("/status", "", "/cancel"):
            r = c.request("PUT" if path == "/cancel" else "GET", f"/queue/{TEXT_ENDPOINT}/requests/{ownerless}{path}",
                          headers={"Authorization": f"Key {key}"})
            assert r.status_code == 404, (path, r.text)


def test_realtime_tokens_are_short_lived_and_scoped(setup):
    server, key = setup
    with server.client() as c:
        r = c.post("/rest/tokens/", json={"allowed_apps": ["flashhead"], "token_expiration": 2},
                   headers={"Authorization": f"Key {key}"})
    token = r.json()
    assert isinstance(token, str)
    auth = Auth(server.data_dir)
    assert auth.verify_realtime_token(token, "fal-ai/flashhead")["apps"] == ["flashhead"]
    with pytest.raises(Unauthorized):
        auth.verify_realtime_token(token, "fal-ai/other-app")
    with pytest.raises(Unauthorized):
        Auth(server.data_dir / "elsewhere").verify_realtime_token(token, "flashhead")  # other secret
    claims = auth.verify_realtime_token(token, "flashhead")
    assert claims["exp"] - claims["iat"] == 2                       # the client's token_expiration
    deadline = time.monotonic() + 10                                # poll: no fixed sleep to tune
    while time.monotonic() < deadline:
        try:
            auth.verify_realtime_token(token, "flashhead")
        except Unauthorized as exc:
            assert "expired" in str(exc)
            break
        time.sleep(0.05)
    else:
        pytest.fail("the token outlived its 2 s token_expiration")
    assert time.time() >= claims["exp"]                             # and not before its time


def test_python_upload_flow_with_keys(setup):
    """fal-client gets a CDN token with its key, then uploads with that Bearer token."""
    from api_helpers import fal_sync_client
    server, key = setup
    url = fal_sync_client(server, key=key).upload_file(PORTRAIT)
    with server.client() as c:
        assert c.get(url).content == PORTRAIT.read_bytes()      # file URLs are capability URLs
        assert c.post("/cdn/files/upload", content=b"x", headers={"Authorization": "Bearer forged"}).status_code == 401


def test_auth_mode_is_keys_unless_no_auth_and_open_only_on_loopback(tmp_path, capsys):
    assert auth_mode("0.0.0.0", tmp_path) == "keys"                 # no key yet: closed, with a hint
    assert "keys create" in capsys.readouterr().err
    assert auth_mode("127.0.0.1", tmp_path, no_auth=True) == "open"
    assert auth_mode("0.0.0.0", tmp_path, no_auth=True, i_know_this_is_open=True) == "open"
    with pytest.raises(SystemExit, match="refusing --no-auth"):
        auth_mode("0.0.0.0", tmp_path, no_auth=True)
    with pytest.raises(SystemExit, match="goes with --no-auth"):
        auth_mode("127.0.0.1", tmp_path, i_know_this_is_open=True)


def test_cli_refuses_no_auth_beyond_loopback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "flashhead", "serve", "--host", "0.0.0.0", "--no-auth",
                           "--port", "1", "--data-dir", str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "refusing --no-auth" in proc.stderr and "--i-know-this-is-open" in proc.stderr


@pytest.mark.slow
def test_open_mode_needs_no_key_and_says_so(tmp_path):
    s = Server(tmp_path / "data", make_tls(tmp_path / "tls"), fake_generate=True, auth="open").start()
    try:
        with s.client() as c:
            assert c.get("/health").json()["auth"] == "open"
            r = c.post(f"/queue/{TEXT_ENDPOINT}", json=INPUT)
            assert r.status_code == 200, r.text
            own = f"https://127.0.0.1:{s.port}"
            for origin in (own, f"https://localhost:{s.port}", "http://[::1]:3000"):   # pages of this machine
                r = c.post("/cdn/files/upload", content=b"x", headers={"Origin": origin, "Content-Type": "text/plain"})
                assert r.status_code == 200, (origin, r.text)
            # a page of another site (CORS would let it read the answer), or a rebinding name
            for headers, field in (({"Origin": "https://evil.example"}, "Origin"), ({"Origin": "null"}, "Origin"),
                                   ({"Host": f"rebind.example:{s.port}", "Origin": f"https://rebind.example:{s.port}"},
                                    "Host"),
                                   ({"Host": f"rebind.example:{s.port}"}, "Host")):
                for method, path, body in (("POST", "/cdn/files/upload", b"x"), ("POST", f"/queue/{TEXT_ENDPOINT}", None)):
                    r = c.request(method, path, content=body, json=None if body else INPUT,
                                  headers={"Content-Type": "text/plain" if body else "application/json", **headers})
                    assert r.status_code == 403 and r.json()["error_type"] == "forbidden", (headers, path, r.text)
                    assert f"{field} " in r.json()["detail"], r.text
            frame, code = _ws_first_frame(s, "", origin="https://evil.example")
            assert code == 1008 and json.loads(frame)["error"] == "FORBIDDEN", (frame, code)
            assert _ws_first_frame(s, "", origin=own) == (None, None)          # connected, waiting
    finally:
        s.stop()


# ---- tokens die with their key; the last revocation closes the server ------------------------

def _ws_first_frame(server: Server, token: str, origin: str | None = None) -> tuple[str | None, int | None]:
    """(first text frame or None if none within 1.5 s, close code) of a realtime connection."""
    from websockets.exceptions import ConnectionClosed
    from websockets.sync.client import connect

    url = f"wss://127.0.0.1:{server.port}/{TEXT_ENDPOINT}/realtime?fal_jwt_token={token}"
    with connect(url, ssl=ssl.create_default_context(cafile=str(server.tls.ca_pem)), origin=origin) as ws:
        try:
            frame = ws.recv(timeout=1.5)
        except TimeoutError:
            return None, None
        except ConnectionClosed as exc:
            return None, exc.rcvd.code if exc.rcvd else None
        try:
            ws.recv(timeout=5)
        except ConnectionClosed as exc:
            return frame, exc.rcvd.code if exc.rcvd else None
        return frame, None


def _tokens(c, key: str) -> dict:
    """A realtime token, a CDN token and a signed upload URL, all issued with `key`."""
    h = {"Authorization": f"Key {key}"}
    rt = c.post("/rest/tokens/", json={"allowed_apps": ["flashhead"]}, headers=h).json()
    cdn = c.post("/rest/storage/auth/token", headers=h).json()["token"]
    url = c.post("/rest/storage/upload/initiate", json={"content_type": "image/png", "file_name": "a.png"},
                 headers=h).json()["upload_url"]
    return {"realtime": rt, "cdn": cdn, "upload_url": url}


def _token_status(c, server: Server, tokens: dict) -> dict:
    frame, code = _ws_first_frame(server, tokens["realtime"])
    return {"cdn": c.post("/cdn/files/upload", content=b"x", headers={"Authorization": f"Bearer {tokens['cdn']}",
                                                                     "Content-Type": "text/plain"}).status_code,
            "upload": c.put(tokens["upload_url"], content=PORTRAIT.read_bytes()).status_code,
            "realtime": code if code is not None else "open", "frame": frame}


@pytest.mark.slow
def test_tokens_die_with_their_key_and_the_last_revocation_closes_the_server(tmp_path):
    data = tmp_path / "data"
    keys = SqliteKeyStore(data)                 # the server's keys.db (the CLI is tested above)
    k1, k2 = keys.create(), keys.create()
    s = Server(data, make_tls(tmp_path / "tls"), fake_generate=True).start()
    try:
        with s.client() as c:
            assert c.get("/health").json()["auth"] == "keys"
            t1, t2 = _tokens(c, k1), _tokens(c, k2)
            claims = json.loads(__import__("base64").urlsafe_b64decode(t1["realtime"].split(".")[1] + "=="))
            assert claims["sub"] == k1.split(":")[0] and claims["exp"] - claims["iat"] <= 600
            assert keys.revoke(k1.split(":")[0])
            dead = _token_status(c, s, t1)                           # each use checks the key
            assert (dead["cdn"], dead["upload"], dead["realtime"]) == (401, 401, 1008), dead
            assert "revoked" in json.loads(dead["frame"])["reason"]
            live = _token_status(c, s, t2)                           # the other key's tokens live on
            assert (live["cdn"], live["upload"], live["realtime"]) == (200, 200, "open"), live
            assert c.post(f"/queue/{TEXT_ENDPOINT}", json=INPUT, headers={"Authorization": f"Key {k1}"}).status_code == 401
            t2 = _tokens(c, k2)
            assert keys.revoke(k2.split(":")[0])                     # the last key
            for method, path, body in ENDPOINTS:
                r = c.request(method, path, json=body, headers={"Authorization": f"Key {k2}"})
                assert r.status_code == 401 and "keys create" in r.text, (path, r.text)
                assert c.request(method, path, json=body).status_code == 401
            closed = _token_status(c, s, t2)
            assert (closed["cdn"], closed["upload"], closed["realtime"]) == (401, 401, 1008), closed
            assert c.get("/health").json()["auth"] == "keys"
    finally:
        s.stop()


# ---- abuse limits ---------------------------------------------------------------------------

@pytest.mark.slow
def test_per_key_rate_and_job_limits_answer_429_with_retry_after(tmp_path):
    data = tmp_path / "data"
    keys = SqliteKeyStore(data)
    k1, k2 = keys.create(), keys.create()
    env = {"FLASHHEAD_RATE_LIMIT": "8/minute", "FLASHHEAD_MAX_ACTIVE_JOBS_PER_KEY": "2",
           "FLASHHEAD_TEST_FAKE_CHUNK_S": "1"}
    s = Server(data, make_tls(tmp_path / "tls"), fake_generate=True, env=env).start()
    try:
        with s.client() as c:
            h1, h2 = {"Authorization": f"Key {k1}"}, {"Authorization": f"Key {k2}"}
            codes = [c.post(f"/queue/{TEXT_ENDPOINT}", json=INPUT, headers=h1).status_code for _ in range(3)]
            assert codes == [200, 200, 429], codes                  # two active jobs at most
            r = c.post(f"/queue/{TEXT_ENDPOINT}", json=INPUT, headers=h1)
            assert r.status_code == 429 and r.json()["error_type"] == "rate_limited"
            assert int(r.headers["retry-after"]) >= 1 and "2" in r.json()["detail"]
            assert c.post(f"/queue/{TEXT_ENDPOINT}", json=INPUT, headers=h2).status_code == 200   # per key
            codes = [c.get(f"/queue/{TEXT_ENDPOINT}/requests/x/status", headers=h1).status_code for _ in range(5)]
            assert codes[:4] == [404] * 4 and codes[4] == 429, codes     # 8 requests a minute
            r = c.get(f"/queue/{TEXT_ENDPOINT}/requests/x/status", headers=h1)
            assert r.status_code == 429 and 1 <= int(r.headers["retry-after"]) <= 60, r.headers
            assert c.get(f"/queue/{TEXT_ENDPOINT}/requests/x/status", headers=h2).status_code == 404
    finally:
        s.kill()        # its three 10 s jobs need not finish: a graceful stop would wait for them
