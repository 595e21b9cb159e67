"""WebSocket `/{owner}/{alias}[/audio]/realtime`: unary requests and live sessions over msgpack.

Auth on the upgrade: `?fal_jwt_token=<token from POST /rest/tokens/>` or an
`Authorization: Key <id>:<secret>` header (either works; none is needed when the server has no keys).

Client -> server: binary msgpack maps (`packb(use_bin_type=True)`).
Server -> client: binary msgpack maps; errors as JSON text frames
`{"type": "x-fal-error", "error": "<KIND>", "reason": "<text>"}` (KIND is the error type in
capitals: INVALID_INPUT, NO_FACE_DETECTED, LIMIT_EXCEEDED, UNAUTHORIZED, TIMEOUT, INTERNAL_ERROR).
An input error leaves the socket open; UNAUTHORIZED and TIMEOUT close it.

Unary (a message without "type", shaped like the HTTP input of the endpoint):
  -> {image_url, text, voice?, stability?, seed?}   (or {image_url, audio_url, seed?} on /audio)
  <- {"type": "chunk", index, start, duration, segment: <bin fMP4 media segment>}  (one per chunk;
     the first also has init_segment: <bin> and mime: str)
  <- {video: File, seed, duration, timings}        (the final output, as the run endpoint returns)

Live session (speech audio pushed as it is spoken):
  -> {"type": "start", image_url, seed?, pace?: bool = true, idle_timeout?: seconds}
  <- {"type": "started", init_segment: <bin>, mime, seed, fps, sample_rate, chunk_frames}
  <- {"type": "chunk", index, start, duration, segment: <bin>, speaking: bool, interrupted: bool}
     continuously from now on, on the media clock: idle chunks (blinking, breathing, mouth
     closed) whenever no speech is queued, speech chunks as soon as enough audio arrived.
  -> {"type": "audio", pcm: <bin PCM16 little-endian mono 16 kHz, 20-100 ms per message>}
  -> {"type": "end_of_speech"}   the utterance is complete: render its tail now
  -> {"type": "interrupt"}       drop queued audio; the next chunk is idle (interrupted: true)
  -> {"type": "stop"}            <- {"type": "stopped", frames, duration}; the socket stays open
Chunk `start` is seconds on the session's media clock: chunk i covers frames [i*N, (i+1)*N) and
the same span of the audio track, so audio and video never drift. With pace=true a chunk leaves
at most one chunk (0.32 s) before its media time; pace=false sends speech as fast as it renders.
A socket with no client message for `idle_timeout` seconds (FLASHHEAD_REALTIME_IDLE_TIMEOUT_S,
default 60) gets x-fal-error TIMEOUT and is closed.

One process serves many sockets: the event loop only moves bytes; rendering and encoding run
in a shared thread pool, and sessions share the renderer and the prepared portraits.
"""
from __future__ import annotations

import asyncio
import json
import logging
import random
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import msgpack
from fastapi import FastAPI, WebSocket, WebSocketDisconnect
from pydantic import ValidationError
from starlette.routing import WebSocketRoute

from flashhead import constants as C
from flashhead.api.stream import ENDPOINTS, StreamOutput, localize, mime_of, new_fmp4_encoder, stream_events
from flashhead.errors import FlashheadError, InputError, Timeout, Unauthorized
from flashhead.live import LiveSession
from flashhead.pipeline import load_portrait, prepare, request_from_input

log = logging.getLogger("flashhead.realtime")
MAX_IDLE_TIMEOUT_S = 3600.0
POLL_S = 0.5                    # a session thread re-checks for close this often
_POOL = ThreadPoolExecutor(max_workers=256, thread_name_prefix="flashhead-live")


def error_frame(exc: BaseException) -> str:
    if isinstance(exc, FlashheadError):
        kind, reason = exc.error_type.upper(), str(exc)
    elif isinstance(exc, ValidationError):
        kind = "INVALID_INPUT"
        reason = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
    else:
        log.exception("realtime failure", exc_info=exc)
        kind, reason = "INTERNAL_ERROR", "internal error"
    return json.dumps({"type": "x-fal-error", "error": kind, "reason": reason})


