"""API keys (`Authorization: Key id:secret`) and short-lived JWTs (realtime, uploads).

Keys live in {data_dir}/keys.db. A secret is 32 random bytes, so a fast salted SHA-256 is
as strong as a slow KDF here and keeps every authenticated request cheap; the comparison is
constant-time. Authentication is on as soon as one unrevoked key exists.
"""
from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import jwt

from flashhead.errors import Unauthorized

TOKEN_TTL_DEFAULT_S = 120
TOKEN_TTL_MAX_S = 3600
UPLOAD_TOKEN_TTL_S = 3600
_ALG = "HS256"

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


class KeyStore:
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

    def verify(self, key_id: str, secret: str) -> bool:
        row = self._db().execute("SELECT salt, hash FROM keys WHERE id = ? AND revoked_at IS NULL",
                                 (key_id,)).fetchone()
        if row is None:   # still hash, so unknown ids cost the same time as known ones
            _hash(b"\0" * 16, secret)
            return False
        return hmac.compare_digest(_hash(row[0], secret), row[1])


def _server_secret(data_dir: Path) -> bytes:
    path = data_dir / "jwt_secret"
    if not path.exists():
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
    """What every endpoint (and the streaming helper) uses to check callers."""

    def __init__(self, data_dir: str | Path):
        self.data_dir = Path(data_dir)
        self.keys = KeyStore(self.data_dir)
        self._secret = _server_secret(self.data_dir)

    @property
    def enabled(self) -> bool:
        return self.keys.has_keys()

    def check_key_header(self, header: str | None) -> str | None:
        """`Authorization` value -> key id; None when auth is off; raises Unauthorized."""
        if not self.enabled:
            return None
        scheme, _, value = (header or "").strip().partition(" ")
        if scheme.lower() != "key" or ":" not in value:
            raise Unauthorized("missing or malformed Authorization header; expected 'Key <id>:<secret>'",
                               field="Authorization")
        key_id, _, secret = value.strip().partition(":")
        if not self.keys.verify(key_id, secret):
            raise Unauthorized("invalid or revoked API key", field="Authorization")
        return key_id

    def _issue(self, claims: dict, ttl_s: float) -> str:
        t = int(time.time())
        return jwt.encode({**claims, "iat": t, "exp": t + int(ttl_s)}, self._secret, algorithm=_ALG)

    def _decode(self, token: str, typ: str) -> dict:
        try:
            claims = jwt.decode(token, self._secret, algorithms=[_ALG], options={"require": ["exp"]})
        except jwt.PyJWTError as exc:
            raise Unauthorized(f"invalid token: {exc}", field="token") from None
        if claims.get("typ") != typ:
            raise Unauthorized(f"token is not a {typ} token", field="token")
        return claims

    def issue_realtime_token(self, key_id: str | None, allowed_apps: list[str], ttl_s: float) -> str:
        ttl = min(max(1, int(ttl_s)), TOKEN_TTL_MAX_S)
        apps = sorted({_app_alias(a) for a in allowed_apps})
        return self._issue({"typ": "realtime", "sub": key_id or "anonymous", "apps": apps}, ttl)

    def verify_realtime_token(self, token: str, app: str) -> dict:
        """For the realtime endpoint: the token's claims if it is valid for `app`."""
        claims = self._decode(token, "realtime")
        if _app_alias(app) not in claims.get("apps", []):
            raise Unauthorized(f"token is not valid for app {app!r}", field="fal_jwt_token")
        return claims

    def issue_cdn_token(self, key_id: str | None, ttl_s: float = UPLOAD_TOKEN_TTL_S) -> str:
        return self._issue({"typ": "cdn", "sub": key_id or "anonymous"}, ttl_s)

    def issue_upload_token(self, key: str, content_type: str, file_name: str,
                           multipart: str | None = None) -> str:
        """Bound to one storage key: the JS client PUTs to this URL with no Authorization."""
        claims = {"typ": "upload", "key": key, "ct": content_type, "name": file_name}
        if multipart:
            claims["mp"] = multipart
        return self._issue(claims, UPLOAD_TOKEN_TTL_S)

    def verify_upload_token(self, token: str, key: str) -> dict:
        claims = self._decode(token, "upload")
        if claims.get("key") != key:
            raise Unauthorized("upload token is for another file", field="token")
        return claims

    def check_upload_auth(self, header: str | None) -> str | None:
        """CDN endpoints: `Bearer <cdn token>` (Python client) or `Key ...`."""
        if not self.enabled:
            return None
        scheme, _, value = (header or "").strip().partition(" ")
        if scheme.lower() == "bearer":
            return self._decode(value.strip(), "cdn").get("sub")
        return self.check_key_header(header)
