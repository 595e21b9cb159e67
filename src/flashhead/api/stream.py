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
  closes. Errors found before the first byte (bad input, no face, auth) are ordinary HTTP errors.
"""
from __future__ import annotations

import base64
import json
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import anyio
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import ValidationError
from starlette.routing import Route

from flashhead import constants as C
from flashhead.errors import Cancelled, FlashheadError
from flashhead.pipeline import GenerationResult, Prepared, iter_chunks, prepare, request_from_input, result_json

log = logging.getLogger("flashhead.stream")
ENDPOINTS = (C.TEXT_ENDPOINT, C.AUDIO_ENDPOINT)
MP4_MIME = "video/mp4"


def data_uri(data: bytes, mime: str = MP4_MIME) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def sse(event: dict) -> bytes:
    return f"data: {json.dumps(event, separators=(',', ':'))}\n\n".encode()


def new_fmp4_encoder():
    from flashhead.video.encode import FragmentedMp4Encoder

    return FragmentedMp4Encoder()


def mime_of(encoder) -> str:
    """The MediaSource type string, e.g. 'video/mp4; codecs="avc1.42C01E, mp4a.40.2"'."""
    return encoder.mime_type


@dataclass
class StreamOutput:
    """Where a stream's files go: each segment through `segment`, the final MP4 through `store`."""

    work_dir: Path
    store: Callable[[Path, str, str], str]          # (path, content_type, file_name) -> URL
    segment: Callable[[bytes, str], object] = lambda data, _name: data_uri(data)


def stream_events(prep: Prepared, engines, out: StreamOutput, *,
                  should_cancel: Callable[[], bool] | None = None) -> Iterator[dict]:
    """Render `prep` once: yield a chunk event per chunk, then the final output."""
    t0 = time.perf_counter()
    path = out.work_dir / f"flashhead-{prep.seed}-{int(time.time() * 1000)}.mp4"
    try:
        yield from _render_events(prep, engines, out, should_cancel, path, t0)
    except BaseException:         # failed, or cancelled (the client left): no partial MP4 stays
        path.unlink(missing_ok=True)
        raise


def _render_events(prep: Prepared, engines, out: StreamOutput, should_cancel, path: Path,
                   t0: float) -> Iterator[dict]:
    from flashhead.video.encode import Mp4Writer

    render_s = encode_s = 0.0
    with new_fmp4_encoder() as encoder, Mp4Writer(path) as writer:
        t = time.perf_counter()
        for chunk in iter_chunks(prep, engines, should_cancel=should_cancel):
            t_rendered = time.perf_counter()
            writer.write(chunk.frames, chunk.audio)
            event = {"type": "chunk", "index": chunk.index, "start": round(chunk.start_s, 3),
                     "duration": round(chunk.duration_s, 3),
                     "segment": out.segment(encoder.encode_chunk(chunk.frames, chunk.audio),
                                            f"segment-{chunk.index:05d}.m4s")}
            if chunk.index == 0:
                event["init_segment"] = out.segment(encoder.init_segment(), "init.mp4")
                event["mime"] = mime_of(encoder)
            render_s += t_rendered - t
            encode_s += time.perf_counter() - t_rendered
            yield event
            t = time.perf_counter()
        tail = encoder.finish()      # the encoders' last packets (AAC delay), usually small
        if tail:
            yield {"type": "chunk", "index": chunk.index + 1, "start": round(prep.duration, 3),
                   "duration": 0.0, "segment": out.segment(tail, "segment-tail.m4s")}
    timings = {**{k: prep.timings[k] for k in ("tts", "features", "inputs")},
               "render": render_s, "encode": encode_s,
               "total": time.perf_counter() - t0 + sum(prep.timings.values())}
    result = GenerationResult(path, prep.seed, prep.duration, timings, path.stat().st_size)
    url = out.store(path, MP4_MIME, path.name)
    yield result_json(result, url, path.name)


def error_event(exc: BaseException) -> dict:
    if isinstance(exc, FlashheadError):
        return {"detail": exc.message, "error_type": exc.error_type}
    log.exception("stream failed", exc_info=exc)
    return {"detail": "internal error while streaming", "error_type": "internal_error"}


