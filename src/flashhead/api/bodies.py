"""Request body limits, enforced while the body streams in (an ASGI middleware).

A body is refused as soon as it is known to be too big: at once when Content-Length says so,
otherwise when the bytes received pass the limit (413, nothing more is read). A body that
trickles in is refused when it stalls past body_read_timeout_s (408): a JSON body must arrive
whole within that time, an upload must not pause longer than that between two blocks.
Limits (Settings): max_body_bytes for JSON and other bodies; max_upload_bytes for the upload
routes, which also check it themselves while writing (and the multipart total, in storage).
"""
from __future__ import annotations

import re
import time

import anyio
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from flashhead.api.errors import error_response
from flashhead.config import Settings
from flashhead.errors import BodyTimeout, FlashheadError, PayloadTooLarge

# /cdn/... (fal-client CDN and the JS client's signed PUTs) and multipart parts under /files/
UPLOAD_PATH = re.compile(r"^/cdn/|^/files/[^/]+/multipart/")
_DISCONNECT: Message = {"type": "http.disconnect"}


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, settings: Settings):
        self.app, self.settings = app, settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        upload = bool(UPLOAD_PATH.match(scope["path"]))
        limit = self.settings.max_upload_bytes if upload else self.settings.max_body_bytes
        what = "uploads" if upload else "request bodies"
        declared = _content_length(scope)
        if declared is not None and declared > limit:
            return await _refuse(scope, receive, send, PayloadTooLarge(
                f"{what} are limited to {limit} bytes; this one declares {declared}", field="body"))
        reader = _LimitedReader(receive, limit, what, self.settings.body_read_timeout_s, idle=upload)

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


class _LimitedReader:
    """Counts body bytes; past the limit or the deadline it records the error and tells the app
    the client went away, so the app stops reading."""

    def __init__(self, receive: Receive, limit: int, what: str, timeout_s: float, *, idle: bool):
        self._receive, self.limit, self.what = receive, limit, what
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
                self.error = PayloadTooLarge(f"{self.what} are limited to {self.limit} bytes", field="body")
                return _DISCONNECT
            if self.idle:
                self.deadline = time.monotonic() + self.timeout_s
        return message


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def _refuse(scope: Scope, receive: Receive, send: Send, exc: FlashheadError) -> None:
    await error_response(exc, {"Connection": "close"})(scope, receive, send)
