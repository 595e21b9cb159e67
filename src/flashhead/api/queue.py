"""Queue API: /queue/{owner}/{alias}[/{sub}] submit; .../requests/{id}[/status[/stream]|/cancel]."""
from __future__ import annotations

import asyncio
import json
import math
import time
from functools import partial

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, StreamingResponse

from flashhead import constants as C
from flashhead.api.deps import AppContext, add_endpoint_routes, get_ctx, require_key
from flashhead.api.errors import error_body, error_headers, sent_in, status_for_type
from flashhead.errors import InputError, NotFound
from flashhead.jobs.state import JobState, Priority
from flashhead.jobs.store import CancelOutcome, Job, NewJob
from flashhead.storage.localize import own_file_key

QUEUE_PREFIX = "/queue"
APP_PATH = C.TEXT_ENDPOINT                      # status/result/cancel drop the subpath
SSE_POLL_S = 0.1
SSE_KEEPALIVE_S = 15.0
REQUEST_ID_HEADER = "x-fal-request-id"

router = APIRouter()


# ---- submission (shared with the sync run route) ----------------------------------------

def check_inputs(ctx: AppContext, payload: dict, base_url: str) -> None:
    """Refuse bad `*_url` values before queueing: scheme, SSRF guard, own files that exist."""
    from flashhead.media.urlguard import SCHEMES, guard_url, url_scheme

    hosts = ctx.storage.own_hosts(base_url)
    for name, value in payload.items():
        if not name.endswith("_url") or not isinstance(value, str):
            continue
        scheme = url_scheme(value)                                   # schemes are case-insensitive
        if scheme == "data":
            continue
        if scheme not in SCHEMES:
            raise InputError("must be an http(s) URL or a data: URI", field=name)
        key = own_file_key(value, hosts)
        if key is not None:
            try:
                ctx.storage.stat(key)
            except NotFound:
                raise InputError("refers to an uploaded file that does not exist", field=name) from None
            continue
        guard_url(value, ctx.settings.fetch_allow, field=name)


def _deadline(request: Request) -> float | None:
    raw = request.headers.get("x-fal-request-timeout")
    if raw is None:
        return None
    try:
        seconds = float(raw)
    except ValueError:
        raise InputError(f"must be a number of seconds, got {raw!r}", field="X-Fal-Request-Timeout",
                         location="header") from None
    if not math.isfinite(seconds) or seconds <= 0:      # NaN compares false with everything
        raise InputError("must be a positive, finite number of seconds", field="X-Fal-Request-Timeout",
                         location="header")
    return time.time() + seconds


def _priority(request: Request) -> Priority:
    try:
        return Priority.parse(request.headers.get("x-fal-queue-priority"))
    except ValueError as exc:
        raise InputError(str(exc), field="X-Fal-Queue-Priority", location="header") from None


def submit_job(ctx: AppContext, request: Request, endpoint: str, payload: dict, key_id: str | None,
               *, webhook_url: str | None = None, max_queue_length: int | None = None) -> Job:
    ctx.limits.check_jobs(ctx.jobs.store, key_id)
    base = ctx.base_url(request)
    check_inputs(ctx, payload, base)
    if webhook_url is not None:
        from flashhead.jobs.webhooks import check_webhook_url
        from flashhead.media.urlguard import guard_url
        with sent_in("query", "fal_webhook"):
            check_webhook_url(webhook_url, field="fal_webhook")    # as the deliverer will parse it
            guard_url(webhook_url, ctx.settings.fetch_allow, field="fal_webhook")
    new = NewJob(endpoint=endpoint, input=payload, priority=_priority(request),
                 deadline=_deadline(request), webhook_url=webhook_url, base_url=base, key_id=key_id)
    return ctx.jobs.submit(new, max_queue_length=max_queue_length)


# ---- responses --------------------------------------------------------------------------

def request_urls(base: str, job_id: str) -> dict:
    url = f"{base}{QUEUE_PREFIX}/{APP_PATH}/requests/{job_id}"
    return {"response_url": url, "status_url": f"{url}/status", "cancel_url": f"{url}/cancel"}


def status_body(ctx: AppContext, job: Job, *, logs: bool, since: int = 0) -> dict:
    body = {"status": job.state.wire(), "request_id": job.id, **request_urls(job.base_url, job.id)}
    if job.state is JobState.IN_QUEUE:
        body["queue_position"] = ctx.jobs.store.queue_position(job.id)
    body["logs"] = [e.wire() for e in ctx.jobs.store.logs(job.id)[since:]] if logs else None
    if job.state.is_terminal():
        body["metrics"] = {"inference_time": job.inference_time}
        if job.error is not None:
            body["error"], body["error_type"] = job.error, job.error_type
    return body


def job_response(job: Job) -> JSONResponse:
    """A terminal job as fal answers it: the output, or its error with the right status."""
    headers = {REQUEST_ID_HEADER: job.id}
    if job.state is JobState.COMPLETED:
        return JSONResponse(job.result, 200, headers=headers)
    status = status_for_type(job.error_type)
    if job.result and "detail" in job.result:
        body = {**job.result, "error_type": job.error_type}
    else:
        body = error_body(job.error or "failed", job.error_type or "internal_error")
    return JSONResponse(body, status, headers={**headers, **error_headers(job.error_type or "", status)})


