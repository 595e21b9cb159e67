"""`POST /{owner}/{alias}[/audio]/stream`: Server-Sent Events, one per rendered chunk.

Every event is `data: <JSON>`:
- chunk events, in order: `{"type": "chunk", "index", "start", "duration", "segment"}` where
  `segment` is one fragmented-MP4 media segment (H.264 + AAC) as a `data:video/mp4;base64,...`
  URI, or the URL of a stored file with `?segments=url`. The first event also carries
  `init_segment` (same form) and `mime` (e.g. `video/mp4; codecs="avc1.42E01F, mp4a.40.2"`),
  so a browser can feed MediaSource while the video is still being rendered.
- the last event is exactly what the run endpoint returns: `{video: File, seed, duration, timings}`
  (the MP4 is written from the same chunks: one generator, two consumers).
- an error after the stream started: `{"detail": "...", "error_type": "..."}`, then the stream
  closes. Errors found before the first byte (bad input, no face, auth) are ordinary HTTP errors;
  beyond the engine's capacity (or the key's cap) a stream is refused at once: 429 with
  Retry-After and error_type capacity_exceeded.

The API process only admits and relays: the render engine (flashhead.engine) prepares and renders.
"""
from __future__ import annotations

import asyncio
import json
import logging
from contextlib import aclosing
from pathlib import Path

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

from flashhead import constants as C
from flashhead.api.deps import add_endpoint_routes, get_ctx, require_key
from flashhead.api.queue import check_inputs
from flashhead.engine.service import Session
from flashhead.errors import FlashheadError

log = logging.getLogger("flashhead.stream")
ENDPOINTS = (C.TEXT_ENDPOINT, C.AUDIO_ENDPOINT)
STATIC = Path(__file__).parent / "static"


def sse(event: dict) -> bytes:
    return f"data: {json.dumps(event, separators=(',', ':'))}\n\n".encode()


def error_event(exc: BaseException) -> dict:
    if isinstance(exc, FlashheadError):
        return {"detail": exc.message, "error_type": exc.error_type}
    log.exception("stream failed", exc_info=exc)
    return {"detail": "internal error while streaming", "error_type": "internal_error"}


async def open_stream(ctx, endpoint: str, payload: dict, base_url: str, key_id: str | None,
                      segments: str) -> Session:
    """Admit and prepare a stream in the engine: every error before the first chunk raises here."""
    await run_in_threadpool(check_inputs, ctx, payload, base_url)
    session = await ctx.engine.open("stream", {"payload": payload, "endpoint": endpoint, "base_url": base_url,
                                         "segments": segments}, key_id)
    try:
        await session.get()                     # "prepared", or the error raised
    except BaseException:
        session.close()
        raise
    return session


async def stream_messages(session: Session):
    """The engine's events of an opened stream, until its end; the session closes after."""
    try:
        while True:
            kind, payload = await session.get()
            if kind == "end":
                return
            if kind == "event":
                yield payload
    finally:
        session.close()


async def sse_body(session: Session):
    """A client that hangs up frees the session's slot at once; the engine drops it."""
    try:
        async with aclosing(stream_messages(session)) as events:     # closed with this generator
            async for event in events:
                yield sse(event)
    except FlashheadError as exc:
        yield sse(error_event(exc))


router = APIRouter()


class _Stalled(Exception):
    pass


class StalledClientSafeResponse(StreamingResponse):
    """A StreamingResponse whose every send must complete within `send_timeout_s`: a client that
    stops reading (its TCP window full) would otherwise hold the send, the stream's session
    with its engine slot, and every chunk rendered since, for as long as its connection lives.
    On a stall the stream ends there (uvicorn then closes the connection) and its session is
    closed at once."""

    def __init__(self, content, *, send_timeout_s: float, **kw):
        super().__init__(content, **kw)
        self.send_timeout_s = send_timeout_s

    async def stream_response(self, send) -> None:
        async def bounded(message) -> None:
            try:
                await asyncio.wait_for(send(message), self.send_timeout_s)
            except asyncio.TimeoutError:
                raise _Stalled from None
        try:
            await super().stream_response(bounded)
        except _Stalled:
            log.info("stream client read nothing for %g s: stream ended", self.send_timeout_s)
        finally:
            await self.body_iterator.aclose()


def _stream_route(endpoint: str, model):
    async def stream(body: model, request: Request, key_id: str | None = Depends(require_key)):
        ctx = get_ctx(request)
        segments = "url" if request.query_params.get("segments") == "url" else "data_uri"
        session = await open_stream(ctx, endpoint, body.model_dump(mode="json"), ctx.base_url(request),
                                    key_id, segments)
        return StalledClientSafeResponse(sse_body(session), media_type="text/event-stream",
                                         send_timeout_s=ctx.settings.client_send_timeout_s,
                                         headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    return stream


add_endpoint_routes(router, _stream_route, path="/{endpoint}/stream", name="stream", tags=["stream"],
                    summary="Stream {endpoint} as Server-Sent Events")


# -- playground --------------------------------------------------------------------------------
PLAYGROUND_FILES = {"playground.js": "text/javascript", "msgpack.js": "text/javascript",
                    "style.css": "text/css", "sample_portrait.png": "image/png",
                    "sample_speech.wav": "audio/wav"}


def playground_config() -> dict:
    return {"voices": list(C.VOICES), "default_voice": C.DEFAULT_VOICE,
            "text_endpoint": C.TEXT_ENDPOINT, "audio_endpoint": C.AUDIO_ENDPOINT,
            "sample_portrait": "/playground/sample_portrait.png",
            "sample_speech": "/playground/sample_speech.wav",
            "token_url": "/rest/tokens/",
            "upload_initiate_url": "/rest/storage/upload/initiate?storage_type=fal-cdn-v3"}


def playground_routes() -> list[Route]:
    from starlette.responses import FileResponse

    async def index(request: Request):
        return FileResponse(STATIC / "index.html", media_type="text/html")

    async def config(request: Request):
        return JSONResponse(playground_config())

    async def asset(request: Request):
        name = request.path_params["name"]
        if name not in PLAYGROUND_FILES:
            return JSONResponse({"detail": "not found", "error_type": "not_found"}, 404)
        return FileResponse(STATIC / name, media_type=PLAYGROUND_FILES[name])

    return [Route("/", index, methods=["GET"]),
            Route("/playground/config.json", config, methods=["GET"]),
            Route("/playground/{name}", asset, methods=["GET"])]


def register(app: FastAPI, ctx) -> None:
    """Called by flashhead.api.app.create_app: the /stream routes and the playground at `/`."""
    n = len(app.router.routes)
    app.include_router(router)
    routes = app.router.routes[n:]
    del app.router.routes[n:]
    # First in line, so no broader route registered earlier can shadow them.
    app.router.routes[0:0] = routes + playground_routes()
