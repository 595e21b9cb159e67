"""Uploads (Python multipart, raw CDN, JS-style signed PUT) and file serving with ranges,
against a real server over TLS; stored content typed by its bytes and never run in a browser."""
from __future__ import annotations

import io
import json
import os

import pytest
from PIL import Image

from api_helpers import TEXT_ENDPOINT, Server, fal_sync_client, make_tls, wait_terminal

BLOB = os.urandom(300 * 1024 + 17)
MP4ISH = b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00isomiso2" + BLOB   # an MP4 header, then noise
HTML = b"<!doctype html><script>fetch('/rest/tokens/')</script>"
SVG = b"<svg xmlns='http://www.w3.org/2000/svg' onload='alert(document.domain)'/>"
CSP = "default-src 'none'; sandbox"


def png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (1, 2, 3)).save(buf, "PNG")
    return buf.getvalue()


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
    assert r.content == BLOB and r.headers["content-type"] == "application/octet-stream"
    assert r.headers["content-disposition"] == 'attachment; filename="blob.bin"'


def test_ranges_head_and_errors(server):
    fal = fal_sync_client(server)
    url = fal.upload(MP4ISH, "video/mp4", file_name="clip.mp4")
    assert url.endswith(".mp4")
    BLOB = MP4ISH
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
            assert r.headers["content-type"] == "video/mp4" and r.headers["x-content-type-options"] == "nosniff"
        r = c.get(url, headers={"Range": f"bytes={n}-"})
        assert r.status_code == 416 and r.headers["content-range"] == f"bytes */{n}"
        assert r.headers["content-security-policy"] == CSP and head.headers["content-security-policy"] == CSP
        base = url.rsplit("/", 1)[0]
        assert c.get(base + "/AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA.mp4").status_code == 404
        assert c.get(base + "/..%2Fjobs.db").status_code == 404


def test_js_style_signed_put_cannot_be_reused_for_another_file_or_twice(server):
    with server.client() as c:
        init = c.post("/rest/storage/upload/initiate", json={"content_type": "text/plain", "file_name": "a.txt"}).json()
        assert c.put(init["upload_url"], content=b"hello").status_code == 200
        assert c.get(init["file_url"]).text == "hello"
        assert c.get(init["file_url"]).headers["content-type"] == "application/octet-stream"
        other = c.post("/rest/storage/upload/initiate", json={"content_type": "text/plain", "file_name": "b.txt"}).json()
        token = init["upload_url"].split("token=")[1]
        forged = other["upload_url"].split("?")[0] + "?token=" + token
        assert c.put(forged, content=b"evil").status_code == 401
        assert c.put(other["upload_url"].split("?")[0], content=b"evil").status_code == 401
        again = c.put(init["upload_url"], content=b"swapped")       # nor twice for its own file:
        assert again.status_code == 401 and "already used" in again.text, again.text
        assert c.get(init["file_url"]).text == "hello"              # a URL's bytes never change
        retry = c.put(init["upload_url"], content=b"hello")         # a retry whose answer was lost
        assert retry.status_code == 200 and retry.json()["file_size"] == 5, retry.text



def test_racing_puts_to_one_signed_url_store_one_file(server):
    """Of PUTs of different bytes racing to one signed URL, exactly one stores (an exclusive put,
    not check-then-write) and the others get 401 "already used"; the URL serves the winner."""
    from concurrent.futures import ThreadPoolExecutor

    bodies = [bytes([i]) * 3_000_000 for i in range(6)]
    with server.client() as c:
        init = c.post("/rest/storage/upload/initiate", json={"content_type": "video/mp4", "file_name": "a.mp4"}).json()
    def put(body: bytes) -> int:
        with server.client() as c:
            return c.put(init["upload_url"], content=body).status_code
    with ThreadPoolExecutor(len(bodies)) as pool:
        codes = list(pool.map(put, bodies))
    assert sorted(codes) == [200] + [401] * (len(bodies) - 1), codes
    with server.client() as c:
        assert c.get(init["file_url"]).content == bodies[codes.index(200)]

