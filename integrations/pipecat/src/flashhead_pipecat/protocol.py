"""flashhead's realtime protocol, client side: msgpack maps over one WebSocket.

The server side (and the message list) is flashhead.api.realtime; this module repeats only what a
client needs: the socket URL, the Key header, and turning x-fal-error text frames and a closed
socket into exceptions. Every wait is bounded by the caller's timeout.
"""
from __future__ import annotations

import asyncio
import json
import ssl as ssl_module
from urllib.parse import urlsplit, urlunsplit

import msgpack
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

MAX_MESSAGE_BYTES = 16 * 2**20      # a chunk is 8 frames of H.264 plus AAC: far below this
CLOSE_TIMEOUT_S = 2.0               # the closing handshake with a server that may be gone


class FlashHeadError(Exception):
    """Every failure of the flashhead connection."""


class ServerError(FlashHeadError):
    """An x-fal-error frame: `kind` is the server's error type (INVALID_INPUT, TIMEOUT, ...)."""

    CLOSING = {"UNAUTHORIZED", "TIMEOUT", "CAPACITY_EXCEEDED", "RATE_LIMITED"}

    def __init__(self, kind: str, reason: str):
        super().__init__(f"flashhead server error {kind}: {reason}")
        self.kind, self.reason = kind, reason

    @property
    def closing(self) -> bool:
        """The server closes the socket after this error (or the session is over)."""
        return self.kind in self.CLOSING


class ConnectionLost(FlashHeadError):
    """The socket closed, never opened, or went silent for longer than allowed."""


def realtime_url(url: str, endpoint: str) -> str:
    """`https://host:port` (or ws://, wss://, http://) + endpoint -> the realtime socket URL."""
    parts = urlsplit(url)
    scheme = {"http": "ws", "https": "wss", "ws": "ws", "wss": "wss"}.get(parts.scheme)
    if scheme is None or not parts.netloc:
        raise ValueError(f"url must be http(s):// or ws(s):// with a host, got {url!r}")
    path = f"{parts.path.rstrip('/')}/{endpoint.strip('/')}/realtime"
    return urlunsplit((scheme, parts.netloc, path, "", ""))


class RealtimeConnection:
    """One open realtime socket."""

    def __init__(self, ws: ClientConnection):
        self.ws = ws

    @classmethod
    async def open(cls, url: str, api_key: str | None, timeout_s: float,
                   ssl: ssl_module.SSLContext | None = None) -> "RealtimeConnection":
        headers = {"Authorization": f"Key {api_key}"} if api_key else {}
        secure = url.startswith("wss:")
        try:
            ws = await connect(url, additional_headers=headers, open_timeout=timeout_s,
                               ssl=(ssl or ssl_module.create_default_context()) if secure else None,
                               max_size=MAX_MESSAGE_BYTES, ping_interval=None,
                               close_timeout=CLOSE_TIMEOUT_S)
        except (OSError, TimeoutError, InvalidHandshake, InvalidURI) as exc:
            raise ConnectionLost(f"cannot connect to the flashhead server at {url}: {exc}") from exc
        return cls(ws)

    async def send(self, message: dict) -> None:
        try:
            await self.ws.send(msgpack.packb(message, use_bin_type=True))
        except ConnectionClosed as exc:
            raise ConnectionLost(f"the flashhead server closed the connection ({_closed(exc)})") from exc

    async def recv(self, timeout_s: float) -> dict:
        """The next message; x-fal-error frames raise ServerError."""
        try:
            raw = await asyncio.wait_for(self.ws.recv(), timeout_s)
        except TimeoutError:
            raise ConnectionLost(f"no message from the flashhead server for {timeout_s:g} s") from None
        except ConnectionClosed as exc:
            raise ConnectionLost(f"the flashhead server closed the connection ({_closed(exc)})") from exc
        message = json.loads(raw) if isinstance(raw, str) else msgpack.unpackb(raw, raw=False)
        if not isinstance(message, dict):
            raise ConnectionLost("the flashhead server sent something that is not a map")
        if message.get("type") == "x-fal-error":
            raise ServerError(str(message.get("error")), str(message.get("reason")))
        return message

    async def close(self) -> None:
        await self.ws.close()


def _closed(exc: ConnectionClosed) -> str:
    rcvd = exc.rcvd
    return f"code {rcvd.code}{': ' + rcvd.reason if rcvd.reason else ''}" if rcvd else "no close frame"
