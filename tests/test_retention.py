"""Retention with an injected clock: expired jobs (and their logs), files and staging are gone
after a sweep, fresh ones are untouched; on SQLite + local disk and on Redis + S3 (moto);
`flashhead gc`; a result fetched after it expired is a 404, not a 500."""
from __future__ import annotations

import json
import os
import time

import httpx
import pytest

from bounds_helpers import inproc_server
from deploy_helpers import AWS_ENV, S3Server
from flashhead.config import Settings
from flashhead.errors import NotFound
from flashhead.jobs import redis as redis_store_mod
from flashhead.jobs import sqlite as sqlite_store_mod
from flashhead.jobs.redis import RedisJobStore
from flashhead.jobs.retention import Retention
from flashhead.jobs.sqlite import SqliteJobStore
from flashhead.jobs.state import JobState
from flashhead.jobs.store import NewJob
from flashhead.storage.base import UPLOAD
from flashhead.storage.local import LocalStorage
from flashhead.storage.s3 import S3Storage

HOUR, DAY = 3600.0, 86400.0
TINY_PNG = "data:image/png;base64,iVBORw0KGgo="      # never decoded: the fake generate ignores it


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        for name, value in AWS_ENV.items():
            mp.setenv(name, value)
        with S3Server(tmp_path_factory.mktemp("moto")) as server:
            server.create_bucket("keep")
            yield server


@pytest.fixture(params=["sqlite+local", "redis+s3"])
def backends(request, tmp_path, redis_url):
    if request.param == "sqlite+local":
        yield SqliteJobStore(tmp_path / "jobs.db"), LocalStorage(tmp_path / "files"), sqlite_store_mod
        return
    s3 = request.getfixturevalue("s3")
    store = RedisJobStore(redis_url, prefix=f"t{time.time_ns()}:")
    yield store, S3Storage("keep", tmp_path / "staging", prefix=f"p{time.time_ns()}",
                           endpoint_url=s3.endpoint_url, region="us-east-1"), redis_store_mod
    store.close()


def _finished(store, module, monkeypatch, at: float, *, hooked: bool = True) -> str:
    job = store.submit(NewJob(endpoint="fal-ai/flashhead", input={"text": "x" * 1000}))
    store.claim()
    store.append_log(job.id, "a log line")
    monkeypatch.setattr(module, "now", lambda: at)
    store.finish(job.id, JobState.COMPLETED, result={"ok": True})
    monkeypatch.undo()
    if hooked:                          # its hooks ran: handed out, then marked
        assert job.id in [j.id for j in store.take_terminal()]
        store.mark_hooked([job.id])
    return job.id


def _touch(path, at: float) -> None:
    os.utime(path, (at, at))