@pytest.mark.parametrize("links", [True, False])
def test_local_exclusive_puts_race_to_one_file_with_or_without_hard_links(tmp_path, monkeypatch, links):
    """LocalStorage.put_file(exclusive=True): a hard link, or (a filesystem without them) an
    exclusive create that reserves the name; either way one of racing puts stores."""
    import errno
    import threading

    from flashhead.errors import AlreadyStored
    from flashhead.storage.base import new_key
    from flashhead.storage.local import LocalStorage

    if not links:
        def no_link(src, dst):
            raise OSError(errno.EPERM, "Operation not permitted")
        monkeypatch.setattr("flashhead.storage.local.os.link", no_link)
    storage, key, outcomes = LocalStorage(tmp_path / "files"), new_key(), []
    files = []
    for i in range(8):
        files.append(tmp_path / f"in{i}")
        files[-1].write_bytes(bytes([i]) * 200_000)
    gate = threading.Barrier(len(files))

    def put(path):
        gate.wait()
        try:
            storage.put_file(path, None, None, key, exclusive=True)
            outcomes.append(path)
        except AlreadyStored:
            pass
    threads = [threading.Thread(target=put, args=(f,)) for f in files]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(outcomes) == 1, outcomes
    assert b"".join(storage.open_range(key, 0, 199_999)) == outcomes[0].read_bytes()
    assert not list((tmp_path / "files").glob("*.part"))


def test_a_local_exclusive_put_that_fails_midway_leaves_nothing_behind(tmp_path, monkeypatch):
    """Its description could not be written (a full disk): the placed bytes go too, so the
    client's retry stores the file instead of meeting "already used" for ever."""
    import errno

    from flashhead.errors import StorageFull
    from flashhead.storage.base import new_key
    from flashhead.storage.local import LocalStorage

    storage, key = LocalStorage(tmp_path / "files"), new_key()
    src = tmp_path / "in"
    src.write_bytes(b"hello")
    real = type(src).write_text

    def full(self, *a, **kw):
        if self.name.endswith(".meta.json"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, *a, **kw)
    monkeypatch.setattr(type(src), "write_text", full)
    with pytest.raises(StorageFull):
        storage.put_file(src, None, None, key, exclusive=True)
    assert sorted(p.name for p in (tmp_path / "files").iterdir()) == [".staging"]
    monkeypatch.setattr(type(src), "write_text", real)
    assert storage.put_file(src, None, None, key, exclusive=True).size == 5

# ---- stored content never runs in a browser ------------------------------------------------

def _raw_upload(c, data: bytes, ctype: str, name: str) -> str:
    r = c.post("/cdn/files/upload", content=data, headers={"Content-Type": ctype, "X-Fal-File-Name": name})
    assert r.status_code == 200, r.text
    return r.json()["access_url"]


def _signed_upload(c, data: bytes, ctype: str, name: str) -> str:
    init = c.post("/rest/storage/upload/initiate", json={"content_type": ctype, "file_name": name}).json()
    assert c.put(init["upload_url"], content=data, headers={"Content-Type": ctype}).status_code == 200
    return init["file_url"]


def _multipart_upload(c, data: bytes, ctype: str, name: str) -> str:
    init = c.post("/cdn/files/upload/multipart", headers={"Content-Type": ctype, "X-Fal-File-Name": name}).json()
    assert c.put(f"{init['access_url']}/multipart/{init['uploadId']}/1", content=data).status_code == 200
    done = c.post(f"{init['access_url']}/multipart/{init['uploadId']}/complete", json={"parts": []})
    assert done.status_code == 200, done.text
    return done.json()["access_url"]


