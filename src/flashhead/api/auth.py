"""API keys (`Authorization: Key id:secret`) and short-lived JWTs (realtime, uploads).

Keys live in {data_dir}/keys.db (one server), or in redis (several servers: the job store's
redis by default when jobs are in redis; FLASHHEAD_KEYS_STORE picks). A secret is 32 random
bytes, so a fast salted SHA-256 is as strong as a slow KDF here and keeps every authenticated
request cheap; the comparison is constant-time.

The server runs in one of two modes, chosen at start-up (`flashhead serve`, see api/server.py):
KEYS (the default): every protected route needs a valid key or a live token; with no key yet,
or after the last one is revoked, everything protected answers 401. OPEN (`--no-auth`): no key is
checked (signed upload URLs still are), and a request that came in on a loopback address must
name a loopback Host and come from no web page of another site (check_page). The mode never
changes while running.

Tokens are HS256 JWTs signed with FLASHHEAD_JWT_SECRET when set (give every server the same
one), else with a secret kept in the keys' redis (shared by the servers using it), else with
{data_dir}/jwt_secret (this server only). Every token names the key that issued it (`sub`) and
is refused, on every use, once that key is revoked.
"""
from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import os
import secrets
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import jwt

from flashhead.errors import Forbidden, InputError, Unauthorized

TOKEN_TTL_DEFAULT_S = 120      # a realtime token, when the client names no token_expiration
_ALG = "HS256"
KEYS, OPEN = "keys", "open"    # the two auth modes
ANONYMOUS = "anonymous"        # `sub` of tokens issued in OPEN mode: never a live key
NO_KEYS_HINT = ("this server requires API keys and has none yet; create one on the server with "
                "`flashhead keys create` (same --data-dir or key store as the server)")
MIN_SECRET_CHARS = 32            # FLASHHEAD_JWT_SECRET: at least 256 bits' worth for HS256

_SCHEMA = """CREATE TABLE IF NOT EXISTS keys (
  id TEXT PRIMARY KEY, salt BLOB NOT NULL, hash BLOB NOT NULL, created_at REAL NOT NULL,
  revoked_at REAL, alias TEXT)"""


@dataclass
class KeyInfo:
    id: str
    created_at: float
    revoked_at: float | None
    alias: str | None


def _hash(salt: bytes, secret: str) -> bytes:
    return hashlib.sha256(salt + secret.encode()).digest()


