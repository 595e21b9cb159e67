"""WebSocket `/{owner}/{alias}[/audio]/realtime`: unary requests and live sessions over msgpack.

Auth on the upgrade: `?fal_jwt_token=<token from POST /rest/tokens/>` or an
`Authorization: Key <id>:<secret>` header (either works; none is needed when the server has no keys).

Client -> server: binary msgpack maps (`packb(use_bin_type=True)`).
Server -> client: binary msgpack maps; errors as JSON text frames
`{"type": "x-fal-error", "error": "<KIND>", "reason": "<text>"}` (KIND is the error type in
capitals: INVALID_INPUT, NO_FACE_DETECTED, LIMIT_EXCEEDED, UNAUTHORIZED, TIMEOUT, CAPACITY_EXCEEDED,
ENGINE_FAILED, INTERNAL_ERROR).
An input error leaves the socket open; UNAUTHORIZED, TIMEOUT and CAPACITY_EXCEEDED close it.

Unary (a message without "type", shaped like the HTTP input of the endpoint):
  -> {image_url, text, voice?, stability?, seed?}   (or {image_url, audio_url, seed?} on /audio)
  <- {"type": "chunk", index, start, duration, segment: <bin fMP4 media segment>}  (one per chunk;
     the first also has init_segment: <bin> and mime: str)
  <- {video: File, seed, duration, timings}        (the final output, as the run endpoint returns)

Live session (speech audio pushed as it is spoken):
  -> {"type": "start", image_url, seed?, pace?: bool = true, idle_timeout?: seconds}
  <- {"type": "started", init_segment: <bin>, mime, seed, fps, sample_rate, chunk_frames}
  <- {"type": "chunk", index, start, duration, segment: <bin>, speaking: bool, speech_frames: int,
      interrupted: bool}
     continuously from now on, on the media clock: idle chunks (blinking, breathing, mouth
     closed) whenever no speech is queued, speech chunks as soon as enough audio arrived.
  -> {"type": "audio", pcm: <bin PCM16 little-endian mono 16 kHz, 20-100 ms per message>}
  -> {"type": "end_of_speech"}   the utterance is complete: render its tail now
  -> {"type": "interrupt"}       drop queued audio; the next chunk is idle (interrupted: true)
  -> {"type": "listening"}       idle frames attend to the user (gaze on the viewer, small nods,
                                 mouth closed); "thinking": glances up and aside; "speaking": the
                                 plain idle again. Speech frames are unaffected.
  -> {"type": "stop"}            <- {"type": "stopped", frames, duration}; the socket stays open
WebRTC (api/webrtc.py): -> {"type": "attach", "session": <WHEP session id>} <- {"type": "attached"}
lets this socket drive a WHEP session of the same key with the live inputs above; stop ends it.
A chunk's first `speech_frames` frames carry the next frames of the pushed speech, in order (frame
k of the speech is samples [k*640, (k+1)*640) of the audio pushed since the last interrupt; an
utterance's last frame is zero-padded at end_of_speech); the rest of the chunk is idle.
Chunk `start` is seconds on the session's media clock: chunk i covers frames [i*N, (i+1)*N) and
the same span of the audio track, so audio and video never drift. With pace=true a chunk leaves
at most one chunk (0.32 s) before its media time; pace=false sends speech as fast as it renders.
A socket with no client message for `idle_timeout` seconds (FLASHHEAD_REALTIME_IDLE_TIMEOUT_S,
default 60; a client may ask for up to FLASHHEAD_REALTIME_MAX_IDLE_TIMEOUT_S) gets x-fal-error
TIMEOUT and is closed; so does a live session older than FLASHHEAD_REALTIME_MAX_SESSION_S
(default 3600), however busy, so that no client holds an engine slot for ever. A client that
takes nothing sent to it for FLASHHEAD_CLIENT_SEND_TIMEOUT_S (15 s: it stopped reading) is
treated as gone: its session ends and its slot is free.

Capacity: a unary request or a live session takes one of the render engine's real-time slots
(and one of its key's) while it runs. Beyond them: x-fal-error CAPACITY_EXCEEDED, and the socket
closes (1013, try again later). If the engine dies mid-session: x-fal-error ENGINE_FAILED; the
socket stays open and a new start works once the engine is back.

The API process never renders: it validates and relays; the render engine process
(flashhead.engine) prepares the portrait, renders and encodes every session's chunks.
"""
from __future__ import annotations

