"""The context every route module receives (also `register(app, ctx)` in stream/realtime).

    ctx.settings   flashhead.config.Settings
    ctx.engines    flashhead.pipeline.Engines in worker_mode "thread" (None until loaded); None in
                   "process" mode, where only worker and engine processes hold a renderer
    ctx.storage    flashhead.storage.base.Storage: put_file/stat/open_range/url
    ctx.auth       flashhead.api.auth.Auth: mode ("keys" | "open"), check(...) -> key id | None
                   (raises Unauthorized); routes call it only through `authenticate` below
    ctx.limits     flashhead.api.limits.AbuseLimits: per-key request rate and active-job limits
    ctx.jobs       flashhead.jobs.queue.JobQueue (ctx.jobs.store: the JobStore)
    ctx.metrics    flashhead.api.observability.Metrics (prometheus registry)
    ctx.webhooks   flashhead.jobs.webhooks.WebhookOutbox
    ctx.ready      threading.Event, set once engines are loaded and workers run
    ctx.workers    WorkerPool (worker_mode "thread") | ProcessWorkerPool ("process")
    ctx.engine     flashhead.engine.service.EngineService: the render engine of /stream, /realtime
    ctx.webrtc     flashhead.api.webrtc.WebRtcService: WHEP sessions (registered with its routes)
"""
from __future__ import annotations

import asyncio
import logging
import threading
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request
from starlette.concurrency import run_in_threadpool
from starlette.requests import HTTPConnection

from flashhead import constants as C
from flashhead.api.auth import Auth
from flashhead.api.limits import AbuseLimits
from flashhead.api.observability import Metrics
from flashhead.config import Settings
from flashhead.jobs.queue import JobQueue
from flashhead.jobs.webhooks import WebhookOutbox, WebhookSigner
from flashhead.schemas import FlashHeadAudioRequest, FlashHeadRequest
from flashhead.storage.base import Storage

log = logging.getLogger("flashhead.api")


@dataclass
class AppContext:
    settings: Settings
    engines: Any
    storage: Storage
    auth: Auth
    jobs: JobQueue
    metrics: Metrics
    webhooks: WebhookOutbox
    signer: WebhookSigner
    ready: threading.Event = field(default_factory=threading.Event)
    workers: Any = None
    n_workers: int = 1
    worker_mode: str = "process"
    startup_error: str | None = None
    limits: AbuseLimits | None = None
    engine: Any = None          # flashhead.engine.service.EngineService: /stream and /realtime
    webrtc: Any = None          # flashhead.api.webrtc.WebRtcService: WHEP sessions

    def begin_stop(self, grace_s: float) -> None:
        """In the event loop, as a graceful stop of grace_s begins (SIGTERM): 1 s before it ends,
        the streams and live sessions still running end with a clear error instead of being cut,
        and no new one opens."""
        def cut() -> None:
            n = self.engine.interrupt_all()
            log.info("stopping: %d session(s) still running were ended", n)
        if self.engine is not None:
            asyncio.get_running_loop().call_later(max(0.0, grace_s - 1.0), cut)

    def base_url(self, request: Request) -> str:
        """Where clients reach us: FLASHHEAD_PUBLIC_URL, else the URL this request came in on."""
        return (self.settings.public_url or str(request.base_url)).rstrip("/")


def get_ctx(request: Request) -> AppContext:
    return request.app.state.ctx


async def authenticate(conn: HTTPConnection, *, token_type: str | None = None,
                       token_param: str | None = None, app: str | None = None) -> str | None:
    """THE auth check of every route, WebSocket and SSE stream: the caller's key id (None in
    OPEN mode), counted against its rate limit. Raises Unauthorized, Forbidden (OPEN mode: a page
    of another site, see Auth.check_page) or RateLimited.
    token_type: also accept a token of that type, from the query parameter `token_param`, else
    from `Authorization: Bearer` (see Auth.check); app: the app a realtime token must name."""
    ctx = conn.app.state.ctx
    server = conn.scope.get("server")
    ctx.auth.check_page(host=conn.headers.get("host"), origin=conn.headers.get("origin"),
                        local_ip=server[0] if server else None)
    header = conn.headers.get("authorization")
    token = conn.query_params.get(token_param) if token_param else None

    def admit() -> str | None:
        key_id = ctx.auth.check(header, token=token, token_type=token_type, app=app)
        if ctx.limits is not None:
            ctx.limits.hit(key_id)
        return key_id

    return await off_loop(admit)


async def require_key(request: Request) -> str | None:
    """Dependency of every key-protected HTTP route: `authenticate` with an API key only."""
    return await authenticate(request)


async def require_key_or_cdn_token(request: Request) -> str | None:
    """Dependency of the CDN upload routes: an API key, or the Bearer token of POST
    /rest/storage/auth/token (fal-client)."""
    return await authenticate(request, token_type="cdn")


async def off_loop(fn, *args):
    """Run an auth/limit check in the threadpool: keys.db is a SQLite read that can wait on a
    writer's lock (busy timeout), keys and limits in redis are network round trips; neither may
    stall the event loop."""
    return await run_in_threadpool(fn, *args)


ENDPOINT_MODELS = ((C.TEXT_ENDPOINT, FlashHeadRequest), (C.AUDIO_ENDPOINT, FlashHeadAudioRequest))


def add_endpoint_routes(router, make, *, path: str, name: str, summary: str, **kw) -> None:
    """One POST route per model endpoint (text, audio): `make(endpoint, model)` builds the handler,
    whose `body` parameter gets that endpoint's model (a real class, not the string 'model');
    `path` and `summary` are formatted with {endpoint}; the handler is named `{name}_<endpoint>`
    (the OpenAPI operation id)."""
    for endpoint, model in ENDPOINT_MODELS:
        handler = make(endpoint, model)
        handler.__annotations__["body"] = model
        handler.__name__ = f"{name}_{endpoint.replace('/', '_').replace('-', '_')}"
        router.add_api_route(path.format(endpoint=endpoint), handler, methods=["POST"],
                             summary=summary.format(endpoint=endpoint), **kw)
