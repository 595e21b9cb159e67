"""The context every route module receives (also `register(app, ctx)` in stream/realtime).

    ctx.settings   flashhead.config.Settings
    ctx.engines    flashhead.pipeline.Engines in worker_mode "thread" (None until loaded); None in
                   "process" mode, where only worker and engine processes hold a renderer
    ctx.storage    flashhead.storage.base.Storage: put_file/stat/open_range/url
    ctx.auth       flashhead.api.auth.Auth: check_key_header(header) -> key id | None (raises
                   Unauthorized), verify_realtime_token(token, app) -> claims (raises Unauthorized)
    ctx.jobs       flashhead.jobs.queue.JobQueue (ctx.jobs.store: the JobStore)
    ctx.metrics    flashhead.api.observability.Metrics (prometheus registry)
    ctx.webhooks   flashhead.jobs.webhooks.WebhookOutbox
    ctx.ready      threading.Event, set once engines are loaded and workers run
    ctx.workers    WorkerPool (worker_mode "thread") | ProcessWorkerPool ("process")
    ctx.engine     flashhead.engine.service.EngineService: the render engine of /stream, /realtime
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request
from starlette.concurrency import run_in_threadpool

from flashhead.api.auth import Auth
from flashhead.api.observability import Metrics
from flashhead.config import Settings
from flashhead.jobs.backends import option  # noqa: F401  (re-exported)
from flashhead.jobs.queue import JobQueue
from flashhead.jobs.webhooks import WebhookOutbox, WebhookSigner
from flashhead.storage.base import Storage


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
    engine: Any = None          # flashhead.engine.service.EngineService: /stream and /realtime

    def base_url(self, request: Request) -> str:
        """Where clients reach us: FLASHHEAD_PUBLIC_URL, else the URL this request came in on."""
        return (self.settings.public_url or str(request.base_url)).rstrip("/")


def get_ctx(request: Request) -> AppContext:
    return request.app.state.ctx


async def require_key(request: Request) -> str | None:
    """Dependency: the caller's key id (None when no keys exist); raises Unauthorized."""
    return await check_key(get_ctx(request).auth, request.headers.get("authorization"))


async def check_key(auth, header: str | None) -> str | None:
    """Key check from async code. With keys.db it is one read of a local file plus a SHA-256
    (microseconds), cheaper inline than a hop to the threadpool and back on every request;
    keys in redis are a network round trip, so that check goes to the threadpool."""
    if getattr(auth.keys, "local", False):
        return auth.check_key_header(header)
    return await run_in_threadpool(auth.check_key_header, header)
