"""Body limits are enforced while the body streams in: Content-Length over the cap and a chunked
body that passes it get 413 (the standard error body), a stalled body 408; uploads keep their
own cap, multipart uploads included (their total); ordinary requests and SSE streams still work."""
from __future__ import annotations

import json
import socket
import time

import httpx
import pytest

from bounds_helpers import inproc_server

MAX_BODY, MAX_UPLOAD, TIMEOUT_S, HEAD_TIMEOUT_S = 100_000, 300_000, 1.0, 1.0
SUBMIT = "/queue/fal-ai/flashhead"
TINY_PNG = "data:image/png;base64,iVBORw0KGgo="


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with inproc_server(tmp_path_factory.mktemp("bodies"), max_body_bytes=MAX_BODY, max_upload_bytes=MAX_UPLOAD,
                       body_read_timeout_s=TIMEOUT_S, http_head_timeout_s=HEAD_TIMEOUT_S) as (base, _app):
        yield base


def _raw(base: str, head: str, chunks: list[bytes], pause_s: float = 0.0) -> tuple[int, dict, float]:
    """Send a request by hand (headers, then body chunks); returns (status, JSON body, seconds
    from the last byte sent to the answer)."""
    host, port = base.split("//")[1].split(":")
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(head.encode())
        try:
            for chunk in chunks:
                s.sendall(chunk)
                time.sleep(pause_s)
        except (BrokenPipeError, ConnectionResetError):   # the server stopped reading: fine
            pass
        t = time.monotonic()
        data = b""
        while b"\r\n\r\n" not in data or len(data.split(b"\r\n\r\n", 1)[1]) < _length(data):
            block = s.recv(65536)
            if not block:
                break
            data += block
    head_part, _, body = data.partition(b"\r\n\r\n")
    return int(head_part.split()[1]), json.loads(body[:_length(data)]), time.monotonic() - t


def _length(data: bytes) -> int:
    for line in data.split(b"\r\n\r\n", 1)[0].split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return int(line.split(b":")[1])
    return 1 << 30


def _post_head(path: str, extra: str) -> str:
    return f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n{extra}\r\n"


def test_declared_length_over_the_cap_is_refused_before_reading(server):
    status, body, _ = _raw(server, _post_head(SUBMIT, f"Content-Length: {MAX_BODY + 1}\r\n"), [])
    assert status == 413
    assert body["error_type"] == "payload_too_large" and str(MAX_BODY) in body["detail"]


def test_chunked_body_is_cut_when_it_passes_the_cap(server):
    block = b"x" * 20_000
    chunks = [f"{len(block):x}\r\n".encode() + block + b"\r\n"] * 40          # 800 kB, no length
    status, body, _ = _raw(server, _post_head(SUBMIT, "Transfer-Encoding: chunked\r\n"), chunks)
    assert status == 413 and body["error_type"] == "payload_too_large"


def test_stalled_body_gets_408(server):
    t0 = time.monotonic()
    status, body, _ = _raw(server, _post_head(SUBMIT, "Content-Length: 1000\r\n"), [b'{"text": '])
    assert status == 408 and body["error_type"] == "request_timeout"
    assert TIMEOUT_S <= time.monotonic() - t0 < TIMEOUT_S + 5


@pytest.mark.slow
def test_bodies_under_the_caps_work_and_sse_outlives_the_read_timeout(server):
    with httpx.Client(base_url=server, timeout=30) as c:
        pad = "y" * (MAX_BODY - 200)                 # just under the JSON cap
        r = c.post(SUBMIT, json={"image_url": TINY_PNG, "text": "hi", "pad": pad})
        assert r.status_code == 200, r.text
        rid = r.json()["request_id"]
        t0 = time.monotonic()
        with c.stream("GET", f"{SUBMIT}/requests/{rid}/status/stream") as s:
            events = [json.loads(line[5:]) for line in s.iter_lines() if line.startswith("data:")]
        assert events[-1]["status"] == "COMPLETED" and time.monotonic() - t0 > TIMEOUT_S
        r = c.post("/cdn/files/upload", content=b"z" * (MAX_UPLOAD - 1), headers={"content-type": "image/png"})
        assert r.status_code == 200 and r.json()["file_size"] == MAX_UPLOAD - 1


def test_upload_over_its_cap_is_413(server):
    with httpx.Client(base_url=server, timeout=30) as c:
        r = c.post("/cdn/files/upload", content=b"z" * (MAX_UPLOAD + 1), headers={"content-type": "image/png"})
        assert r.status_code == 413 and r.json()["error_type"] == "payload_too_large"
        chunked = c.post("/cdn/files/upload", content=iter([b"z" * 100_000] * 4))
        assert chunked.status_code == 413


