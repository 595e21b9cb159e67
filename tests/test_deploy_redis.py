"""The Redis job store behind real `flashhead serve` processes, driven by the unmodified
fal-client: the queue works on Redis, queued jobs survive a SIGKILL of the server (even onto a
fresh data dir: they live in Redis; a running one is re-queued once the dead server's lease has
expired), and two servers sharing one Redis and one S3 bucket behind a load balancer serve each
other's jobs and files, accept the same API keys and each other's tokens, and leave each other's
running jobs alone (the several-machines deployment)."""
from __future__ import annotations

import json
import secrets
import subprocess
import sys
import time
import urllib.parse

import httpx
import pytest

from api_helpers import (AUDIO_ENDPOINT, PORTRAIT, TEXT_ENDPOINT, Server, WebhookReceiver, data_uri,
                         fal_sync_client, make_tls, probe_video)
from deploy_helpers import RoundRobinProxy, S3Server
from test_api_fal_client import _long_wav

pytestmark = pytest.mark.slow      # the deploy tests: several real servers, redis, an S3 stand-in (about 2.5 min)

TEXT = "Hello there."          # about one second of speech


@pytest.fixture(scope="module")
def tls(tmp_path_factory):
    return make_tls(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def portrait():
    return data_uri(PORTRAIT, "image/png")


def _redis_env(url: str, prefix: str) -> dict:
    return {"FLASHHEAD_JOB_STORE": url, "FLASHHEAD_REDIS_PREFIX": prefix}


def _wait(predicate, timeout=120.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"{what} not reached after {timeout} s")


def _rendering(handle) -> bool:
    import fal_client
    s = handle.status(with_logs=True)
    return isinstance(s, fal_client.InProgress) and any(e["message"].startswith("rendered ") for e in s.logs or [])


def _completed(fal, request_id):
    import fal_client

    def done():
        s = fal.status(TEXT_ENDPOINT, request_id, with_logs=True)
        return s if isinstance(s, fal_client.Completed) else None
    return _wait(done, what=f"{request_id} completed")


def test_queue_on_redis_and_queued_jobs_survive_sigkill(redis_url, tls, portrait, tmp_path):
    prefix = f"fh{time.monotonic_ns()}:"
    server = Server(tmp_path / "a", tls, env=_redis_env(redis_url, prefix)).start()
    try:
        _queue_then_restart(server, redis_url, prefix, tls, portrait, tmp_path)
    finally:
        server.kill()


def _queue_then_restart(server, redis_url, prefix, tls, portrait, tmp_path):
    import fal_client
    import redis

    fal = fal_sync_client(server)
    long_audio = data_uri(_long_wav(tmp_path), "audio/wav")
    blocker = fal.submit(AUDIO_ENDPOINT, {"image_url": portrait, "audio_url": long_audio})
    queued = fal.submit(TEXT_ENDPOINT, {"image_url": portrait, "text": TEXT})
    _wait(lambda: _rendering(blocker), what="blocker rendering")
    assert isinstance(queued.status(), fal_client.Queued)
    queued.cancel()                                            # cancel of a queued job
    assert queued.status().error_type == "cancelled"
    blocker.cancel()

    ok = fal.submit(TEXT_ENDPOINT, {"image_url": portrait, "text": TEXT, "seed": 3})
    status = _completed(fal, ok.request_id)
    messages = [e["message"] for e in status.logs]
    assert status.error is None and messages[0].startswith("started") and messages[-1] == "completed"
    result = ok.get()
    assert result["seed"] == 3 and result["video"]["content_type"] == "video/mp4"
    with server.client() as c:
        assert probe_video(c.get(result["video"]["url"]).content)["audio"]

    r = redis.Redis.from_url(redis_url, decode_responses=True)       # the jobs really are in Redis
    stored = {k.split(":")[-1] for k in r.scan_iter(f"{prefix}job:*")}
    assert {blocker.request_id, queued.request_id, ok.request_id} <= stored
    assert not (server.data_dir / "jobs.db").exists()

    # SIGKILL with one job rendering and one waiting; restart on a FRESH data dir: only Redis remembers
    running = fal.submit(AUDIO_ENDPOINT, {"image_url": portrait, "audio_url": long_audio})
    waiting = fal.submit(TEXT_ENDPOINT, {"image_url": portrait, "text": TEXT})
    _wait(lambda: _rendering(running), what="running job rendering")
    assert isinstance(waiting.status(), fal_client.Queued)
    server.kill()
    again = Server(tmp_path / "b", tls, port=server.port, env=_redis_env(redis_url, prefix)).start()
    try:
        fal = fal_sync_client(again)
        logs = lambda: [e["message"] for e in getattr(fal.status(  # noqa: E731  (Queued has no logs)
            AUDIO_ENDPOINT, running.request_id, with_logs=True), "logs", None) or []]
        # the dead server's lease (FLASHHEAD_JOB_LEASE_S, 10 s) runs out, then its job is re-queued
        _wait(lambda: any(m.startswith("re-queued") for m in logs()), timeout=60, what="re-queued")
        fal.cancel(AUDIO_ENDPOINT, running.request_id)                  # keep the test short
        done = _completed(fal, waiting.request_id)
        assert done.error is None
        video = fal.result(TEXT_ENDPOINT, waiting.request_id)["video"]
        with again.client() as c:
            assert c.get(video["url"]).status_code == 200
    finally:
        again.stop()


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    with S3Server(tmp_path_factory.mktemp("moto")) as server:
        server.create_bucket("shared")
        yield server


def test_two_servers_share_one_redis_and_one_bucket(redis_url, s3, tls, portrait, tmp_path):
    a, b = Server(tmp_path / "a", tls), Server(tmp_path / "b", tls)
    with RoundRobinProxy([a.port, b.port]) as lb, WebhookReceiver() as hooks:
        env = {**_redis_env(redis_url, f"two{time.monotonic_ns()}:"), **s3.server_env("shared"),
               "FLASHHEAD_PUBLIC_URL": lb.base_url}          # both answer with the balancer's URLs
        a.env = b.env = env
        try:
            a.start()
            b.start()
            fal = fal_sync_client(a)                             # upload and submit on A ...
            image = fal.upload_file(PORTRAIT)
            assert image.startswith(lb.base_url + "/files/")
            jobs = [fal.submit(TEXT_ENDPOINT, {"image_url": image, "text": TEXT, "seed": n},
                               webhook_url=hooks.url) for n in (1, 2)]
            fal = fal_sync_client(b)                             # ... follow them on B
            for n, job in enumerate(jobs, 1):
                assert _completed(fal, job.request_id).error is None
                out = fal.result(TEXT_ENDPOINT, job.request_id)
                assert out["seed"] == n and out["video"]["url"].startswith(lb.base_url + "/files/")
                key = out["video"]["url"].rsplit("/", 1)[1]
                with b.client() as c, a.client() as ca:
                    whole = c.get(f"/files/{key}")
                    part = c.get(f"/files/{key}", headers={"Range": "bytes=0-99"})
                    assert ca.get(f"/files/{key}").content == whole.content
                assert whole.status_code == 200 and len(whole.content) == out["video"]["file_size"]
                assert part.status_code == 206 and part.content == whole.content[:100]
                assert probe_video(whole.content)["width"] == 512
            _wait(lambda: len(hooks.received) >= 2, timeout=30, what="webhooks")
            time.sleep(1.0)                                      # room for a duplicate to show up
            ids = sorted(json.loads(body)["request_id"] for _, body in hooks.received)
            assert ids == sorted(j.request_id for j in jobs)     # exactly one webhook per job
            with httpx.Client(verify=a.ssl_context()) as c:      # through the balancer, either server
                assert all(c.get(out["video"]["url"]).status_code == 200 for _ in range(2))
        finally:
            a.stop()
            b.stop()


def test_starting_a_second_server_leaves_the_first_ones_running_job_alone(redis_url, tls, portrait, tmp_path):
    env = _redis_env(redis_url, f"own{time.monotonic_ns()}:")
    a = Server(tmp_path / "a", tls, env=env).start()
    b = Server(tmp_path / "b", tls, env=env)
    try:
        fal = fal_sync_client(a)
        job = fal.submit(AUDIO_ENDPOINT, {"image_url": portrait,
                                          "audio_url": data_uri(_long_wav(tmp_path), "audio/wav")})
        _wait(lambda: _rendering(job), what="job rendering on A")
        b.start()                                  # a second machine joins while A renders
        done = _completed(fal, job.request_id)     # the 30 s job may finish while B starts
        log = [e["message"] for e in done.logs]
        assert done.error is None and not any(m.startswith("re-queued") for m in log), log
        assert sum(m.startswith("started") for m in log) == 1, log
    finally:
        a.stop()
        b.stop()


def _keys_cli(env: dict, data_dir, *args) -> str:
    import os
    proc = subprocess.run([sys.executable, "-m", "flashhead", "keys", *args, "--data-dir", str(data_dir)],
                          capture_output=True, text=True, timeout=60, env={**os.environ, **env})
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def _realtime_error(server, token: str) -> str:
    """The error kind the server's realtime socket answers to an unknown message type:
    UNAUTHORIZED if the token was refused, INVALID_INPUT once it was accepted."""
    import msgpack
    from websockets.sync.client import connect

    url = f"wss://127.0.0.1:{server.port}/{TEXT_ENDPOINT}/realtime?fal_jwt_token={token}"
    with connect(url, ssl=server.ssl_context(), open_timeout=30) as ws:
        try:
            ws.send(msgpack.packb({"type": "no-such-type"}))
        except Exception:                     # refused: the server already closed it
            pass
        return json.loads(ws.recv(timeout=30))["error"]


def test_two_servers_share_api_keys_and_token_secret(redis_url, tls, tmp_path):
    env = {**_redis_env(redis_url, f"auth{time.monotonic_ns()}:"), "FLASHHEAD_JWT_SECRET": secrets.token_hex(32),
           "FLASHHEAD_TEST_FAKE_CHUNK_S": "0.01"}
    key = _keys_cli(env, tmp_path / "admin", "create", "--alias", "shared")   # once, on any machine
    other = _keys_cli(env, tmp_path / "admin", "create")          # (so that auth stays on after a revoke)
    assert not (tmp_path / "admin" / "keys.db").exists()                        # it went to redis
    a, b = (Server(tmp_path / n, tls, env=env, fake_generate=True) for n in "ab")
    try:
        a.start()
        b.start()
        good = {"Authorization": f"Key {key}"}
        with a.client(headers=good) as ca, b.client(headers=good) as cb:
            for c in (ca, cb):
                r = c.post("/rest/tokens/", json={"allowed_apps": ["flashhead"]},
                           headers={"Authorization": f"Key {key.split(':')[0]}:wrong"})
                assert r.status_code == 401 and c.get("/health").json()["auth"] == "keys"
            assert ca.get("/.well-known/jwks.json").json() == cb.get("/.well-known/jwks.json").json()
            rid = ca.post(f"/queue/{TEXT_ENDPOINT}", json={"image_url": "data:,x", "text": "hi"}).json()["request_id"]
            assert cb.get(f"/queue/{TEXT_ENDPOINT}/requests/{rid}/status").status_code in (200, 202)

            token = ca.post("/rest/tokens/", json={"allowed_apps": ["flashhead"]}).json()    # realtime JWT by A
            assert _realtime_error(b, token) == "INVALID_INPUT"                              # accepted by B
            assert _realtime_error(b, token[:-4] + "AAAA") == "UNAUTHORIZED"

            cdn = ca.post("/rest/storage/auth/token").json()["token"]                        # CDN token by A
            up = cb.post("/cdn/files/upload", content=b"shared", headers={"Authorization": f"Bearer {cdn}",
                                                                          "Content-Type": "text/plain"})
            assert up.status_code == 200, up.text
            signed = ca.post("/rest/storage/upload/initiate",                              # signed URL by A
                             json={"content_type": "text/plain", "file_name": "a.txt"}).json()["upload_url"]
            parts = urllib.parse.urlsplit(signed)
            put = cb.put(f"{parts.path}?{parts.query}", content=b"hello", headers={"Content-Type": "text/plain"})
            assert put.status_code == 200, put.text                                          # PUT on B

        assert "revoked" in _keys_cli(env, tmp_path / "admin", "revoke", key.split(":")[0])
        for server in (a, b):                                                                # gone on both
            with server.client(headers=good) as c:
                assert c.post("/rest/storage/auth/token").status_code == 401
                assert c.post("/rest/storage/auth/token",
                              headers={"Authorization": f"Key {other}"}).status_code == 200
                assert c.post("/cdn/files/upload", content=b"x", headers={"Authorization": f"Bearer {cdn}",
                                                                         "Content-Type": "text/plain"}).status_code == 401
                assert c.put(f"{parts.path}?{parts.query}", content=b"x").status_code == 401   # tokens die too
    finally:
        a.stop()
        b.stop()