class Connection:
    """One socket: serialised sends, the receive loop, at most one live session."""

    def __init__(self, ws: WebSocket, ctx, endpoint: str):
        self.ws, self.ctx, self.endpoint = ws, ctx, endpoint
        self.loop = asyncio.get_running_loop()
        self.send_lock = asyncio.Lock()
        self.idle_timeout = float(_option(ctx, "realtime_idle_timeout_s", C.REALTIME_IDLE_TIMEOUT_S))
        self.session: LiveSession | None = None
        self.pump: asyncio.Task | None = None

    async def send(self, message: dict | str) -> None:
        async with self.send_lock:
            if isinstance(message, str):
                await self.ws.send_text(message)
            else:
                await self.ws.send_bytes(msgpack.packb(message, use_bin_type=True))

    async def run_blocking(self, fn, *args):
        return await self.loop.run_in_executor(_POOL, fn, *args)

    async def serve(self) -> None:
        try:
            while True:
                try:
                    raw = await asyncio.wait_for(self.ws.receive(), self.idle_timeout)
                except asyncio.TimeoutError:
                    raise Timeout(f"no message for {self.idle_timeout:g} s") from None
                if raw["type"] == "websocket.disconnect":
                    return
                await self.dispatch(self.decode(raw))
        except Timeout as exc:
            await self.send(error_frame(exc))
            await self.ws.close(1000)
        except WebSocketDisconnect:
            pass
        finally:
            await self.stop_session()

    def decode(self, raw: dict) -> dict | None:
        try:
            data = raw.get("bytes")
            msg = msgpack.unpackb(data, raw=False) if data is not None else json.loads(raw.get("text") or "")
        except (ValueError, msgpack.UnpackException):
            msg = None
        return msg if isinstance(msg, dict) else None

    async def dispatch(self, msg: dict | None) -> None:
        try:
            if msg is None:
                raise InputError("expected a msgpack map", field="message")
            kind = msg.get("type")
            handler = {None: self.unary, "start": self.start, "audio": self.audio,
                       "end_of_speech": self.end_of_speech, "interrupt": self.interrupt,
                       "stop": self.stop}.get(kind)
            if handler is None:
                raise InputError(f"unknown message type {kind!r}", field="type")
            await handler(msg)
        except WebSocketDisconnect:
            raise
        except Exception as exc:  # noqa: BLE001 - every failure is reported as an x-fal-error frame
            await self.send(error_frame(exc))

    # -- unary -------------------------------------------------------------------------------
    async def unary(self, msg: dict) -> None:
        if self.session is not None:
            raise InputError("a live session is running; send stop first", field="type")
        base_url = http_base_url(self.ctx, self.ws)
        work_dir = Path(self.ctx.settings.data_dir) / "streams"
        work_dir.mkdir(parents=True, exist_ok=True)
        payload, local = await self.run_blocking(localize, msg, self.ctx, base_url, work_dir)
        req = request_from_input(payload, self.endpoint)
        prep = await self.run_blocking(lambda: prepare(req, self.ctx.engines, allow_paths=local))

        def store(path: Path, content_type: str, name: str) -> str:
            stored = self.ctx.storage.put_file(path, content_type, name)
            path.unlink(missing_ok=True)
            return self.ctx.storage.url(stored.key, base_url)

        events = stream_events(prep, self.ctx.engines, StreamOutput(work_dir, store, lambda d, _n: d))
        try:
            while (event := await self.run_blocking(next, events, None)) is not None:
                await self.send(event)
        finally:
            await self.run_blocking(events.close)

    # -- live session ------------------------------------------------------------------------
    async def start(self, msg: dict) -> None:
        if self.session is not None:
            raise InputError("a live session is already running", field="type")
        image_url = msg.get("image_url")
        if not isinstance(image_url, str) or not image_url:
            raise InputError("required: the portrait URL or data URI", field="image_url")
        seed = msg.get("seed")
        seed = random.randrange(2**31) if seed is None else _int(seed, "seed")
        self.idle_timeout = min(MAX_IDLE_TIMEOUT_S, float(msg.get("idle_timeout") or self.idle_timeout))
        base_url = http_base_url(self.ctx, self.ws)
        work_dir = Path(self.ctx.settings.data_dir) / "streams"
        work_dir.mkdir(parents=True, exist_ok=True)
        payload, local = await self.run_blocking(localize, {"image_url": image_url}, self.ctx,
                                                 base_url, work_dir)
        engines = self.ctx.engines
        portrait = await self.run_blocking(
            lambda: engines.portraits.get(load_portrait(payload["image_url"], engines, allow_paths=local)[0]))
        self.session = LiveSession(engines, portrait, seed, pace=bool(msg.get("pace", True)))
        encoder = new_fmp4_encoder()
        await self.send({"type": "started", "init_segment": encoder.init_segment(),
                         "mime": mime_of(encoder), "seed": seed, "fps": C.FPS,
                         "sample_rate": C.SAMPLE_RATE, "chunk_frames": self.session.chunk_frames})
        self.pump = asyncio.create_task(self.pump_chunks(self.session, encoder))

    async def pump_chunks(self, session: LiveSession, encoder) -> None:
        def produce():
            chunk = session.next_chunk(timeout=POLL_S)
            return chunk, (encoder.encode_chunk(chunk.frames, chunk.audio) if chunk else None)

        try:
            while not session.closed:
                chunk, segment = await self.run_blocking(produce)
                if chunk is None:
                    continue
                await self.send({"type": "chunk", "index": chunk.index, "start": round(chunk.start_s, 3),
                                 "duration": round(chunk.duration_s, 3), "segment": segment,
                                 "speaking": chunk.speaking, "interrupted": chunk.interrupted})
        except (WebSocketDisconnect, RuntimeError):
            session.close()          # the socket went away under us
        except Exception as exc:  # noqa: BLE001 - reported to the client, then the session ends
            session.close()
            await self.send(error_frame(exc))
        finally:
            encoder.close()

    def live(self) -> LiveSession:
        if self.session is None:
            raise InputError("no live session: send start first", field="type")
        return self.session

    async def audio(self, msg: dict) -> None:
        pcm = msg.get("pcm")
        if not isinstance(pcm, (bytes, bytearray)):
            raise InputError("must be binary PCM16 little-endian mono 16 kHz audio", field="pcm")
        self.live().push_audio(bytes(pcm))

    async def end_of_speech(self, msg: dict) -> None:
        self.live().end_of_speech()

    async def interrupt(self, msg: dict) -> None:
        self.live().interrupt()

    async def stop(self, msg: dict) -> None:
        session = self.live()
        await self.stop_session()
        await self.send({"type": "stopped", "frames": session.frames_out,
                         "duration": round(session.frames_out / C.FPS, 3)})

    async def stop_session(self) -> None:
        if self.session is not None:
            self.session.close()
            self.session = None
        if self.pump is not None:
            await asyncio.gather(self.pump, return_exceptions=True)
            self.pump = None