import asyncio
import json
import logging

import msgpack
from fastapi import FastAPI, WebSocket, WebSocketDisconnect
from fastapi.concurrency import run_in_threadpool
from pydantic import ValidationError
from starlette.routing import WebSocketRoute

from flashhead.api.deps import authenticate
from flashhead.api.queue import check_inputs
from flashhead.api.stream import ENDPOINTS, open_stream, stream_messages
from flashhead.engine.service import Session
from flashhead.errors import (CapacityExceeded, FlashheadError, Forbidden, InputError, RateLimited, Timeout,
                              Unauthorized)
from flashhead.pipeline import request_from_input
from flashhead.schemas import check_seed

log = logging.getLogger("flashhead.realtime")
CLOSING = (Timeout, CapacityExceeded)     # sent as a frame, then the socket closes


def error_frame(exc: BaseException) -> str:
    """The x-fal-error text frame of the WebSocket."""
    return json.dumps(error_message(exc))


def error_message(exc: BaseException) -> dict:
    """{"type": "x-fal-error", "error": KIND, "reason": text}: the realtime error body (WebSocket
    text frames, WebRTC data channel msgpack maps)."""
    if isinstance(exc, FlashheadError):
        kind, reason = exc.error_type.upper(), str(exc)
    elif isinstance(exc, ValidationError):
        kind = "INVALID_INPUT"
        reason = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
    else:
        log.exception("realtime failure", exc_info=exc)
        kind, reason = "INTERNAL_ERROR", "internal error"
    return {"type": "x-fal-error", "error": kind, "reason": reason}


