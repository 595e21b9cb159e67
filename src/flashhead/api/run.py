"""Sync run: POST /{owner}/{alias}[/{sub}] -> the output JSON. Runs through the same queue
(so it shares the workers and their limits) and waits; a client that hangs up cancels it."""
from __future__ import annotations

import asyncio
from functools import partial

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool

from flashhead.api.deps import add_endpoint_routes, get_ctx, require_key
from flashhead.api.queue import job_response, submit_job
from flashhead.schemas import FlashHeadResponse

POLL_MIN_S, POLL_MAX_S = 0.02, 0.25

router = APIRouter()


def _run_route(endpoint: str, model):
    async def run(body: model, request: Request, key_id: str | None = Depends(require_key)):
        ctx = get_ctx(request)
        payload = body.model_dump(mode="json")
        job = await run_in_threadpool(submit_job, ctx, request, endpoint, payload, key_id)
        request.state.fal_request_id = job.id
        delay = POLL_MIN_S
        while not job.state.is_terminal():
            await asyncio.sleep(delay)
            delay = min(POLL_MAX_S, delay * 1.5)
            if await request.is_disconnected():
                await run_in_threadpool(ctx.jobs.cancel, job.id)
            job = await run_in_threadpool(partial(ctx.jobs.store.get, job.id, with_input=False))
        return job_response(job)
    return run


add_endpoint_routes(router, _run_route, path="/{endpoint}", name="run", response_model=FlashHeadResponse,
                    tags=["run"], summary="Run {endpoint} and wait for the output")
