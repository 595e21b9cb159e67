"""End to end: the unmodified @fal-ai/client 1.10.1 under Node, redirected with a fetch wrapper,
against a real server over TLS (NODE_EXTRA_CA_CERTS) rendering with the real CPU pipeline."""
from __future__ import annotations

import json
import os
import subprocess

import pytest

from api_helpers import PORTRAIT, ROOT, Server, client_env, probe_video, tls_server
from flashhead import constants as C

JS = ROOT / "tests" / "js"
pytestmark = pytest.mark.usefixtures("js_client")   # conftest: fails in CI when missing


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    yield from tls_server(tmp_path_factory, "js")


def node(server: Server, scenario: str, **env) -> dict:
    proc = subprocess.run(["node", str(JS / "e2e.mjs"), scenario], cwd=JS, capture_output=True, text=True,
                          timeout=240, env={**os.environ, **client_env(server), "FLASHHEAD_URL": server.base_url,
                                            "PORTRAIT": str(PORTRAIT), **env})
    assert proc.returncode == 0, proc.stdout + proc.stderr + server.log_tail()
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _video_ok(server: Server, video: dict) -> None:
    with server.client() as c:
        r = c.get(video["url"])
    assert r.status_code == 200 and r.headers["content-type"] == "video/mp4"
    assert probe_video(r.content)["width"] == C.SIZE


@pytest.mark.slow
def test_storage_upload_and_run(server):
    out = node(server, "run")
    assert out["upload_url"].startswith(server.base_url + "/files/")
    with server.client() as c:
        assert c.get(out["upload_url"]).content == PORTRAIT.read_bytes()
    assert out["requestId"]            # read from the x-fal-request-id header
    _video_ok(server, out["video"])


@pytest.mark.parametrize("mode", [pytest.param("polling", marks=pytest.mark.slow), "streaming"])   # polls: ~3 s
def test_subscribe_with_queue_updates(server, mode):
    out = node(server, "subscribe", MODE=mode)
    statuses = [s["status"] for s in out["statuses"]]
    assert "IN_PROGRESS" in statuses or "IN_QUEUE" in statuses
    assert out["requestId"]
    _video_ok(server, out["video"])


def test_queue_submit_status_result(server):
    out = node(server, "queue")
    assert out["logs"] >= 2 and out["requestId"] == out["request_id"]
    _video_ok(server, out["video"])


def test_invalid_input_is_a_validation_error(server):
    out = node(server, "invalid")
    assert out["status"] == 422 and out["isValidation"], out
    assert ["body", "text"] in out["fields"]


def test_multipart_upload_over_90_mib(server):
    out = node(server, "multipart")
    with server.client() as c:
        head = c.head(out["url"])
        tail = c.get(out["url"], headers={"Range": "bytes=-4096"})
    assert int(head.headers["content-length"]) == out["size"]
    assert tail.status_code == 206 and tail.content[0] == ((out["size"] - 4096) // 4096) & 0xFF
