"""API keys (CLI create/list/revoke, hashed storage), Key auth on every endpoint class,
realtime JWTs, CDN/upload tokens, and the refusal to serve openly beyond loopback."""
from __future__ import annotations

import sqlite3
import subprocess
import sys
import time

import pytest

from api_helpers import PORTRAIT, TEXT_ENDPOINT, Server, make_tls
from flashhead.api.auth import Auth
from flashhead.errors import Unauthorized

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
    assert auth.check_key_header(f"Key {key_id}:{secret}") == key_id
    assert keys_cli(tmp_path, "revoke", key_id).returncode == 0
    assert "revoked" in keys_cli(tmp_path, "list").stdout
    assert keys_cli(tmp_path, "revoke", key_id).returncode == 1
    assert not auth.enabled                                          # no active key left: open


ENDPOINTS = [("POST", f"/{TEXT_ENDPOINT}", INPUT), ("POST", f"/queue/{TEXT_ENDPOINT}", INPUT),
             ("GET", f"/queue/{TEXT_ENDPOINT}/requests/x/status", None),
             ("GET", f"/queue/{TEXT_ENDPOINT}/requests/x", None),
             ("PUT", f"/queue/{TEXT_ENDPOINT}/requests/x/cancel", None),
             ("POST", "/rest/tokens/", {"allowed_apps": ["flashhead"]}),
             ("POST", "/rest/storage/auth/token", {}),
             ("POST", "/rest/storage/upload/initiate", {"content_type": "image/png", "file_name": "a.png"}),
             ("POST", "/cdn/files/upload", None)]


@pytest.mark.parametrize("method,path,body", ENDPOINTS)
def test_every_endpoint_needs_a_valid_key(setup, method, path, body):
    server, key = setup
    key_id = key.split(":")[0]
    with server.client() as c:
        for header in (None, "Key nope:nope", f"Key {key_id}:wrong", f"Bearer {key}", key):
            r = c.request(method, path, json=body, headers={"Authorization": header} if header else {})
            assert r.status_code == 401, (header, r.text)
            assert r.json()["error_type"] == "unauthorized"
        r = c.request(method, path, json=body, headers={"Authorization": f"Key {key}"})
        assert r.status_code != 401, r.text


def test_jobs_are_visible_to_their_own_key_only(setup, tmp_path):
    server, key = setup
    other = keys_cli(server.data_dir, "create").stdout.strip()
    with server.client() as c:
        rid = c.post(f"/queue/{TEXT_ENDPOINT}", json=INPUT, headers={"Authorization": f"Key {key}"}).json()["request_id"]
        assert c.get(f"/queue/{TEXT_ENDPOINT}/requests/{rid}/status",
                     headers={"Authorization": f"Key {other}"}).status_code == 404
        assert c.get(f"/queue/{TEXT_ENDPOINT}/requests/{rid}/status",
                     headers={"Authorization": f"Key {key}"}).status_code in (200, 202)


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
    time.sleep(3.1)
    with pytest.raises(Unauthorized, match="expired"):
        auth.verify_realtime_token(token, "flashhead")


def test_python_upload_flow_with_keys(setup):
    """fal-client gets a CDN token with its key, then uploads with that Bearer token."""
    from api_helpers import fal_sync_client
    server, key = setup
    url = fal_sync_client(server, key=key).upload_file(PORTRAIT)
    with server.client() as c:
        assert c.get(url).content == PORTRAIT.read_bytes()      # file URLs are capability URLs
        assert c.post("/cdn/files/upload", content=b"x", headers={"Authorization": "Bearer forged"}).status_code == 401


def test_refuses_to_serve_beyond_loopback_without_keys(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "flashhead", "serve", "--host", "0.0.0.0",
                           "--port", "1", "--data-dir", str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "no API keys" in proc.stderr and "keys create" in proc.stderr