@pytest.mark.parametrize("upload", [_raw_upload, _signed_upload, _multipart_upload])
@pytest.mark.parametrize("data, declared, name, served", [
    (HTML, "image/png", "x.png", "application/octet-stream"),
    (HTML, "text/html", "x.html", "application/octet-stream"),
    (SVG, "image/svg+xml", "x.svg", "application/octet-stream"),
    (SVG, "image/png", "x.png", "application/octet-stream"),
    (b"<?xml version='1.0'?><html xmlns='http://www.w3.org/1999/xhtml'><script>1</script></html>",
     "application/xhtml+xml", "x.xhtml", "application/octet-stream"),
    (None, "text/html", "x.html", "image/png"),        # a real PNG declared as HTML is still a PNG
])
def test_served_type_comes_from_the_bytes(server, upload, data, declared, name, served):
    data = png() if data is None else data
    with server.client() as c:
        url = upload(c, data, declared, name)
        r = c.get(url)
    assert r.status_code == 200 and r.content == data
    assert r.headers["content-type"] == served
    disposition = "inline" if served == "image/png" else "attachment"
    assert r.headers["content-disposition"].startswith(disposition + ";")
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.headers["content-security-policy"] == CSP
    key = url.rsplit("/", 1)[1]
    assert not key.endswith((".html", ".svg", ".xhtml")), key


def test_a_file_stored_before_sniffing_is_still_served_as_an_attachment(server):
    """The allow-list is applied again when serving: old metadata saying text/html is not trusted."""
    with server.client() as c:
        url = _raw_upload(c, HTML, "text/html", "old.html")
        key = url.rsplit("/", 1)[1]
        meta = server.data_dir / "files" / f"{key}.meta.json"
        meta.write_text(json.dumps({**json.loads(meta.read_text()), "content_type": "text/html"}))
        r = c.get(url)
    assert r.headers["content-type"] == "application/octet-stream"
    assert r.headers["content-disposition"].startswith("attachment;")


FILES_ORIGIN = "https://files.flashhead.invalid"     # never resolved: own files are read from storage


@pytest.fixture(scope="module")
def files_origin_server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("files-origin")
    s = Server(tmp / "data", make_tls(tmp / "tls"), fake_generate=True,
               env={"FLASHHEAD_FILES_URL": FILES_ORIGIN, "FLASHHEAD_TEST_FAKE_CHUNKS": "1"}).start()
    yield s
    s.stop()


def test_files_url_moves_returned_urls_and_jobs_still_read_their_inputs_from_storage(files_origin_server):
    s = files_origin_server
    with s.client() as c:
        url = _raw_upload(c, png(), "image/png", "face.png")
        assert url.startswith(FILES_ORIGIN + "/files/")
        missing = FILES_ORIGIN + "/files/" + "A" * 32 + ".png"
        r = c.post(f"/queue/{TEXT_ENDPOINT}", json={"image_url": missing, "text": "hi"})
        assert r.status_code == 422 and "does not exist" in r.text          # recognised as own, checked
        r = c.post(f"/queue/{TEXT_ENDPOINT}", json={"image_url": url, "text": "hi"})
        assert r.status_code == 200, r.text
        rid = r.json()["request_id"]
        assert wait_terminal(c, rid)["status"] == "COMPLETED"
        result = c.get(f"/queue/{TEXT_ENDPOINT}/requests/{rid}").json()
        video_url = result["video"]["url"]
        assert video_url.startswith(FILES_ORIGIN + "/files/")
        served = c.get(video_url.replace(FILES_ORIGIN, ""))     # the files origin routes to this server
        given = json.loads(served.content.split(b": ", 1)[1])   # what the (fake) pipeline was given
    assert given["image_url"] != url and not given["image_url"].startswith("http"), given


@pytest.mark.parametrize("value", ["files.example.com", "https://files.example.com/prefix", "ftp://x",
                                   "https://u@files.example.com", "https://files.example.com/?a"])
def test_files_url_must_be_an_origin(value):
    from pydantic import ValidationError

    from flashhead.config import Settings

    with pytest.raises(ValidationError, match="files_url"):
        Settings(files_url=value)
    assert Settings(files_url="https://files.example.com:8443/").files_url
