"""Uploads (Python multipart, raw CDN, JS-style signed PUT) and file serving with ranges,
against a real server over TLS."""
from __future__ import annotations

import os

import pytest

from api_helpers import Server, fal_sync_client, make_tls

BLOB = os.urandom(300 * 1024 + 17)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("storage")
    s = Server(tmp / "data", make_tls(tmp / "tls"), fake_generate=True).start()
    yield s
    s.stop()


def test_python_multipart_upload(server, monkeypatch):
    import fal_client.client as fc

    fal = fal_sync_client(server)
    monkeypatch.setattr(fc, "MULTIPART_THRESHOLD", 64 * 1024)    # make a small file go multipart
    monkeypatch.setattr(fc, "MULTIPART_CHUNK_SIZE", 100 * 1024)
    url = fal.upload(BLOB, "application/x-test", file_name="blob.bin")
    with server.client() as c:
        r = c.get(url)
    assert r.content == BLOB and r.headers["content-type"] == "application/x-test"


def test_ranges_head_and_errors(server):
    fal = fal_sync_client(server)
    url = fal.upload(BLOB, "video/mp4", file_name="clip.mp4")
    assert url.endswith(".mp4")
    n = len(BLOB)
    with server.client() as c:
        head = c.head(url)
        assert head.status_code == 200 and int(head.headers["content-length"]) == n
        assert head.headers["accept-ranges"] == "bytes" and head.headers["content-type"] == "video/mp4"
        for rng, (a, b) in {"bytes=0-0": (0, 0), "bytes=100-": (100, n - 1), "bytes=-10": (n - 10, n - 1),
                            f"bytes=5-{n + 50}": (5, n - 1)}.items():
            r = c.get(url, headers={"Range": rng})
            assert r.status_code == 206 and r.content == BLOB[a:b + 1], rng
            assert r.headers["content-range"] == f"bytes {a}-{b}/{n}"
        r = c.get(url, headers={"Range": f"bytes={n}-"})
        assert r.status_code == 416 and r.headers["content-range"] == f"bytes */{n}"
        base = url.rsplit("/", 1)[0]
        assert c.get(base + "/AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA.mp4").status_code == 404
        assert c.get(base + "/..%2Fjobs.db").status_code == 404


def test_js_style_signed_put_cannot_be_reused_for_another_file(server):
    with server.client() as c:
        init = c.post("/rest/storage/upload/initiate", json={"content_type": "text/plain", "file_name": "a.txt"}).json()
        assert c.put(init["upload_url"], content=b"hello").status_code == 200
        assert c.get(init["file_url"]).text == "hello"
        assert c.get(init["file_url"]).headers["content-type"].startswith("text/plain")
        other = c.post("/rest/storage/upload/initiate", json={"content_type": "text/plain", "file_name": "b.txt"}).json()
        token = init["upload_url"].split("token=")[1]
        forged = other["upload_url"].split("?")[0] + "?token=" + token
        assert c.put(forged, content=b"evil").status_code == 401
        assert c.put(other["upload_url"].split("?")[0], content=b"evil").status_code == 401
