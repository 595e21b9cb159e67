"""Disk full: a job whose video cannot be stored fails with error_type "storage_full", uploads
get 507 while the disk is full, status and stored results keep being served, and everything
works again once space is back, with no restart.

ENOSPC is simulated at the storage layer: the copy LocalStorage.put_file makes raises
OSError(ENOSPC) while `full` is set. A real full filesystem (a small loopback mount or a
quota) needs root, which neither this machine nor CI gives the tests.
"""
from __future__ import annotations

import errno
import shutil
import time

import httpx
import pytest

from bounds_helpers import inproc_server
from flashhead.storage import local as local_storage

SUBMIT = "/queue/fal-ai/flashhead"
TINY_PNG = "data:image/png;base64,iVBORw0KGgo="


class _Disk:
    """Stands in for the `shutil` module inside flashhead.storage.local."""

    def __init__(self):
        self.full = False

    def copyfile(self, src, dst):
        if self.full:
            with open(dst, "wb") as fh:          # a real full disk leaves a partial copy behind
                fh.write(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        return shutil.copyfile(src, dst)


@pytest.fixture
def disk(monkeypatch):
    d = _Disk()
    monkeypatch.setattr(local_storage, "shutil", d)
    return d


def _run(c: httpx.Client) -> dict:
    rid = c.post(SUBMIT, json={"image_url": TINY_PNG, "text": "hi"}).json()["request_id"]
    deadline = time.monotonic() + 30
    while (r := c.get(f"{SUBMIT}/requests/{rid}/status")).status_code != 200:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    return r.json()


def _upload(c: httpx.Client) -> httpx.Response:
    return c.post("/cdn/files/upload", content=b"portrait bytes", headers={"content-type": "image/png"})


@pytest.mark.slow
def test_full_disk_fails_jobs_by_name_refuses_uploads_and_recovers(tmp_path, disk):
    with inproc_server(tmp_path) as (base, _app), httpx.Client(base_url=base, timeout=30) as c:
        before = _run(c)
        assert before["status"] == "COMPLETED" and "error" not in before
        video = c.get(before["response_url"]).json()["video"]["url"]

        disk.full = True
        r = _upload(c)
        assert r.status_code == 507 and r.json()["error_type"] == "storage_full"
        assert "retry-after" in r.headers and "space" in r.json()["detail"]
        failed = _run(c)
        assert failed["error_type"] == "storage_full" and "space" in failed["error"]
        assert c.get(failed["response_url"]).status_code == 507
        # what was stored before is still served, and so is every status
        assert c.get(video).content.startswith(b"fake video")
        assert c.get(before["status_url"]).json()["status"] == "COMPLETED"
        assert not list((tmp_path / "files").glob("*.part"))     # the partial copy was removed

        disk.full = False
        assert _upload(c).status_code == 200
        assert "error" not in _run(c)


@pytest.mark.slow       # a whole server: ~3 s
def test_uploads_stop_at_the_disk_reserve_and_results_still_go_past_it(tmp_path):
    """upload_reserve_bytes: one key's uploads (1 GiB each, retained a day) could fill the disk
    that every job's result needs. Measured against the real free space of the data dir."""
    beyond = shutil.disk_usage(tmp_path).free + 10 * 1024 ** 3          # more than this disk has
    with inproc_server(tmp_path, upload_reserve_bytes=beyond) as (base, app), \
            httpx.Client(base_url=base, timeout=30) as c:
        r = _upload(c)
        assert r.status_code == 507 and r.json()["error_type"] == "storage_full", r.text
        assert "uploads are refused" in r.json()["detail"] and "retry-after" in r.headers
        assert not list((tmp_path / "files" / ".staging").glob("body-*"))   # nothing half-stored
        assert "error" not in _run(c)                                    # a result still is stored
        app.state.ctx.storage.upload_reserve_bytes = 1                   # room again
        assert _upload(c).status_code == 200
        # room for the upload's staged body, not for its stored copy as well (32 MB margins)
        big = 64 * 1024 ** 2
        app.state.ctx.storage.upload_reserve_bytes = shutil.disk_usage(tmp_path).free - big - big // 2
        r = c.post("/cdn/files/upload", content=b"\0" * big, headers={"content-type": "application/octet-stream"})
        assert r.status_code == 507 and "uploads are refused" in r.json()["detail"], r.text
        assert not list((tmp_path / "files" / ".staging").glob("body-*"))