class Connection:
    """One socket: serialised sends, the receive loop, at most one live session in the engine."""

    def __init__(self, ws: WebSocket, ctx, endpoint: str, key_id: str | None):
        self.ws, self.ctx, self.endpoint, self.key_id = ws, ctx, endpoint, key_id
        self.send_lock = asyncio.Lock()
        self.stalled = False            # a send timed out: the client stopped reading
        self.idle_timeout = min(ctx.settings.realtime_idle_timeout_s, ctx.settings.realtime_max_idle_timeout_s)
        self.session: Session | None = None
        self.session_ends: float | None = None    # loop time when the live session's life is over
        self.attached = None            # a flashhead.api.webrtc.WhepSession this socket drives
        self.pump: asyncio.Task | None = None

    async def send(self, message: dict | str) -> None:
        """One frame, within client_send_timeout_s: a client that takes nothing for that long (it
        stopped reading, its TCP window full) is gone, as if it had hung up (WebSocketDisconnect),
        which ends its live session and frees the engine slot; later sends fail at once."""
        if self.stalled:
            raise WebSocketDisconnect(1008)
        try:
            await asyncio.wait_for(self._send(message), self.ctx.settings.client_send_timeout_s)
        except asyncio.TimeoutError:
            self.stalled = True
            log.info("realtime client read nothing for %g s: its session ends",
                     self.ctx.settings.client_send_timeout_s)
            raise WebSocketDisconnect(1008) from None

    async def _send(self, message: dict | str) -> None:
        async with self.send_lock:
            if isinstance(message, str):
                await self.ws.send_text(message)
            else:
                await self.ws.send_bytes(msgpack.packb(message, use_bin_type=True))

    async def serve(self) -> None:
        try:
            while True:
                try:
                    raw = await asyncio.wait_for(self.ws.receive(), self._wait_s())
                except asyncio.TimeoutError:
                    raise self._timeout() from None
                if raw["type"] == "websocket.disconnect":
                    return
                await self.dispatch(self.decode(raw))
        except CLOSING as exc:
            await self.close_with(exc)
        except WebSocketDisconnect:
            pass
        finally:
            await self.stop_session()

    async def close_with(self, exc: FlashheadError) -> None:
        """The error frame, then the close (1013: try again later), unless the client is gone or
        takes nothing (bounded like every send)."""
        try:
            await self.send(error_frame(exc))
            await asyncio.wait_for(self.ws.close(1013 if isinstance(exc, CapacityExceeded) else 1000),
                                   self.ctx.settings.client_send_timeout_s)
        except (WebSocketDisconnect, asyncio.TimeoutError, RuntimeError):
            pass

    def _wait_s(self) -> float:
        """How long the next message may take: the idle timeout, or less when the live session's
        life ends sooner."""
        if self.session_ends is None:
            return self.idle_timeout
        return max(0.0, min(self.idle_timeout, self.session_ends - asyncio.get_running_loop().time()))

    def _timeout(self) -> Timeout:
        if self.session_ends is not None and asyncio.get_running_loop().time() >= self.session_ends:
            limit = self.ctx.settings.realtime_max_session_s
            return Timeout(f"the live session reached its limit of {limit:g} s (realtime_max_session_s)")
        return Timeout(f"no message for {self.idle_timeout:g} s")

    def decode(self, raw: dict) -> dict | None:
        data = raw.get("bytes")
        try:
            return decode_message(data if data is not None else raw.get("text") or "")
        except InputError:
            return None

    async def dispatch(self, msg: dict | None) -> None:
        try:
            if msg is None:
                raise InputError("expected a msgpack map", field="message")
            kind = msg.get("type")
            handler = {None: self.unary, "start": self.start, "attach": self.attach, "stop": self.stop}.get(kind)
            if handler is not None:
                await handler(msg)
            else:
                await live_message(self.live(), msg)
        except (WebSocketDisconnect, *CLOSING):
            raise
        except Exception as exc:  # noqa: BLE001 - every failure is reported as an x-fal-error frame
            await self.send(error_frame(exc))

    # -- unary -------------------------------------------------------------------------------
    async def unary(self, msg: dict) -> None:
        if self.session is not None or self.attached is not None:
            raise InputError("a live session is running; send stop first", field="type")
        payload = request_from_input(msg, self.endpoint).model_dump(mode="json")
        session = await open_stream(self.ctx, self.endpoint, payload, http_base_url(self.ctx, self.ws),
                                    self.key_id, "bytes")
        async for event in stream_messages(session):
            await self.send(event)

    # -- live session ------------------------------------------------------------------------
    async def start(self, msg: dict) -> None:
        if self.session is not None or self.attached is not None:
            raise InputError("a live session is already running", field="type")
        image_url = msg.get("image_url")
        if not isinstance(image_url, str) or not image_url:
            raise InputError("required: the portrait URL or data URI", field="image_url")
        seed = check_seed(msg.get("seed"))
        self.idle_timeout = _idle_timeout(self.ctx.settings, msg.get("idle_timeout"), self.idle_timeout)
        base_url = http_base_url(self.ctx, self.ws)
        await run_in_threadpool(check_inputs, self.ctx, {"image_url": image_url}, base_url)
        session = await self.ctx.engine.open("live", {"image_url": image_url, "base_url": base_url, "seed": seed,
                                                "pace": bool(msg.get("pace", True))}, self.key_id)
        try:
            _, started = await session.get()
        except BaseException:
            session.close()
            raise
        self.session = session
        self.session_ends = asyncio.get_running_loop().time() + self.ctx.settings.realtime_max_session_s
        await self.send(started)
        self.pump = asyncio.create_task(self.pump_chunks(session))

    async def pump_chunks(self, session: Session) -> None:
        """The engine's chunks to the client until the session stops or fails."""
        try:
            while True:
                kind, payload = await session.get()
                if kind == "error":              # e.g. too much audio queued: the session goes on
                    await self.send(error_frame(payload))
                    continue
                await self.send(payload)
                if kind == "stopped":
                    return
        except FlashheadError as exc:            # the engine failed: the session is over
            await self.send(error_frame(exc))
        except (WebSocketDisconnect, RuntimeError):
            pass                                 # the socket went away under us
        finally:
            session.close()
            if self.session is session:
                self.session, self.session_ends = None, None

    def live(self):
        """What live inputs go to: this socket's session, or the WebRTC session it attached to."""
        if self.session is None and self.attached is None:
            raise InputError("no live session: send start (or attach) first", field="type")
        return self.session or self.attached

    async def attach(self, msg: dict) -> None:
        """Drive a WHEP session of the same key (its media goes to the WebRTC peer, not here)."""
        if self.session is not None:
            raise InputError("a live session is running on this socket; send stop first", field="type")
        sid = msg.get("session")
        if not isinstance(sid, str):
            raise InputError("required: the id at the end of the WHEP Location", field="session")
        self.attached = self.ctx.webrtc.find(sid, self.key_id)
        await self.send({"type": "attached", "session": sid})

    async def stop(self, msg: dict) -> None:
        """The engine answers "stopped" (frames rendered), which the pump forwards; an attached
        WebRTC session ends."""
        if self.attached is not None and self.session is None:
            attached, self.attached = self.attached, None
            await attached.close()
            await self.send({"type": "stopped", "session": attached.id})
            return
        await self.live().send("stop")
        await asyncio.gather(self.pump, return_exceptions=True)
        self.pump = None

    async def stop_session(self) -> None:
        if self.session is not None:
            self.session.close()
            self.session = None
        self.session_ends = None
        if self.pump is not None:
            self.pump.cancel()
            await asyncio.gather(self.pump, return_exceptions=True)
            self.pump = None


