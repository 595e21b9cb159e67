"""create_app(settings, engines=None) -> FastAPI: wiring only.

URL layout (one port): sync run and /stream, /realtime at /{owner}/{alias}[/{sub}]; the queue
under /queue/...; REST (tokens, storage) under /rest/...; the upload CDN under /cdn/...;
stored files under /files/...; plus /health, /metrics, /.well-known/jwks.json, /openapi.json.
"""
from __future__ import annotations

import importlib
import logging
import threading
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from flashhead import __version__
from flashhead.api import errors, ops, queue, run, storage
from flashhead.api.auth import KEYS, Auth
from flashhead.api.bodies import BodyLimitMiddleware
from flashhead.api.deps import AppContext
from flashhead.api.limits import AbuseLimits
from flashhead.jobs.memory import heap_trimmer
from flashhead.api.observability import Metrics, RequestContextMiddleware, setup_logging
from flashhead.config import Settings
from flashhead.engine.remote import RemoteEngines
from flashhead.engine.service import EngineService
from flashhead.errors import ShuttingDown
from flashhead.jobs.backends import make_storage, make_store, redis_url
from flashhead.jobs.processes import ProcessWorkerPool
from flashhead.jobs.queue import JobQueue
from flashhead.jobs.retention import Retention, sweeper
from flashhead.jobs.state import JobState
from flashhead.jobs.store import Job
from flashhead.jobs.webhooks import RetryPolicy, WebhookOutbox, WebhookSigner, webhook_payload
from flashhead.jobs.worker import WorkerPool

log = logging.getLogger("flashhead.api")
EXPOSED_HEADERS = ["x-fal-request-id", "x-request-id", "x-fal-error-type", "x-fal-request-timeout-type",
                   "content-range", "accept-ranges", "etag", "location"]
API_NODE_ONLY = ("this server is an API node (flashhead serve --no-worker): it renders queue requests on "
                 "`flashhead worker` machines only; /stream and realtime need a server with workers")
EXTENSIONS = ("flashhead.api.stream", "flashhead.api.realtime", "flashhead.api.webrtc")


