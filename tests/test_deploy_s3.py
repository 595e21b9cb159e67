"""S3 storage against a real S3-protocol server (moto's standalone server on loopback): the
S3Storage class itself, then a flashhead server with FLASHHEAD_STORAGE=s3 driven by the
unmodified fal-client (upload, generate, download the video with a Range request)."""
from __future__ import annotations

import os
import re

import pytest

from api_helpers import PORTRAIT, TEXT_ENDPOINT, Server, fal_sync_client, free_port, make_tls, probe_video
from deploy_helpers import AWS_ENV, S3Server
from flashhead.errors import AlreadyStored, BackendUnavailable, NotFound
from flashhead.storage.base import READ_BLOCK, new_key
from flashhead.storage.s3 import S3Storage

TEXT = "Hello there."          # about one second of speech
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:          # boto3 in this process finds the dummy keys
        for name, value in AWS_ENV.items():
            mp.setenv(name, value)
        with S3Server(tmp_path_factory.mktemp("moto")) as server:
            server.create_bucket("media")
            yield server


@pytest.fixture
def storage(s3, tmp_path):
    """Built the way make_storage builds it: endpoint, region and prefix, credentials from env."""
    return S3Storage("media", tmp_path / "staging", prefix="run-a", endpoint_url=s3.endpoint_url,
                     region="us-east-1")


def _file(tmp_path, data: bytes, name="in.bin"):
    p = tmp_path / name
    p.write_bytes(data)
    return p


def test_put_then_stat_and_the_object_layout(s3, storage, tmp_path):
    data = PNG_MAGIC + os.urandom(1000 - len(PNG_MAGIC))
    f = storage.put_file(_file(tmp_path, data), "text/html", "My Face (1).png")   # typed by its bytes
    assert (f.size, f.content_type, f.file_name) == (1000, "image/png", "My_Face_1_.png")
    assert storage.stat(f.key) == f
    raw = s3.client().get_object(Bucket="media", Key=f"run-a/{f.key}")      # prefix got its '/'
    assert raw["Body"].read() == data and raw["ContentType"] == "image/png"
    assert raw["Metadata"] == {"file-name": "My_Face_1_.png", "kind": "result"}


def test_an_exclusive_put_stores_once_even_when_racing(s3, storage, tmp_path):
    """exclusive=True (a signed upload URL) is S3's conditional write: of racing puts to one key,
    exactly one stores and the others get AlreadyStored; a plain put still replaces."""
    from concurrent.futures import ThreadPoolExecutor

    key = new_key()
    files = [_file(tmp_path, bytes([i]) * 100_000, f"in{i}.bin") for i in range(6)]

    def put(path):
        try:
            storage.put_file(path, None, None, key, exclusive=True)
            return "stored"
        except AlreadyStored:
            return "taken"
    with ThreadPoolExecutor(len(files)) as pool:
        outcomes = list(pool.map(put, files))
    assert sorted(outcomes) == ["stored"] + ["taken"] * (len(files) - 1), outcomes
    winner = files[outcomes.index("stored")].read_bytes()
    assert b"".join(storage.open_range(key, 0, len(winner) - 1)) == winner
    storage.put_file(files[0], None, None, key)
    assert b"".join(storage.open_range(key, 0, 0)) == b"\x00"


class _OtherStore:
    """An S3-compatible store's answers to If-None-Match: * (the rest is moto): "ignore" drops
    the header; "refuse" answers 501 NotImplemented to it; "conflict" answers 409
    ConditionalRequestConflict (another conditional write in flight) to the first such PUT."""

    def __init__(self, s3, how: str):
        self.s3, self.how, self.conflicts = s3, how, 1

    def __getattr__(self, name):
        return getattr(self.s3, name)

    def put_object(self, **kw):
        from botocore.exceptions import ClientError

        if "IfNoneMatch" in kw and self.how == "ignore":
            kw.pop("IfNoneMatch")
        elif "IfNoneMatch" in kw and self.how == "refuse":
            raise ClientError({"Error": {"Code": "NotImplemented"}}, "PutObject")
        elif "IfNoneMatch" in kw and self.how == "conflict" and self.conflicts:
            self.conflicts -= 1
            raise ClientError({"Error": {"Code": "ConditionalRequestConflict"}}, "PutObject")
        return self.s3.put_object(**kw)


@pytest.mark.parametrize("how", ["ignore", "refuse", "conflict"])
def test_an_exclusive_put_on_stores_that_answer_the_condition_otherwise(storage, tmp_path, how):
    storage.s3 = _OtherStore(storage.s3, how)
    key = new_key()
    storage.put_file(_file(tmp_path, b"first"), None, None, key, exclusive=True)
    with pytest.raises(AlreadyStored):               # the HEAD before the PUT
        storage.put_file(_file(tmp_path, b"second"), None, None, key, exclusive=True)
    assert b"".join(storage.open_range(key, 0, 4)) == b"first"


def test_content_type_is_sniffed_not_declared(storage, tmp_path):
    f = storage.put_file(_file(tmp_path, b"RIFF....WAVE"), "application/octet-stream", "voice.bin")
    assert f.content_type == "audio/wav" and f.key.endswith(".wav")
    assert storage.stat(f.key).content_type == f.content_type
    h = storage.put_file(_file(tmp_path, b"<html><script>1</script>"), "image/png", "x.png")
    assert storage.stat(h.key).content_type == "application/octet-stream" and "." not in h.key
    g = storage.put_bytes(b"\x00\x01", None, None)
    assert storage.stat(g.key).content_type == "application/octet-stream"
    assert storage.stat(g.key).file_name == g.key