class SqliteKeyStore:
    def __init__(self, data_dir: str | Path):
        self.path = Path(data_dir) / "keys.db"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._db().execute(_SCHEMA)

    def _db(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            db = self._local.db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        return db

    def create(self, alias: str | None = None) -> str:
        """Returns "KEY_ID:KEY_SECRET"; the secret is never stored, only its salted hash."""
        key_id, secret, salt = secrets.token_hex(8), secrets.token_urlsafe(32), os.urandom(16)
        self._db().execute("INSERT INTO keys (id, salt, hash, created_at, alias) VALUES (?,?,?,?,?)",
                           (key_id, salt, _hash(salt, secret), time.time(), alias))
        return f"{key_id}:{secret}"

    def list(self) -> list[KeyInfo]:
        rows = self._db().execute("SELECT id, created_at, revoked_at, alias FROM keys ORDER BY created_at")
        return [KeyInfo(*r) for r in rows]

    def revoke(self, key_id: str) -> bool:
        cur = self._db().execute("UPDATE keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
                                 (time.time(), key_id))
        return cur.rowcount == 1

    def has_keys(self) -> bool:
        return self._db().execute("SELECT 1 FROM keys WHERE revoked_at IS NULL LIMIT 1").fetchone() is not None

    def is_active(self, key_id: str) -> bool:
        return self._db().execute("SELECT 1 FROM keys WHERE id = ? AND revoked_at IS NULL",
                                  (key_id,)).fetchone() is not None

    def verify(self, key_id: str, secret: str) -> bool:
        row = self._db().execute("SELECT salt, hash FROM keys WHERE id = ? AND revoked_at IS NULL",
                                 (key_id,)).fetchone()
        if row is None:   # still hash, so unknown ids cost the same time as known ones
            _hash(b"\0" * 16, secret)
            return False
        return hmac.compare_digest(_hash(row[0], secret), row[1])

    def shared_secret(self) -> bytes | None:
        return None              # one server: its data dir keeps the token secret


KeyStore = SqliteKeyStore


_REVOKE = """
if redis.call('SREM', KEYS[2], ARGV[1]) == 0 then return 0 end
local record = cjson.decode(redis.call('HGET', KEYS[1], ARGV[1]))
record['revoked_at'] = tonumber(ARGV[2])
redis.call('HSET', KEYS[1], ARGV[1], cjson.encode(record))
return 1
"""


class RedisKeyStore:
    """The same keys for every server sharing a redis: `{prefix}keys` hash (id -> JSON record
    with the salted hash, never the secret) and `{prefix}keys:active` set (unrevoked ids)."""


    def __init__(self, url: str, prefix: str = "flashhead:"):
        import redis
        self.r = redis.Redis.from_url(url, decode_responses=True)
        self.k, self.active, self.secret_key = prefix + "keys", prefix + "keys:active", prefix + "jwt_secret"
        self._revoke = self.r.register_script(_REVOKE)

    def create(self, alias: str | None = None) -> str:
        key_id, secret, salt = secrets.token_hex(8), secrets.token_urlsafe(32), os.urandom(16)
        record = {"salt": salt.hex(), "hash": _hash(salt, secret).hex(), "created_at": time.time(),
                  "revoked_at": None, "alias": alias}
        pipe = self.r.pipeline(transaction=True)
        pipe.hset(self.k, key_id, json.dumps(record))
        pipe.sadd(self.active, key_id)
        pipe.execute()
        return f"{key_id}:{secret}"

    def list(self) -> list[KeyInfo]:
        keys = [(k, json.loads(v)) for k, v in self.r.hgetall(self.k).items()]
        return [KeyInfo(k, v["created_at"], v["revoked_at"], v["alias"])
                for k, v in sorted(keys, key=lambda kv: kv[1]["created_at"])]

    def revoke(self, key_id: str) -> bool:
        """One Lua script: the active set and the record change together (one revoker wins)."""
        return bool(self._revoke(keys=[self.k, self.active], args=[key_id, repr(time.time())]))

    def has_keys(self) -> bool:
        return self.r.scard(self.active) > 0

    def is_active(self, key_id: str) -> bool:
        return bool(self.r.sismember(self.active, key_id))

    def verify(self, key_id: str, secret: str) -> bool:
        raw = self.r.hget(self.k, key_id)
        record = json.loads(raw) if raw else None
        if record is None or record["revoked_at"] is not None:
            _hash(b"\0" * 16, secret)
            return False
        return hmac.compare_digest(_hash(bytes.fromhex(record["salt"]), secret), bytes.fromhex(record["hash"]))

    def shared_secret(self) -> bytes:
        """A token secret made once (the first server to ask) and used by every server here."""
        self.r.set(self.secret_key, secrets.token_hex(32), nx=True)
        return self.r.get(self.secret_key).encode()

    def shared_seed(self, name: str) -> bytes:
        """32 random bytes made once under `name` (e.g. the webhook signing key), shared."""
        key = self.k + ":" + name
        self.r.set(key, secrets.token_hex(32), nx=True)
        return bytes.fromhex(self.r.get(key))


def _hostname(value: str, url: bool = False) -> str:
    """The host of a Host header ("name:port", "[::1]:port") or of an Origin URL; "" if malformed."""
    try:
        return urlsplit(value if url else f"//{value}").hostname or ""
    except ValueError:
        return ""


def _netloc(url: str) -> str:
    try:
        return urlsplit(url).netloc.lower()
    except ValueError:
        return ""


def _loopback(host: str) -> bool:
    """This machine, as no other site can name it: a loopback address (IPv4-mapped too), the
    unspecified one (a browser sent to 0.0.0.0 reaches this machine), `localhost` or a name under
    `.localhost` (RFC 6761: never resolved elsewhere). Names are never looked up: a rebinding
    name resolves to 127.0.0.1 by design."""
    host = host.lower().rstrip(".")
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        ip = ipaddress.ip_address(host.split("%")[0])
    except ValueError:
        return False
    if ip.version == 6 and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback or ip.is_unspecified


def make_key_store(settings) -> SqliteKeyStore | RedisKeyStore:
    """FLASHHEAD_KEYS_STORE: sqlite | redis (the job store's) | a redis URL; unset: redis when the
    job store is redis (several servers must agree on the keys), else sqlite."""
    from flashhead.jobs.backends import REDIS_SCHEMES, redis_url

    spec = settings.keys_store
    if spec in (None, "redis"):
        url = redis_url(settings)
        if url is None and spec == "redis":
            raise InputError("'redis' needs FLASHHEAD_JOB_STORE=redis://...; or give a redis:// URL",
                             field="keys_store")
    elif spec == "sqlite":
        url = None
    elif spec.startswith(REDIS_SCHEMES):
        url = spec
    else:
        raise InputError(f"must be sqlite, redis or a redis:// URL, got {spec!r}", field="keys_store")
    if url is None:
        return SqliteKeyStore(settings.data_dir)
    return RedisKeyStore(url, prefix=settings.redis_prefix)


def token_secret(configured: str | None, keys, data_dir: Path) -> bytes:
    """FLASHHEAD_JWT_SECRET, else the keys store's shared one, else this data dir's."""
    if configured:
        if len(configured) < MIN_SECRET_CHARS:
            raise InputError(f"must be at least {MIN_SECRET_CHARS} characters (got {len(configured)})",
                             field="jwt_secret")
        return configured.encode()
    return keys.shared_secret() or _server_secret(data_dir)


def _server_secret(data_dir: Path) -> bytes:
    path = data_dir / "jwt_secret"
    if not path.exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(secrets.token_bytes(32))
        except FileExistsError:
            pass
    return path.read_bytes()


def _app_alias(app: str) -> str:
    """"fal-ai/flashhead/audio" and "flashhead" both name the app "flashhead"."""
    parts = [p for p in app.split("/") if p]
    return parts[1] if len(parts) >= 2 else (parts[0] if parts else "")


class Auth:
    """The one check behind every route, WebSocket and SSE stream (see flashhead.api.deps), and
    the tokens it issues."""

    def __init__(self, data_dir: str | Path, keys: SqliteKeyStore | RedisKeyStore | None = None,
                 secret: str | None = None, *, mode: str = KEYS, token_ttl_s: float = 600.0):
        """Auth(data_dir): keys.db and jwt_secret in data_dir; see from_settings for the rest."""
        if mode not in (KEYS, OPEN):
            raise ValueError(f"auth mode must be {KEYS!r} or {OPEN!r}, got {mode!r}")
        self.mode = mode
        self.served_names: set[str] = set()    # the name `serve --host` was given (see check_page)
        self.token_ttl_s = token_ttl_s
        self.data_dir = Path(data_dir)
        self.keys = keys or SqliteKeyStore(self.data_dir)
        self._secret = token_secret(secret, self.keys, self.data_dir)

    @classmethod
    def from_settings(cls, settings, mode: str = KEYS) -> "Auth":
        return cls(settings.data_dir, make_key_store(settings), settings.jwt_secret,
                   mode=mode, token_ttl_s=settings.token_ttl_s)

    def check(self, header: str | None, *, token: str | None = None, token_type: str | None = None,
              app: str | None = None) -> str | None:
        """The caller's key id (None in OPEN mode); raises Unauthorized. Blocking (keys may be in
        redis). `Key id:secret` in `header` always works; with token_type, a token of that type
        also does: `token` (a query parameter) or, when that is None, `Authorization: Bearer`.
        A realtime token must also name `app`. The one place that decides who may call."""
        if self.mode == OPEN:
            return None
        if token_type and token is None:
            scheme, _, value = (header or "").strip().partition(" ")
            token = value.strip() if scheme.lower() == "bearer" else None
        if token_type == "realtime" and token:
            return self.verify_realtime_token(token, app or "")["sub"]
        if token_type and token:
            return self._decode(token, token_type)["sub"]
        return self._check_key_header(header)

    def check_page(self, *, host: str | None, origin: str | None, local_ip: str | None) -> None:
        """OPEN mode has no key, so a browser on this machine is the gate: any site's page could
        send it requests (CORS lets them read the answers), and a site whose name re-resolves to
        127.0.0.1 (DNS rebinding) would even be same-origin. So a request with an `Origin` must
        come from a page of this server or of a loopback host, and one that came in on a loopback
        address must name a loopback `Host` (or the name the server was told to serve on, which
        the operator chose). Raises Forbidden. Nothing in KEYS mode."""
        if self.mode != OPEN:
            return
        host = host or ""
        name = _hostname(host)
        if local_ip is not None and _loopback(local_ip) and not (_loopback(name) or name in self.served_names):
            raise Forbidden(f"this server has no keys (--no-auth), so it answers only requests whose Host "
                            f"is a loopback name or address such as 127.0.0.1, not {host!r}", field="Host")
        if origin is not None and not (_loopback(_hostname(origin, url=True)) or _netloc(origin) == host.lower()):
            raise Forbidden(f"this server has no keys (--no-auth), so it takes no requests from pages of "
                            f"other sites (Origin {origin!r}); serve with keys to allow them", field="Origin")

    def vouches(self, header: str | None, token: str | None, token_types: tuple[str, ...] = ()) -> bool:
        """Whether a request carries a credential this server knows: an active key, or a valid
        token of one of `token_types` (the types the route takes: `Authorization: Bearer`, or
        `token`/`fal_jwt_token`, the query parameters of signed upload URLs and WHEP); always in
        OPEN mode. For the body limits (flashhead.api.bodies): the route's own check (`check`)
        still decides what the caller may do. Blocking (see check)."""
        if self.mode == OPEN:
            return True
        scheme, _, value = (header or "").strip().partition(" ")
        checks = [lambda: self._check_key_header(header)] if scheme.lower() == "key" else []
        bearer = value.strip() if scheme.lower() == "bearer" else None
        checks += [lambda t=t: self._decode(t, None).get("typ") in token_types
                   for t in (bearer, token) if t and token_types]
        for check in checks:
            try:
                if check():
                    return True
            except Unauthorized:
                pass
        return False

    def _check_key_header(self, header: str | None) -> str:
        scheme, _, value = (header or "").strip().partition(" ")
        key_id, _, secret = value.strip().partition(":")
        if scheme.lower() == "key" and key_id and secret and self.keys.verify(key_id, secret):
            return key_id
        if not self.keys.has_keys():
            raise Unauthorized(NO_KEYS_HINT, field="Authorization")
        if scheme.lower() != "key" or not key_id or not secret:
            raise Unauthorized("missing or malformed Authorization header; expected 'Key <id>:<secret>'",
                               field="Authorization")
        raise Unauthorized("invalid or revoked API key", field="Authorization")

    def _issue(self, claims: dict, ttl_s: float) -> str:
        t = int(time.time())
        return jwt.encode({**claims, "iat": t, "exp": t + int(ttl_s)}, self._secret, algorithm=_ALG)

    def _decode(self, token: str, typ: str | None) -> dict:
        """A valid, unexpired token of type `typ` (any, for None) whose issuing key is still
        active (KEYS mode)."""
        try:
            claims = jwt.decode(token, self._secret, algorithms=[_ALG], options={"require": ["exp", "sub"]})
        except jwt.PyJWTError as exc:
            raise Unauthorized(f"invalid token: {exc}", field="token") from None
        if typ is not None and claims.get("typ") != typ:
            raise Unauthorized(f"token is not a {typ} token", field="token")
        if self.mode == KEYS and not (isinstance(claims["sub"], str) and self.keys.is_active(claims["sub"])):
            raise Unauthorized("the key that issued this token is revoked or unknown", field="token")
        return claims

    def issue_realtime_token(self, key_id: str | None, allowed_apps: list[str], ttl_s: float) -> str:
        ttl = min(max(1, int(ttl_s)), int(self.token_ttl_s))
        apps = sorted({_app_alias(a) for a in allowed_apps})
        return self._issue({"typ": "realtime", "sub": key_id or ANONYMOUS, "apps": apps}, ttl)

    def verify_realtime_token(self, token: str, app: str) -> dict:
        """For the realtime endpoint: the token's claims if it is valid for `app`."""
        claims = self._decode(token, "realtime")
        if _app_alias(app) not in claims.get("apps", []):
            raise Unauthorized(f"token is not valid for app {app!r}", field="fal_jwt_token")
        return claims

    def issue_cdn_token(self, key_id: str | None) -> str:
        return self._issue({"typ": "cdn", "sub": key_id or ANONYMOUS}, self.token_ttl_s)

    def issue_upload_token(self, key_id: str | None, key: str, content_type: str, file_name: str,
                           multipart: str | None = None) -> str:
        """Bound to one storage key: the JS client PUTs to this URL with no Authorization."""
        claims = {"typ": "upload", "sub": key_id or ANONYMOUS, "key": key, "ct": content_type, "name": file_name}
        if multipart:
            claims["mp"] = multipart
        return self._issue(claims, self.token_ttl_s)

    def verify_upload_token(self, token: str, key: str) -> dict:
        """Checked in every mode (the URL is the only credential); blocking (see check)."""
        claims = self._decode(token, "upload")
        if claims.get("key") != key:
            raise Unauthorized("upload token is for another file", field="token")
        return claims
