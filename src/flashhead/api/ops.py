"""Operations and REST extras: /health, /metrics, /.well-known/jwks.json, POST /rest/tokens/."""
from __future__ import annotations

import math

from fastapi import APIRouter, Body, Depends, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from flashhead import __version__
from flashhead.api.auth import TOKEN_TTL_DEFAULT_S
from flashhead.api.deps import get_ctx, require_key
from flashhead.errors import InputError

router = APIRouter()


@router.get("/health", tags=["ops"])
def health(request: Request):
    ctx = get_ctx(request)
    engine = ctx.engine.health()                 # the render engine of /stream and /realtime
    body = {"status": _status(ctx, engine), "version": __version__,
            "renderer": ctx.settings.renderer, "queue_depth": ctx.jobs.store.queue_depth(),
            "running": ctx.jobs.store.running_count(), "auth": ctx.auth.mode,
            "workers": {"mode": ctx.worker_mode, "count": ctx.n_workers},
            "instance": ctx.jobs.store.instance,       # this server's id: owner of the jobs it claims
            "engine": engine}
    error = ctx.startup_error or getattr(ctx.workers, "error", None) or (ctx.engine and ctx.engine.error)
    if error:
        body.update(status="error", error=error)
    return JSONResponse(body, 200 if body["status"] == "ok" else 503)


def _status(ctx, engine: dict) -> str:
    """ok | starting | engine_restarting (this node's own engine died and is coming back: streams
    and live sessions are refused meanwhile, so a load balancer should send them elsewhere)."""
    if not ctx.ready.is_set():
        return "starting"
    local = ctx.engine.runner is not None and ctx.engine.remote is None
    return "engine_restarting" if local and not engine["up"] else "ok"


@router.get("/metrics", tags=["ops"])
def metrics(request: Request):
    ctx = get_ctx(request)
    ctx.jobs.dispatch_terminal()     # count jobs that worker processes finished a moment ago
    return Response(generate_latest(ctx.metrics.registry), media_type=CONTENT_TYPE_LATEST)


@router.get("/.well-known/jwks.json", tags=["ops"])
def jwks(request: Request):
    return get_ctx(request).signer.jwks()


@router.post("/rest/tokens/", tags=["auth"])
def realtime_token(request: Request, body: dict = Body(default_factory=dict),
                   key_id: str | None = Depends(require_key)):
    """A short-lived JWT for the realtime WebSocket, scoped to `allowed_apps`; a bare JSON string."""
    apps = body.get("allowed_apps")
    if not isinstance(apps, list) or not apps or not all(isinstance(a, str) for a in apps):
        raise InputError("must be a non-empty list of app names", field="allowed_apps")
    ttl = body.get("token_expiration", TOKEN_TTL_DEFAULT_S)
    if isinstance(ttl, bool) or not isinstance(ttl, (int, float)) or not math.isfinite(ttl) or ttl <= 0:
        raise InputError("must be a positive number of seconds", field="token_expiration")
    return get_ctx(request).auth.issue_realtime_token(key_id, apps, ttl)