def test_range_reads(storage, tmp_path):
    data = os.urandom(2 * READ_BLOCK + 123)          # several read blocks
    key = storage.put_file(_file(tmp_path, data), "video/mp4", "out.mp4").key
    for start, end in ((0, 0), (0, 99), (5, 17), (READ_BLOCK - 1, READ_BLOCK + 1), (len(data) - 10, len(data) - 1)):
        assert b"".join(storage.open_range(key, start, end)) == data[start:end + 1], (start, end)
    assert b"".join(storage.open_range(key, 0, len(data) - 1)) == data


def test_keys_are_unguessable_and_checked(storage, tmp_path):
    keys = {storage.put_bytes(PNG_MAGIC, "image/png", "a.png").key for _ in range(5)}
    assert len(keys) == 5
    assert all(re.fullmatch(r"[A-Za-z0-9_-]{32}\.png", k) for k in keys)
    missing = "A" * 32 + ".png"
    with pytest.raises(NotFound):
        storage.stat(missing)
    with pytest.raises(NotFound):
        storage.open_range(missing, 0, 10)
    for bad in ("../run-b/x", "a/b", "short", ""):            # never reaches S3 as an object name
        with pytest.raises(NotFound):
            storage.stat(bad)


def test_url_goes_through_the_files_route(storage):
    f = storage.put_bytes(b"abc", "text/plain", "a.txt")
    assert storage.url(f.key, "https://h.example:8443/") == f"https://h.example:8443/files/{f.key}"


def test_prefixes_separate_and_shared_prefixes_share(s3, storage, tmp_path):
    f = storage.put_bytes(b"shared", "text/plain", "a.txt")
    same = S3Storage("media", tmp_path / "s2", prefix="/run-a/", endpoint_url=s3.endpoint_url)
    other = S3Storage("media", tmp_path / "s3", prefix="run-b/", endpoint_url=s3.endpoint_url)
    assert b"".join(same.open_range(f.key, 0, 5)) == b"shared"        # another machine, same prefix
    with pytest.raises(NotFound):
        other.stat(f.key)
    root = S3Storage("media", tmp_path / "s4", prefix="", endpoint_url=s3.endpoint_url)
    g = root.put_bytes(b"r", "text/plain", "r.txt")
    assert s3.client().head_object(Bucket="media", Key=g.key)["ContentLength"] == 1


def test_multipart_upload_lands_in_the_bucket(storage, tmp_path):
    key, upload_id = storage.create_multipart("video/mp4", "clip.mp4")
    storage.put_part(key, upload_id, 2, _file(tmp_path, b"world", "p2"))
    storage.put_part(key, upload_id, 1, _file(tmp_path, b"hello ", "p1"))
    f = storage.complete_multipart(key, upload_id, [1, 2])
    assert (f.key, f.size, f.content_type) == (key, 11, "application/octet-stream")   # no MP4 bytes
    assert b"".join(storage.open_range(key, 0, 10)) == b"hello world"


def test_backend_failures_are_backend_unavailable(s3, tmp_path):
    import boto3
    from botocore.config import Config

    gone = S3Storage("no-such-bucket", tmp_path / "st", endpoint_url=s3.endpoint_url)
    with pytest.raises(BackendUnavailable) as err:
        gone.put_bytes(b"x", "text/plain", "a.txt")
    assert err.value.field == "storage"
    down = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{free_port()}", region_name="us-east-1",
                        config=Config(retries={"max_attempts": 1}, connect_timeout=2))
    dead = S3Storage("media", tmp_path / "sd", client=down)
    for call in (lambda: dead.stat("A" * 32), lambda: dead.open_range("A" * 32, 0, 1),
                 lambda: dead.put_bytes(b"x", None, "a.bin")):
        with pytest.raises(BackendUnavailable):
            call()


# ---- end to end: a flashhead server on S3 ------------------------------------------------

@pytest.fixture(scope="module")
def server(s3, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("s3_server")
    s3.create_bucket("served")
    srv = Server(tmp / "data", make_tls(tmp / "tls"), env=s3.server_env("served", prefix="fh")).start()
    yield srv
    srv.stop()


@pytest.mark.slow     # a real server on S3: the deploy test of this file
def test_server_stores_uploads_and_videos_in_s3(s3, server):
    fal = fal_sync_client(server)
    url = fal.upload_file(PORTRAIT)
    assert url.startswith(server.base_url + "/files/")
    key = url.rsplit("/", 1)[1]
    obj = s3.client().get_object(Bucket="served", Key=f"fh/{key}")
    assert obj["Body"].read() == PORTRAIT.read_bytes() and obj["ContentType"] == "image/png"
    assert not list((server.data_dir / "files").glob(key + "*"))      # not on the local disk

    out = fal.subscribe(TEXT_ENDPOINT, {"image_url": url, "text": TEXT})
    video_url = out["video"]["url"]
    assert video_url.startswith(server.base_url + "/files/") and out["video"]["content_type"] == "video/mp4"
    stored = s3.client().get_object(Bucket="served", Key="fh/" + video_url.rsplit("/", 1)[1])["Body"].read()
    assert len(stored) == out["video"]["file_size"]
    with server.client() as c:
        head = c.head(video_url)
        part = c.get(video_url, headers={"Range": "bytes=100-1099"})
        whole = c.get(video_url)
        missing = c.get(f"{server.base_url}/files/{'B' * 32}.mp4")
    assert head.status_code == 200 and int(head.headers["content-length"]) == len(stored)
    assert part.status_code == 206 and part.content == stored[100:1100]
    assert part.headers["content-range"] == f"bytes 100-1099/{len(stored)}"
    assert whole.content == stored and whole.headers["content-type"] == "video/mp4"
    assert missing.status_code == 404
    info = probe_video(whole.content)
    assert info["width"] == info["height"] == 512 and info["audio"]