def test_sweep_deletes_what_expired_and_nothing_else(backends, tmp_path, monkeypatch):
    store, storage, module = backends
    t0 = time.time()
    clock = [t0 + 0.5 * HOUR]
    settings = Settings(data_dir=tmp_path)
    retention = Retention(settings, store, storage, clock=lambda: clock[0])

    old = _finished(store, module, monkeypatch, t0 - 8 * DAY)
    fresh = _finished(store, module, monkeypatch, t0)
    unhooked = _finished(store, module, monkeypatch, t0 - 8 * DAY, hooked=False)   # webhook not sent yet
    queued = store.submit(NewJob(endpoint="fal-ai/flashhead", input={})).id
    src = tmp_path / "in.bin"
    src.write_bytes(b"uploaded")
    upload = storage.put_file(src, "image/png", "face.png", kind=UPLOAD)
    result = storage.put_bytes(b"video", "video/mp4", "out.mp4")          # results are the default kind
    _, old_mp = storage.create_multipart("video/mp4", "big.mp4")
    _, fresh_mp = storage.create_multipart("video/mp4", "big.mp4")
    _touch(storage.staging / f"mp-{old_mp}", t0 - 2 * HOUR)
    old_work, fresh_work = tmp_path / "work" / "job-a", tmp_path / "streams" / "s.mp4"
    old_work.mkdir(parents=True)
    (old_work / "flashhead.mp4").write_bytes(b"half")
    _touch(old_work / "flashhead.mp4", t0 - 2 * HOUR)
    _touch(old_work, t0 - 2 * HOUR)
    fresh_work.parent.mkdir()
    fresh_work.write_bytes(b"partial")

    dry = retention.sweep(dry_run=True)
    assert dry.jobs == [old] and dry.files == [] and not dry.errors
    assert sorted(dry.staging) == sorted([str(storage.staging / f"mp-{old_mp}"), str(old_work)])
    assert store.get(old) is not None and (storage.staging / f"mp-{old_mp}").exists()   # dry: kept

    report = retention.sweep()
    assert report.jobs == [old] and not report.errors
    assert store.get(old) is None and store.logs(old) == []
    for kept in (fresh, unhooked, queued):
        assert store.get(kept) is not None
    assert store.logs(fresh) != []
    assert not (storage.staging / f"mp-{old_mp}").exists() and (storage.staging / f"mp-{fresh_mp}").exists()
    assert not old_work.exists() and fresh_work.exists()
    assert storage.stat(upload.key).kind == UPLOAD and storage.stat(result.key)

    clock[0] = t0 + 2 * DAY                      # uploads (24 h) expired, results (7 days) not
    assert retention.sweep().files == [upload.key]
    with pytest.raises(NotFound, match="expired"):
        storage.stat(upload.key)
    assert storage.stat(result.key).size == 5 and store.get(fresh) is not None

    clock[0] = t0 + 8 * DAY
    report = retention.sweep()
    assert report.files == [result.key] and fresh in report.jobs
    with pytest.raises(NotFound):
        storage.open_range(result.key, 0, 4)
    assert store.get(queued) is not None and store.get(unhooked) is not None


def test_local_partial_copy_in_the_file_folder_is_swept(tmp_path):
    storage = LocalStorage(tmp_path / "files")
    part = storage.root / "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA.mp4.part"
    part.write_bytes(b"half a put")
    _touch(part, time.time() - 2 * HOUR)
    retention = Retention(Settings(data_dir=tmp_path), SqliteJobStore(tmp_path / "jobs.db"), storage)
    assert retention.sweep().staging == [str(part)] and not part.exists()


def test_gc_command(tmp_path, capsys):
    from flashhead.cli import main

    storage = LocalStorage(tmp_path / "files")
    _, mp = storage.create_multipart(None, "a.bin")
    _touch(storage.staging / f"mp-{mp}", time.time() - 2 * HOUR)
    assert main(["gc", "--data-dir", str(tmp_path), "--dry-run"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["counts"]["staging"] == 1 and (storage.staging / f"mp-{mp}").exists()
    assert main(["gc", "--data-dir", str(tmp_path)]) == 0
    assert json.loads(capsys.readouterr().out)["deleted"]["staging"] == [str(storage.staging / f"mp-{mp}")]
    assert not (storage.staging / f"mp-{mp}").exists()


@pytest.mark.slow
def test_expired_result_is_a_clear_404(tmp_path):
    with inproc_server(tmp_path) as (base, app):
        ctx = app.state.ctx
        with httpx.Client(base_url=base, timeout=30) as c:
            rid = c.post("/queue/fal-ai/flashhead", json={"image_url": TINY_PNG, "text": "hi"}).json()["request_id"]
            deadline = time.monotonic() + 30
            while c.get(f"/queue/fal-ai/flashhead/requests/{rid}/status").status_code != 200:
                assert time.monotonic() < deadline
                time.sleep(0.05)
            video_url = c.get(f"/queue/fal-ai/flashhead/requests/{rid}").json()["video"]["url"]
            assert c.get(video_url).status_code == 200
            retention = Retention(ctx.settings, ctx.jobs.store, ctx.storage, clock=lambda: time.time() + 8 * DAY)
            report = retention.sweep()
            assert rid in report.jobs and len(report.files) == 1
            for url in (video_url, f"/queue/fal-ai/flashhead/requests/{rid}",
                        f"/queue/fal-ai/flashhead/requests/{rid}/status"):
                r = c.get(url)
                assert r.status_code == 404, (url, r.text)
                assert r.json()["error_type"] == "not_found" and "expired" in r.json()["detail"]
