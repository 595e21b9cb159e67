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


def test_revocation_is_one_atomic_step_in_both_stores(make_keys):
    """Many servers revoking one key at once: exactly one wins, and the record and the active
    set agree afterwards (redis: one Lua script updates both)."""
    from concurrent.futures import ThreadPoolExecutor

    keys = make_keys()
    key_id, secret = keys.create().split(":")
    views = [make_keys() for _ in range(8)]
    with ThreadPoolExecutor(8) as pool:
        wins = list(pool.map(lambda v: v.revoke(key_id), views))
    assert wins.count(True) == 1
    assert not keys.is_active(key_id) and not keys.verify(key_id, secret) and not keys.has_keys()
    assert keys.list()[0].revoked_at is not None


def test_tokens_name_their_key_and_die_with_it(tmp_path):
    auth = Auth(tmp_path)
    key_id = auth.keys.create().split(":")[0]
    tokens = {"realtime": auth.issue_realtime_token(key_id, ["flashhead"], 60),
              "cdn": auth.issue_cdn_token(key_id), "upload": auth.issue_upload_token(key_id, "k.png", "image/png", "a.png")}
    assert auth.check(f"Bearer {tokens['cdn']}", token_type="cdn") == key_id
    assert auth.check(None, token=tokens["realtime"], token_type="realtime", app="fal-ai/flashhead") == key_id
    assert auth.verify_upload_token(tokens["upload"], "k.png")["sub"] == key_id
    auth.keys.revoke(key_id)
    for typ, token in tokens.items():
        with pytest.raises(Unauthorized, match="revoked"):
            auth.check(None, token=token, token_type=typ, app="flashhead")
    open_auth = Auth(tmp_path, mode="open")                       # OPEN: nothing checked
    assert open_auth.check(None) is None


@pytest.mark.parametrize("host, local_ip, origin, allowed", [
    ("127.0.0.1:8000", "127.0.0.1", None, True),
    ("[::1]:8000", "::1", "http://[::1]:8000", True),
    ("0.0.0.0:8000", "127.0.0.1", "http://0.0.0.0:8000", True),      # the URL uvicorn prints
    ("myhost:8000", "127.0.1.1", "http://myhost:8000", True),        # the name serve --host was given
    ("rebind.example:8000", "127.0.0.1", None, False),               # DNS rebinding
    ("rebind.example:8000", "::ffff:127.0.0.1", None, False),        # ... on a dual-stack socket
    ("192.168.1.5:8000", "192.168.1.5", "http://192.168.1.5:8000", True),   # --i-know-this-is-open
    ("192.168.1.5:8000", "192.168.1.5", "https://evil.example", False),
    ("127.0.0.1:8000", "127.0.0.1", "null", False),
])
def test_open_mode_serves_pages_of_this_machine_only(tmp_path, host, local_ip, origin, allowed):
    from flashhead.errors import Forbidden

    auth = Auth(tmp_path, mode="open")
    auth.served_names.add("myhost")
    if allowed:
        auth.check_page(host=host, origin=origin, local_ip=local_ip)
    else:
        with pytest.raises(Forbidden):
            auth.check_page(host=host, origin=origin, local_ip=local_ip)
    Auth(tmp_path).check_page(host="rebind.example", origin="https://evil.example", local_ip="127.0.0.1")  # keys


def test_token_life_is_a_setting_of_minutes(tmp_path):
    auth = Auth.from_settings(_settings(tmp_path, token_ttl_s=120))
    key_id = auth.keys.create().split(":")[0]
    import jwt
    for token in (auth.issue_cdn_token(key_id), auth.issue_realtime_token(key_id, ["flashhead"], 3600),
                  auth.issue_upload_token(key_id, "k.png", "image/png", "a.png")):
        claims = jwt.decode(token, options={"verify_signature": False})
        assert claims["exp"] - claims["iat"] == 120 and claims["sub"] == key_id
    assert Settings().token_ttl_s <= 600


def test_rate_limits_are_counted_per_key_and_shared_through_redis(redis_url):
    from flashhead.api.limits import AbuseLimits
    from flashhead.errors import RateLimited

    prefix = f"l{time.monotonic_ns()}:"
    a, b = AbuseLimits("3/minute", 0, redis_url, prefix), AbuseLimits("3/minute", 0, redis_url, prefix)
    a.hit("k1"), b.hit("k1"), a.hit("k1")
    with pytest.raises(RateLimited) as info:
        b.hit("k1")                                              # the two servers count together
    assert 1 <= info.value.retry_after_s <= 60
    b.hit("k2")                                                  # another key: its own budget
    a.hit(None)                                                  # OPEN mode: no key, no limit
    alone = AbuseLimits("3/minute", 0)                           # memory: this server only
    for _ in range(3):
        alone.hit("k1")
    with pytest.raises(RateLimited):
        alone.hit("k1")
    with pytest.raises(InputError, match="rate_limit"):
        AbuseLimits("lots", 0)


@pytest.fixture(params=["sqlite", "redis"])
def job_store(request, tmp_path):
    if request.param == "sqlite":
        from flashhead.jobs.sqlite import SqliteJobStore
        return SqliteJobStore(tmp_path / "jobs.db")
    from flashhead.jobs.redis import RedisJobStore
    return RedisJobStore(request.getfixturevalue("redis_url"), prefix=f"j{time.monotonic_ns()}:")


def test_active_jobs_are_counted_per_key_in_both_job_stores(job_store):
    from flashhead.api.limits import AbuseLimits
    from flashhead.errors import RateLimited
    from flashhead.jobs.state import JobState
    from flashhead.jobs.store import NewJob

    ids = [job_store.submit(NewJob("fal-ai/flashhead", {}, key_id=k)).id for k in ("a", "a", "a", "b")]
    assert job_store.claim() is not None                         # one of a's running, two queued
    assert (job_store.active_count("a"), job_store.active_count("b"), job_store.active_count("c")) == (3, 1, 0)
    limits = AbuseLimits("", 3)
    with pytest.raises(RateLimited, match="3 requests queued or running"):
        limits.check_jobs(job_store, "a")
    job_store.finish(ids[0], JobState.COMPLETED, result={})
    assert job_store.active_count("a") == 2
    limits.check_jobs(job_store, "a")
