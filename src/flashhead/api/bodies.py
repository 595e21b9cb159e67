"""Request body limits, enforced while the body streams in (an ASGI middleware).

A body is refused as soon as it is known to be too big: at once when Content-Length says so,
otherwise when the bytes received pass the limit (413, nothing more is read). A body that
trickles in is refused when it stalls past body_read_timeout_s (408): a JSON body must arrive
whole within that time, an upload must not pause longer than that between two blocks.
Limits (Settings): max_body_bytes for JSON and other bodies; max_upload_bytes for the upload
routes, which also check it themselves while writing (and the multipart total, in storage).
With keys, a request that carries no valid key, nor a valid token of a type its route takes
(Auth.vouches, token_types), may send at most anonymous_max_body_bytes: beyond, 401 before more
is read, so no stranger makes the server read and parse megabytes. The check runs only for a
body that may pass that limit.
"""
from __future__ import annotations

import re
import time
from urllib.parse import parse_qs

import anyio
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from flashhead.api.auth import OPEN, Auth
from flashhead.api.deps import off_loop
from flashhead.api.errors import error_response
from flashhead.config import Settings
from flashhead.errors import BodyTimeout, FlashheadError, PayloadTooLarge, Unauthorized

# /cdn/... (fal-client CDN and the JS client's signed PUTs) and multipart parts under /files/
UPLOAD_PATH = re.compile(r"^/cdn/|^/files/[^/]+/multipart/")
WHEP_PATH = re.compile(r"/whep(/[^/]+)?$")
_DISCONNECT: Message = {"type": "http.disconnect"}
TOKEN_PARAMS = ("token", "fal_jwt_token")     # signed upload URLs; WHEP and realtime


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, settings: Settings, auth: Auth):
        self.app, self.settings, self.auth = app, settings, auth

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        upload = bool(UPLOAD_PATH.match(scope["path"]))
        declared = _content_length(scope)
        limit, too_big = await self._limit(scope, upload, declared)
        if declared is not None and declared > limit:
            return await _refuse(scope, receive, send, too_big(declared))
        reader = _LimitedReader(receive, limit, too_big, self.settings.body_read_timeout_s, idle=upload)

        started = False

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if reader.error is not None and not started:
                return                       # the app's own answer to the cut body is dropped
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, reader.receive, guarded_send)
        except Exception:
            if reader.error is None or started:
                raise
        if reader.error is not None and not started:
            await _refuse(scope, receive, send, reader.error)

    async def _limit(self, scope: Scope, upload: bool, declared: int | None):
        """(bytes, error builder): the route's limit, or the anonymous one for a body that may
        pass it from a caller without a valid key or token."""
        s = self.settings
        limit = s.max_upload_bytes if upload else s.max_body_bytes
        maybe_big = (declared or 0) > s.anonymous_max_body_bytes or \
            _header(scope, b"transfer-encoding") is not None      # chunked (it wins over a length)
        if maybe_big and not await self._vouched(scope):
            return s.anonymous_max_body_bytes, lambda n=None: Unauthorized(
                f"no valid key or token (Authorization: Key <id>:<secret>), so the body may be at most "
                f"{s.anonymous_max_body_bytes} bytes{_declares(n)}", field="Authorization")
        return limit, lambda n=None: PayloadTooLarge(
            f"{'uploads' if upload else 'request bodies'} are limited to {limit} bytes{_declares(n)}", field="body")

    async def _vouched(self, scope: Scope) -> bool:
        if self.auth.mode == OPEN:
            return True
        header = _header(scope, b"authorization")
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        token = next((query[name][0] for name in TOKEN_PARAMS if name in query), None)
        try:
            return await off_loop(self.auth.vouches, header, token, token_types(scope["path"]))
        except Exception:  # noqa: BLE001 - the key store unreachable: the route's own check says so
            return True


def token_types(path: str) -> tuple[str, ...]:
    """The token types the route at `path` takes besides a key: only they vouch for its body (a
    realtime token does not make /queue read a big body). Upload routes: the CDN token
    (fal-client) and signed upload URLs; WHEP: the realtime token."""
    if UPLOAD_PATH.match(path):
        return ("cdn", "upload")
    if WHEP_PATH.search(path):
        return ("realtime",)
    return ()


class _LimitedReader:
    """Counts body bytes; past the limit or the deadline it records the error and tells the app
    the client went away, so the app stops reading."""

    def __init__(self, receive: Receive, limit: int, too_big, timeout_s: float, *, idle: bool):
        self._receive, self.limit, self.too_big = receive, limit, too_big
        self.timeout_s, self.idle = timeout_s, idle
        self.deadline = time.monotonic() + timeout_s
        self.size, self.done = 0, False
        self.error: FlashheadError | None = None

    async def receive(self) -> Message:
        if self.error is not None:
            return _DISCONNECT
        if self.done:                         # body complete: e.g. a stream waiting for disconnect
            return await self._receive()
        with anyio.move_on_after(max(0.0, self.deadline - time.monotonic())) as scope:
            message = await self._receive()
        if scope.cancelled_caught:
            self.error = BodyTimeout(f"the request body did not arrive within {self.timeout_s:g} s",
                                     field="body")
            return _DISCONNECT
        if message["type"] == "http.request":
            self.size += len(message.get("body", b""))
            self.done = not message.get("more_body", False)
            if self.size > self.limit:
                self.error = self.too_big()
                return _DISCONNECT
            if self.idle:
                self.deadline = time.monotonic() + self.timeout_s
        return message


def _declares(n: int | None) -> str:
    return f"; this one declares {n}" if n is not None else ""


def _header(scope: Scope, name: bytes) -> str | None:
    return next((v.decode("latin-1") for k, v in scope.get("headers", ()) if k == name), None)


def _content_length(scope: Scope) -> int | None:
    try:
        return int(_header(scope, b"content-length") or "")
    except ValueError:
        return None


async def _refuse(scope: Scope, receive: Receive, send: Send, exc: FlashheadError) -> None:
    await error_response(exc, {"Connection": "close"})(scope, receive, send)