def _own_job(ctx: AppContext, job_id: str, key_id: str | None) -> Job:
    job = ctx.jobs.store.get(job_id, with_input=False)
    if job is None or job.key_id != key_id:     # a key's jobs; open mode's (no key) only in open mode
        raise NotFound(f"request {job_id} not found: it never existed, or it expired (finished requests "
                       f"are kept for {ctx.settings.job_retention_s / 86400:g} days)", field="request_id")
    return job


def _wants_logs(value: str | None) -> bool:
    return (value or "").lower() in ("1", "true", "yes")


# ---- routes -----------------------------------------------------------------------------

def _submit_route(endpoint: str, model):
    def submit(body: model, request: Request, fal_webhook: str | None = None,
               fal_max_queue_length: int | None = None, key_id: str | None = Depends(require_key)):
        ctx = get_ctx(request)
        job = submit_job(ctx, request, endpoint, body.model_dump(mode="json", exclude_unset=False),
                         key_id, webhook_url=fal_webhook, max_queue_length=fal_max_queue_length)
        return JSONResponse({"request_id": job.id, **request_urls(job.base_url, job.id),
                             "status": "IN_QUEUE", "queue_position": ctx.jobs.store.queue_position(job.id)},
                            headers={REQUEST_ID_HEADER: job.id})
    return submit


add_endpoint_routes(router, _submit_route, path=QUEUE_PREFIX + "/{endpoint}", name="submit", tags=["queue"],
                    summary="Submit a {endpoint} request to the queue")


async def store_read(ctx: AppContext, fn, *args, **kwargs):
    """Store reads from async routes go to the threadpool: SQLite can wait on a lock (and its
    queue_position is a COUNT over the queue), redis is a network round trip."""
    return await run_in_threadpool(partial(fn, *args, **kwargs))


@router.get(f"{QUEUE_PREFIX}/{APP_PATH}/requests/{{request_id}}/status", tags=["queue"])
async def status(request_id: str, request: Request, logs: str | None = None,
                 key_id: str | None = Depends(require_key)):
    ctx = get_ctx(request)
    job = await store_read(ctx, _own_job, ctx, request_id, key_id)
    body = await store_read(ctx, status_body, ctx, job, logs=_wants_logs(logs))
    return JSONResponse(body, 200 if job.state.is_terminal() else 202, headers={REQUEST_ID_HEADER: job.id})


@router.get(f"{QUEUE_PREFIX}/{APP_PATH}/requests/{{request_id}}/status/stream", tags=["queue"])
async def status_stream(request_id: str, request: Request, logs: str | None = None,
                        key_id: str | None = Depends(require_key)):
    ctx = get_ctx(request)
    job = await run_in_threadpool(_own_job, ctx, request_id, key_id)
    return StreamingResponse(_status_events(ctx, job.id, _wants_logs(logs)), media_type="text/event-stream",
                             headers={REQUEST_ID_HEADER: job.id, "Cache-Control": "no-cache"})


def _poll(ctx: AppContext, job_id: str, logs: bool, since: int) -> tuple[Job | None, dict | None]:
    """One SSE poll: the job and its status body, read together in one threadpool hop
    (None, None: the job expired meanwhile and retention deleted it)."""
    job = ctx.jobs.store.get(job_id, with_input=False)
    return (job, status_body(ctx, job, logs=logs, since=since)) if job else (None, None)


async def _status_events(ctx: AppContext, job_id: str, logs: bool):
    """An event whenever the status, position or logs change; only new log lines each time."""
    sent_logs, last, last_sent = 0, None, time.monotonic()
    while True:
        job, body = await store_read(ctx, _poll, ctx, job_id, logs, sent_logs)
        if job is None:
            return
        key = (body["status"], body.get("queue_position"), bool(body["logs"]))
        if key != last or body["logs"]:
            sent_logs += len(body["logs"] or [])
            yield f"data: {json.dumps(body)}\n\n"
            last, last_sent = key, time.monotonic()
        if job.state.is_terminal():
            return
        if time.monotonic() - last_sent > SSE_KEEPALIVE_S:
            yield ": keep-alive\n\n"
            last_sent = time.monotonic()
        await asyncio.sleep(SSE_POLL_S)


@router.get(f"{QUEUE_PREFIX}/{APP_PATH}/requests/{{request_id}}", tags=["queue"])
def result(request_id: str, request: Request, key_id: str | None = Depends(require_key)):
    job = _own_job(get_ctx(request), request_id, key_id)
    if not job.state.is_terminal():
        return JSONResponse({"detail": "the request is still in progress", "error_type": "in_progress",
                             "status": job.state.wire()}, 400,
                            headers={REQUEST_ID_HEADER: job.id, "X-Fal-Error-Type": "in_progress"})
    return job_response(job)


@router.put(f"{QUEUE_PREFIX}/{APP_PATH}/requests/{{request_id}}/cancel", tags=["queue"])
def cancel(request_id: str, request: Request, key_id: str | None = Depends(require_key)):
    ctx = get_ctx(request)
    try:
        _own_job(ctx, request_id, key_id)
    except NotFound:
        return JSONResponse({"status": "NOT_FOUND"}, 404)
    outcome = ctx.jobs.cancel(request_id)
    if outcome == CancelOutcome.ALREADY_COMPLETED:
        return JSONResponse({"status": "ALREADY_COMPLETED"}, 400, headers={REQUEST_ID_HEADER: request_id})
    if outcome == CancelOutcome.NOT_FOUND:
        return JSONResponse({"status": "NOT_FOUND"}, 404)
    return JSONResponse({"status": "CANCELLATION_REQUESTED"}, 202, headers={REQUEST_ID_HEADER: request_id})