def decode_message(raw: bytes | str) -> dict:
    """A client message: a msgpack map (binary) or a JSON object (text)."""
    try:
        msg = msgpack.unpackb(raw, raw=False) if isinstance(raw, (bytes, bytearray)) else json.loads(raw)
    except (ValueError, RecursionError, msgpack.UnpackException):     # RecursionError: JSON nested
        msg = None                                                      # thousands deep
    if not isinstance(msg, dict):
        raise InputError("expected a msgpack map", field="message")
    return msg


POSE_MESSAGES = {"listening": "listening", "thinking": "thinking", "speaking": "idle"}


async def live_message(target, msg: dict) -> None:
    """The inputs of a running live session, from a realtime WebSocket or a WebRTC data channel:
    audio, end_of_speech, interrupt, and the idle poses (listening / thinking while the user
    talks, speaking: back to the plain idle). target.send(kind, payload) reaches the engine."""
    kind = msg.get("type")
    if kind == "audio":
        pcm = msg.get("pcm")
        if not isinstance(pcm, (bytes, bytearray)):
            raise InputError("must be binary PCM16 little-endian mono 16 kHz audio", field="pcm")
        await target.send("audio", bytes(pcm))
    elif kind == "end_of_speech":
        await target.send("eos")
    elif kind == "interrupt":
        await target.send("interrupt")
    elif kind in POSE_MESSAGES:
        await target.send("pose", POSE_MESSAGES[kind])
    else:
        raise InputError(f"unknown message type {kind!r}", field="type")


def _idle_timeout(settings, asked, current: float) -> float:
    """The client's idle_timeout, capped by realtime_max_idle_timeout_s."""
    if asked is None:
        return current
    if isinstance(asked, bool) or not isinstance(asked, (int, float)) or asked <= 0:
        raise InputError("must be a positive number of seconds", field="idle_timeout")
    return min(float(settings.realtime_max_idle_timeout_s), float(asked))


def http_base_url(ctx, ws: WebSocket) -> str:
    """The http(s) base for file URLs (a socket's own URL is ws:// or wss://)."""
    if ctx.settings.public_url:
        return ctx.settings.public_url.rstrip("/")
    return str(ws.base_url).replace("ws", "http", 1).rstrip("/")




def realtime_route(ctx, endpoint: str):
    async def handler(ws: WebSocket) -> None:
        await ws.accept()
        try:
            key_id = await authenticate(ws, token_type="realtime", token_param="fal_jwt_token", app=endpoint)
        except FlashheadError as exc:
            await ws.send_text(error_frame(exc))
            await ws.close(1008 if isinstance(exc, (Unauthorized, Forbidden, RateLimited)) else 1011)
            return
        await Connection(ws, ctx, endpoint, key_id).serve()
    return handler


def register(app: FastAPI, ctx) -> None:
    """Called by flashhead.api.app.create_app."""
    routes = [WebSocketRoute(f"/{ep}/realtime", realtime_route(ctx, ep)) for ep in ENDPOINTS]
    app.router.routes[0:0] = routes