def test_multipart_total_is_capped(server):
    with httpx.Client(base_url=server, timeout=30) as c:
        mp = c.post("/cdn/files/upload/multipart", headers={"content-type": "video/mp4",
                                                            "x-fal-file-name": "big.mp4"}).json()
        part = lambda n: f"{mp['access_url']}/multipart/{mp['uploadId']}/{n}"  # noqa: E731
        assert c.put(part(1), content=b"a" * 200_000).status_code == 200
        r = c.put(part(2), content=b"b" * 200_000)          # each part fits, the total does not
        assert r.status_code == 413 and "in total" in r.json()["detail"]
        assert c.put(part(2), content=b"b" * 50_000).status_code == 200
        done = c.post(f"{mp['access_url']}/multipart/{mp['uploadId']}/complete", json={"parts": [
            {"partNumber": 1}, {"partNumber": 2}]})
        assert done.status_code == 200 and done.json()["file_size"] == 250_000


@pytest.mark.slow
def test_an_idle_connection_outlives_the_clients_keep_alive(server):
    """A pooled connection is closed by the client, never first by the server (http_keep_alive_s).
    When both sides used 5 s (uvicorn's default, httpx's and so fal-client's), a client's next
    request sometimes met the server's close and failed (a reset: the soak's one ReadError)."""
    from flashhead.config import Settings

    assert Settings.model_fields["http_keep_alive_s"].default > httpx.Limits().keepalive_expiry
    host, port = server.split("//")[1].split(":")
    request = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    with socket.create_connection((host, int(port)), timeout=10) as s:
        for pause in (0.0, httpx.Limits().keepalive_expiry + 1.0):   # the second: past uvicorn's 5 s
            time.sleep(pause)
            s.sendall(request)
            answer = b""
            while b"\r\n\r\n" not in answer or len(answer.split(b"\r\n\r\n", 1)[1]) < _length(answer):
                block = s.recv(65536)
                assert block, f"the server closed the connection after {pause} s idle"
                answer += block
            assert answer.startswith(b"HTTP/1.1 200"), (pause, answer[:80])


def test_the_server_bounds_realtime_messages_like_bodies():
    """`flashhead serve`'s uvicorn: a WebSocket message up to max_body_bytes (the big-message
    test in test_realtime_server reads one past uvicorn's 16 MiB), at most
    realtime_read_ahead_messages of them read ahead of the route."""
    from flashhead.api.server import uvicorn_config
    from flashhead.config import Settings

    config = uvicorn_config(None, Settings(max_body_bytes=123_456, realtime_read_ahead_messages=3))
    assert (config.ws_max_size, config.ws_max_queue) == (123_456, 3)


def _closed_within(s: socket.socket, seconds: float) -> bool:
    """Whether the server closes `s` (EOF or reset) within `seconds`."""
    s.settimeout(seconds)
    try:
        while s.recv(65536):
            pass
        return True
    except socket.timeout:
        return False
    except OSError:
        return True


@pytest.mark.slow                                         # waits out the head deadline twice
def test_a_connection_that_sends_no_whole_request_head_is_closed(server):
    """http_head_timeout_s: a connection that sends nothing, or half a head, or half of its next
    head after a request, is closed at the deadline (uvicorn kept them open for good: slowloris);
    an idle kept-alive connection and a WebSocket outlive it."""
    from websockets.sync.client import connect

    host, port = server.split("//")[1].split(":")
    request = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    silent, half, later = (socket.create_connection((host, int(port))) for _ in range(3))
    half.sendall(request[:30])
    assert not _closed_within(silent, HEAD_TIMEOUT_S / 2)    # the edge: open before the deadline
    later.settimeout(5)
    later.sendall(request)
    assert later.recv(65536).startswith(b"HTTP/1.1 200")
    time.sleep(HEAD_TIMEOUT_S + 0.5)                      # `later` idles past the deadline: kept alive
    later.sendall(request)
    assert later.recv(65536).startswith(b"HTTP/1.1 200")
    later.sendall(request[:30])                           # ... then sends half of its next head
    opened = time.monotonic()
    with connect(server.replace("http", "ws", 1) + "/fal-ai/flashhead/realtime") as ws:
        for s in (silent, half, later):
            assert _closed_within(s, HEAD_TIMEOUT_S + 2.0), s
            s.close()
        assert time.monotonic() - opened > HEAD_TIMEOUT_S
        ws.send(b"\x00")                                  # past the deadline the socket still talks
        assert "x-fal-error" in ws.recv(timeout=5)