# -- HTTP ------------------------------------------------------------------------------------
STATIC = Path(__file__).parent / "static"


def localize(payload: dict, ctx, base_url: str, work_dir: Path) -> tuple[dict, bool]:
    """Inputs naming this server's own /files/ are read from storage (the SSRF guard refuses
    loopback fetches). Returns (payload, allow_paths). Every `*_url` is checked first as the
    queue checks it: allow_paths must never let a client's own path string through."""
    from flashhead.api.queue import check_inputs
    from flashhead.jobs.worker import own_file_key

    check_inputs(ctx, payload, base_url)
    out, local = dict(payload), False
    for name, value in payload.items():
        key = own_file_key(value, ctx.storage.own_hosts(base_url)) if name.endswith("_url") else None
        if key is None:
            continue
        path = ctx.storage.local_path(key)
        if path is None:
            path = work_dir / f"in-{key}"
            size = ctx.storage.stat(key).size
            with open(path, "wb") as fh:
                for block in ctx.storage.open_range(key, 0, max(0, size - 1)):
                    fh.write(block)
        out[name], local = str(path), True
    return out, local


def validation_response(exc: ValidationError) -> JSONResponse:
    detail = [{"loc": ["body", *e["loc"]], "msg": e["msg"], "type": e["type"]} for e in exc.errors()]
    return JSONResponse({"detail": detail}, 422, headers={"X-Fal-Error-Type": "invalid_input"})


def stream_output(ctx, base_url: str, work_dir: Path, segments_as_urls: bool) -> StreamOutput:
    def store(path: Path, content_type: str, name: str) -> str:
        stored = ctx.storage.put_file(path, content_type, name)
        path.unlink(missing_ok=True)
        return ctx.storage.url(stored.key, base_url)

    def store_bytes(data: bytes, content_type: str, name: str) -> str:
        return ctx.storage.url(ctx.storage.put_bytes(data, content_type, name).key, base_url)

    if segments_as_urls:
        return StreamOutput(work_dir, store, lambda data, name: store_bytes(data, MP4_MIME, name))
    return StreamOutput(work_dir, store)


async def sse_body(events: Iterator[dict], cancel: threading.Event):
    """Pull `events` in a worker thread; a client that hangs up cancels at the next chunk."""
    try:
        while True:
            try:
                event = await anyio.to_thread.run_sync(next, events, None)
            except Exception as exc:  # noqa: BLE001 - every failure becomes the error event
                yield sse(error_event(exc))
                return
            if event is None:
                return
            yield sse(event)
    finally:
        cancel.set()
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(events.close)


def stream_route(ctx, endpoint: str):
    async def handler(request: Request):
        from flashhead.api.deps import authenticate
        from flashhead.api.errors import error_response
        from flashhead.errors import BackendUnavailable, InputError

        try:
            await authenticate(request)
            if ctx.engines is None:
                raise BackendUnavailable("the service is still starting")
            try:
                payload = await request.json()
            except ValueError:
                raise InputError("the body is not valid JSON", field="body") from None
            if not isinstance(payload, dict):
                raise InputError("the body must be a JSON object", field="body")
            base_url = ctx.base_url(request)
            work_dir = Path(ctx.settings.data_dir) / "streams"
            work_dir.mkdir(parents=True, exist_ok=True)
            payload, local = await anyio.to_thread.run_sync(localize, payload, ctx, base_url, work_dir)
            req = request_from_input(payload, endpoint)
            prep = await anyio.to_thread.run_sync(
                lambda: prepare(req, ctx.engines, allow_paths=local))
        except ValidationError as exc:
            return validation_response(exc)
        except FlashheadError as exc:
            return error_response(exc)
        cancel = threading.Event()
        out = stream_output(ctx, base_url, work_dir, request.query_params.get("segments") == "url")
        events = stream_events(prep, ctx.engines, out, should_cancel=cancel.is_set)
        return StreamingResponse(sse_body(events, cancel), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    return handler


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
    routes = [Route(f"/{ep}/stream", stream_route(ctx, ep), methods=["POST"]) for ep in ENDPOINTS]
    # First in line, so no broader route registered earlier can shadow them.
    app.router.routes[0:0] = routes + playground_routes()