def http_base_url(ctx, ws: WebSocket) -> str:
    """The http(s) base for file URLs (a socket's own URL is ws:// or wss://)."""
    if ctx.settings.public_url:
        return ctx.settings.public_url.rstrip("/")
    return str(ws.base_url).replace("ws", "http", 1).rstrip("/")


def _int(value, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InputError("must be an integer", field=field)
    return value


def _option(ctx, name: str, default):
    from flashhead.api.deps import option

    return option(ctx.settings, name, default, float)


def realtime_route(ctx, endpoint: str):
    async def handler(ws: WebSocket) -> None:
        await ws.accept()
        conn = Connection(ws, ctx, endpoint)
        try:
            from flashhead.api.deps import authenticate
            await authenticate(ws, token_type="realtime", token_param="fal_jwt_token", app=endpoint)
            if ctx.engines is None:
                from flashhead.errors import BackendUnavailable
                raise BackendUnavailable("the service is still starting")
        except FlashheadError as exc:
            await conn.send(error_frame(exc))
            await ws.close(1008 if isinstance(exc, Unauthorized) else 1011)
            return
        await conn.serve()
    return handler


def register(app: FastAPI, ctx) -> None:
    """Called by flashhead.api.app.create_app."""
    routes = [WebSocketRoute(f"/{ep}/realtime", realtime_route(ctx, ep)) for ep in ENDPOINTS]
    app.router.routes[0:0] = routes