def build_context(settings: Settings, engines=None, auth_mode: str = KEYS) -> AppContext:
    data_dir = Path(settings.data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    store = make_store(settings, lock_dir=True)      # SQLite: a second server on data_dir exits here
    metrics = Metrics(store)
    auth = Auth.from_settings(settings, mode=auth_mode)
    shared = getattr(auth.keys, "shared_seed", None)       # several servers: one signing key
    signer = WebhookSigner(data_dir / "webhook_ed25519.key",
                           seed=shared("webhook_ed25519") if shared else None)
    policy = RetryPolicy(max_tries=settings.webhook_max_tries,
                         window_s=settings.webhook_retry_window_s,
                         timeout_s=settings.webhook_timeout_s)
    outbox = WebhookOutbox(data_dir / "webhooks.db", signer, policy,
                           on_result=lambda ok: metrics.webhooks.labels("ok" if ok else "error").inc(),
                           check_url=lambda url: _guard(settings, url),
                           concurrency=settings.webhook_concurrency,
                           per_receiver=settings.webhook_concurrency_per_receiver,
                           max_response_bytes=settings.webhook_max_response_bytes)
    ctx = AppContext(settings=settings, engines=engines, storage=make_storage(settings),
                     auth=auth, jobs=JobQueue(store), metrics=metrics, webhooks=outbox,
                     signer=signer, limits=AbuseLimits.from_settings(settings))
    ctx.storage.max_upload_bytes = settings.max_upload_bytes
    ctx.storage.upload_reserve_bytes = settings.upload_reserve_bytes
    ctx.engine = EngineService(settings, metrics.registry)
    ctx.jobs.on_terminal(lambda job: _record_metrics(ctx, job))
    ctx.jobs.on_terminal(lambda job: _enqueue_webhook(ctx, job))
    return ctx


def _guard(settings: Settings, url: str) -> list:
    """The SSRF guard of a delivery: the addresses it may connect to (it connects to these)."""
    from flashhead.media.urlguard import guard_url
    return guard_url(url, settings.fetch_allow, field="fal_webhook")


def _record_metrics(ctx: AppContext, job: Job) -> None:
    ctx.metrics.jobs.labels(job.endpoint, job.state.value).inc()
    if job.started_at is not None:
        ctx.metrics.queue_wait.observe(max(0.0, job.started_at - job.created_at))
    if job.inference_time is not None:
        ctx.metrics.job_seconds.labels(job.endpoint).observe(job.inference_time)
    if job.error_type:
        ctx.metrics.errors.labels(job.error_type).inc()


def _enqueue_webhook(ctx: AppContext, job: Job) -> None:
    if job.webhook_url:
        error = None if job.state is JobState.COMPLETED else (job.error or "failed")
        ctx.webhooks.enqueue(job.webhook_url, job.id, job.key_id or "anonymous",
                             webhook_payload(job.id, job.result, error, job.error_type))


def _start_workers(ctx: AppContext, generate) -> None:
    """Thread mode: load the engines (slow: renderer setup) off the event loop, start thread
    workers and the render engine's loop on them. Process mode: wait for the worker processes and
    the render engine process (which load their own engines meanwhile)."""
    try:
        if ctx.n_workers == 0:
            pass
        elif ctx.worker_mode == "thread":
            if ctx.engines is None:
                from flashhead.pipeline import Engines
                ctx.engines = Engines.create(ctx.settings)
            ctx.workers = WorkerPool(ctx.jobs, ctx.storage, ctx.engines,
                                     Path(ctx.settings.data_dir) / "work", threads=ctx.n_workers,
                                     generate=generate)
            ctx.workers.start()
            ctx.engine.start_thread(ctx.engines, ctx.storage)
        elif ctx.workers is not None:
            ctx.workers.wait_ready()
        if ctx.engine.runner is not None:
            ctx.engine.wait_ready()
        ctx.ready.set()
        log.info("ready", extra={"renderer": ctx.settings.renderer, "workers": ctx.n_workers,
                                 "worker_mode": ctx.worker_mode})
    except Exception as exc:
        ctx.startup_error = f"{type(exc).__name__}: {exc}"
        log.exception("start-up failed")


def _worker_mode(settings: Settings, worker_mode: str | None, engines, generate) -> str:
    """process (the default for `flashhead serve`): rendering in worker processes, off the API's
    GIL. thread: in this process; the default when the caller hands in its own engines or a
    generate (tests, embedding)."""
    default = "thread" if engines is not None or generate is not None else "process"
    mode = worker_mode or settings.worker_mode or default
    if mode not in ("thread", "process"):
        raise ValueError(f"worker_mode must be 'thread' or 'process', got {mode!r}")
    if mode == "process" and generate is not None:
        raise ValueError("a replacement generate runs in worker threads only (worker_mode='thread')")
    return mode


def create_app(settings: Settings | None = None, engines=None, *, workers: int | None = None,
               generate=None, worker_mode: str | None = None, auth_mode: str = KEYS) -> FastAPI:
    """workers: render workers (default FLASHHEAD_WORKERS or 1); 0: an API node that renders
    nothing (`flashhead serve --no-worker`): queue jobs wait for `flashhead worker` nodes.
    auth_mode: "keys" (every protected route needs a key) | "open" (flashhead serve --no-auth).
    worker_mode: "process" | "thread" (FLASHHEAD_WORKER_MODE; see _worker_mode).
    generate: replaces flashhead.pipeline.generate (a seam for tests of the queue itself)."""
    from flashhead.config import get_settings

    settings = settings or get_settings()
    ctx = build_context(settings, engines, auth_mode)
    ctx.n_workers = workers if workers is not None else settings.workers
    ctx.worker_mode = _worker_mode(settings, worker_mode, engines, generate)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        ctx.jobs.recover()               # before any worker runs: IN_PROGRESS means interrupted
        ctx.jobs.start()
        ctx.webhooks.start()
        if ctx.n_workers == 0 and redis_url(ctx.settings):     # engines on `flashhead worker` nodes
            ctx.engine.remote = RemoteEngines(ctx.settings)
        elif ctx.n_workers == 0:
            ctx.engine.absent = API_NODE_ONLY
        elif ctx.worker_mode == "process":
            ctx.engine.start_process()      # /stream, /realtime and queue jobs render there, never here
            ctx.workers = ProcessWorkerPool(ctx.jobs, ctx.settings, ctx.n_workers, engine=ctx.engine.runner.jobs)
            ctx.workers.start()
        threading.Thread(target=_start_workers, args=(ctx, generate), name="startup", daemon=True).start()
        periodic = [sweeper(Retention(ctx.settings, ctx.jobs.store, ctx.storage), ctx.settings.retention_sweep_s),
                    heap_trimmer(ctx.settings.heap_trim_s)]
        for task in periodic:
            task.start()
        yield
        if ctx.webrtc is not None:
            await ctx.webrtc.close_all(ShuttingDown())
        for task in periodic:
            task.stop()
        if ctx.engine.remote is not None:
            await ctx.engine.remote.aclose()
        ctx.engine.stop()
        if ctx.workers:
            ctx.workers.stop()
        ctx.jobs.stop()
        ctx.webhooks.stop()

    setup_logging()
    app = FastAPI(title="flashhead", version=__version__, lifespan=lifespan,
                  description="Self-hosted, fal-compatible fal-ai/flashhead talking-head service.")
    app.state.ctx = ctx
    errors.install(app)
    for module in (ops, storage, queue, run):
        app.include_router(module.router)
    app.add_middleware(BodyLimitMiddleware, settings=settings, auth=ctx.auth)
    app.add_middleware(CORSMiddleware, allow_origins=["*"], allow_methods=["*"], allow_headers=["*"],
                       expose_headers=EXPOSED_HEADERS)
    app.add_middleware(RequestContextMiddleware, metrics=ctx.metrics)
    for name in EXTENSIONS:
        _register_extension(app, ctx, name)
    return app


def _register_extension(app: FastAPI, ctx: AppContext, name: str) -> None:
    try:
        module = importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name != name:
            raise
        return
    module.register(app, ctx)
