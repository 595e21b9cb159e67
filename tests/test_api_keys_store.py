"""API keys and token secrets for one server (keys.db, data_dir/jwt_secret) and for several
sharing a real redis-server (FLASHHEAD_JOB_STORE / FLASHHEAD_KEYS_STORE, FLASHHEAD_JWT_SECRET)."""
from __future__ import annotations

import json
import secrets
import time

import pytest

from flashhead.api.auth import Auth, RedisKeyStore, SqliteKeyStore, make_key_store
from flashhead.config import Settings
from flashhead.errors import InputError, Unauthorized


@pytest.fixture(params=["sqlite", "redis"])
def make_keys(request, tmp_path):
    """A factory: each call is another server's view of the same keys."""
    if request.param == "sqlite":
        yield lambda: SqliteKeyStore(tmp_path)
    else:
        url, prefix = request.getfixturevalue("redis_url"), f"k{time.monotonic_ns()}:"
        yield lambda: RedisKeyStore(url, prefix)


def test_key_store_contract(make_keys):
    keys, elsewhere = make_keys(), make_keys()
    assert not keys.has_keys() and keys.list() == []
    key_id, secret = keys.create("ops").split(":")
    other = keys.create()
    assert elsewhere.has_keys() and elsewhere.verify(key_id, secret)
    assert not elsewhere.verify(key_id, secret + "x") and not elsewhere.verify("nope", secret)
    listed = elsewhere.list()
    assert [k.id for k in listed] == [key_id, other.split(":")[0]] and listed[0].alias == "ops"
    assert elsewhere.revoke(key_id) and not keys.revoke(key_id)
    assert not keys.verify(key_id, secret) and keys.list()[0].revoked_at is not None
    assert keys.has_keys() and keys.revoke(other.split(":")[0]) and not elsewhere.has_keys()


def test_redis_keys_keep_only_a_salted_hash(redis_url):
    import redis

    prefix = f"h{time.monotonic_ns()}:"
    key_id, secret = RedisKeyStore(redis_url, prefix).create().split(":")
    stored = redis.Redis.from_url(redis_url).hget(f"{prefix}keys", key_id)
    assert secret.encode() not in stored and len(bytes.fromhex(json.loads(stored)["hash"])) == 32


def _settings(tmp_path, **kw) -> Settings:
    return Settings(data_dir=tmp_path, **kw)


def test_the_keys_follow_the_job_store_unless_told(redis_url, tmp_path):
    assert isinstance(make_key_store(_settings(tmp_path)), SqliteKeyStore)
    assert isinstance(make_key_store(_settings(tmp_path, job_store=redis_url)), RedisKeyStore)
    assert isinstance(make_key_store(_settings(tmp_path, job_store=redis_url, keys_store="sqlite")), SqliteKeyStore)
    assert isinstance(make_key_store(_settings(tmp_path, keys_store=redis_url)), RedisKeyStore)
    with pytest.raises(InputError, match="keys_store"):
        make_key_store(_settings(tmp_path, keys_store="redis"))          # no redis job store to use
    with pytest.raises(InputError, match="keys_store"):
        make_key_store(_settings(tmp_path, keys_store="postgres://x"))


def _token_round_trip(issuer: Auth, verifier: Auth) -> dict:
    key_id = issuer.keys.create().split(":")[0]
    token = issuer.issue_realtime_token(key_id, ["fal-ai/flashhead"], 60)
    claims = verifier.verify_realtime_token(token, "flashhead")
    upload = issuer.issue_upload_token(key_id, "abc.png", "image/png", "a.png")
    verifier.verify_upload_token(upload, "abc.png")
    assert claims["sub"] == key_id
    return claims


def test_servers_with_one_jwt_secret_accept_each_others_tokens(tmp_path):
    shared, keys = secrets.token_hex(32), SqliteKeyStore(tmp_path / "keys")   # keys: one store
    a, b = (Auth(tmp_path / n, keys, shared) for n in "ab")
    assert _token_round_trip(a, b)["apps"] == ["flashhead"]
    assert not (tmp_path / "a" / "jwt_secret").exists()
    lone = Auth(tmp_path / "c", keys)                                  # its own data dir's secret
    with pytest.raises(Unauthorized, match="Signature"):
        _token_round_trip(a, lone)
    with pytest.raises(InputError, match="jwt_secret"):
        Auth.from_settings(_settings(tmp_path / "d", jwt_secret="short"))


def test_servers_on_one_redis_share_a_token_secret_without_configuration(redis_url, tmp_path):
    prefix = f"s{time.monotonic_ns()}:"
    a, b = (Auth.from_settings(_settings(tmp_path / n, job_store=redis_url, redis_prefix=prefix)) for n in "ab")
    assert _token_round_trip(a, b)["apps"] == ["flashhead"]
    other = Auth.from_settings(_settings(tmp_path / "c", job_store=redis_url, redis_prefix=f"x{prefix}"))
    with pytest.raises(Unauthorized):
        _token_round_trip(a, other)
